"""Create a netkit pair over raw rtnetlink and check both ends appear.

Debian 12's iproute2 (6.1) cannot create netkit devices, so this speaks
RTM_NEWLINK directly. Meant to run inside the VM: `tests/vm/run.sh python3 tests/vm/netkit_smoke.py`.
"""

import os
import socket
import struct

RTM_NEWLINK, IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 16, 3, 18, 1
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400


def attr(kind, payload):
    data = struct.pack("HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)  # attributes are 4-byte aligned


def new_netkit(name):
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)  # struct ifinfomsg
    body += attr(IFLA_IFNAME, name.encode() + b"\0")
    body += attr(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"netkit\0"))  # no data: peer auto-named
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
    msg = struct.pack("IHHII", 16 + len(body), RTM_NEWLINK, flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.send(msg)
        err = struct.unpack_from("i", s.recv(4096), 16)[0]  # nlmsgerr.error after nlmsghdr
    if err:
        raise OSError(-err, f"RTM_NEWLINK netkit {name}: {os.strerror(-err)}")


before = set(os.listdir("/sys/class/net"))
new_netkit("yk0")
added = sorted(set(os.listdir("/sys/class/net")) - before)
print("netkit created:", added)
assert "yk0" in added and len(added) == 2, added
