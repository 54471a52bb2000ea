# shellcheck shell=bash
# The wrapper go.mod recipe (DESIGN.md 6a) that builds binaries of one pinned Kubernetes release
# from Go modules: a throwaway module that requires k8s.io/kubernetes and pins its staging modules.
# Shared by hack/build-kube.sh (kube-apiserver, kubectl, etcd) and hack/kind/build-kube-node.sh
# (kubelet, kubeadm, ...), so that all of them are built the same way from the same release.
# Sourced, not run; it only defines functions. hack/kind/node-image.sh hashes this file into its
# node image tag, so a change here rebuilds the node image.
#
#   kube_build_from_modules MODULE_NAME OUT_DIR PKG...
#       the whole recipe in the current directory (an empty temp work dir the caller made):
#       go.mod + tools.go, go mod tidy, go build; the binaries end up in OUT_DIR (created),
#       each named after the last element of its package path (go.etcd.io/etcd/server/v3: server)
#   kube_gomod_write MODULE_NAME PKG...
#       only its first part: go.mod and tools.go in the current directory (no tidy, no build)
#
# Inputs: KUBE_VERSION (required, v1.<minor>.<patch>); KUBE_GOMOD_NICE=<n> runs the go build under
# `nice -n <n>` (unset or empty: not niced). Logs go through the caller's log() (so each script keeps
# its own prefix), everything else the go tool prints goes to stderr. Returns non-zero on failure;
# call it as a plain command under `set -euo pipefail`.

_kube_gomod_log() {
  if declare -F log >/dev/null; then log "$@"; else echo "${0##*/}: $*" >&2; fi
}

# kube_gomod_write MODULE_NAME PKG...: go.mod and tools.go in the current directory
kube_gomod_write() {
  local module="$1"; shift
  local staging_version gomod_file pkg
  : "${KUBE_VERSION:?KUBE_VERSION must be set}"
  # staging modules are versioned v0.<minor>.<patch> alongside v1.<minor>.<patch>
  staging_version="v0.${KUBE_VERSION#v1.}"
  local -x GOFLAGS=-mod=mod GOTOOLCHAIN=local
  # The replace list comes from the release's own go.mod, never from a hand-written list.
  gomod_file="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')" || return
  {
    echo "module $module"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$gomod_file" \
      | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod || { _kube_gomod_log "no ./staging/ replace lines read from $gomod_file"; return 1; }
  _kube_gomod_log "$(grep -c '^replace' go.mod) staging modules pinned to $staging_version"

  # imported (not built) here only so that go mod tidy keeps every module the packages need
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for pkg in "$@"; do printf '\t_ "%s"\n' "$pkg"; done
    echo ")"
  } > tools.go
}

# kube_build_from_modules MODULE_NAME OUT_DIR PKG...: the whole recipe, binaries in OUT_DIR
kube_build_from_modules() {
  local module="$1" out="$2"; shift 2
  local minor build_date pkg ldflags
  local -a niced=()
  (( $# > 0 )) || { _kube_gomod_log "kube_build_from_modules: no packages to build"; return 1; }
  kube_gomod_write "$module" "$@" || return

  local -x GOFLAGS=-mod=mod GOTOOLCHAIN=local
  _kube_gomod_log "resolving modules (go mod tidy)"
  go mod tidy >&2 || return

  minor="$(echo "$KUBE_VERSION" | cut -d. -f2)"
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitCommit=module-$KUBE_VERSION -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done

  mkdir -p "$out" || return
  [[ -z "${KUBE_GOMOD_NICE:-}" ]] || niced=(nice -n "$KUBE_GOMOD_NICE")
  _kube_gomod_log "compiling (go build)"
  CGO_ENABLED=0 "${niced[@]}" go build -tags selinux,notest -trimpath -ldflags "$ldflags" -o "$out/" "$@" >&2
}
