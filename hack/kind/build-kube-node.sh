#!/usr/bin/env bash
# Builds the Kubernetes node and control-plane binaries a kind node image needs (kubelet, kubeadm,
# kube-controller-manager, kube-scheduler, kube-proxy) of the pinned release from Go modules, with
# the same wrapper module as hack/build-kube.sh (DESIGN.md 6a), into a cache outside the repo.
# kube-apiserver, kubectl and etcd come from hack/build-kube.sh's cache, so all are one release.
#
#   hack/kind/build-kube-node.sh     build or reuse; prints the bin directory on the last line
set -euo pipefail
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
BIN_DIR="$CACHE_ROOT/kind/kube-$KUBE_VERSION/bin"
CMDS=(kubelet kubeadm kube-controller-manager kube-scheduler kube-proxy)
log() { echo "build-kube-node: $*" >&2; }

complete=1
for c in "${CMDS[@]}"; do [[ -x "$BIN_DIR/$c" ]] || complete=0; done
if (( complete )); then echo "$BIN_DIR"; exit 0; fi

command -v go >/dev/null || { log "Go is required"; exit 1; }
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
MINOR="$(echo "$KUBE_VERSION" | cut -d. -f2)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log "building Kubernetes $KUBE_VERSION ${CMDS[*]} into $BIN_DIR (cold: several minutes on 2 cores)"
cd "$WORK"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
GOMOD_FILE="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
{
  echo "module apiservice-operator/kube-node-build"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$GOMOD_FILE" \
    | awk -v v="$STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
} > go.mod
{
  echo "//go:build tools"
  echo
  echo "package tools"
  echo
  echo "import ("
  for c in "${CMDS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
  echo ")"
} > tools.go
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
pkgs=()
for c in "${CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
log "compiling (go build)"
CGO_ENABLED=0 nice -n 10 go build -tags selinux,notest -trimpath -ldflags "$LDFLAGS" -o "$OUT/" "${pkgs[@]}" >&2
mkdir -p "$(dirname "$BIN_DIR")"
rm -rf "$BIN_DIR.tmp" && mv "$OUT" "$BIN_DIR.tmp" && rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
"$BIN_DIR/kubelet" --version >&2
log "done"
echo "$BIN_DIR"
