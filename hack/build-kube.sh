#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd of one pinned Kubernetes release from Go modules
# (DESIGN.md 6a; the recipe is hack/lib/kube-gomod.sh) into a cache outside the repo, and reuses the
# cache when it is complete.
#
#   hack/build-kube.sh            build or reuse; prints the bin directory on the last line
#   KUBE_VERSION=v1.37.2          the pinned release (override at your own risk)
#   APISERVICE_OPERATOR_CACHE     cache root (default ~/.cache/apiservice-operator)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/kube-gomod.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/kube-gomod.sh"   # kube_build_from_modules: the recipe

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
BIN_DIR="$CACHE_ROOT/kube-$KUBE_VERSION/bin"

if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kubectl" && -x "$BIN_DIR/etcd" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { echo "build-kube: Go is required (go.mod of $KUBE_VERSION needs go 1.26)" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

log() { echo "build-kube: $*" >&2; }
log "building Kubernetes $KUBE_VERSION (kube-apiserver, kubectl, etcd) into $BIN_DIR"
log "a cold build takes about 5 minutes on 2 cores; later runs reuse the cache"

cd "$WORK"
OUT="$WORK/out"
kube_build_from_modules apiservice-operator/kube-build "$OUT" \
  go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
mv "$OUT/server" "$OUT/etcd"   # etcd's main package is go.etcd.io/etcd/server/v3

mkdir -p "$(dirname "$BIN_DIR")"
rm -rf "$BIN_DIR.tmp"
mv "$OUT" "$BIN_DIR.tmp"
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
"$BIN_DIR/kube-apiserver" --version >&2
log "done"
echo "$BIN_DIR"
