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
