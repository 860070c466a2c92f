"""tc messages for the clsact + cls_bpf attach path (kernels without tcx, < 6.6).

pyroute2's own `tcmsg` package loads every qdisc and classifier plugin it
has; the veth fallback needs one qdisc (clsact) and one classifier (bpf in
direct-action mode), so `tcmsg` here declares just those attributes on
pyroute2's message base.  The API (send, dump) is in netlink.py, like the
netkit kind.  Numbers are from include/uapi/linux/{rtnetlink,pkt_sched,
pkt_cls}.h.
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2.netlink import nla, nlmsg

RTM_NEWQDISC = 36
RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46

TC_H_CLSACT = 0xFFFFFFF1  # also TC_H_INGRESS: the clsact qdisc's parent
CLSACT_HANDLE = 0xFFFF0000
TC_H_MIN_INGRESS = 0xFFF2
TC_H_MIN_EGRESS = 0xFFF3
INGRESS = (TC_H_CLSACT & 0xFFFF0000) | TC_H_MIN_INGRESS  # parent of ingress filters
EGRESS = (TC_H_CLSACT & 0xFFFF0000) | TC_H_MIN_EGRESS
TCA_BPF_FLAG_ACT_DIRECT = 1  # the program's return value is the tc verdict
ETH_P_ALL = 0x0003
PRIORITY = 1


class tcmsg(nlmsg):
    """struct tcmsg + the attributes of clsact and cls_bpf."""

    prefix = "TCA_"
    fields = (
        ("family", "B"),
        ("pad1", "B"),
        ("pad2", "H"),
        ("index", "i"),
        ("handle", "I"),
        ("parent", "I"),
        ("info", "I"),
    )
    nla_map = (
        ("TCA_UNSPEC", "none"),
        ("TCA_KIND", "asciiz"),
        ("TCA_OPTIONS", "bpf_options"),
    )

    class bpf_options(nla):
        """TCA_OPTIONS of the "bpf" classifier (TCA_BPF_*)."""

        prefix = "TCA_BPF_"
        nla_map = (
            ("TCA_BPF_UNSPEC", "none"),
            ("TCA_BPF_ACT", "hex"),
            ("TCA_BPF_POLICE", "hex"),
            ("TCA_BPF_CLASSID", "uint32"),
            ("TCA_BPF_OPS_LEN", "uint16"),
            ("TCA_BPF_OPS", "hex"),
            ("TCA_BPF_FD", "uint32"),
            ("TCA_BPF_NAME", "asciiz"),
            ("TCA_BPF_FLAGS", "uint32"),
            ("TCA_BPF_FLAGS_GEN", "uint32"),
            ("TCA_BPF_TAG", "hex"),
            ("TCA_BPF_ID", "uint32"),
        )


def clsact_msg(index: int) -> tcmsg:
    msg = tcmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["handle"] = CLSACT_HANDLE
    msg["parent"] = TC_H_CLSACT
    msg["attrs"] = [("TCA_KIND", "clsact")]
    return msg


def bpf_filter_msg(index: int, parent: int, prog_fd: int, name: str, options: bool = True) -> tcmsg:
    """A direct-action cls_bpf filter for every protocol, at one fixed priority (`options`:
    False to name that filter only, for deleting it)."""
    msg = tcmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["parent"] = parent
    msg["handle"] = 1
    msg["info"] = (PRIORITY << 16) | socket.htons(ETH_P_ALL)
    if not options:
        msg["attrs"] = [("TCA_KIND", "bpf")]
        return msg
    msg["attrs"] = [
        ("TCA_KIND", "bpf"),
        (
            "TCA_OPTIONS",
            {
                "attrs": [
                    ("TCA_BPF_FD", prog_fd),
                    ("TCA_BPF_NAME", name),
                    ("TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT),
                ]
            },
        ),
    ]
    return msg


def filter_dump_msg(index: int, parent: int) -> tcmsg:
    msg = tcmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["parent"] = parent
    return msg


def bpf_prog_id(msg: Any) -> int | None:
    """The program ID of a dumped cls_bpf filter (None for other filters)."""
    if msg.get_attr("TCA_KIND") != "bpf":
        return None
    options = msg.get_attr("TCA_OPTIONS")
    return options.get_attr("TCA_BPF_ID") if options is not None else None
