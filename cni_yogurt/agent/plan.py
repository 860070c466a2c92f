"""The reconciler's view and plan, pure: what etcd says about the cluster (the watch's mirror,
parsed), and what this node should look like given that and the ends it has.  Touching the node
(maps, devices, WireGuard peers) is agent/cluster.py's."""

from __future__ import annotations

from dataclasses import dataclass, field

from cni_yogurt.cluster import compat, nodes
from cni_yogurt.cluster.claims import Claim
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.watch import Snapshot
from cni_yogurt.line.registry import End


@dataclass
class View:
    nodes: dict[str, nodes.NodeInfo] = field(default_factory=dict)
    ends: dict[str, list[Claim]] = field(default_factory=dict)  # by line
    vnis: dict[str, int] = field(default_factory=dict)  # by line
    releases: dict[str, compat.NodeRelease] = field(default_factory=dict)  # by node


def parse_view(keys: Keys, snap: Snapshot) -> View:
    """The mirror's keys as nodes, claims by line and tunnel ids; what does not parse is left out."""
    view = View()
    node_head, lines_head, releases_head = keys.nodes(), keys.lines(), keys.releases()
    for key, kv in sorted(snap.items()):
        try:
            if key.startswith(node_head):
                info = nodes.NodeInfo.decode(kv.value)
                view.nodes[info.name] = info
            elif key.startswith(releases_head):
                view.releases[keys.node_of_release(key)] = compat.NodeRelease.decode(kv.value)
            elif key.startswith(lines_head):
                line = keys.line_of(key)
                if line is None:
                    continue
                if key == keys.line_vni(line):
                    view.vnis[line] = int(kv.value)
                elif key.startswith(keys.line_ends(line)):
                    view.ends.setdefault(line, []).append(Claim.decode(kv))
        except (ValueError, TypeError):
            continue
    return view


@dataclass
class Plan:
    wire: dict[int, tuple[str, str]]  # host-side ifindex -> (line, partner's node)
    orphans: list[Claim]  # this node's ready claims whose end is not on the node
    peers: dict[str, nodes.NodeInfo]  # every other node
    refused: dict[str, list[str]] = field(default_factory=dict)  # node of another protocol -> lines


def plan(view: View, me: str, local: dict[str, End]) -> Plan:
    """What the node should look like, given what etcd says and the ends the node has."""
    wire: dict[int, tuple[str, str]] = {}
    orphans: list[Claim] = []
    refused: dict[str, list[str]] = {}
    for line, claims in view.ends.items():
        for c in claims:
            if c.node != me or not c.ready:
                continue
            end = local.get(c.end_key)
            if end is None or end.line != line:
                orphans.append(c)
                continue
            if not end.ready or end.leaving or not end.host_ifindex or end.down:
                continue  # DEL is taking it down, or it is set down (`yogurt link`)
            partner = next(
                (o for o in claims if o.node != me and o.ready and o.node in view.nodes),
                None,
            )
            if partner is None or not view.nodes[partner.node].wg_address:
                continue
            if not compat.of(view.releases, partner.node).compatible:
                refused.setdefault(partner.node, []).append(line)
                continue
            wire[end.host_ifindex] = (line, partner.node)
    peers = {name: info for name, info in view.nodes.items() if name != me}
    return Plan(wire, orphans, peers, refused)
