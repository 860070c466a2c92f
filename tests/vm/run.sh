#!/usr/bin/env bash
# Usage: tests/vm/run.sh COMMAND [ARGS...]
# Boot the netkit-capable kernel from fetch-kernel.sh with virtme-ng (the
# guest sees the host's files read-only) and run COMMAND as root in the repo
# dir inside it. Streams the command's output and exits with its exit code.
# The result dir also gets console.log (vng's and QEMU's messages plus the
# guest's serial console: kernel log at loglevel 7) and dmesg (saved by guest.sh
# after a normal run). If the guest dies without an exit code, the console's
# tail is printed and the dir is kept.
#
# Env: YOGURT_VM_CPUS (2), YOGURT_VM_MEMORY (2G), YOGURT_VM_TIMEOUT (seconds, 2700),
#      YOGURT_VM_KVM (auto|0|1), YOGURT_VM_ENV (extra var names to pass in),
#      YOGURT_VM_VNG_ARGS (extra vng args), YOGURT_VM_RESULT_DIR (kept; default:
#      a temp dir, removed on success), plus fetch-kernel.sh's YOGURT_VM_* vars.
# Passed into the guest: PATH, CI, VIRTUAL_ENV, PYTHONPATH, PYTEST_ADDOPTS,
# every YOGURT_* var and the names in YOGURT_VM_ENV.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
log() { echo "vm: $*" >&2; }

vmlinuz=$("$HERE/fetch-kernel.sh")
VENV=${YOGURT_VM_VENV:-${YOGURT_VM_CACHE:-$REPO/.cache/vm}/venv}

# The result dir is the guest's only writable window to the host.
if [ -n "${YOGURT_VM_RESULT_DIR:-}" ]; then
    RES=$YOGURT_VM_RESULT_DIR; rm -rf "$RES"; mkdir -p "$RES"; keep=1
else
    RES=$(mktemp -d /tmp/yogurt-vm.XXXXXX); keep=0
fi
RES=$(cd "$RES" && pwd)
: >"$RES/log"

# Env and command go through files: the kernel cmdline cannot carry them safely.
{
    printf 'export YOGURT_VM_REPO=%q\n' "$REPO"
    for n in PATH CI VIRTUAL_ENV PYTHONPATH PYTEST_ADDOPTS ${YOGURT_VM_ENV:-} $(compgen -e | grep '^YOGURT_' || true); do
        [ -n "${!n+x}" ] && printf 'export %s=%q\n' "$n" "${!n}"
    done
} >"$RES/env.sh"
{ printf 'exec'; printf ' %q' "$@"; echo; } >"$RES/cmd.sh"

# KVM only when it can work: here /dev/kvm exists but the CPU lacks vmx/svm.
kvm=${YOGURT_VM_KVM:-auto}
if [ "$kvm" = auto ]; then
    kvm=0
    [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && kvm=1
fi
# cgroup.memory=nokmem: under multi-threaded TCG (seen with QEMU 7.2 as in
# Debian 12) the guest can die with "Oops: int3" at a jump-label site in
# kmem_cache_alloc_noprof when kernel text patching of a static key (memcg's
# kmem accounting key, flipped when the first memory cgroup is made, e.g. by
# podman) races with the other vCPU. nokmem keeps that key from flipping at
# runtime. (-accel tcg,thread=single also avoids the race, but serialises the
# vCPUs.)
# --verbose: the kernel console (loglevel 7) goes to vng's stderr, i.e. to
# $RES/console.log, so a guest that dies leaves its last words there.
vng_args=(-r "$vmlinuz" --cpus "${YOGURT_VM_CPUS:-2}" --memory "${YOGURT_VM_MEMORY:-2G}"
    --append cgroup.memory=nokmem --verbose
    --rwdir="$RES" --exec "bash $(printf '%q ' "$HERE/guest.sh" "$RES")")
[ "$kvm" = 1 ] || vng_args+=(--disable-kvm)
# shellcheck disable=SC2206  # word splitting of extra args is intended
vng_args+=(${YOGURT_VM_VNG_ARGS:-})

boot() {
    : >"$RES/log"
    log "booting ${vmlinuz##*/vmlinuz-} ($([ "$kvm" = 1 ] && echo kvm || echo emulated)), results in $RES"
    # timeout signals vng's whole process group, qemu included.
    # vng calls virtme-run via PATH, so its venv goes first, for vng only (the
    # venv's python3 must not shadow the guest command's).
    PATH="$VENV/bin:$PATH" timeout -k 15 "${YOGURT_VM_TIMEOUT:-2700}" vng "${vng_args[@]}" </dev/null >"$RES/console.log" 2>&1 &
    vpid=$!
    trap 'kill "$vpid" 2>/dev/null || true' INT TERM
    # Stream the guest's output live; --pid makes tail do a last read once vng exits.
    tail -n +1 -f --pid="$vpid" "$RES/log"
    wait "$vpid" && vrc=0 || vrc=$?
}

start=$SECONDS
boot
# The emulator's cross-modifying-code race (see cgroup.memory above and guest.sh) can still hit a
# static key this project does not know to hold: a guest that died of exactly that, an int3 trap
# at a patched site, is the emulator's failure, not the command's. It is booted once more, and
# says so; any other death of the guest, or a second one, fails the run.
if [ ! -s "$RES/rc" ] && grep -qa 'Oops: int3' "$RES/console.log"; then
    mv "$RES/console.log" "$RES/console.int3.log"
    log "the guest died of the emulator's int3 race (kept in $RES/console.int3.log): booting once more"
    keep=1
    boot
fi

if [ ! -s "$RES/rc" ]; then
    log "no exit code from the guest after $((SECONDS - start))s (vng exit $vrc$([ "$vrc" = 124 ] && echo ', timed out')); console:"
    # From just before the first oops/panic line if there is one, else the tail.
    first=$(grep -naE -m1 'Oops|BUG:|Kernel panic|general protection|Call Trace' "$RES/console.log" | cut -d: -f1 || true)
    if [ -n "$first" ]; then
        end=$((first + 70)); total=$(wc -l <"$RES/console.log")
        sed -n "$((first > 10 ? first - 10 : 1)),${end}p" "$RES/console.log"
        if [ "$total" -gt $((end + 5)) ]; then echo "[...]"; tail -n 5 "$RES/console.log"
        elif [ "$total" -gt "$end" ]; then sed -n "$((end + 1)),\$p" "$RES/console.log"; fi
    else
        tail -n 60 "$RES/console.log"
    fi | tr -d '\r' >&2
    log "console and logs kept in $RES"
    exit 125
fi
rc=$(cat "$RES/rc")
log "guest command exited $rc; guest booted in $(cut -d' ' -f1 "$RES/uptime" 2>/dev/null)s, total $((SECONDS - start))s"
[ "$rc" != 0 ] || [ "$keep" = 1 ] || rm -rf "$RES"
exit "$rc"
