#!/usr/bin/env bash
# Build cnitool, the CNI project's reference runtime for one-off ADD/CHECK/DEL,
# into .cache/cnitool/bin/cnitool (or $YOGURT_CNITOOL_DIR/bin/cnitool), offline
# from distribution packages: cnitool ships in no binary package, but the
# source package golang-github-appc-cni has cnitool/cnitool.go, and it builds
# in GOPATH mode against golang-github-appc-cni-dev with golang-go.
# Idempotent: an existing binary is reused without touching apt or the network.
# Prints the binary's path on stdout; progress goes to stderr.
#
# Env: YOGURT_CNITOOL_DIR  cache dir (default <repo>/.cache/cnitool)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DIR=${YOGURT_CNITOOL_DIR:-$REPO/.cache/cnitool}
OUT=$DIR/bin/cnitool
SRCPKG=golang-github-appc-cni
log() { echo "build-cnitool: $*" >&2; }

if [ -x "$OUT" ]; then
    echo "$OUT"
    exit 0
fi

# --- build dependencies (only the missing ones) ---
missing=()
for p in golang-go golang-github-appc-cni-dev dpkg-dev; do   # dpkg-dev: dpkg-source for apt-get source
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- the source package, through a private apt config ---
# The host's own apt source for its suite (deb822 or one-line format), turned
# into a deb-src line, so no registry host is hard-coded here and the system's
# apt config, lists and caches stay untouched.
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
# Each candidate: "URI<TAB>components<TAB>keyring or empty".
sources=$(
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        awk -v s="$suite" 'BEGIN{RS=""; FS="\n"} {
            t=u=c=k=""; ok=0
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^[ \t]*#/ || $i !~ /:/) continue
                key = tolower($i); sub(/:.*/, "", key)
                val = $i; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") t = " " val " "
                else if (key == "uris") { split(val, w, /[ \t]+/); u = w[1] }
                else if (key == "suites") { if ((" " val " ") ~ (" " s " ")) ok = 1 }
                else if (key == "components") c = val
                else if (key == "signed-by" && val ~ /^\//) k = val
            }
            if (ok && u != "" && c != "" && t ~ / deb /) printf "%s\t%s\t%s\n", u, c, k
        }' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v s="$suite" '$1 == "deb" {
            k = ""
            if ($2 ~ /^\[/) {                                  # [opt=val ...]
                o = $0; sub(/^[^[]*\[/, "", o); sub(/\].*$/, "", o)
                n = split(o, w, /[ \t]+/)
                for (i = 1; i <= n; i++) if (w[i] ~ /^signed-by=\//) { k = w[i]; sub(/^signed-by=/, "", k) }
                line = $0; sub(/\[[^]]*\][ \t]*/, "", line)
                $0 = line
            }
            if ($3 == s) { c = $4; for (i = 5; i <= NF; i++) c = c " " $i; printf "%s\t%s\t%s\n", $2, c, k }
        }' || true   # cat: missing files
)
[ -n "$sources" ] || { log "no apt source for suite $suite found in /etc/apt"; exit 1; }

A=$DIR/apt
mkdir -p "$A/lists/partial" "$A/archives/partial" "$A/cache"
# Every such source as deb-src (Ubuntu may split main and universe over lines).
sort -u <<<"$sources" | while IFS=$'\t' read -r mirror components keyring; do
    log "using $mirror $suite ($components)"
    echo "deb-src ${keyring:+[signed-by=$keyring] }$mirror $suite $components"
done >"$A/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache"
    -o "Dir::Cache::archives=$A/archives" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq >&2

# Unpack next to the final place, then swap in: a half-done run never looks done.
rm -rf "$DIR/src.tmp"
mkdir -p "$DIR/src.tmp"
(cd "$DIR/src.tmp" && apt-get "${apt_opts[@]}" source -qq "$SRCPKG" >&2)
rm -rf "$DIR/src" && mv "$DIR/src.tmp" "$DIR/src"
tree=$(dirname "$(ls -d "$DIR/src/$SRCPKG"-*/cnitool/cnitool.go | head -n1)")
tree=${tree%/cnitool}
log "building $tree/cnitool"

# GOPATH mode, offline: libcni and friends come from golang-github-appc-cni-dev.
mkdir -p "$DIR/bin"
(cd "$tree" && GO111MODULE=off GOPATH="$DIR/gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= \
    GOCACHE="$DIR/gocache" CGO_ENABLED=0 go build -o "$OUT.tmp" ./cnitool >&2)
mv "$OUT.tmp" "$OUT"
log "built $OUT"
echo "$OUT"
