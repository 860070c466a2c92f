"""bpffs: where programs, the pairing map and links are pinned."""

from __future__ import annotations

import ctypes
import os

BPFFS_ROOT = "/sys/fs/bpf"


def mount_type(path: str) -> str | None:
    """The filesystem type of the mount that holds `path` (longest prefix wins)."""
    path = os.path.realpath(path)
    best, best_type = "", None
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, best_type = point, fields[2]
    return best_type


def ensure_mounted(pin_dir: str) -> None:
    """Mount bpffs where `pin_dir` needs it, if nobody has yet."""
    if mount_type(pin_dir) == "bpf":
        return
    target = BPFFS_ROOT if os.path.realpath(pin_dir).startswith(BPFFS_ROOT + "/") else pin_dir
    os.makedirs(target, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", target.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount bpffs on {target}: {os.strerror(err)}")
