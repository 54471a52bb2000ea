#!/usr/bin/env bash
# What `make test` needs beyond Python, installed before the suite enters its network namespace
# (where no package registry can be reached): the system tools the test runner and the fault and
# monitoring tests use, from Debian's packages when we are root, else the exact command to run.
#
#   hack/test-deps.sh      install what is missing (root), or fail naming it (not root)
set -euo pipefail

# command -> Debian package that ships it
declare -A PACKAGE=(
  [ip]=iproute2          # hack/netns-run: addresses on the namespace's loopback
  [unshare]=util-linux   # hack/netns-run: the namespace itself
  [iptables]=iptables    # the user's-path tests cut one kube-apiserver's packets (owner match)
  [promtool]=prometheus  # the alert rules' unit tests
  [prometheus]=prometheus  # the dashboard's queries against a real Prometheus
)
missing=()
for cmd in "${!PACKAGE[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGE[$cmd]}")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: missing ${packages[*]}: install them (apt-get install -y --no-install-recommends ${packages[*]})" >&2
  exit 1
fi
echo "test-deps: installing ${packages[*]} (Debian's packages)" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
