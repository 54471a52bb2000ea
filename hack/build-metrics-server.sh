#!/usr/bin/env bash
# Builds sigs.k8s.io/metrics-server of one pinned release from its Go module into the cache, and
# reuses it when present. It is the aggregated API most clusters run (v1beta1.metrics.k8s.io, what
# `kubectl top` and the HPA read): the kind e2e suite (e2e/test_metrics_server.py) deploys it with its
# own manifests, which come from the same module download and are copied into the cache beside it:
#
#   $CACHE/metrics-server-<version>/bin/metrics-server   the binary (static, CGO_ENABLED=0)
#   $CACHE/metrics-server-<version>/manifests/           the module's manifests/ (kustomize base,
#                                                        components, overlays), as released
#
# Measured cold on 2 cores (empty Go build and module caches, every module fetched from the module
# proxy): 2 min 27 s wall, binary 70 MB. Later runs reuse the cache.
#
#   hack/build-metrics-server.sh      build or reuse; prints the binary's path on the last line
#   METRICS_SERVER_VERSION=v0.8.0     the pinned release
#   APISERVICE_OPERATOR_CACHE         cache root (default ~/.cache/apiservice-operator)
set -euo pipefail

METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.8.0}"
MODULE=sigs.k8s.io/metrics-server
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
HOME_DIR="$CACHE_ROOT/metrics-server-$METRICS_SERVER_VERSION"
BIN="$HOME_DIR/bin/metrics-server"

if [[ -x "$BIN" && -f "$HOME_DIR/manifests/base/kustomization.yaml" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-metrics-server: Go is required" >&2; exit 1; }
log() { echo "build-metrics-server: $*" >&2; }
log "building $MODULE@$METRICS_SERVER_VERSION into $HOME_DIR"

# GOTOOLCHAIN=local: use the installed toolchain, never download another (the module says go 1.24.4,
# which the local one satisfies); GOFLAGS from the environment (e.g. -mod=mod) must not leak into
# `go install pkg@version`, which rejects them.
export GOTOOLCHAIN=local GOFLAGS='' CGO_ENABLED=0
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
src="$(go mod download -json "$MODULE@$METRICS_SERVER_VERSION" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
[[ -f "$src/manifests/base/kustomization.yaml" ]] || { log "no manifests/base in $src"; exit 1; }
# its go.mod has no replace directives, so `go install pkg@version` builds it with its own pins (no
# wrapper module). The version stamp as its Makefile sets it (PKG k8s.io/client-go/pkg).
stamp="k8s.io/client-go/pkg/version"
ldflags="-s -w -X $stamp.gitVersion=$METRICS_SERVER_VERSION -X $stamp.gitCommit=module-$METRICS_SERVER_VERSION"
ldflags+=" -X $stamp.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
started=$(date +%s)
GOBIN="$WORK/bin" go install -trimpath -ldflags "$ldflags" "$MODULE/cmd/metrics-server@$METRICS_SERVER_VERSION" >&2
log "compiled in $(( $(date +%s) - started )) s"
# the module cache is read-only (0444 files, 0555 folders): the copy is made writable by the owner
cp -r "$src/manifests" "$WORK/manifests"
chmod -R u+w "$WORK/manifests"

# build into a temp folder and move it into place, so an interrupted build never leaves a
# half-written binary (or manifests without a binary) that looks cached
mkdir -p "$CACHE_ROOT"
rm -rf "$HOME_DIR.tmp"
mkdir -p "$HOME_DIR.tmp"
mv "$WORK/bin" "$WORK/manifests" "$HOME_DIR.tmp/"
rm -rf "$HOME_DIR"
mv "$HOME_DIR.tmp" "$HOME_DIR"
log "done"
echo "$BIN"
