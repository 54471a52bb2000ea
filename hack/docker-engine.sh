#!/usr/bin/env bash
# Makes sure a Docker engine answers, for make image / make e2e-kind. An engine the user already
# runs is used as it is and never reconfigured. Otherwise (root only): installs Debian's docker.io
# if needed and starts dockerd in the background, with hack/runc-capfix as its default runtime
# where this host cannot give privileged containers CAP_SYS_RESOURCE (kind's nodes need that).
#
#   hack/docker-engine.sh          start or reuse; exit 0 when `docker info` answers
#   hack/docker-engine.sh stop     stop an engine this script started
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
STATE="$CACHE_ROOT/docker"
log() { echo "docker-engine: $*" >&2; }

if [[ "${1:-}" == "stop" ]]; then
  if [[ -f "$STATE/dockerd.pid" ]]; then
    kill "$(cat "$STATE/dockerd.pid")" 2>/dev/null || true
    rm -f "$STATE/dockerd.pid"
    log "stopped the engine this script started"
  fi
  exit 0
fi

if docker info >/dev/null 2>&1; then
  exit 0  # someone's engine: use it, never touch its configuration
fi
[[ "$(id -u)" == "0" ]] || { log "no Docker engine answers, and starting one needs root"; exit 1; }
if ! command -v dockerd >/dev/null 2>&1; then
  log "installing Debian's docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

mkdir -p "$STATE"
runtime_args=()
# Probe the host: is CAP_SYS_RESOURCE (bit 24) in our bounding set? If not, privileged
# containers fail to start, and the wrapper removes that one capability from their spec.
bnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
if (( (16#$bnd >> 24 & 1) == 0 )); then
  log "this host's capability bounding set lacks CAP_SYS_RESOURCE: using hack/runc-capfix as the runtime"
  # a copy beside the engine's state: the engine outlives the checkout that started it (a worktree
  # removed later left every container failing with "fork/exec .../hack/runc-capfix: no such file")
  install -m 0755 "$REPO/hack/runc-capfix" "$STATE/runc-capfix"
  runtime_args=(--add-runtime "capfix=$STATE/runc-capfix" --default-runtime capfix)
fi
log "starting dockerd (log: $STATE/dockerd.log)"
setsid dockerd --pidfile "$STATE/dockerd.pid" "${runtime_args[@]}" >"$STATE/dockerd.log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && { log "engine ready"; exit 0; }
  sleep 1
done
log "dockerd did not answer within 60 s:"; tail -20 "$STATE/dockerd.log" >&2
exit 1
