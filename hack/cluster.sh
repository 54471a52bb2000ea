#!/usr/bin/env bash
# make cluster-up / cluster-down: the local control plane in a named network namespace, reachable
# from the host over a veth pair (DESIGN.md 6a), so a user's kubectl and the operator can use it.
#
#   hack/cluster.sh up     start (building the binaries on first use); prints the kubeconfig path
#   hack/cluster.sh down   stop everything and remove the namespace
#   hack/cluster.sh exec CMD...   run CMD inside the namespace (where 10.250.0.x are local)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
NS="${APISERVICE_OPERATOR_NETNS_NAME:-apiservice-operator}"
STATE="${APISERVICE_OPERATOR_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/apiservice-operator/cluster}"
HOST_IP=10.250.255.1
NS_IP=10.250.255.2
PY="${PYTHON:-python3}"

need_root() {
  [[ "$(id -u)" == "0" ]] || { echo "cluster.sh: creating a network namespace needs root (sudo make cluster-up)" >&2; exit 1; }
}

up() {
  need_root
  if [[ -f "$STATE/ready" ]] && kill -0 "$(cat "$STATE/pid" 2>/dev/null)" 2>/dev/null; then
    echo "cluster already running" >&2
    cat "$STATE/ready"; echo
    return
  fi
  down quiet
  # build (or reuse) before entering the namespace, where the Go module proxy is out of reach
  "$REPO/hack/build-kube.sh" >/dev/null
  mkdir -p "$STATE"
  ip netns add "$NS"
  ip link add vh0-"${NS:0:8}" type veth peer name vn0
  ip link set vn0 netns "$NS"
  ip addr add "$HOST_IP/30" dev vh0-"${NS:0:8}"
  ip link set vh0-"${NS:0:8}" up
  ip netns exec "$NS" ip link set lo up
  ip netns exec "$NS" ip link set vn0 up
  ip netns exec "$NS" ip addr add "$NS_IP/30" dev vn0
  for i in $(seq 1 200); do echo "addr add 10.250.0.$i/32 dev lo"; done | ip netns exec "$NS" ip -batch -
  # the host reaches the aggregated servers' addresses through the veth, so an operator run on
  # the host can probe them
  ip route replace 10.250.0.0/24 via "$NS_IP"
  cd "$REPO"
  APISERVICE_OPERATOR_NETNS=1 PYTHONPATH="$REPO" setsid ip netns exec "$NS" \
    "$PY" -m tests.cluster serve --workdir "$STATE" --external-address "$NS_IP" \
    >"$STATE/serve.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pid"
  for _ in $(seq 1 240); do
    if [[ -f "$STATE/ready" ]]; then
      echo "kubeconfig: $(cat "$STATE/ready")" >&2
      echo "try: kubectl --kubeconfig $(cat "$STATE/ready") get apiservices" >&2
      cat "$STATE/ready"; echo
      return
    fi
    kill -0 "$(cat "$STATE/pid")" 2>/dev/null || { cat "$STATE/serve.log" >&2; down quiet; exit 1; }
    sleep 0.5
  done
  echo "cluster.sh: control plane not ready in 120 s" >&2; cat "$STATE/serve.log" >&2; down quiet; exit 1
}

down() {
  if [[ -f "$STATE/pid" ]]; then
    pid="$(cat "$STATE/pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if ip netns list 2>/dev/null | grep -qw "$NS"; then
    # anything still inside (servers, an operator) goes with the namespace
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns delete "$NS"
  fi
  ip route del 10.250.0.0/24 via "$NS_IP" 2>/dev/null || true
  rm -rf "$STATE"
  [[ "${1:-}" == "quiet" ]] || echo "cluster down" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  exec) shift; exec ip netns exec "$NS" env APISERVICE_OPERATOR_NETNS=1 "$@" ;;
  *) echo "usage: $0 up|down|exec CMD..." >&2; exit 2 ;;
esac
