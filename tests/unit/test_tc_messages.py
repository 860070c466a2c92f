"""The clsact + cls_bpf messages of the veth fallback path, byte for byte (no root, no kernel)."""

from __future__ import annotations

import socket
import struct

from cni_yogurt.kernel import tc

NLA = struct.Struct("=HH")
TCMSG = struct.Struct("=BBHiIII")  # family, pads, ifindex, handle, parent, info


def _attrs(data: bytes) -> dict[int, bytes]:
    out = {}
    offset = 0
    while offset + NLA.size <= len(data):
        length, kind = NLA.unpack_from(data, offset)
        out[kind & 0x3FFF] = data[offset + NLA.size : offset + length]
        offset += (length + 3) & ~3
    return out


def _encoded(msg: tc.tcmsg) -> tuple[tuple[int, ...], dict[int, bytes]]:
    msg.encode()
    body = msg.data[16:]  # after nlmsghdr
    return TCMSG.unpack_from(body), _attrs(body[TCMSG.size :])


def test_clsact_qdisc() -> None:
    header, attrs = _encoded(tc.clsact_msg(7))
    assert header == (socket.AF_UNSPEC, 0, 0, 7, 0xFFFF0000, 0xFFFFFFF1, 0)
    assert attrs == {1: b"clsact\0"}  # TCA_KIND


def test_direct_action_bpf_filter_on_ingress() -> None:
    header, attrs = _encoded(tc.bpf_filter_msg(9, tc.INGRESS, prog_fd=42, name="yogurt_primary"))
    family, _, _, index, handle, parent, info = header
    assert (family, index, handle, parent) == (socket.AF_UNSPEC, 9, 1, 0xFFFFFFF2)
    assert info >> 16 == tc.PRIORITY and socket.ntohs(info & 0xFFFF) == 0x0003  # every protocol
    assert attrs[1] == b"bpf\0"
    options = _attrs(attrs[2])  # TCA_OPTIONS
    assert struct.unpack("=I", options[6]) == (42,)  # TCA_BPF_FD
    assert options[7] == b"yogurt_primary\0"  # TCA_BPF_NAME
    assert struct.unpack("=I", options[8]) == (1,)  # TCA_BPF_FLAGS: direct action


def test_egress_parent_differs_from_ingress() -> None:
    assert (tc.INGRESS, tc.EGRESS) == (0xFFFFFFF2, 0xFFFFFFF3)


def test_bpf_program_id_read_back_from_a_dumped_filter() -> None:
    msg = tc.tcmsg()
    msg["attrs"] = [("TCA_KIND", "bpf"), ("TCA_OPTIONS", {"attrs": [("TCA_BPF_ID", 1234)]})]
    msg.encode()
    decoded = tc.tcmsg(msg.data)
    decoded.decode()
    assert tc.bpf_prog_id(decoded) == 1234


def test_other_classifiers_have_no_program_id() -> None:
    msg = tc.tcmsg()
    msg["attrs"] = [("TCA_KIND", "u32")]
    msg.encode()
    decoded = tc.tcmsg(msg.data)
    decoded.decode()
    assert tc.bpf_prog_id(decoded) is None
