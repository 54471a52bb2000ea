#!/usr/bin/env bash
# make demo: the local control plane, seven sample aggregated APIs, the operator, the table.
# Runs until Ctrl-C, then removes everything it started. DEMO_NO_WAIT=1 prints the table and exits.
# DEMO_PROMETHEUS=1 (make demo-monitoring) adds a Prometheus from Debian's package inside the
# namespace on its veth address 10.250.255.2 (reachable from this machine, nothing else), scraping
# the operator and kube-apiserver with the shipped rules; it prints the alerts the samples raise.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${APISERVICE_OPERATOR_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/apiservice-operator/cluster}"
PY="${PYTHON:-python3}"
if [[ "${DEMO_PROMETHEUS:-}" == "1" ]] && ! command -v prometheus >/dev/null; then
  echo "demo: prometheus not found: apt-get install -y prometheus (Debian's package)" >&2; exit 1
fi
echo "demo: building or reusing kube-apiserver, kubectl and etcd v1.37.2 (first time: ~5-8 minutes)" >&2
"$REPO/hack/build-kube.sh" >/dev/null
echo "demo: starting the local control plane" >&2
"$REPO/hack/cluster.sh" up >/dev/null
trap '"$REPO/hack/cluster.sh" down' EXIT
args=(--state "$STATE")
[[ "${DEMO_NO_WAIT:-}" == "1" ]] && args+=(--no-wait)
# 10.250.255.2 is the namespace's end of hack/cluster.sh's veth pair
[[ "${DEMO_PROMETHEUS:-}" == "1" ]] && args+=(--prometheus "10.250.255.2:${DEMO_PROMETHEUS_PORT:-9090}")
cd "$REPO"
PYTHONPATH="$REPO:$REPO/operator" "$REPO/hack/cluster.sh" exec "$PY" -m tests.cluster.demo "${args[@]}"
