"""bpffs: where programs, the pairing map and links are pinned."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat

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
    """Mount bpffs where `pin_dir` needs it, if nobody has yet; create `pin_dir` root-only."""
    if mount_type(pin_dir) != "bpf":
        _mount(pin_dir)
    # 0700 whatever the umask (the map pin itself is 0600): nobody else may open the
    # pairing map, replace a pin or unpin a link.  Existing directories are left alone,
    # but /sys/fs/bpf is world-writable (1777): one that someone else made is refused.
    parent = os.path.dirname(pin_dir)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    _must_be_ours(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(pin_dir, 0o700)
    _must_be_ours(pin_dir)


def _must_be_ours(path: str) -> None:
    st = os.stat(path)
    open_to_others = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
    if st.st_uid != os.geteuid() or open_to_others:
        raise PermissionError(
            errno.EPERM, f"{path} is owned by uid {st.st_uid} or writable by others; remove it"
        )


def _mount(pin_dir: str) -> None:
    target = BPFFS_ROOT if os.path.realpath(pin_dir).startswith(BPFFS_ROOT + "/") else pin_dir
    os.makedirs(target, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    # A fresh bpffs root is 1777: one mounted right on pin_dir is made root-only.
    data = b"mode=0700" if target == pin_dir else None
    if libc.mount(b"bpf", target.encode(), b"bpf", 0, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount bpffs on {target}: {os.strerror(err)}")
