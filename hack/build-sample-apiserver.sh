#!/usr/bin/env bash
# Builds k8s.io/sample-apiserver of one pinned release from its Go module (DESIGN.md 9) into the
# cache beside kube-apiserver, and reuses it when present. It is a real aggregated API server that
# nobody here wrote: the integration suite runs it against the local control plane to show what
# kube-apiserver's own availability check cannot see.
#
#   hack/build-sample-apiserver.sh   build or reuse; prints the binary's path on the last line
#   SAMPLE_APISERVER_VERSION=v0.37.2 the pinned release (v0.<minor>.<patch> of KUBE_VERSION v1.37.2)
#   APISERVICE_OPERATOR_CACHE        cache root (default ~/.cache/apiservice-operator)
set -euo pipefail

SAMPLE_APISERVER_VERSION="${SAMPLE_APISERVER_VERSION:-v0.37.2}"
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
BIN_DIR="$CACHE_ROOT/sample-apiserver-$SAMPLE_APISERVER_VERSION/bin"
BIN="$BIN_DIR/sample-apiserver"

if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-sample-apiserver: Go is required" >&2; exit 1; }

log() { echo "build-sample-apiserver: $*" >&2; }
log "building k8s.io/sample-apiserver@$SAMPLE_APISERVER_VERSION into $BIN_DIR"
log "a cold build takes about 2.5 minutes on 2 cores; later runs reuse the cache"

# `go install pkg@version` builds the module with its own go.mod (its own pins, no wrapper module
# needed, since sample-apiserver's go.mod has no replace directives). Build into a temp folder and
# move it into place, so an interrupted build never leaves a half-written binary that looks cached.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# GOTOOLCHAIN=local: use the installed toolchain, never download another; GOFLAGS from the
# environment (e.g. -mod=mod) must not leak into `go install pkg@version`, which rejects them.
GOTOOLCHAIN=local GOFLAGS= CGO_ENABLED=0 GOBIN="$WORK" \
  go install -trimpath -ldflags "-s -w" "k8s.io/sample-apiserver@$SAMPLE_APISERVER_VERSION" >&2

mkdir -p "$BIN_DIR"
mv "$WORK/sample-apiserver" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
log "done"
echo "$BIN"
