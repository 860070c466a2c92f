"""The node's guard on the tunnel's UDP port: tunnel packets are taken only from WireGuard.

Why the agent puts it there itself: the kernel's VXLAN socket listens on every address of the
node, so without it a frame sent in clear to the node's underlay address reaches the tunnel
device.  The tunnel's receive program drops what does not come from the WireGuard address a
line's tunnel id is bound to, but on the underlay that outer source can be forged; only the
device a packet came in on tells WireGuard's (authenticated, decrypted) packets from the rest.
So one nftables rule, in a table of ours: UDP to the tunnel's port that did not come in on the
WireGuard device is dropped and counted — from the underlay, and from the node itself (`lo`).

The table stays when the agent stops, as the pinned programs do: the lines it guards keep
running.  `nft delete table inet cni_yogurt` removes it by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cni_yogurt.agent.tools import run_tool

TABLE = "cni_yogurt"
RULE = "tunnel-only-through-wireguard"  # the rule's comment: how tests and doctor find it
NFT_TIMEOUT = 10.0


class FirewallError(RuntimeError):
    pass


@dataclass(frozen=True)
class TunnelDevice:
    name: str
    kind: str
    port: int  # the UDP port its socket listens on
    external: bool  # metadata mode: whoever sends sets the tunnel key per packet


def ruleset(port: int, wireguard_device: str) -> str:
    """The whole table, replaced in one `nft -f` transaction (creating it first makes the
    delete valid on a node that has none yet), so there is no moment without the rule."""
    _check_ifname(wireguard_device)
    return (
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        "    chain input {\n"
        "        type filter hook input priority -10; policy accept;\n"
        f'        udp dport {port} iifname != "{wireguard_device}" counter drop comment "{RULE}"\n'
        "    }\n"
        "}\n"
    )


def _check_ifname(name: str) -> None:
    # Goes into the ruleset's text: a name the kernel would take and nft cannot misread.
    if not name or len(name) > 15 or any(c in name for c in "\"'\\ \t\n/;{}#"):
        raise FirewallError(f"not a device name: {name!r}")


def _nft(argv: list[str], script: str | None = None) -> str:
    return run_tool(
        ["nft", *argv], error=FirewallError, install="nftables", stdin=script, timeout=NFT_TIMEOUT
    )


def tunnel_device(name: str) -> TunnelDevice:
    """What the kernel says of the node's tunnel device (netlink: no ip(8) needed)."""
    from cni_yogurt.kernel.netlink import Rtnl, link_data, link_kind

    with Rtnl() as rtnl:
        link = rtnl.link(name)
    if link is None:
        raise FirewallError(f"tunnelDevice {name!r}: not found")
    data = link_data(link)
    return TunnelDevice(
        name,
        str(link_kind(link) or ""),
        int(data.get("IFLA_VXLAN_PORT") or 0),
        bool(data.get("IFLA_VXLAN_COLLECT_METADATA")),
    )


def install(tunnel: TunnelDevice, wireguard_device: str) -> None:
    if tunnel.kind != "vxlan" or not tunnel.external or not tunnel.port:
        raise FirewallError(
            f"tunnelDevice {tunnel.name!r} is not a VXLAN device in external mode "
            f"(ip link add {tunnel.name} type vxlan external dstport 4789)"
        )
    _nft(["-f", "-"], ruleset(tunnel.port, wireguard_device))


def remove() -> bool:
    """Delete our table (the node leaves the cluster); False if there was none."""
    try:
        _nft(["delete", "table", "inet", TABLE])
    except FirewallError as e:
        if "No such file" in str(e):
            return False
        raise
    return True


def guarding(port: int, wireguard_device: str) -> int | None:
    """Packets the rule dropped so far, or None when our table has no such rule (for the port
    and device given): what `yogurt doctor` reports."""
    try:
        listed = json.loads(_nft(["-j", "list", "table", "inet", TABLE]))
    except FirewallError:
        return None
    for item in listed.get("nftables", []):
        rule = item.get("rule")
        if not rule or rule.get("comment") != RULE:
            continue
        text = json.dumps(rule["expr"])
        if f'"right": {port}' in text and f'"right": "{wireguard_device}"' in text:
            return sum(int(e["counter"]["packets"]) for e in rule["expr"] if "counter" in e)
    return None
