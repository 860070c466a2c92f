"""GC's side of lines: removing stale ends, then sweeping what no line knows of.

GC (plugin.gc) decides which ends are stale and releases their IP leases;
this module takes them off their lines and out of the kernel, and then
sweeps devices and link pins that no end owns — left by a crash, or by the
ends just removed — without touching what belongs to another network or
another registry (stateDir) on the same node.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from cni_yogurt import backend, datapath
from cni_yogurt.datapath import Pins
from cni_yogurt.kernel.netlink import Rtnl, link_kind
from cni_yogurt.line import naming, recovery, wiring
from cni_yogurt.line.registry import End, Registry

# Device group ids GC gathers doomed devices in (one per GC process): far from the small
# numbers people give groups by hand.
_GROUP_BASE = 0x79000000


def device_group() -> int:
    return _GROUP_BASE | os.getpid() & 0xFFFFFF


def remove_ends(registry: Registry, pins: Pins, host: Rtnl, ends: list[End], log: Any) -> None:
    """All at once: one registry write, one pass over the map and one batch of device
    deletions, however many ends go (GC of a thousand stale ends)."""
    doomed = []
    for end in wiring.leave_all(registry, pins, [e.key for e in ends]):
        link = host.link(end.host_ifname)
        if link is not None and link_kind(link) in backend.DEVICE_KINDS:
            doomed.append(link["index"])  # labelled or not (a crash before ADD labelled it)
        log.info("gc: removed end", end=end.key, line=end.line)
    host.delete_links(doomed, device_group())


def leftovers(
    registry: Registry, pins: Pins, host: Rtnl, state_dir: str, network: str, keep: set[str]
) -> None:
    """Devices and pins no line knows of: left by a crash, or by ends just removed; a
    device labelled for another network or registry is not this GC's business.

    Swept under the registry lock, keeping every end on record by then: an ADD reserves
    its end before it makes its device and pins its links. A device is unlabelled from
    its creation until its ADD labels it, one netlink request later: unlabelled, it may be
    an ADD in flight for another registry (stateDir), whose lock this GC does not hold, so
    it is left alone (the devices of the ends removed before are gone already). Pins go
    with their device, or when it is gone. (Swept from a read before the lock, GC deleted
    the devices and unpinned the links of ADDs running in parallel, and unpinned every
    link of another registry's ends on the same bpffsDir: veth ends lost their guard.)"""
    tag = recovery.state_tag(state_dir)
    with registry.transaction() as now:
        keep = keep | {e.host_ifname for e in now.values()}
        devices = {
            link.get_attr("IFLA_IFNAME"): link
            for link in host.links()
            if naming.is_ours(link.get_attr("IFLA_IFNAME")) and link_kind(link) in backend.DEVICE_KINDS
        }

        def sweep(name: str) -> bool:
            if name in keep:
                return False
            if name not in devices:
                return True  # pins of a device that is gone
            label = recovery.parse_alias(devices[name].get_attr("IFLA_IFALIAS"))
            if label is None:
                return False
            return label.get("n", network) == network and label.get("d", tag) == tag

        with contextlib.suppress(OSError):
            host.delete_links(
                [link["index"] for name, link in devices.items() if sweep(name)], device_group()
            )
        if pins.loaded():  # counters of devices that are gone (deleted by hand, or above)
            present = {link["index"] for link in host.links()}
            with datapath.CounterMap(pins) as counters:
                for index in set(counters.keys()) - present:
                    counters.stop(index)
            with datapath.RemoteMap(pins) as remotes:  # remote wiring of devices that are gone
                wired = {index for index, _ in remotes.items()} | {i for _, (i, _) in remotes.ways_in()}
                if wired - present:
                    remotes.cut(*(wired - present), thorough=True)
        for where in (pins, *pins.others()):  # an older release's too: it can then go
            for name in datapath.pinned_link_names(where):
                if sweep(name):
                    datapath.detach(where, name)
