#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, built locally (no registry can be pulled here):
# debootstrap --variant=minbase from the host's own Debian mirror, then `docker import`.
# Cached: rebuilt only when the image is missing.
#
#   hack/base-image.sh     prints the image reference on the last line
set -euo pipefail
IMAGE="${BASE_IMAGE_LOCAL:-apiservice-operator-base:bookworm}"
log() { echo "base-image: $*" >&2; }
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"; exit 0
fi
[[ "$(id -u)" == "0" ]] || { log "debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
# the mirror the host's apt uses (the only one it may reach), unless MIRROR=... names another
[[ -n "${MIRROR:-}" ]] || MIRROR="$("$(dirname "$0")/apt-mirror.sh")"
ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
log "debootstrap bookworm from $MIRROR (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" >&2
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
# python3-pip is not needed in the base: the build stage bootstraps pip from ensurepip of the venv
tar -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$IMAGE" >&2
log "built $IMAGE"
echo "$IMAGE"
