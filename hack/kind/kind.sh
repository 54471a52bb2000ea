#!/usr/bin/env bash
# kind, built from the pinned Go module into the cache (reused when present).
#   hack/kind/kind.sh      prints the path of the kind binary on the last line
set -euo pipefail
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
CACHE_ROOT="${APISERVICE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiservice-operator}"
BIN_DIR="$CACHE_ROOT/kind/kind-$KIND_VERSION/bin"
if [[ ! -x "$BIN_DIR/kind" ]]; then
  command -v go >/dev/null || { echo "kind: Go is required to build kind" >&2; exit 1; }
  echo "kind: go install sigs.k8s.io/kind@$KIND_VERSION" >&2
  mkdir -p "$BIN_DIR"
  (cd /tmp && GOTOOLCHAIN=local GOBIN="$BIN_DIR" CGO_ENABLED=0 nice -n 10 go install "sigs.k8s.io/kind@$KIND_VERSION") >&2
fi
echo "$BIN_DIR/kind"
