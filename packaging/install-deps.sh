#!/usr/bin/env bash
# System packages cni-yogurt needs on Debian 12 / Ubuntu 24.04, installed only if missing.
#   python3-bpfcc   bcc's Python module (not on PyPI), used once per boot to load the programs
#   linux-headers-$(uname -r)  for bcc, when the running kernel is the netkit one
#   containernetworking-plugins  host-local IPAM (and ptp for the benchmark)
#   iproute2 iputils-ping  netns and ping for the demo and the tests
set -euo pipefail
pkgs=(python3-venv python3-bpfcc containernetworking-plugins iproute2 iputils-ping kmod)
# Headers of the running kernel, where the distribution has them (bcc needs them
# when this kernel has netkit; otherwise tests/vm/fetch-kernel.sh brings its own).
headers="linux-headers-$(uname -r)"
if [ ! -e "/lib/modules/$(uname -r)/build" ] && apt-cache show "$headers" >/dev/null 2>&1; then pkgs+=("$headers"); fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
