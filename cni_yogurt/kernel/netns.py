"""Network namespaces: open a file descriptor or a socket inside one.

A socket belongs to the netns it was created in, whatever the creator does
next.  So instead of forking into CNI_NETNS we switch this thread into it
just long enough to create the socket, and switch straight back.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An fd for a netns path; raises FileNotFoundError if it is gone."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


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


def is_netns(path: str) -> bool:
    """True if `path` is a network namespace (an nsfs file or bind mount of one)."""
    try:
        fd = open_netns(path)
    except OSError:
        return False
    try:
        # NS_GET_NSTYPE (0xb703) answers CLONE_NEWNET for a netns fd.
        import fcntl

        return fcntl.ioctl(fd, 0xB703) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def netlink_route_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    sock.bind((0, 0))
    return sock
