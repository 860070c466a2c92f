#!/usr/bin/env bash
# System packages cni-yogurt needs on Debian 12 / Ubuntu 24.04, installed only if missing.
#   python3-bpfcc   bcc's Python module (not on PyPI), used once per boot to load the programs
#   kernel headers  for bcc: the running kernel's own, or else any distribution headers
#       (linux-headers-amd64 / -generic): the programs use only UAPI headers
#   gcc libc6-dev   the compiled front end (cni_yogurt/agent/frontend.c, `make front`), static
#   python3-prometheus-client  the node agent's metrics (`yogurt agent`, optional)
#   containernetworking-plugins  host-local IPAM (and ptp for the benchmark)
#   iproute2 iputils-ping  netns and ping for the demo and the tests
#   python3-cryptography  the lab's TLS certificates
#   wireguard-go wireguard-tools nftables  the node lab (cni_yogurt/lab/nodes.py): userspace
#       WireGuard between nodes as netns where the kernel has none (and for the test of a
#       failing start), `wg`, and each node's firewall; the agent in cluster mode (its
#       WireGuard and nftables table); the Kubernetes image copies all three from here
#   tcpdump  reads what `yogurt capture` writes, in the tests (and for the admin who captures)
#   iperf3  measures an impaired line's rate in the tests (tests/kernel/test_impair.py)
#   podman containerd crun busybox-static  the runtime end-to-end tests
#       (busybox-static is their container image, made on the spot)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive  # iperf3 asks whether to start a daemon: no
pkgs=(python3-venv python3-bpfcc gcc libc6-dev python3-prometheus-client containernetworking-plugins iproute2 iputils-ping
    kmod containerd crun busybox-static python3-cryptography nftables tcpdump iperf3)
# podman without its recommends: podman 4 uses its CNI backend, which the test
# needs, only as long as netavark is not installed.  No etcd-server: installing it starts a
# system etcd on 2379; the cluster tests unpack its .deb instead (packaging/fetch-etcd.sh).
# wireguard-tools without its recommends too: they pull in a whole linux-image.
lean=(podman wireguard-go wireguard-tools)
# Headers only if there are none at all (cni_yogurt/kernel/headers.py uses any).
need_headers=0
[ -e "/lib/modules/$(uname -r)/build" ] || compgen -G '/usr/src/linux-headers-*' >/dev/null || need_headers=1
missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"
    done
}
mapfile -t need < <(missing "${pkgs[@]}")
mapfile -t need_lean < <(missing "${lean[@]}")
if ((${#need[@]} + ${#need_lean[@]} + need_headers)); then
    apt-get update -qq
    if ((need_headers)); then
        for h in "linux-headers-$(uname -r)" "linux-headers-$(dpkg --print-architecture)" linux-headers-generic; do
            if apt-cache show "$h" >/dev/null 2>&1; then need+=("$h"); break; fi
        done
    fi
    echo "installing: ${need[*]} ${need_lean[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    ((${#need[@]} == 0)) || apt-get install -y -qq "${need[@]}" >/dev/null
    ((${#need_lean[@]} == 0)) || apt-get install -y -qq --no-install-recommends "${need_lean[@]}" >/dev/null
fi
