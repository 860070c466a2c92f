#!/usr/bin/env bash
# Fetch a Debian kernel and virtme-ng into a cache: by default a netkit-capable
# one (trixie's linux-image-6.12.*-amd64, CONFIG_NETKIT=y), because the host
# kernel has no netkit; YOGURT_VM_SUITE=bookworm gives Debian 12's 6.1 (no
# netkit, no tcx: the veth backend's clsact path). Each suite has its own
# kernel dir, so the two stay side by side. Idempotent: a finished cache is
# reused without touching the network. Prints the vmlinuz path on stdout (also
# symlinked as $KERNEL_DIR/vmlinuz); progress goes to stderr.
#
# Env: YOGURT_VM_CACHE       cache root            (default <repo>/.cache/vm)
#      YOGURT_VM_KERNEL_DIR  extracted kernel .deb (default $YOGURT_VM_CACHE/kernel-$YOGURT_VM_SUITE)
#      YOGURT_VM_VENV        virtme-ng venv        (default $YOGURT_VM_CACHE/venv)
#      YOGURT_VM_SUITE       Debian suite          (default trixie)
#      YOGURT_VM_KERNEL_PKG  exact image package   (default: what linux-image-amd64 depends on)
#      YOGURT_VM_HEADERS     headers dir for bcc   (default newest /usr/src/linux-headers-*-amd64)
#      YOGURT_VM_VNG_VERSION virtme-ng version     (default 1.42)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${YOGURT_VM_CACHE:-$REPO/.cache/vm}
VENV=${YOGURT_VM_VENV:-$CACHE/venv}
SUITE=${YOGURT_VM_SUITE:-trixie}
KDIR=${YOGURT_VM_KERNEL_DIR:-$CACHE/kernel-$SUITE}
VNG_VERSION=${YOGURT_VM_VNG_VERSION:-1.42}
log() { echo "fetch-kernel: $*" >&2; }
# Caches made before the per-suite dirs held trixie's kernel in $CACHE/kernel.
if [ -z "${YOGURT_VM_KERNEL_DIR:-}" ] && [ "$SUITE" = trixie ] && [ ! -e "$KDIR" ] &&
    [ -f "$CACHE/kernel/.complete" ]; then
    mv "$CACHE/kernel" "$KDIR"
fi

# --- host packages (only the missing ones, so a prepared machine needs no apt) ---
pkgs=()
command -v depmod >/dev/null || pkgs+=(kmod)                       # vng runs depmod
command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
command -v busybox >/dev/null || pkgs+=(busybox-static)            # vng's initramfs (9p is a module)
python3 -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
compgen -G '/usr/src/linux-headers-*-amd64' >/dev/null || pkgs+=(linux-headers-amd64)  # bcc in guest
# bookworm's keyring only knows trixie's signing keys from 2023.3+deb12u2 on.
[ -e /usr/share/keyrings/debian-archive-trixie-automatic.gpg ] || pkgs+=(debian-archive-keyring)
if ((${#pkgs[@]})); then
    log "installing ${pkgs[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
fi

# --- virtme-ng in its own venv (keeps the system and project venvs untouched) ---
if [ ! -x "$VENV/bin/vng" ]; then
    log "installing virtme-ng $VNG_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION" >&2
fi

# --- kernel ---
if [ ! -f "$KDIR/.complete" ]; then
    # Reuse the mirror apt is configured with for the host's own suite
    # (packaging/apt-sources.sh), so no registry host is hard-coded here.
    mirror=$(bash "$REPO/packaging/apt-sources.sh" | head -n1 | cut -f1)
    [ -n "$mirror" ] || { log "no apt source for the host's suite found in /etc/apt"; exit 1; }
    log "using mirror $mirror, suite $SUITE"

    # Private apt config/state so the system's apt lists and caches stay untouched.
    A="$CACHE/apt-$SUITE"   # one per suite: two fetches may run at once
    mkdir -p "$A/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $SUITE main" >"$A/sources.list"
    apt_private() { bash "$REPO/packaging/apt-private.sh" "$A" "$@"; }
    apt_private apt-get update -qq >&2
    pkg=${YOGURT_VM_KERNEL_PKG:-$(apt_private apt-cache depends linux-image-amd64 |
        awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')}
    [ -n "$pkg" ] || { log "cannot resolve linux-image-amd64 in $SUITE"; exit 1; }
    log "downloading $pkg"
    rm -f "$A/debs/"*.deb
    (cd "$A/debs" && apt_private apt-get download -qq "$pkg" >&2)

    # Extract next to the final place and swap in, so an interrupted run never
    # leaves a half-extracted kernel that looks complete.
    rm -rf "$KDIR.tmp"
    dpkg -x "$A/debs/"*.deb "$KDIR.tmp"
    # One layout for the rest of this script and for vng, which looks for the
    # modules next to the image under usr/lib/modules: trixie's package ships
    # them there (merged /usr), bookworm's under lib/modules.
    if [ -d "$KDIR.tmp/lib/modules" ] && [ ! -e "$KDIR.tmp/usr/lib/modules" ]; then
        mkdir -p "$KDIR.tmp/usr/lib"
        mv "$KDIR.tmp/lib/modules" "$KDIR.tmp/usr/lib/modules"
    fi
    rm -rf "$KDIR" && mv "$KDIR.tmp" "$KDIR"
    rm -f "$A/debs/"*.deb            # 100+ MB, not needed once extracted
    touch "$KDIR/.complete"
fi

vmlinuz=$(ls "$KDIR"/boot/vmlinuz-* | head -n1)
rel=${vmlinuz##*/vmlinuz-}
moddir="$KDIR/usr/lib/modules/$rel"
[ -d "$moddir" ] || { log "no modules for $rel under $KDIR/usr/lib/modules"; exit 1; }

# vng finds the modules next to the image ($KDIR/usr/lib/modules/<rel>) and
# links them to /lib/modules/<rel> in the guest, so the host's /lib/modules is
# left alone. bcc wants build/ and source/ there: point them at the host's
# Debian 6.1 headers (fine for UAPI-only programs).
headers=${YOGURT_VM_HEADERS:-$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n1)}
common=$(readlink -f "/lib/modules/${headers##*/linux-headers-}/source" 2>/dev/null || true)
[ -d "$common" ] || common=${headers%-amd64}-common
ln -sfn "$headers" "$moddir/build"
ln -sfn "$common" "$moddir/source"
# The .deb ships no modules.dep; build it once (vng would otherwise redo it).
[ -s "$moddir/modules.dep" ] || depmod -a -b "$KDIR/usr" "$rel"

ln -sfn "boot/vmlinuz-$rel" "$KDIR/vmlinuz"
log "kernel $rel ready"
echo "$vmlinuz"
