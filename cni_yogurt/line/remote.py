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
IPv4 underlay/WireGuard addresses only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cni_yogurt.datapath import Pins


@dataclass(frozen=True)
class RemotePartner:
    vni: int  # the line's tunnel id, 1 .. 2**24 - 1, allocated in etcd (cluster/vni.py)
    node_address: ipaddress.IPv4Address  # the partner node's WireGuard address: outer destination and
    # the only outer source accepted for this VNI


def attach_tunnel(pins: Pins, tunnel_ifname: str) -> int:
    """Attach the receive program to the node's tunnel device (pinned, survives the caller);
    idempotent. Returns the tunnel device's ifindex."""
    raise NotImplementedError


def detach_tunnel(pins: Pins, tunnel_ifname: str) -> None:
    """Remove the receive program's pinned link (teardown, tests)."""
    raise NotImplementedError


def wire_remote(pins: Pins, host_ifindex: int, partner: RemotePartner, tunnel_ifindex: int) -> None:
    """Send a local end's packets to its remote partner, and accept the partner's."""
    raise NotImplementedError


def cut_remote(pins: Pins, host_ifindex: int) -> None:
    """Undo wire_remote for one end (no-op if it was not wired): it fails closed at once."""
    raise NotImplementedError


def remote_partners(pins: Pins) -> dict[int, RemotePartner]:
    """Every local end wired to a remote partner, by host-side ifindex (what the agent diffs against)."""
    raise NotImplementedError
