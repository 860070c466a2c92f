"""Ends whose partner is on another node: the tunnel's side of the pairing.

The contract between the datapath (this module, bpf/yogurt.bpf.c) and the cluster's control plane
(the node agent reconciling what etcd says): the agent decides *which* local end talks to *which*
remote end; this module makes the kernel do it and nothing else.

- A local end wired to a remote partner sends into the node's tunnel device (an external-mode VXLAN
  inside WireGuard) with the line's tunnel id (VNI) and the partner node's WireGuard address as the
  outer destination.
- The tunnel device's receive program hands a packet to a local end only if its (VNI, outer source)
  is the pair recorded for that end; anything else is dropped and counted.
- Cutting an end's remote wiring makes it fail closed at once, both ways.

Every call is idempotent (the agent re-applies its whole view after a restart or a re-list).
IPv4 underlay/WireGuard addresses only.  The programs must be loaded (the node's first ADD, or
datapath.ensure_loaded) before any of these is called.

Kernel side: yogurt_remote (host-side ifindex -> VNI, partner node, tunnel device, backend) and
yogurt_tunnel_in ((VNI, outer source) -> host-side ifindex), see datapath.RemoteMap and
bpf/yogurt.bpf.c.  The receive program sits on the tunnel device's ingress: a tcx link pinned as
links/<tunnel>_tunnel, or (kernels without tcx, or `attach="tc"`) a cls_bpf filter that lives with
the device.  attach_tunnel carries a tcx link an older release pinned over to this release's
program in place (one BPF_LINK_UPDATE), as line/moving.py does for ends; in tc mode the filter is
replaced in place.  After an upgrade the agent calls attach_tunnel again (it re-applies its view).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from dataclasses import dataclass

from cni_yogurt.datapath import END_NETKIT, TUNNEL_HOOK, Pins, Remote, RemoteMap
from cni_yogurt.kernel import bpf, tc
from cni_yogurt.kernel.netlink import Rtnl, link_kind

MAX_VNI = (1 << 24) - 1
TUNNEL_FILTER = "yogurt_tunnel"  # the cls_bpf filter's name (tc mode)


@dataclass(frozen=True)
class RemotePartner:
    vni: int  # the line's tunnel id, 1 .. 2**24 - 1, allocated in etcd (cluster/vni.py)
    node_address: ipaddress.IPv4Address  # the partner node's WireGuard address: outer destination and
    # the only outer source accepted for this VNI


def attach_tunnel(pins: Pins, tunnel_ifname: str, attach: str = "auto") -> int:
    """Attach the receive program to the node's tunnel device (pinned, survives the caller);
    idempotent. Returns the tunnel device's ifindex.  `attach`: "tcx", "tc", or "auto" (tcx
    where the kernel has it), as the veth backend chooses."""
    from cni_yogurt.backend import tcx_supported

    with Rtnl() as host:
        link = host.link(tunnel_ifname)
        if link is None:
            raise OSError(errno.ENODEV, f"no tunnel device {tunnel_ifname}")
        index = int(link["index"])
        mode = ("tcx" if tcx_supported() else "tc") if attach == "auto" else attach
        prog_fd = bpf.obj_get(pins.prog(TUNNEL_HOOK))
        try:
            if mode == "tc":
                _unpin_links(pins, tunnel_ifname)  # a tcx link of an earlier attach would run first
                host.add_clsact(index)
                host.add_bpf_filter(index, tc.INGRESS, prog_fd, TUNNEL_FILTER)
            elif mode == "tcx":
                host.delete_bpf_filter(index, tc.INGRESS)  # an earlier tc-mode attach
                _attach_tcx(pins, tunnel_ifname, index, prog_fd)
            else:
                raise ValueError(f"attach must be tcx, tc or auto, not {attach!r}")
        finally:
            os.close(prog_fd)
    return index


def _attach_tcx(pins: Pins, tunnel_ifname: str, index: int, prog_fd: int) -> None:
    """Keep a pinned link that is still on this device (this release's, or an older one's:
    its program is swapped in place, so no packet meets none); make one otherwise."""
    path = pins.link(tunnel_ifname, TUNNEL_HOOK)
    for pinned in [path] + [o.link(tunnel_ifname, TUNNEL_HOOK) for o in pins.others()]:
        try:
            link_fd = bpf.obj_get(pinned)
        except FileNotFoundError:
            continue
        try:
            if bpf.tcx_link_ifindex(link_fd) != index:
                os.unlink(pinned)  # its device is gone (a tunnel device made anew)
                continue
            if bpf.link_prog_id(link_fd) != bpf.object_id(prog_fd):
                bpf.link_update(link_fd, prog_fd)
            if pinned != path:
                _pin(link_fd, path)  # pinned twice for a moment: never without a pin
                os.unlink(pinned)
        finally:
            os.close(link_fd)
        _unpin_links(pins, tunnel_ifname, keep=path)
        return
    link_fd = bpf.link_create(prog_fd, index, bpf.TCX_INGRESS)
    try:
        _pin(link_fd, path)
    finally:
        os.close(link_fd)


def _pin(link_fd: int, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    bpf.obj_pin(link_fd, path)


def _unpin_links(pins: Pins, tunnel_ifname: str, keep: str = "") -> None:
    for where in (pins, *pins.others()):
        path = where.link(tunnel_ifname, TUNNEL_HOOK)
        if path != keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def detach_tunnel(pins: Pins, tunnel_ifname: str) -> None:
    """Remove the receive program's pinned link (teardown, tests); in tc mode, its filter."""
    _unpin_links(pins, tunnel_ifname)
    with Rtnl() as host:
        link = host.link(tunnel_ifname)
        if link is not None:
            host.delete_bpf_filter(int(link["index"]), tc.INGRESS)


def wire_remote(pins: Pins, host_ifindex: int, partner: RemotePartner, tunnel_ifindex: int) -> None:
    """Send a local end's packets to its remote partner, and accept the partner's.

    ValueError: a VNI out of range; OSError(ENODEV): no such end device; OSError(EEXIST): that
    (VNI, node) is wired to another local end (cut that one first)."""
    if not 0 < partner.vni <= MAX_VNI:
        raise ValueError(f"VNI {partner.vni} is not in 1..{MAX_VNI}")
    with Rtnl() as host:
        link = host.link_by_index(host_ifindex)
    kind = link_kind(link) if link is not None else None
    if kind not in ("netkit", "veth"):
        raise OSError(errno.ENODEV, f"ifindex {host_ifindex} is not an end's host-side device")
    node = int(partner.node_address)
    with RemoteMap(pins) as remotes:
        held = remotes.way_in(partner.vni, node)
        if held not in (None, host_ifindex):
            raise OSError(
                errno.EEXIST, f"VNI {partner.vni} from {partner.node_address} is wired to ifindex {held}"
            )
        flags = END_NETKIT if kind == "netkit" else 0
        remotes.set(host_ifindex, Remote(partner.vni, node, tunnel_ifindex, flags))


def cut_remote(pins: Pins, host_ifindex: int) -> None:
    """Undo wire_remote for one end (no-op if it was not wired): it fails closed at once."""
    with RemoteMap(pins) as remotes:
        remotes.cut(host_ifindex, thorough=True)


def remote_partners(pins: Pins) -> dict[int, RemotePartner]:
    """Every local end wired to a remote partner, by host-side ifindex (what the agent diffs against)."""
    with RemoteMap(pins) as remotes:
        return {
            index: RemotePartner(r.vni, ipaddress.IPv4Address(r.node_ipv4)) for index, r in remotes.items()
        }
