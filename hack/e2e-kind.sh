#!/usr/bin/env bash
# make e2e-kind: a kind cluster from locally built images, the operator as its Deployment, the
# e2e suite with the aggregated test servers as Pods, then the cluster is deleted (also on failure).
# Without a Docker engine or kind it exits 0 with the reason: nothing here can pull an image.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
skip() { echo "e2e-kind: SKIPPED: $*" >&2; exit 0; }

command -v docker >/dev/null 2>&1 || skip "no docker client on this machine (kind runs its nodes as Docker containers)"
docker info >/dev/null 2>&1 || skip "no Docker engine answers (docker info failed); start one, or see the kind issue's hack/ scripts"
KIND="${KIND:-$(command -v kind || true)}"
[[ -n "$KIND" ]] || skip "kind is not installed (go install sigs.k8s.io/kind@v0.33.0)"
NODE_IMAGE="${KIND_NODE_IMAGE:-}"
[[ -n "$NODE_IMAGE" ]] || skip "KIND_NODE_IMAGE is not set: no registry is reachable here, so the node image must be built locally first"
docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 || skip "node image $NODE_IMAGE is not present locally"

CLUSTER="apiservice-e2e-$$"
KUBECONFIG_FILE="$(mktemp)"
trap '"$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; rm -f "$KUBECONFIG_FILE"' EXIT
"$KIND" create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --kubeconfig "$KUBECONFIG_FILE" --wait 120s
make -C "$REPO" image
docker build -f "$REPO/e2e/Dockerfile.testserver" -t apiservice-operator-testserver:0.1.0 "$REPO"
"$KIND" load docker-image --name "$CLUSTER" apiservice-operator:0.1.0 apiservice-operator-testserver:0.1.0
KUBECTL="${KUBECTL:-kubectl}"
"$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" apply -f "$REPO/manifests/namespace.yaml"
"$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" apply -k "$REPO/manifests"
"$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" -n apiservice-operator rollout status deploy/apiservice-operator --timeout=180s
E2E_KUBECONFIG="$KUBECONFIG_FILE" KUBECTL="$KUBECTL" python3 -m pytest "$REPO/e2e" -v
"$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get nodes,pods -A -o wide
