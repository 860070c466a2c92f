#!/usr/bin/env bash
# Usage: tests/kernel/releases/build.sh COMMIT
# Rebuild the wheel of an earlier release from git history into
# tests/kernel/releases/abi<N>-<commit>/ (N: that release's datapath.ABI), for
# test_upgrade_from_release.py. The wheels are kept in the tree so that the
# test needs no history (a shallow clone) and no network: pure Python plus the
# BPF C source, ~80 kB. Needs a venv with pip and setuptools (make venv).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
commit=$(git -C "$REPO" rev-parse --short=7 "${1:?usage: $0 COMMIT}")
abi=$(git -C "$REPO" show "$commit:cni_yogurt/datapath.py" | sed -n 's/^ABI = \(test_abi() or \)\{0,1\}\([0-9]*\).*/\2/p')
[ -n "$abi" ] || { echo "$commit: no ABI in cni_yogurt/datapath.py" >&2; exit 1; }
src=$(mktemp -d) && trap 'rm -rf "$src"' EXIT
git -C "$REPO" archive "$commit" | tar -x -C "$src"
# The commit, for releases that report it (`yogurt version`: cni_yogurt/release.py); older ones ignore it.
echo "$commit" > "$src/cni_yogurt/_commit"
out="$HERE/abi$abi-$commit"
rm -rf "$out" && mkdir -p "$out"
"$REPO/.venv/bin/pip" wheel -q --no-deps --no-build-isolation --no-index -w "$out" "$src"
ls "$out"
