#!/usr/bin/env bash
# Prints the Debian archive URI this machine's apt uses, for debootstrap: the project names no
# package host itself, since the machines it is built on reach packages only through the mirror
# their own apt configuration names.
#
#   hack/apt-mirror.sh      the first Debian archive URI, in the order apt reads its sources
#
# A source counts as the Debian archive when it is a `deb` (not deb-src) entry with component
# `main` and a release as suite: the host's codename or one of Debian's suite names (stable, sid,
# ...), so the security archive (bookworm-security), bookworm-updates and vendor suites such as
# `nodistro` are passed over. A vendor repository can still look like that (`bookworm main`); when
# apt's lists hold its Release file, its Origin tells, and only Origin: Debian is taken.
#
# For tests: APT_SOURCES_LIST, APT_SOURCES_DIR and APT_LISTS_DIR replace apt's own paths, and
# APT_RELEASE the host's codename.
set -euo pipefail
export LC_ALL=C   # apt reads sources.list.d in byte order

SL=/etc/apt/sources.list SP=/etc/apt/sources.list.d/ LISTS=/var/lib/apt/lists/
# apt's configuration may move these; ask it rather than assume
if command -v apt-config >/dev/null; then
  eval "$(apt-config shell SL Dir::Etc::SourceList/f SP Dir::Etc::SourceParts/d LISTS Dir::State::Lists/d)"
fi
SL="${APT_SOURCES_LIST:-$SL}"
SP="${APT_SOURCES_DIR:-$SP}"; SP="${SP%/}"
LISTS="${APT_LISTS_DIR:-$LISTS}"; LISTS="${LISTS%/}"
RELEASE="${APT_RELEASE-$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}" || true)}"

files=()
[[ -f "$SL" ]] && files+=("$SL")
shopt -s nullglob
for f in "$SP"/*; do   # one sorted list, as apt merges .list and .sources by name
  [[ -f "$f" && ( "$f" == *.list || "$f" == *.sources ) ]] && files+=("$f")
done

# candidates: "URI<TAB>suite" per line, in apt's order
candidates() {
  (( ${#files[@]} )) || return 0
  awk -v release="$RELEASE" '
    BEGIN {
      n = split(release " stable oldstable oldoldstable testing unstable sid", r, " ")
      for (i = 1; i <= n; i++) releases[r[i]] = 1
    }
    function reset() { split("", field); key = "" }
    function has(list, word,   n, i, w) {
      n = split(list, w, /[ \t]+/)
      for (i = 1; i <= n; i++) if (w[i] == word) return 1
      return 0
    }
    function is_release(suite) { return suite in releases }
    function usable(uri) { return uri ~ /^(https?|ftp|file):/ }   # debootstrap cannot use cdrom:, mirror+, tor+
    function stanza(   nu, ns, u, s, i, j) {
      if (tolower(field["enabled"]) !~ /^(no|false|off|without|disable)$/ \
          && has(field["types"], "deb") && has(field["components"], "main")) {
        nu = split(field["uris"], u, /[ \t]+/); ns = split(field["suites"], s, /[ \t]+/)
        for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
          if (usable(u[i]) && is_release(s[j])) print u[i] "\t" s[j]
      }
      reset()
    }
    FNR == 1 { if (deb822) stanza(); deb822 = FILENAME ~ /\.sources$/; reset() }
    deb822 && /^#/ { next }
    deb822 && /^[ \t]*$/ { stanza(); next }
    deb822 && /^[ \t]/ { if (key != "") field[key] = field[key] " " $0; next }   # a folded field
    deb822 {
      i = index($0, ":"); if (!i) next
      key = tolower(substr($0, 1, i - 1)); v = substr($0, i + 1); gsub(/^[ \t]+|[ \t]+$/, "", v)
      field[key] = v
      next
    }
    {
      sub(/#.*/, "")   # apt ends a one-line entry at #, wherever it stands
      if ($1 != "deb") next
      i = 2
      if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }   # [options], spaces allowed inside
      main = 0; for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
      if (main && usable($i) && is_release($(i + 1))) print $i "\t" $(i + 1)
    }
    END { if (deb822) stanza() }
  ' "${files[@]}"
}

# apt's name for a Release file in its lists (URItoFileName): no scheme or user, _ quoted, / as _
origin() {
  local name="${1#*://}"
  name="${name#*@}"; name="${name%/}"; name="${name//_/%5f}"; name="${name//\//_}_dists_$2"
  local f
  for f in "$LISTS/${name}_InRelease" "$LISTS/${name}_Release"; do
    [[ -f "$f" ]] && { sed -n 's/^Origin: *//p' "$f" | head -1; return 0; }
  done
  echo unknown
}

found="$(candidates)"   # not read from <(...): a failing awk has to end the script
while IFS=$'\t' read -r uri suite; do
  [[ -n "$uri" ]] || continue
  o="$(origin "$uri" "$suite")"
  [[ "$o" == Debian || "$o" == unknown ]] && { echo "$uri"; exit 0; }
done <<<"$found"

echo "apt-mirror: no Debian archive in $SL nor in $SP/*.sources or $SP/*.list" \
  "(wanted: a 'deb <URI> <release> main' line or a deb822 stanza with Types: deb, a release in" \
  "Suites: and main in Components:); set MIRROR=<URI> to name the mirror" >&2
exit 1
