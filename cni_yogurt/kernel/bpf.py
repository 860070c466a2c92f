"""The few bpf(2) commands the hot path needs, as raw syscalls.

ADD/DEL/CHECK only open pinned objects, create/pin links and edit the
pairing map; doing that through bcc would import LLVM (~0.3 s natively).
The `*_attr` functions build `union bpf_attr` bytes and are pure.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator

# enum bpf_cmd
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
OBJ_PIN = 6
OBJ_GET = 7
PROG_GET_FD_BY_ID = 13
OBJ_GET_INFO_BY_FD = 15
PROG_QUERY = 16
LINK_CREATE = 28
LINK_UPDATE = 29

# enum bpf_attach_type
F_BEFORE = 1 << 3  # BPF_F_BEFORE: first at its hook (no relative program given)
TCX_INGRESS = 46
TCX_EGRESS = 47
NETKIT_PRIMARY = 54
NETKIT_PEER = 55

BPF_ANY = 0
_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
_ATTR_SIZE = 128  # larger than every layout used here; the kernel checks the tail is zero

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _pad(attr: bytes) -> bytes:
    return attr + bytes(_ATTR_SIZE - len(attr))


def obj_attr(path_ptr: int, fd: int = 0) -> bytes:
    """OBJ_PIN / OBJ_GET: pathname, bpf_fd, file_flags."""
    return _pad(struct.pack("=QII", path_ptr, fd, 0))


def link_create_attr(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> bytes:
    """LINK_CREATE for netkit and tcx (same layout): appended last, or first with F_BEFORE (no
    relative_fd, no expected_revision)."""
    return _pad(struct.pack("=IIII", prog_fd, ifindex, attach_type, flags))


def link_update_attr(link_fd: int, new_prog_fd: int) -> bytes:
    """LINK_UPDATE: link_fd, new_prog_fd, flags, old_prog_fd (no BPF_F_REPLACE: whatever it runs now)."""
    return _pad(struct.pack("=IIII", link_fd, new_prog_fd, 0, 0))


def prog_query_attr(ifindex: int, attach_type: int, ids_ptr: int, count: int) -> bytes:
    """PROG_QUERY: target_ifindex, attach_type, query_flags, attach_flags, prog_ids, prog_cnt."""
    return _pad(struct.pack("=IIIIQI", ifindex, attach_type, 0, 0, ids_ptr, count))


def map_elem_attr(map_fd: int, key_ptr: int, value_ptr: int = 0, flags: int = 0) -> bytes:
    """MAP_*_ELEM and GET_NEXT_KEY (value_ptr doubles as next_key)."""
    return _pad(struct.pack("=IIQQQ", map_fd, 0, key_ptr, value_ptr, flags))


def info_attr(fd: int, info_ptr: int, info_len: int) -> bytes:
    return _pad(struct.pack("=IIQ", fd, info_len, info_ptr))


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    ret = int(_libc.syscall(_SYS_BPF, cmd, attr, _ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return ret


def _call(cmd: int, attr: bytes) -> tuple[int, ctypes.Array[ctypes.c_char]]:
    buf = ctypes.create_string_buffer(attr, _ATTR_SIZE)
    return _bpf(cmd, buf), buf


def _addr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def obj_get(path: str) -> int:
    """Open a pinned program, map or link; returns a new fd."""
    cpath = ctypes.create_string_buffer(path.encode())
    return _call(OBJ_GET, obj_attr(_addr(cpath)))[0]


def obj_pin(fd: int, path: str) -> None:
    cpath = ctypes.create_string_buffer(path.encode())
    _call(OBJ_PIN, obj_attr(_addr(cpath), fd))


def link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> int:
    return _call(LINK_CREATE, link_create_attr(prog_fd, ifindex, attach_type, flags))[0]


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the program a link runs, atomically: no packet sees neither (netkit, tcx)."""
    _call(LINK_UPDATE, link_update_attr(link_fd, new_prog_fd))


def prog_query(ifindex: int, attach_type: int, capacity: int = 64) -> list[int]:
    """IDs of the programs attached to a device at one netkit or tcx hook."""
    ids = (ctypes.c_uint32 * capacity)()
    _, buf = _call(PROG_QUERY, prog_query_attr(ifindex, attach_type, ctypes.addressof(ids), capacity))
    count = struct.unpack_from("=I", buf.raw, 24)[0]
    return list(ids[: min(count, capacity)])


def object_id(fd: int) -> int:
    """The kernel ID of a program, map or link (bpf_*_info.id, at offset 4 in each)."""
    info = ctypes.create_string_buffer(64)
    _call(OBJ_GET_INFO_BY_FD, info_attr(fd, ctypes.addressof(info), 64))
    return int(struct.unpack_from("=I", info.raw, 4)[0])


def prog_name(prog_id: int) -> str:
    """A loaded program's name (bpf_prog_info.name, at offset 64: the function's, cut at 15 bytes);
    "" if it is gone."""
    try:
        fd = _call(PROG_GET_FD_BY_ID, _pad(struct.pack("=I", prog_id)))[0]
    except OSError:
        return ""
    try:
        info = ctypes.create_string_buffer(96)
        _call(OBJ_GET_INFO_BY_FD, info_attr(fd, ctypes.addressof(info), 96))
        return info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


def link_prog_id(fd: int) -> int:
    """bpf_link_info.prog_id: which program a link attaches."""
    info = ctypes.create_string_buffer(64)
    _call(OBJ_GET_INFO_BY_FD, info_attr(fd, ctypes.addressof(info), 64))
    return int(struct.unpack_from("=I", info.raw, 8)[0])


def tcx_link_ifindex(fd: int) -> int:
    """bpf_link_info.tcx.ifindex: the device a tcx link is attached to (0 once that is gone)."""
    info = ctypes.create_string_buffer(64)
    _call(OBJ_GET_INFO_BY_FD, info_attr(fd, ctypes.addressof(info), 64))
    return int(struct.unpack_from("=I", info.raw, 16)[0])  # after type, id, prog_id (the union is 8-aligned)


class Map:
    """A pinned BPF map with fixed-size byte keys and values."""

    def __init__(self, fd: int, key_size: int, value_size: int) -> None:
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size

    @classmethod
    def open_pinned(cls, path: str, key_size: int, value_size: int) -> Map:
        return cls(obj_get(path), key_size, value_size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, key: bytes) -> bytes | None:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self.value_size)
        try:
            _call(MAP_LOOKUP_ELEM, map_elem_attr(self.fd, _addr(k), _addr(v)))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def update(self, key: bytes, value: bytes) -> None:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value, self.value_size)
        _call(MAP_UPDATE_ELEM, map_elem_attr(self.fd, _addr(k), _addr(v), BPF_ANY))

    def delete(self, key: bytes) -> bool:
        k = ctypes.create_string_buffer(key, self.key_size)
        try:
            _call(MAP_DELETE_ELEM, map_elem_attr(self.fd, _addr(k)))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        nxt = ctypes.create_string_buffer(self.key_size)
        key: ctypes.Array[ctypes.c_char] | None = None
        while True:
            try:
                _call(MAP_GET_NEXT_KEY, map_elem_attr(self.fd, _addr(key) if key else 0, _addr(nxt)))
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise
            yield nxt.raw
            key = ctypes.create_string_buffer(nxt.raw, self.key_size)
