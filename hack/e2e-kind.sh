#!/usr/bin/env bash
# make e2e-kind: a real kind cluster from locally built images, the operator as its Deployment, the
# e2e suite with the aggregated test servers and metrics-server as Pods, then the cluster is deleted
# (also on failure).
#
# Nothing is pulled from any registry: the engine is Debian's docker.io (hack/docker-engine.sh),
# kind is built from its Go module (hack/kind/kind.sh), the node image and every image it runs are
# built here (hack/kind/node-image.sh), the operator, test-server and metrics-server images from the
# local Debian base (hack/base-image.sh; metrics-server itself from its Go module,
# hack/build-metrics-server.sh). All of it is cached; a warm run only creates and deletes the cluster.
# Without a Docker engine it can start (no root, no docker) it exits 0 with the reason, or 1 with
# E2E_KIND_REQUIRED=1 (as CI sets it).
#
#   KIND_NODE_IMAGE=...   use this node image instead of building one
#   BASE_IMAGE=...        base of the operator, test-server and metrics-server images (default: the
#                         local Debian base)
#   E2E_KIND_KEEP=1       keep the cluster at the end (it is deleted otherwise)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
started=$(date +%s)
# E2E_KIND_REQUIRED=1 (CI): a reason to skip is a failure
skip() {
  if [[ "${E2E_KIND_REQUIRED:-}" == "1" ]]; then echo "e2e-kind: FAILED (E2E_KIND_REQUIRED=1): $*" >&2; exit 1; fi
  echo "e2e-kind: SKIPPED: $*" >&2; exit 0
}
log() { echo "e2e-kind [$(( $(date +%s) - started ))s]: $*" >&2; }

# --- engine ---------------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  [[ "$(id -u)" == "0" ]] || {
    command -v docker >/dev/null 2>&1 \
      && skip "no Docker engine answers, and starting one (hack/docker-engine.sh) needs root" \
      || skip "no Docker on this machine, and installing one (hack/docker-engine.sh) needs root"; }
  hack/docker-engine.sh || skip "no Docker engine could be started here (see the lines above)"
fi
command -v go >/dev/null 2>&1 || [[ -n "${KIND:-}" && -n "${KIND_NODE_IMAGE:-}" ]] \
  || skip "Go is needed to build kind and the node image (or set KIND and KIND_NODE_IMAGE)"

# --- tools and images (each cached) ---------------------------------------------------------------
log "kind, kubectl, node image"
KIND="${KIND:-$(hack/kind/kind.sh | tail -1)}"
KUBECTL="${KUBECTL:-$(hack/build-kube.sh | tail -1)/kubectl}"
NODE_IMAGE="${KIND_NODE_IMAGE:-$(hack/kind/node-image.sh | tail -1)}"
docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 || { echo "e2e-kind: node image $NODE_IMAGE is missing" >&2; exit 1; }
log "node image $NODE_IMAGE"
BASE_IMAGE="${BASE_IMAGE:-$(hack/base-image.sh | tail -1)}"
OPERATOR_IMAGE=apiservice-operator:0.1.0
TESTSERVER_IMAGE=apiservice-operator-testserver:0.1.0
log "operator image from $BASE_IMAGE"
make --no-print-directory image BASE_IMAGE="$BASE_IMAGE" IMAGE="$OPERATOR_IMAGE" >&2
log "test-server image from $BASE_IMAGE"
quiet_build() {  # docker build without the legacy builder's deprecation notice
  docker build -q "$@" 2>&1 >/dev/null \
    | grep -vE 'DEPRECATED: The legacy builder|Install the buildx component|docs.docker.com/go/buildx|^$' >&2 || true
}
quiet_build --build-arg BASE_IMAGE="$BASE_IMAGE" -f e2e/Dockerfile.testserver -t "$TESTSERVER_IMAGE" .
# metrics-server from its Go module, its image from the same base; its own manifests (copied from the
# module into the cache beside it) are applied by e2e/test_metrics_server.py
IMAGES=("$OPERATOR_IMAGE" "$TESTSERVER_IMAGE")
METRICS_SERVER_IMAGE=""
METRICS_SERVER_MANIFESTS=""
if command -v go >/dev/null 2>&1; then
  log "metrics-server (hack/build-metrics-server.sh)"
  ms_bin="$(hack/build-metrics-server.sh | tail -1)"
  ms_home="$(dirname "$(dirname "$ms_bin")")"          # .../metrics-server-<version>
  METRICS_SERVER_IMAGE="apiservice-operator-metrics-server:${ms_home##*/metrics-server-}"
  METRICS_SERVER_MANIFESTS="$ms_home/manifests"
  log "metrics-server image $METRICS_SERVER_IMAGE from $BASE_IMAGE"
  quiet_build --build-arg BASE_IMAGE="$BASE_IMAGE" -f e2e/Dockerfile.metrics-server -t "$METRICS_SERVER_IMAGE" \
    "$(dirname "$ms_bin")"
  docker image inspect "$METRICS_SERVER_IMAGE" >/dev/null
  IMAGES+=("$METRICS_SERVER_IMAGE")
else
  log "no Go: metrics-server is not built (e2e/test_metrics_server.py skips)"
fi

# --- the cluster ----------------------------------------------------------------------------------
CLUSTER="apiservice-e2e-$(date +%s)-$$"
NODE="$CLUSTER-control-plane"
WORK="$(mktemp -d)"
KUBECONFIG_FILE="$WORK/kubeconfig"
REPORT="$WORK/report.jsonl"
diagnose() {
  echo "===== diagnostics (exit $1)"
  k get nodes,pods -A -o wide || true
  k -n apiservice-operator describe pods || true
  k -n apiservice-operator logs -l app.kubernetes.io/name=apiservice-operator --tail=40 --prefix || true
  k get events -A --sort-by=.lastTimestamp | tail -40 || true
}
EGRESS_RULES=()  # the guard's rules (guard_egress), removed with the cluster
finish() {
  local rc=$?
  if (( rc != 0 )) && [[ -f "$KUBECONFIG_FILE" ]]; then diagnose "$rc" >&2; fi
  if [[ "${E2E_KIND_KEEP:-}" == "1" ]]; then
    log "kept cluster $CLUSTER (kubeconfig $KUBECONFIG_FILE); delete it with: $KIND delete cluster --name $CLUSTER"
  else
    log "deleting cluster $CLUSTER"
    "$KIND" delete cluster --name "$CLUSTER" >&2 || true
    rm -rf "$WORK"
    for rule in "${EGRESS_RULES[@]}"; do
      read -ra words <<<"$rule"
      "${words[0]}" -D "${words[@]:1}" 2>/dev/null || true
    done
  fi
  log "done (exit $rc)"
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

cp hack/kind/cluster.yaml "$WORK/cluster.yaml"
# Where the host's capability bounding set lacks CAP_SYS_RESOURCE (see hack/docker-engine.sh), the
# node cannot lower a process's oom_score_adj, and runc in the node fails every Pod ("can't get final
# child's PID from pipe"): containerd then clamps oom_score_adj to its own, as kind does under userns.
bnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
if (( (16#$bnd >> 24 & 1) == 0 )); then
  log "host lacks CAP_SYS_RESOURCE: the node's containerd restricts oom_score_adj"
  cat >> "$WORK/cluster.yaml" <<'YAML'
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri"]
      restrict_oom_score_adj = true
YAML
fi
log "creating cluster $CLUSTER"
"$KIND" create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config "$WORK/cluster.yaml" \
  --kubeconfig "$KUBECONFIG_FILE" --wait 180s >&2
# Test traffic stays on this machine. A packet from the kind network to anywhere outside it (a Service
# IP that kube-proxy has not set up yet, routed out of the node by its default route: seen once, a
# fresh Service's cluster IP answered by something beyond this machine) is refused here, not sent on.
guard_egress() {
  command -v iptables >/dev/null 2>&1 && iptables -S DOCKER-USER >/dev/null 2>&1 || {
    log "no DOCKER-USER chain (a Docker engine without its iptables rules): the kind network's egress is not guarded"
    return 0; }
  local bridge subnet tool
  bridge="br-$(docker network inspect kind -f '{{.Id}}' | cut -c1-12)"
  for subnet in $(docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}'); do
    tool=iptables
    [[ "$subnet" == *:* ]] && tool=ip6tables
    command -v "$tool" >/dev/null 2>&1 && "$tool" -S DOCKER-USER >/dev/null 2>&1 || continue
    "$tool" -C DOCKER-USER -i "$bridge" ! -d "$subnet" -j REJECT 2>/dev/null \
      || "$tool" -I DOCKER-USER -i "$bridge" ! -d "$subnet" -j REJECT
    EGRESS_RULES+=("$tool DOCKER-USER -i $bridge ! -d $subnet -j REJECT")
    log "egress from the kind network ($bridge) limited to $subnet"
  done
}
guard_egress
log "loading ${IMAGES[*]} into the node"
"$KIND" load docker-image --name "$CLUSTER" "${IMAGES[@]}" >&2
log "kubectl apply -k manifests/"
k apply -k manifests/ >&2
k -n apiservice-operator rollout status deploy/apiservice-operator --timeout=180s >&2

# --- the suite ------------------------------------------------------------------------------------
log "e2e suite (E2E_KUBECONFIG=$KUBECONFIG_FILE)"
suite_rc=0
E2E_KUBECONFIG="$KUBECONFIG_FILE" KUBECTL="$KUBECTL" E2E_KIND_NODE="$NODE" E2E_REPORT="$REPORT" \
  METRICS_SERVER_IMAGE="$METRICS_SERVER_IMAGE" METRICS_SERVER_MANIFESTS="$METRICS_SERVER_MANIFESTS" \
  "$PYTHON" -m pytest e2e -v -p no:cacheprovider ${PYTEST_ARGS_KIND:-} || suite_rc=$?

# --- what ran, and proof that nothing was pulled --------------------------------------------------
echo
echo "===== kubectl get nodes,pods -A -o wide"
k get nodes,pods -A -o wide
echo
echo "===== crictl images on $NODE"
docker exec "$NODE" crictl images
echo
echo "===== the operator's Pods as running: securityContext, user, Lease"
k -n apiservice-operator get pods -l app.kubernetes.io/name=apiservice-operator \
  -o jsonpath='{range .items[*]}{.metadata.name}{"\n  pod: "}{.spec.securityContext}{"\n  container: "}{.spec.containers[0].securityContext}{"\n  ready: "}{.status.containerStatuses[0].ready}{"  restarts: "}{.status.containerStatuses[0].restartCount}{"\n"}{end}'
k -n apiservice-operator get lease apiservice-operator \
  -o jsonpath='lease holder: {.spec.holderIdentity}  transitions: {.spec.leaseTransitions}{"\n"}'
echo
echo "===== measurements"
cat "$REPORT" 2>/dev/null || echo "(none)"
echo
echo "===== image pulls"
pull_rc=0
{ k get pods -A -o json; echo; k get events -A -o json; echo; docker exec "$NODE" crictl images -o json; } \
  | "$PYTHON" hack/kind/pull_check.py || pull_rc=$?

if (( suite_rc == 0 && pull_rc == 0 )); then
  log "PASSED: e2e suite green on kind, no image pulled"
else
  log "FAILED: e2e suite exit $suite_rc, pull check exit $pull_rc"
  exit 1
fi
