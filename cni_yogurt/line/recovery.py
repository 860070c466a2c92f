"""Rebuilding line membership from the kernel when the line registry is damaged.

The registry is a cache of what the kernel holds: every end is a host-side
device named after its attachment (naming.py), which ADD labels with the
end's identity in its interface alias (`ip link` shows it), and the pairing
map says which ends are wired.  A damaged line file (truncated, empty,
garbage) is moved aside with the rest and rebuilt from those, so no later
ADD fails until a person edits files.

An alias holds at most 255 bytes: an identity too long for it (container IDs
of hundreds of bytes) leaves an anonymous end, kept on its line by the
device alone, until a verb that names the attachment adopts it again.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cni_yogurt.backend import DEVICE_KINDS
from cni_yogurt.datapath import PairMap, Pins
from cni_yogurt.kernel.netlink import Rtnl, link_kind
from cni_yogurt.line import naming
from cni_yogurt.line.registry import End

IFALIASZ = 255  # the kernel's limit, NUL excluded
ANONYMOUS = "?"  # container_id of an end whose identity did not fit: no real ID starts with it


def state_tag(state_dir: str) -> str:
    """Which registry an end belongs to: a node normally has one, tests and benchmarks have more."""
    return naming.sha256_hex(os.path.realpath(state_dir).encode())[:8]


def alias(end: End, state_dir: str) -> str:
    """The identity of an end, for its host-side device's alias; as much of it as fits."""
    ident = {
        "d": state_tag(state_dir),
        "l": end.line,
        "n": end.network,
        "c": end.container_id,
        "i": end.ifname,
        "s": end.netns,
    }
    if end.pod_name:
        ident |= {"pn": end.pod_namespace, "p": end.pod_name, "pu": end.pod_uid}
    # Least needed first to go: the pod's UID, the netns path and the pod (status only),
    # the container ID, the network.
    for drop in (None, "pu", "s", "pn", "p", "c", "n"):
        if drop and drop not in ident:
            continue
        if drop:
            del ident[drop]
        text = "yogurt" + json.dumps(ident, separators=(",", ":"))
        if len(text.encode()) <= IFALIASZ:
            return text
    return "yogurt{}"


def parse_alias(text: str | None) -> dict[str, str] | None:
    if not text or not text.startswith("yogurt{"):
        return None
    try:
        ident = json.loads(text[len("yogurt") :])
    except ValueError:
        return None
    return {k: v for k, v in ident.items() if isinstance(v, str)} if isinstance(ident, dict) else None


def rebuild(pins: Pins, state_dir: str) -> dict[str, End]:
    """Every end of this registry the kernel shows: our host-side devices, labelled by ADD."""
    tag = state_tag(state_dir)
    wired: set[int] = set()
    if pins.loaded():
        with PairMap(pins) as pairs:
            wired = {index for index, _ in pairs.items()}
    ends: dict[str, End] = {}
    with Rtnl() as host:
        for link in host.links():
            end = _end_of(link, pins, wired, tag)
            if end is not None:
                ends[end.key] = end
    return ends


def _end_of(link: Any, pins: Pins, wired: set[int], tag: str) -> End | None:
    name = link.get_attr("IFLA_IFNAME")
    kind = link_kind(link)
    ident = parse_alias(link.get_attr("IFLA_IFALIAS"))
    if not naming.is_ours(name) or kind not in DEVICE_KINDS or ident is None or "l" not in ident:
        return None  # not ours, or made before ADD labelled it: GC's business
    if ident.get("d") != tag:
        return None  # another registry's
    container_id, ifname = ident.get("c"), ident.get("i", "")
    if container_id is None or naming.host_ifname(container_id, ifname) != name:
        container_id, ifname = ANONYMOUS, name
    return End(
        container_id=container_id,
        ifname=ifname,
        line=ident["l"],
        network=ident.get("n", ""),
        netns=ident.get("s", ""),
        pod_namespace=ident.get("pn", ""),
        pod_name=ident.get("p", ""),
        pod_uid=ident.get("pu", ""),
        host_ifname=name,
        host_ifindex=link["index"],
        peer_ifindex=link.get_attr("IFLA_LINK") or 0,
        # Labelled before IPAM: a wired end is surely complete, an unwired one is taken to be.
        ready=True if link["index"] in wired else bool(link["flags"] & 1),
        device=kind,
        attach=_attach_of(kind, pins, name),
        pins=pins.root,
    )


def _attach_of(kind: str, pins: Pins, name: str) -> str:
    """How a found end's programs attach, from its pins: links for both hooks (netkit, tcx),
    for the guard only (split), or none (tc filters, which live with the device)."""
    if kind == "netkit":
        return "netkit"
    if os.path.exists(pins.link(name, "peer")):
        return "tcx"
    return "split" if os.path.exists(pins.link(name, "primary")) else "tc"


def adopt(ends: dict[str, End], container_id: str, ifname: str) -> End | None:
    """Give an anonymous end its identity back, from a verb that names its attachment."""
    name = naming.host_ifname(container_id, ifname)
    for key, end in list(ends.items()):
        if end.container_id == ANONYMOUS and end.host_ifname == name:
            del ends[key]
            end.container_id, end.ifname = container_id, ifname
            ends[end.key] = end
            return end
    return None
