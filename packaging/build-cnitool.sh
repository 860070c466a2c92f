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
# Every apt source of the host's suite as deb-src (Ubuntu may split main and
# universe over lines); apt-sources.sh reads them, so no registry host is
# hard-coded here and the system's apt config, lists and caches stay untouched.
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
sources=$(bash "$HERE/apt-sources.sh")
[ -n "$sources" ] || { log "no apt source for suite $suite found in /etc/apt"; exit 1; }

A=$DIR/apt
mkdir -p "$A"
while IFS=$'\t' read -r mirror components keyring; do
    log "using $mirror $suite ($components)"
    echo "deb-src ${keyring:+[signed-by=$keyring] }$mirror $suite $components"
done <<<"$sources" >"$A/sources.list"
bash "$HERE/apt-private.sh" "$A" apt-get update -qq >&2

# Unpack next to the final place, then swap in: a half-done run never looks done.
rm -rf "$DIR/src.tmp"
mkdir -p "$DIR/src.tmp"
(cd "$DIR/src.tmp" && bash "$HERE/apt-private.sh" "$A" apt-get source -qq "$SRCPKG" >&2)
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
