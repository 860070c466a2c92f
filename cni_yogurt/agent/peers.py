"""The node's WireGuard peers: one per other node of the cluster, as etcd registers them
(agent/cluster.py's reconciler sets them through `wg`)."""

from __future__ import annotations

from cni_yogurt.agent import devices
from cni_yogurt.cluster import nodes


def wg_peers(dev: str) -> dict[str, tuple[str, str]]:
    """The device's peers: public key -> (endpoint, allowed ips), as `wg show dump` says."""
    out: dict[str, tuple[str, str]] = {}
    for line in devices.wg("show", dev, "dump").splitlines()[1:]:  # the first line is the device itself
        fields = line.split("\t")
        if len(fields) >= 4:
            out[fields[0]] = (fields[2], fields[3])
    return out


def wanted_peers(others: dict[str, nodes.NodeInfo]) -> dict[str, tuple[str, str]]:
    return {
        info.wg_public_key: (info.tunnel_endpoint, f"{info.wg_address}/32")
        for info in others.values()
        if info.wg_address
    }


def sync_peers(dev: str, want: dict[str, tuple[str, str]]) -> list[str]:
    """Make the device's peers `want`; what changed."""
    have = wg_peers(dev)
    changed = []
    for key in sorted(set(have) - set(want)):
        devices.wg("set", dev, "peer", key, "remove")
        changed.append(f"-{key}")
    for key, (endpoint, allowed) in sorted(want.items()):
        if have.get(key) != (endpoint, allowed):
            devices.wg("set", dev, "peer", key, "endpoint", endpoint, "allowed-ips", allowed)
            changed.append(f"+{key}")
    return changed
