"""Network namespaces: open a file descriptor or a socket inside one.

A socket belongs to the netns it was created in, whatever the creator does
next.  So instead of forking into CNI_NETNS we switch this thread into it
just long enough to create the socket, and switch straight back.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


NS_GET_NSTYPE = 0xB703


def open_netns(path: str) -> int:
    """An fd for a netns path; raises FileNotFoundError if it is gone, and
    OSError(EINVAL) if it is something else (a file, a directory, another namespace)."""
    try:
        # nsfs files (and bind mounts of them) are regular files; anything else
        # (a FIFO would block, a device could act) is not opened at all.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a network namespace")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except ValueError as exc:  # NUL bytes or unencodable text in the path
        raise OSError(errno.EINVAL, f"invalid netns path: {exc}") from exc
    try:
        if fcntl.ioctl(fd, NS_GET_NSTYPE) != CLONE_NEWNET:
            raise OSError(errno.EINVAL, f"{path} is not a network namespace")
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.ENOTTY:  # a plain file: no namespace ioctls at all
            raise OSError(errno.EINVAL, f"{path} is not a network namespace") from exc
        raise
    return fd


def create_in(netns_fd: int, factory: Callable[[], T]) -> T:
    """Run `factory` (e.g. a socket constructor) inside the netns, then return home."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(netns_fd)
        try:
            return factory()
        finally:
            setns(home)
    finally:
        os.close(home)


def run_in(path: str, factory: Callable[[], T]) -> T:
    """`create_in` for a netns named by its path (a bind mount, /proc/<pid>/ns/net)."""
    fd = open_netns(path)
    try:
        return create_in(fd, factory)
    finally:
        os.close(fd)


def new_netns() -> int:
    """A fresh, unnamed netns: an fd is all that keeps it alive (no bind mount), so it and
    every device in it go when the holder closes the fd or dies.  Made from a thread of
    its own: unshare moves only the calling thread, which then ends."""
    found: list[int | OSError] = []

    def make() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            found.append(OSError(err, f"unshare: {os.strerror(err)}"))
            return
        found.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))

    import threading

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]


def is_netns(path: str) -> bool:
    """True if `path` is a network namespace (an nsfs file or bind mount of one)."""
    try:
        os.close(open_netns(path))
    except OSError:
        return False
    return True


def netlink_route_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    sock.bind((0, 0))
    return sock
