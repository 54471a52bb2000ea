#!/usr/bin/env bash
# Builds from Go modules (and one C file of the Kubernetes module) what a kind node needs besides
# Kubernetes itself, at the versions kind's own base image pins (read from the pinned kind module's
# images/base/Dockerfile, not a hand-written list): containerd, ctr and containerd-shim-runc-v2,
# crictl, the CNI plugins kind installs (host-local, loopback, ptp, portmap); CoreDNS at the version
# kubeadm of the pinned release deploys; the pause binary from k8s.io/kubernetes build/pause.
#
#   hack/kind/build-tools.sh     build or reuse; prints the bin directory on the last line
set -euo pipefail
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
log() { echo "kind-tools: $*" >&2; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
GOMODCACHE="$(go env GOMODCACHE)"

kind_src="$GOMODCACHE/sigs.k8s.io/kind@$KIND_VERSION"
[[ -d "$kind_src" ]] || go mod download "sigs.k8s.io/kind@$KIND_VERSION"
kube_src="$GOMODCACHE/k8s.io/kubernetes@$KUBE_VERSION"
[[ -d "$kube_src" ]] || go mod download "k8s.io/kubernetes@$KUBE_VERSION"
dockerfile="$kind_src/images/base/Dockerfile"
arg() { sed -nE "s/^ARG $1=\"?([^\" ]+)\"?.*/\1/p" "$dockerfile" | head -1; }
CONTAINERD_VERSION="$(arg CONTAINERD_VERSION)"
CRICTL_VERSION="$(arg CRICTL_VERSION)"
CNI_PLUGINS_VERSION="$(arg CNI_PLUGINS_VERSION)"
COREDNS_VERSION="$(sed -nE 's/^\s*CoreDNSVersion = "([^"]+)".*/\1/p' "$kube_src/cmd/kubeadm/app/constants/constants.go")"
PAUSE_VERSION="$(sed -nE 's/^TAG \?= (.+)$/\1/p' "$kube_src/build/pause/Makefile")"
for v in CONTAINERD_VERSION CRICTL_VERSION CNI_PLUGINS_VERSION COREDNS_VERSION PAUSE_VERSION; do
  [[ -n "${!v}" ]] || { log "could not read $v from the pinned sources"; exit 1; }
done

BIN_DIR="$CACHE_ROOT/kind/tools-containerd$CONTAINERD_VERSION-crictl$CRICTL_VERSION-cni$CNI_PLUGINS_VERSION-coredns$COREDNS_VERSION-pause$PAUSE_VERSION/bin"
WANT=(containerd ctr containerd-shim-runc-v2 crictl host-local loopback ptp portmap coredns pause)
complete=1
for b in "${WANT[@]}"; do [[ -x "$BIN_DIR/$b" ]] || complete=0; done
if (( complete )); then echo "$BIN_DIR"; exit 0; fi

mkdir -p "$BIN_DIR"
export GOBIN="$BIN_DIR"
build() {  # build <binary> <go install args...>: skipped when the binary is already there
  local name="$1"; shift
  [[ -x "$BIN_DIR/$name" ]] && return 0
  log "go install $*"
  nice -n 10 go install -trimpath "$@" >&2
}
CTRD=github.com/containerd/containerd/v2
CTRD_LD="-s -w -X $CTRD/version.Version=$CONTAINERD_VERSION -X $CTRD/version.Package=$CTRD"
build containerd -tags "no_aufs no_zfs no_btrfs no_devmapper" -ldflags "$CTRD_LD" "$CTRD/cmd/containerd@$CONTAINERD_VERSION"
build ctr -ldflags "$CTRD_LD" "$CTRD/cmd/ctr@$CONTAINERD_VERSION"
build containerd-shim-runc-v2 -ldflags "$CTRD_LD" "$CTRD/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
if [[ ! -x "$BIN_DIR/crictl" ]]; then
  # through a wrapper module: `go install sigs.k8s.io/cri-tools/cmd/crictl@V` asks the proxy for the
  # module's version list (a deprecation check), which it refuses for this module
  log "go build sigs.k8s.io/cri-tools/cmd/crictl ($CRICTL_VERSION)"
  wrap="$(mktemp -d)"
  printf 'module apiservice-operator/crictl-build\n\ngo 1.26.0\n\nrequire sigs.k8s.io/cri-tools %s\n' "$CRICTL_VERSION" > "$wrap/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/cri-tools/cmd/crictl"\n' > "$wrap/tools.go"
  (cd "$wrap" && go mod tidy >&2 && nice -n 10 go build -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" -o "$BIN_DIR/crictl" sigs.k8s.io/cri-tools/cmd/crictl >&2)
  rm -rf "$wrap"
fi
for p in ipam/host-local main/loopback main/ptp meta/portmap; do
  build "$(basename "$p")" -ldflags "-s -w" "github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION"
done
build coredns -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
if [[ ! -x "$BIN_DIR/pause" ]]; then
  log "gcc -static build/pause/linux/pause.c ($PAUSE_VERSION)"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-module" -o "$BIN_DIR/pause" "$kube_src/build/pause/linux/pause.c"
fi
"$BIN_DIR/containerd" --version >&2
echo "$BIN_DIR"
