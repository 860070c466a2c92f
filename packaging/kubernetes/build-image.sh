#!/bin/bash
# `make image`: the cni-yogurt OCI image from local files, without a registry.
#
#   build-image.sh --stage DIR      stage the build context in DIR (what the tests build from)
#   build-image.sh REF [ARCHIVE]    stage, `podman build -t REF`, and save it as an OCI archive
#                                   (load it on a node with `podman load` or `ctr images import`)
#
# The context: dist/yogurt (make binary), dist/yogurt-front (make front), /bin/busybox (Debian's busybox-static), the
# shared libraries the binary's loader and its libpython need from the build host's glibc,
# which PyInstaller does not bundle, and libbcc (Debian's libbpfcc) with every library it
# links (LLVM, clang, z3, ICU: about 230 MB): the agent loads the BPF programs at start, and
# a container has no node copy to dlopen. For cluster mode (`yogurt agent --cluster`, which makes
# the node's WireGuard and tunnel devices and its nftables table): wg (wireguard-tools),
# wireguard-go (where the node's kernel has no WireGuard) and nft (nftables), with the libraries
# they link. All at their Debian paths: the loader's built-in multiarch dirs find them without an
# ld.so.cache. Kernel headers are NOT in the image: the DaemonSet mounts the node's /usr/src and
# /lib/modules (docs/kubernetes.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
binary=$top/dist/yogurt
front=$top/dist/yogurt-front

stage() {
    local ctx=$1 root=$1/rootfs
    [ -x "$binary" ] || { echo "build-image: $binary missing: make binary" >&2; exit 1; }
    [ -x "$front" ] || { echo "build-image: $front missing: make front" >&2; exit 1; }
    [ -x /bin/busybox ] && /bin/busybox --list >/dev/null || { echo "build-image: needs busybox-static" >&2; exit 1; }
    rm -rf "$ctx" && mkdir -p "$root"/{bin,usr/local/bin,etc,tmp,run,proc,sys,dev}
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for applet in sh cp mv rm chmod sync cat ls echo test mkdir sleep; do ln -s busybox "$root/bin/$applet"; done
    install -m 0755 "$binary" "$root/usr/local/bin/yogurt"
    install -m 0755 "$front" "$root/usr/local/bin/yogurt-front"  # static: needs nothing more
    install -m 0755 "$here/install-cni" "$root/usr/local/bin/install-cni"
    local tool tools=()
    for tool in wg wireguard-go nft; do
        tools+=("$(command -v "$tool")") || { echo "build-image: needs $tool (packaging/install-deps.sh)" >&2; exit 1; }
    done
    for tool in "${tools[@]}"; do
        tool=$(readlink -f "$tool")
        mkdir -p "$root$(dirname "$tool")"
        install -m 0755 "$tool" "$root$tool"
    done
    # glibc: the loader and what it resolves for the binary; libpython (unpacked at run time)
    # needs libm and libutil besides.
    local libs
    local libbcc=/usr/lib/x86_64-linux-gnu/libbcc.so.0
    [ -e "$libbcc" ] || { echo "build-image: needs libbpfcc ($libbcc)" >&2; exit 1; }
    libs=$( { ldd "$binary"; ldd /usr/lib/x86_64-linux-gnu/libm.so.6; ldd /usr/bin/python3;
        echo "$libbcc => $libbcc"; ldd "$libbcc"; for tool in "${tools[@]}"; do ldd "$tool"; done;
        # bcc's Python side dlopens librt by name besides libbcc.
        echo "librt => /lib/x86_64-linux-gnu/librt.so.1"; } |
        awk '/=>/ {print $3} /^[ \t]*\// {print $1}' | sort -u)
    for lib in $libs; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    cp "$here/Containerfile" "$ctx/Containerfile"
}

if [ "${1:-}" = --stage ]; then
    stage "$2"
    exit 0
fi
ref=${1:-localhost/cni-yogurt:latest}
archive=${2:-$top/dist/cni-yogurt-image.tar}
ctx=$top/build/image
stage "$ctx"
podman build --quiet -t "$ref" "$ctx"
rm -f "$archive"
podman save --format oci-archive -o "$archive" "$ref"
echo "build-image: $ref, saved as $archive"
