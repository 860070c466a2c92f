#!/usr/bin/env bash
# System packages cni-yogurt needs on Debian 12 / Ubuntu 24.04, installed only if missing.
#   python3-bpfcc   bcc's Python module (not on PyPI), used once per boot to load the programs
#   linux-headers-$(uname -r)  for bcc, when the running kernel is the netkit one
#   containernetworking-plugins  host-local IPAM (and ptp for the benchmark)
#   iproute2 iputils-ping  netns and ping for the demo and the tests
#   podman containerd crun busybox-static  the runtime end-to-end tests
#       (busybox-static is their container image, made on the spot)
set -euo pipefail
pkgs=(python3-venv python3-bpfcc containernetworking-plugins iproute2 iputils-ping kmod
    containerd crun busybox-static)
# podman without its recommends: podman 4 uses its CNI backend, which the test
# needs, only as long as netavark is not installed.
lean=(podman)
# Headers of the running kernel, where the distribution has them (bcc needs them
# when this kernel has netkit; otherwise tests/vm/fetch-kernel.sh brings its own).
headers="linux-headers-$(uname -r)"
if [ ! -e "/lib/modules/$(uname -r)/build" ] && apt-cache show "$headers" >/dev/null 2>&1; then pkgs+=("$headers"); fi
missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"
    done
}
mapfile -t need < <(missing "${pkgs[@]}")
mapfile -t need_lean < <(missing "${lean[@]}")
if ((${#need[@]} + ${#need_lean[@]})); then
    echo "installing: ${need[*]} ${need_lean[*]}" >&2
    apt-get update -qq
    export DEBIAN_FRONTEND=noninteractive
    ((${#need[@]} == 0)) || apt-get install -y -qq "${need[@]}" >/dev/null
    ((${#need_lean[@]} == 0)) || apt-get install -y -qq --no-install-recommends "${need_lean[@]}" >/dev/null
fi
