"""Kernel headers for bcc, found without anyone making links by hand.

bcc compiles against `/lib/modules/$(uname -r)/build` (or the headers the
kernel ships in /sys/kernel/kheaders.tar.xz), and otherwise fails.  Our
programs use only UAPI headers, which are stable, so when the running
kernel's own headers are missing any distribution headers serve: Debian's
`linux-headers-amd64` (or Ubuntu's `linux-headers-generic`) installs them
under /usr/src as two halves, `linux-headers-<rel>-<flavour>` (generated
files and config) and `linux-headers-<rel>-common` (the include trees).
bcc reads one directory (`BCC_KERNEL_SOURCE`), so we lay the two halves
side by side in a tree of symlinks, once, under the plugin's state dir.
"""

from __future__ import annotations

import glob
import os
import re
import shutil

SRC = "/usr/src"
MODULES = "/lib/modules"
KHEADERS = "/sys/kernel/kheaders.tar.xz"  # CONFIG_IKHEADERS: bcc unpacks it itself
# Subdirectories whose entries come from both halves.
_MERGED = ("include", os.path.join("arch", "x86", "include"), os.path.join("arch", "arm64", "include"))


def running_kernel_build() -> str | None:
    build = os.path.join(MODULES, os.uname().release, "build")
    return build if os.path.isdir(os.path.join(build, "include")) else None


def _version_key(path: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", os.path.basename(path))]


def distribution_headers() -> tuple[str, str] | None:
    """(arch half, common half) of the newest headers under /usr/src, or None."""
    candidates = []
    for arch_dir in glob.glob(os.path.join(SRC, "linux-headers-*")):
        if arch_dir.endswith("-common") or not os.path.isdir(os.path.join(arch_dir, "include", "generated")):
            continue
        common = _common_half(arch_dir)
        if common is not None:
            candidates.append((arch_dir, common))
    return max(candidates, key=lambda c: _version_key(c[0]), default=None)


def _common_half(arch_dir: str) -> str | None:
    if os.path.isfile(os.path.join(arch_dir, "include", "linux", "kconfig.h")):
        return arch_dir  # one self-contained tree (Ubuntu, Fedora-style)
    release = os.path.basename(arch_dir).removeprefix("linux-headers-")
    for guess in (os.path.join(MODULES, release, "source"), re.sub(r"-[^-]+$", "-common", arch_dir)):
        if os.path.isfile(os.path.join(guess, "include", "linux", "kconfig.h")):
            return os.path.realpath(guess)
    return None


def describe() -> str | None:
    """Where bcc will find headers, for `yogurt doctor`; None if nowhere."""
    build = running_kernel_build()
    if build:
        return build
    if os.path.exists(KHEADERS):
        return KHEADERS
    found = distribution_headers()
    return f"{found[0]} (UAPI headers of another kernel release: enough for our programs)" if found else None


def bcc_kernel_source(cache_dir: str) -> str | None:
    """A directory for BCC_KERNEL_SOURCE, or None when bcc finds headers itself (or nothing is there)."""
    if running_kernel_build() or os.path.exists(KHEADERS):
        return None
    found = distribution_headers()
    if found is None:
        return None
    arch_dir, common = found
    if arch_dir == common:
        return arch_dir
    tree = os.path.join(cache_dir, "kernel-headers", os.path.basename(arch_dir))
    if not os.path.isdir(tree):
        _lay_out(tree, arch_dir, common)
    return tree


def _lay_out(tree: str, arch_dir: str, common: str) -> None:
    """Symlink both halves into one tree; built aside and renamed so a crash leaves none half-made."""
    tmp = f"{tree}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for sub in _MERGED:
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        for half in (common, arch_dir):
            for entry in glob.glob(os.path.join(half, sub, "*")):
                link = os.path.join(tmp, sub, os.path.basename(entry))
                if not os.path.lexists(link):
                    os.symlink(entry, link)
    for half in (arch_dir, common):
        for entry in glob.glob(os.path.join(half, "*")):
            name = os.path.basename(entry)
            if name not in ("include", "arch") and not os.path.lexists(os.path.join(tmp, name)):
                os.symlink(entry, os.path.join(tmp, name))
    try:
        os.rename(tmp, tree)
    except OSError:  # a parallel loader made it first
        shutil.rmtree(tmp, ignore_errors=True)
