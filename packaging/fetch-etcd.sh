#!/usr/bin/env bash
# Fetch Debian's etcd-server .deb for the host's own suite and unpack it into a cache, for the
# cluster tests' lab (tests/cluster/etcdlab.py) — without installing it: the package would start a
# system etcd service on 2379 on a systemd host, which the tests do not want and users did not ask for.
# Idempotent: a finished cache is reused without touching the network.  The .deb is unpacked next to
# its final place and renamed in, so an interrupted run never leaves a cache that looks complete.
# Prints the etcd binary's path on stdout; progress goes to stderr.
#
# Env: YOGURT_ETCD_CACHE  where etcd is unpacked (default <repo>/.cache/etcd; the binary is usr/bin/etcd)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DEST=${YOGURT_ETCD_CACHE:-$REPO/.cache/etcd}
log() { echo "fetch-etcd: $*" >&2; }

mkdir -p "$(dirname "$DEST")"
exec 9>"$DEST.lock" # two runs at once (parallel make, two shells): one fetches, the other waits
flock 9
if [ ! -f "$DEST/.complete" ]; then
    . /etc/os-release
    suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
    # Private apt config/state from the host's own sources (packaging/apt-sources.sh), so no
    # registry host is written here and the system's apt lists and caches stay untouched.
    A="$DEST.apt"
    mkdir -p "$A/debs"
    bash "$REPO/packaging/apt-sources.sh" | while IFS=$'\t' read -r uri components keyring; do
        echo "deb ${keyring:+[signed-by=$keyring] }$uri $suite $components"
    done >"$A/sources.list"
    [ -s "$A/sources.list" ] || { log "no apt source for the host's suite ($suite) found in /etc/apt"; exit 1; }
    apt_private() { bash "$REPO/packaging/apt-private.sh" "$A" "$@"; }
    log "downloading etcd-server ($suite)"
    apt_private apt-get update -qq >&2
    rm -f "$A/debs/"*.deb
    (cd "$A/debs" && apt_private apt-get download -qq etcd-server >&2)

    rm -rf "$DEST.tmp"
    dpkg -x "$A/debs/"etcd-server_*.deb "$DEST.tmp"
    "$DEST.tmp/usr/bin/etcd" --version >&2 # runs here, before it is taken
    touch "$DEST.tmp/.complete"
    rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
    rm -rf "$A" # lists and the .deb: not needed once unpacked
    log "etcd ready in $DEST"
fi
echo "$DEST/usr/bin/etcd"
