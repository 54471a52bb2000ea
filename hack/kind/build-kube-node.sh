#!/usr/bin/env bash
# Builds the Kubernetes node and control-plane binaries a kind node image needs (kubelet, kubeadm,
# kube-controller-manager, kube-scheduler, kube-proxy) of the pinned release from Go modules, with
# the same wrapper module as hack/build-kube.sh (hack/lib/kube-gomod.sh, DESIGN.md 6a), into a
# cache outside the repo.
# kube-apiserver, kubectl and etcd come from hack/build-kube.sh's cache, so all are one release.
#
#   hack/kind/build-kube-node.sh     build or reuse; prints the bin directory on the last line
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/kube-gomod.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/kube-gomod.sh"   # kube_build_from_modules: the recipe
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
BIN_DIR="$CACHE_ROOT/kind/kube-$KUBE_VERSION/bin"
CMDS=(kubelet kubeadm kube-controller-manager kube-scheduler kube-proxy)
log() { echo "build-kube-node: $*" >&2; }

complete=1
for c in "${CMDS[@]}"; do [[ -x "$BIN_DIR/$c" ]] || complete=0; done
if (( complete )); then echo "$BIN_DIR"; exit 0; fi

command -v go >/dev/null || { log "Go is required"; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log "building Kubernetes $KUBE_VERSION ${CMDS[*]} into $BIN_DIR (cold: several minutes on 2 cores)"
cd "$WORK"
pkgs=()
for c in "${CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
OUT="$WORK/out"
# under nice -n 10, as this script's go build always ran (hack/build-kube.sh's is not niced)
KUBE_GOMOD_NICE=10 kube_build_from_modules apiservice-operator/kube-node-build "$OUT" "${pkgs[@]}"
mkdir -p "$(dirname "$BIN_DIR")"
rm -rf "$BIN_DIR.tmp" && mv "$OUT" "$BIN_DIR.tmp" && rm -rf "$BIN_DIR" && mv "$BIN_DIR.tmp" "$BIN_DIR"
"$BIN_DIR/kubelet" --version >&2
log "done"
echo "$BIN_DIR"
