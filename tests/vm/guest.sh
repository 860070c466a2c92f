#!/bin/bash
# Runs inside the VM (started by run.sh via vng --exec). $1 is the result dir,
# the only host dir the guest can write: it holds env.sh and cmd.sh from the host,
# and receives log (command output), rc (exit code) and dmesg (kernel log).
# The console is not usable for output here (run.sh sends it to console.log),
# so the host reads those files instead.
set -uo pipefail
RES=$1
exec >>"$RES/log" 2>&1
cp /proc/uptime "$RES/uptime"   # boot time, reported by run.sh

# bpffs/tracefs are not mounted by virtme; the project pins programs and bcc
# may want tracefs.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
# `ip netns add` needs a writable /run/netns; virtme gives a tmpfs /run, but be
# safe if a version ever does not.
mkdir -p /run/netns 2>/dev/null || { mount -t tmpfs tmpfs /run && mkdir -p /run/netns; }

# Turn on, for the guest's whole life, the static keys of the packet path that
# tests would otherwise flip at run time. Under multi-threaded TCG (QEMU 7.2, as
# in Debian 12) a vCPU can run a stale translation of a jump-label site while
# the other vCPU patches it with the kernel's int3 protocol: "Oops: int3" at
# __netif_receive_skb_core+0x3d (net_timestamp_check) was seen when a ping's
# SO_TIMESTAMP flipped netstamp_needed_key while WireGuard delivered packets.
# A key that is already on is only counted by later users: no more patching.
# (cgroup.memory=nokmem in run.sh does the same for memcg's key.)
#   netstamp_needed_key      a socket with SO_TIMESTAMP, held open
#   ingress/egress keys      a clsact qdisc on lo (as tcx and tc attaches do)
#   nf_hooks_needed[*]       an accepting base chain on each inet hook
#   udp(v6)_encap_needed_key a VXLAN device up (its UDP sockets are tunnel sockets,
#                            as VXLAN's and WireGuard's in the tests)
python3 -c 'import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_TIMESTAMP, 1)
time.sleep(1 << 30)' </dev/null >/dev/null 2>&1 &
tc qdisc add dev lo clsact 2>/dev/null || echo "guest: no clsact on lo" >&2
if command -v nft >/dev/null; then
    nft -f - <<'EOF' || echo "guest: no nftables keys held" >&2
table inet vm_keys_held {
    chain held_prerouting { type filter hook prerouting priority 0; policy accept; }
    chain held_input { type filter hook input priority 0; policy accept; }
    chain held_forward { type filter hook forward priority 0; policy accept; }
    chain held_output { type filter hook output priority 0; policy accept; }
    chain held_postrouting { type filter hook postrouting priority 0; policy accept; }
}
EOF
fi
ip link add vm_keys_held type vxlan external dstport 4799 2>/dev/null &&
    ip link set vm_keys_held up || echo "guest: no UDP tunnel keys held" >&2
sleep 0.5   # net_enable_timestamp patches from a workqueue: let it finish

# Host env (PATH, YOGURT_*, ...) and the repo dir.
. "$RES/env.sh"
# The repo is read-only in the guest: keep bytecode and caches out of it.
export PYTHONDONTWRITEBYTECODE=1 XDG_CACHE_HOME=/tmp/.cache
# Where guest commands may leave files for the host to read (kept on failure).
export YOGURT_VM_OUT="$RES"
export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:+$PYTEST_ADDOPTS }-p no:cacheprovider"
cd "$YOGURT_VM_REPO"

bash "$RES/cmd.sh"
echo $? >"$RES/rc.tmp" && mv "$RES/rc.tmp" "$RES/rc"
dmesg >"$RES/dmesg" 2>&1
sync
