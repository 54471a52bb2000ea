#!/usr/bin/env bash
# A kind node image built offline, the way kind's own images/base/Dockerfile and
# pkg/build/nodeimage (of the pinned kind module) build theirs, with every binary built here from
# Go modules and every image the cluster needs preloaded into the node's containerd, so that
# cluster creation pulls nothing.
#
#   hack/kind/node-image.sh      build or reuse; prints the node image reference on the last line
#   KIND_IMAGE_PREFIX=...        name prefix of the images it makes (default apiservice-operator-kind)
#
# Cached by content: the tag is a hash of the versions, of every file under hack/kind/ and of the
# shared build recipe hack/lib/kube-gomod.sh, so the image is rebuilt only when one of those
# changes. Needs root (debootstrap) and a Docker engine.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$REPO/hack/kind"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
SUITE=bookworm
log() { echo "node-image: $*" >&2; }

inputs_hash() {
  { echo "$KIND_VERSION $KUBE_VERSION $SUITE"
    (cd "$HERE" && find . -type f | LC_ALL=C sort | xargs sha256sum)
    # the wrapper go.mod recipe build-kube-node.sh sources from outside hack/kind/
    (cd "$REPO/hack" && sha256sum lib/kube-gomod.sh)
  } | sha256sum | cut -c1-12
}
HASH="$(inputs_hash)"
PREFIX="${KIND_IMAGE_PREFIX:-apiservice-operator-kind}"   # image names; the tag is the input hash
NODE_IMAGE="$PREFIX-node:$KUBE_VERSION-$HASH"
if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
  echo "$NODE_IMAGE"; exit 0
fi
[[ "$(id -u)" == "0" ]] || { log "building the node image needs root (debootstrap)"; exit 1; }
# the mirror the host's apt uses (the only one it may reach), unless MIRROR=... names another;
# looked up before the long Go builds so that a machine without one fails at once
[[ -n "${MIRROR:-}" ]] || MIRROR="$("$REPO/hack/apt-mirror.sh")"
started=$(date +%s)
log "building $NODE_IMAGE"

# 1. the binaries (each cached by version)
KUBE_CP_BIN="$(KUBE_VERSION=$KUBE_VERSION "$REPO/hack/build-kube.sh" | tail -1)"   # kube-apiserver, kubectl, etcd
KUBE_NODE_BIN="$(KUBE_VERSION=$KUBE_VERSION "$HERE/build-kube-node.sh" | tail -1)"  # kubelet, kubeadm, ...
TOOLS_BIN="$(KIND_VERSION=$KIND_VERSION KUBE_VERSION=$KUBE_VERSION "$HERE/build-tools.sh" | tail -1)"
KIND_SRC="$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION"
[[ -d "$KIND_SRC" ]] || (cd /tmp && GOFLAGS=-mod=mod go mod download "sigs.k8s.io/kind@$KIND_VERSION")
KIND_FILES="$KIND_SRC/images/base/files"

WORK="$(mktemp -d)"
cleanup() {
  [[ -n "${BUILD_CONTAINER:-}" ]] && docker rm -f -v "$BUILD_CONTAINER" >/dev/null 2>&1 || true
  [[ -n "${NODE_BASE:-}" ]] && docker rmi "$NODE_BASE" >/dev/null 2>&1 || true   # an untag: the node image keeps it
  rm -rf "$WORK"
}
LABEL=io.apiservice-operator.kind-build   # on every image this script makes, for pruning old ones
trap cleanup EXIT

command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }

CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
debootstrap_into() {  # debootstrap_into <dir> <packages,comma,separated>: cached as a tarball per list
  local tarball
  tarball="$CACHE_ROOT/kind/rootfs-$SUITE-$(echo "$2" | sha256sum | cut -c1-12).tar"
  mkdir -p "$1"
  if [[ -f "$tarball" ]]; then
    tar -C "$1" -xf "$tarball"; return 0
  fi
  log "debootstrap $SUITE (+ $2) from $MIRROR"
  debootstrap --variant=minbase --include="$2" "$SUITE" "$1" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -30 "$WORK/debootstrap.log" >&2; return 1; }
  rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*
  mkdir -p "$(dirname "$tarball")"
  tar -C "$1" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
}

quiet_build() {  # docker build without the legacy builder's deprecation notice, errors shown
  docker build -q "$@" >/dev/null 2>"$WORK/build.err" || { cat "$WORK/build.err" >&2; return 1; }
}

# 2. the base of the component images: Debian minbase with the netfilter tools kube-proxy calls
IMAGES_BASE="$PREFIX-imagebase:$SUITE-$HASH"
if ! docker image inspect "$IMAGES_BASE" >/dev/null 2>&1; then
  debootstrap_into "$WORK/imagebase" iptables,nftables,conntrack,ca-certificates
  tar -C "$WORK/imagebase" -c . | docker import --change "LABEL $LABEL=imagebase" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$IMAGES_BASE" >/dev/null
  rm -rf "$WORK/imagebase"
fi

# 3. the images, tagged exactly as kubeadm of this release lists them, and kind's sandbox image
ctx="$WORK/images"
mkdir -p "$ctx"
cp "$KUBE_CP_BIN"/{kube-apiserver,etcd} "$KUBE_NODE_BIN"/{kube-controller-manager,kube-scheduler,kube-proxy} \
   "$TOOLS_BIN"/{coredns,pause} "$ctx/"
install -m 0755 "$HERE/kube-proxy-wrapper.sh" "$ctx/"
REQUIRED=()
mapfile -t REQUIRED < <("$KUBE_NODE_BIN/kubeadm" config images list --kubernetes-version "$KUBE_VERSION" 2>/dev/null)
SANDBOX="$(sed -nE 's/^\s*sandbox_image = "([^"]+)".*/\1/p' "$KIND_FILES/etc/containerd/config.toml")"
[[ -n "$SANDBOX" ]] || { log "no sandbox_image in kind's containerd config"; exit 1; }
log "kubeadm lists: ${REQUIRED[*]}; kind's sandbox image: $SANDBOX"
BUILT=()   # the references kubeadm and kind expect
TEMP=()    # what they are called in the engine meanwhile: never a user's registry.k8s.io tag
for ref in "${REQUIRED[@]}" "$SANDBOX"; do
  name="${ref##*/}"; name="${name%%:*}"
  case "$name" in
    kube-apiserver|kube-controller-manager|kube-scheduler)
      body="FROM $IMAGES_BASE
COPY $name /usr/local/bin/$name" ;;
    kube-proxy)
      body="FROM $IMAGES_BASE
COPY kube-proxy /usr/local/bin/kube-proxy.bin
COPY kube-proxy-wrapper.sh /usr/local/bin/kube-proxy" ;;
    etcd)
      body="FROM $IMAGES_BASE
COPY etcd /usr/local/bin/etcd" ;;
    coredns)
      body="FROM $IMAGES_BASE
COPY coredns /coredns
EXPOSE 53 53/udp
ENTRYPOINT [\"/coredns\"]" ;;
    pause)
      body="FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT [\"/pause\"]" ;;
    *) log "no recipe for $ref"; exit 1 ;;
  esac
  printf '%s\n' "$body" > "$ctx/Dockerfile.$name"
  log "image $ref"
  temp="$PREFIX-build/${ref#*/}"
  quiet_build -f "$ctx/Dockerfile.$name" -t "$temp" "$ctx"
  BUILT+=("$ref"); TEMP+=("$temp")
done
log "saving ${#BUILT[@]} images"
docker save -o "$WORK/images.tar" "${TEMP[@]}"
docker rmi "${TEMP[@]}" >/dev/null

# 4. the node's root file system: kind's base image (images/base/Dockerfile), from Debian packages
#    and the binaries above. Package list as kind's, without the network-storage test packages.
ROOT="$WORK/rootfs"
debootstrap_into "$ROOT" systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,fuse-overlayfs,e2fsprogs,bash,ca-certificates,curl,jq,procps,runc
install -m 0755 "$KIND_FILES"/usr/local/bin/* "$ROOT/usr/local/bin/"
mkdir -p "$ROOT/kind" "$ROOT/etc/systemd/system/kubelet.service.d" "$ROOT/etc/containerd" "$ROOT/LICENSES"
cp -r "$KIND_FILES/kind/." "$ROOT/kind/"
find "$ROOT/kind" -type f -exec chmod 0644 {} + && chmod 0755 "$ROOT/kind" "$ROOT/kind/bin" "$ROOT"/kind/bin/*
for d in etc etc/containerd etc/default etc/sysctl.d etc/systemd/system etc/systemd/system/kubelet.service.d; do
  mkdir -p "$ROOT/$d"
  find "$KIND_FILES/$d" -maxdepth 1 -type f -exec install -m 0644 {} "$ROOT/$d/" \;
done
install -m 0644 "$KIND_FILES"/LICENSES/* "$ROOT/LICENSES/"
find "$ROOT/lib/systemd/system/sysinit.target.wants/" -name "systemd-tmpfiles-setup.service" -delete
rm -f "$ROOT"/lib/systemd/system/multi-user.target.wants/* "$ROOT"/etc/systemd/system/*.wants/* \
      "$ROOT"/lib/systemd/system/local-fs.target.wants/* "$ROOT"/lib/systemd/system/sockets.target.wants/*udev* \
      "$ROOT"/lib/systemd/system/sockets.target.wants/*initctl* "$ROOT"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> "$ROOT/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$ROOT/sbin/init"
chroot "$ROOT" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
chroot "$ROOT" systemctl mask systemd-binfmt.service >/dev/null 2>&1
mkdir -p "$ROOT/etc/kubernetes/manifests"
install -m 0755 "$TOOLS_BIN"/{containerd,ctr,containerd-shim-runc-v2,crictl} "$ROOT/usr/local/bin/"
# cri-base.json: `ctr oci spec` plus kind's createContainer hook, without rlimits (as kind's Dockerfile)
"$TOOLS_BIN/ctr" oci spec | python3 -c '
import json, sys
spec = json.load(sys.stdin)
spec.setdefault("hooks", {}).setdefault("createContainer", []).append({"path": "/kind/bin/mount-product-files.sh"})
spec["process"].pop("rlimits", None)
json.dump(spec, sys.stdout, indent=4)' > "$ROOT/etc/containerd/cri-base.json"
mkdir -p "$ROOT/opt/cni/bin" "$ROOT/etc/cni/net.d"
install -m 0755 "$TOOLS_BIN"/{host-local,loopback,ptp,portmap} "$ROOT/opt/cni/bin/"
install -m 0644 "$HERE/10-kind-ptp.conflist" "$ROOT/etc/cni/net.d/"
# what kind's node-image build adds (pkg/build/nodeimage/buildcontext.go): the binaries in
# /usr/bin, the version file
install -m 0755 -o root -g root "$KUBE_NODE_BIN"/{kubeadm,kubelet} "$KUBE_CP_BIN/kubectl" "$ROOT/usr/bin/"
printf '%s' "$KUBE_VERSION" > "$ROOT/kind/version"
NODE_BASE="$PREFIX-nodebase:$HASH"
log "importing the root file system"
tar -C "$ROOT" -c . | docker import - "$NODE_BASE-rootfs" >/dev/null
rm -rf "$ROOT"
# image metadata as kind's base image sets it (docker import cannot set STOPSIGNAL)
printf '%s\n' "FROM $NODE_BASE-rootfs" "LABEL $LABEL=node" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
  'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' > "$WORK/Dockerfile.node"
quiet_build -f "$WORK/Dockerfile.node" -t "$NODE_BASE" "$WORK/images"
docker rmi "$NODE_BASE-rootfs" >/dev/null 2>&1 || true

# 5. preload: containerd in a build container imports the images, pinned (as kind's importer does)
BUILD_CONTAINER="kind-build-$(date +%s)-$$"
docker run -d --entrypoint=sleep --name="$BUILD_CONTAINER" --security-opt seccomp=unconfined \
  "$NODE_BASE" infinity >/dev/null
docker exec "$BUILD_CONTAINER" bash -c 'nohup containerd > /dev/null 2>&1 &'
docker exec "$BUILD_CONTAINER" bash -c 'for i in $(seq 1 30); do [ -S /run/containerd/containerd.sock ] && break; sleep 1; done; ctr info >/dev/null'
docker exec -i "$BUILD_CONTAINER" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
  --all-platforms --no-unpack --digests - < "$WORK/images.tar" > "$WORK/import.log" 2>&1 \
  || { cat "$WORK/import.log" >&2; exit 1; }
# their real names, as kind's build re-tags what it loads (ctr images tag), pinned like kind's
for i in "${!BUILT[@]}"; do
  docker exec "$BUILD_CONTAINER" ctr --namespace=k8s.io images tag --force "docker.io/${TEMP[$i]}" "${BUILT[$i]}" >/dev/null
  docker exec "$BUILD_CONTAINER" ctr --namespace=k8s.io images label "${BUILT[$i]}" io.cri-containerd.pinned=pinned >/dev/null
done
for i in "${!BUILT[@]}"; do
  docker exec "$BUILD_CONTAINER" ctr --namespace=k8s.io images rm "docker.io/${TEMP[$i]}" >/dev/null 2>&1 || true
done
have="$(docker exec "$BUILD_CONTAINER" ctr --namespace=k8s.io images list -q)"
for ref in "${BUILT[@]}"; do
  grep -qxF "$ref" <<<"$have" || { log "$ref is missing after the import"; echo "$have" >&2; exit 1; }
done
docker exec "$BUILD_CONTAINER" pkill containerd || true
sleep 1
docker commit \
  --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
  --change 'ENV HTTP_PROXY="" HTTPS_PROXY="" NO_PROXY=""' \
  "$BUILD_CONTAINER" "$NODE_IMAGE" >/dev/null
# builds for other inputs older than a day are superseded (not younger ones: another checkout may
# be using its own right now); an image a container still uses is refused by docker rmi anyway
cutoff=$(( $(date +%s) - 86400 ))
docker images --filter "label=$LABEL" --format '{{.Repository}}:{{.Tag}}|{{.CreatedAt}}' \
  | while IFS='|' read -r ref created; do
      [[ "$ref" == "$NODE_IMAGE" || "$ref" == "$IMAGES_BASE" || "$ref" == *"<none>"* ]] && continue
      (( $(date -d "${created% UTC}" +%s 2>/dev/null || echo "$cutoff") < cutoff )) && docker rmi "$ref" >/dev/null 2>&1
      true
    done
log "built $NODE_IMAGE in $(( $(date +%s) - started )) s"
echo "$NODE_IMAGE"
