#!/usr/bin/env bash
# make demo: the local control plane, six sample aggregated APIs, the operator, the table.
# Runs until Ctrl-C, then removes everything it started. DEMO_NO_WAIT=1 prints the table and exits.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${APISERVICE_OPERATOR_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/apiservice-operator/cluster}"
PY="${PYTHON:-python3}"
echo "demo: building or reusing kube-apiserver, kubectl and etcd v1.37.2 (first time: ~5-8 minutes)" >&2
"$REPO/hack/build-kube.sh" >/dev/null
echo "demo: starting the local control plane" >&2
"$REPO/hack/cluster.sh" up >/dev/null
trap '"$REPO/hack/cluster.sh" down' EXIT
args=(--state "$STATE")
[[ "${DEMO_NO_WAIT:-}" == "1" ]] && args+=(--no-wait)
cd "$REPO"
PYTHONPATH="$REPO:$REPO/operator" "$REPO/hack/cluster.sh" exec "$PY" -m tests.cluster.demo "${args[@]}"
