"""A cluster on one machine (cni_yogurt/lab/nodes.py): nodes as netns on an underlay, WireGuard
(the kernel's where it has one, else wireguard-go) between them, a VXLAN device in external mode over it.

Needs root, wg, nft and wireguard-go (`make cluster-net`, with YOGURT_REQUIRE_KERNEL=1: anything missing
fails the run instead of skipping it).  About 5 s.  Every lab is checked to leave nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cni_yogurt.lab import ping, socket_in
from cni_yogurt.lab.nodes import (
    UNDERLAY,
    VXLAN_IF,
    VXLAN_PORT,
    WG_PORT,
    WIREGUARD,
    WIREGUARD_ENV,
    Node,
    NodeLab,
    NodeLabError,
    kernel_wireguard,
    missing_tools,
)

INNER = ["10.217.0.1", "10.217.0.2"]  # node i's address on its VXLAN device, for the tests' routes
VNI = 4242


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the node lab needs root"
    tools = missing_tools(extra=("wireguard-go",))  # the failing-start test runs it
    return f"missing {', '.join(tools)} (packaging/install-deps.sh)" if tools else None


if (_why := _missing()) is not None:
    if os.environ.get("YOGURT_REQUIRE_KERNEL") == "1":
        raise pytest.UsageError(f"YOGURT_REQUIRE_KERNEL=1 but {_why}")
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[NodeLab]:
    with NodeLab(2) as nodes:
        yield nodes
    assert nodes.leftovers() == []


def test_nodes_ping_each_other_over_wireguard_whose_peers_are_on_the_underlay(lab: NodeLab) -> None:
    a, b = lab.nodes
    assert ping(a.netns, str(b.wg_addr), count=3, wait=5) == 3
    assert ping(b.netns, str(a.wg_addr), count=3, wait=5) == 3
    for node, peer in ((a, b), (b, a)):
        assert node.sh("wg", "show", node.wg_if, "endpoints").split() == [
            peer.public_key,
            f"{peer.underlay}:{WG_PORT}",
        ]
        [(key, stamp)] = [
            line.split() for line in node.sh("wg", "show", node.wg_if, "latest-handshakes").splitlines()
        ]
        assert key == peer.public_key and int(stamp) > 0
    # The private key stays in the node's dir, readable by root alone.
    assert a.private_key_file.stat().st_mode & 0o777 == 0o600
    assert a.sh("wg", "show", a.wg_if, "public-key").strip() == a.public_key


def steer_into_vxlan(node: Node, peer: Node, mine: str, theirs: str) -> None:
    """What the tunnel programs will do per packet (bpf_skb_set_tunnel_key), here as a route:
    frames for `theirs` leave through the external VXLAN device with VNI and outer destination
    set by the route, to the peer's WireGuard address."""
    node.sh("ip", "addr", "add", f"{mine}/32", "dev", VXLAN_IF)
    node.sh(
        "ip",
        "route",
        "add",
        f"{theirs}/32",
        "encap",
        "ip",
        "id",
        str(VNI),
        "dst",
        str(peer.wg_addr),
        "dev",
        VXLAN_IF,
    )
    node.sh("ip", "neigh", "add", theirs, "lladdr", peer.mac(VXLAN_IF), "dev", VXLAN_IF, "nud", "permanent")


def test_a_vxlan_frame_crosses_wireguard_between_nodes(lab: NodeLab) -> None:
    a, b = lab.nodes
    steer_into_vxlan(a, b, INNER[0], INNER[1])
    steer_into_vxlan(b, a, INNER[1], INNER[0])
    # The outer packets' way: the peer's WireGuard address is behind the WireGuard device.
    assert f"dev {a.wg_if}" in a.sh("ip", "route", "get", str(b.wg_addr))
    vx_before, wg_before = b.link_stats(VXLAN_IF), b.link_stats(b.wg_if)
    clear_before = b.dropped("vxlan-off-wireguard")
    assert ping(a.netns, INNER[1], count=5, wait=5) == 5  # there in a VXLAN frame over WireGuard, and back
    vx_after, wg_after = b.link_stats(VXLAN_IF), b.link_stats(b.wg_if)
    assert vx_after["rx_packets"] - vx_before["rx_packets"] >= 5
    assert wg_after["rx_packets"] - wg_before["rx_packets"] >= 5
    assert b.dropped("vxlan-off-wireguard") == clear_before


def vxlan_frame(dst_mac: str) -> bytes:
    """A VXLAN packet's UDP payload: the header (VNI) and an Ethernet frame of a local-experimental
    ethertype (no inner IP header for the device to check)."""
    header = struct.pack("!B3xI", 0x08, VNI << 8)
    ether = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("020000000001") + b"\x88\xb5"
    return header + ether + bytes(46)


def send_udp(node: Node, payload: bytes, address: str, port: int) -> None:
    with socket_in(node.netns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, (address, port))


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10  # immediate when idle; this machine is not always
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_vxlan_is_taken_only_from_inside_wireguard_not_in_clear_from_the_underlay(lab: NodeLab) -> None:
    a, b = lab.nodes
    frame = vxlan_frame(a.mac(VXLAN_IF))
    # In clear over the underlay: dropped before the VXLAN socket, the device sees nothing.
    rx, dropped = a.link_stats(VXLAN_IF)["rx_packets"], a.dropped("vxlan-off-wireguard")
    send_udp(b, frame, str(a.underlay), VXLAN_PORT)
    wait_for(lambda: a.dropped("vxlan-off-wireguard") == dropped + 1, "the clear frame was not dropped")
    assert a.link_stats(VXLAN_IF)["rx_packets"] == rx
    # The same bytes through WireGuard: the device takes them.
    send_udp(b, frame, str(a.wg_addr), VXLAN_PORT)
    wait_for(
        lambda: a.link_stats(VXLAN_IF)["rx_packets"] == rx + 1, "the frame over WireGuard did not arrive"
    )
    assert a.dropped("vxlan-off-wireguard") == dropped + 1


def test_the_wireguard_port_is_reachable_only_on_the_underlay(lab: NodeLab) -> None:
    a, b = lab.nodes
    # From inside the tunnel (any interface but the underlay): dropped.
    dropped = a.dropped("wireguard-off-underlay")
    send_udp(b, b"not a handshake", str(a.wg_addr), WG_PORT)
    wait_for(
        lambda: a.dropped("wireguard-off-underlay") == dropped + 1,
        "WireGuard's port answered off the underlay",
    )
    # Each node's WireGuard, and so its UDP socket, lives in its node's netns, not the host's: a
    # kernel device made there, or a wireguard-go process started there.
    for node in lab.nodes:
        if lab.wireguard == "kernel":
            assert node.wireguard is None and link_kind(node, node.wg_if) == "wireguard"
        else:
            assert node.wireguard is not None and link_kind(node, node.wg_if) == "tun"
            assert Path(f"/proc/{node.wireguard.pid}/comm").read_text().strip() == "wireguard-go"
            assert os.stat(f"/proc/{node.wireguard.pid}/ns/net").st_ino == os.stat(node.netns.path).st_ino
        assert f":{WG_PORT} " in node.sh("ss", "-uln", "sport", "=", str(WG_PORT))
    # The host has no address on the underlay or the WireGuard net: nothing of the lab reaches it.
    host = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
    for link in host:
        for addr in link.get("addr_info", []):
            if addr["family"] == "inet":
                ip = ipaddress.ip_address(addr["local"])
                assert ip not in UNDERLAY and ip not in WIREGUARD, link["ifname"]


def link_kind(node: Node, ifname: str) -> str:
    [link] = json.loads(node.sh("ip", "-d", "-j", "link", "show", "dev", ifname))
    return str(link["linkinfo"]["info_kind"])


def test_the_lab_takes_the_kernels_wireguard_where_the_kernel_has_it(lab: NodeLab) -> None:
    wanted = os.environ.get(WIREGUARD_ENV, "auto")  # as the environment asks, if it does
    auto = "kernel" if kernel_wireguard() else "go"
    assert lab.wireguard == (wanted if wanted in ("kernel", "go") else auto)
    # Asked for by name: wireguard-go anywhere; the kernel's only where there is one, else named
    # (and the lab's dir, made before, removed again).
    if not kernel_wireguard():
        other = NodeLab(2, wireguard="kernel")
        with pytest.raises(NodeLabError, match="kernel WireGuard asked for"):
            other.start()
        assert other.leftovers() == []
    bad = NodeLab(2, wireguard="boring")
    with pytest.raises(NodeLabError, match="not one of auto, kernel, go"):
        bad.start()
    assert bad.leftovers() == []


def test_a_lab_leaves_nothing_behind_even_when_a_node_fails_to_start(tmp_path: Path) -> None:
    # The second node's wireguard-go fails after the first one's is up (wireguard-go asked for by
    # name: where the kernel has WireGuard, the lab would not run it).
    flaky = tmp_path / "wireguard-go"
    flaky.write_text(
        '#!/bin/sh\ncase "$2" in *n1) echo "no tun for you" >&2; exit 1;; esac\nexec wireguard-go "$@"\n'
    )
    flaky.chmod(0o755)
    lab = NodeLab(2, wireguard="go", wireguard_go=str(flaky))
    with pytest.raises(NodeLabError, match="node 1 did not come up: no tun for you"):
        lab.start()
    assert lab.nodes[0].wireguard is not None  # it did run
    assert lab.leftovers() == []
    # And a whole lab, closed.
    with NodeLab(3) as lab:
        assert ping(lab.nodes[2].netns, str(lab.nodes[0].wg_addr), count=1, wait=5) == 1
    assert lab.leftovers() == []
