#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd of one pinned Kubernetes release from Go modules
# (DESIGN.md 6a) into a cache outside the repo, and reuses the cache when it is complete.
#
#   hack/build-kube.sh            build or reuse; prints the bin directory on the last line
#   KUBE_VERSION=v1.37.2          the pinned release (override at your own risk)
#   APISERVICE_OPERATOR_CACHE     cache root (default ~/.cache/apiservice-operator)
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
BIN_DIR="$CACHE_ROOT/kube-$KUBE_VERSION/bin"

if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kubectl" && -x "$BIN_DIR/etcd" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { echo "build-kube: Go is required (go.mod of $KUBE_VERSION needs go 1.26)" >&2; exit 1; }

# staging modules are versioned v0.<minor>.<patch> alongside v1.<minor>.<patch>
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
MINOR="$(echo "$KUBE_VERSION" | cut -d. -f2)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

log() { echo "build-kube: $*" >&2; }
log "building Kubernetes $KUBE_VERSION (kube-apiserver, kubectl, etcd) into $BIN_DIR"
log "a cold build takes about 5 minutes on 2 cores; later runs reuse the cache"

cd "$WORK"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
# The replace list comes from the release's own go.mod, never from a hand-written list.
GOMOD_FILE="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"

{
  echo "module apiservice-operator/kube-build"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$GOMOD_FILE" \
    | awk -v v="$STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
} > go.mod
log "$(grep -c '^replace' go.mod) staging modules pinned to $STAGING_VERSION"

cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO

log "resolving modules (go mod tidy)"
go mod tidy >&2

BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
  LDFLAGS+=" -X $pkg.gitCommit=module-$KUBE_VERSION -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
done

OUT="$WORK/out"
mkdir -p "$OUT"
log "compiling (go build)"
CGO_ENABLED=0 go build -tags selinux,notest -trimpath -ldflags "$LDFLAGS" -o "$OUT/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3 >&2
mv "$OUT/server" "$OUT/etcd"

mkdir -p "$(dirname "$BIN_DIR")"
rm -rf "$BIN_DIR.tmp"
mv "$OUT" "$BIN_DIR.tmp"
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
"$BIN_DIR/kube-apiserver" --version >&2
log "done"
echo "$BIN_DIR"
