"""Link state: an end (or a whole line) set down, as a lab unplugs a cable, and up again.

Down, an end is cut from its partner first (nothing passes either way) and then its host device
goes down: the container sees its interface lose carrier (NO-CARRIER) while the interface itself
stays as the container left it — the one lever veth and netkit give, as neither lets carrier be
set.  Up, the host device comes up first and then the end is wired to its partner again, if that
one is up too.  The state lives in the line registry (End.down: why it is down), so a partner's
later ADD does not wire to a down end and `yogurt status` shows it; for an end on a line across
nodes, the agent publishes a line's state in the end's claim and the far node's agent follows it
(agent/cluster.py).  Used by `yogurt link` and by the agent: one implementation.
"""

from __future__ import annotations

import os
import time

from cni_yogurt.datapath import Pins
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.kernel.netns import open_netns
from cni_yogurt.line import wiring
from cni_yogurt.line.registry import End, Registry

IF_OPER_UP = 6  # linux/if.h
OPERATIONAL_WAIT = 3.0  # seconds; the kernel's link watch turns carrier into "up" within one


def apply(registry: Registry, pins: Pins, keys: list[str], down: str) -> list[End]:
    """Set the ends `keys` down (`down`: why, see End.down) or up (""): maps, registry, devices."""
    with Rtnl() as host:
        if down:
            done = wiring.set_down(registry, pins, keys, down)
            for e in done:
                if e.host_ifindex:
                    host.set_down(e.host_ifindex)
            return done
        ends = registry.snapshot()
        for found in (ends.get(key) for key in keys):
            if found is not None and found.host_ifindex and found.ready and not found.leaving:
                host.set_up(found.host_ifindex)
        return wiring.set_down(registry, pins, keys, "")


def wait_operational(ends: list[End], timeout: float = OPERATIONAL_WAIT) -> None:
    """Until each end's container interface is operational again, or `timeout` passed: the
    kernel drops what is sent between carrier and "up" (a deferred worker's, up to a second)."""
    deadline = time.monotonic() + timeout
    for e in ends:
        if not e.peer_ifindex:
            continue
        try:
            fd = open_netns(e.netns)
        except OSError:
            continue  # its container is gone: nothing to wait for
        try:
            with Rtnl.in_netns(fd) as cont:
                while time.monotonic() < deadline:
                    found = cont.link_by_index(e.peer_ifindex)
                    if found is None or found.get_attr("IFLA_OPERSTATE") == IF_OPER_UP:
                        break
                    time.sleep(0.02)
        finally:
            os.close(fd)
