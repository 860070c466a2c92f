"""Cluster mode as an operator runs it: nodes on which nothing but the underlay was made, a TLS
etcd on the underlay, and one `yogurt agent --cluster <file>` per node that makes its own
WireGuard device (here wireguard-go: this kernel has no WireGuard), key and address (from the
cluster's range), its tunnel device and its firewall rule; then its outages and restarts, an end
whose line was taken while its node was away, and `yogurt leave`.

Root, wireguard-go, wg, nft and an etcd (`make cluster-net`); about two minutes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CONTAINERS,
    Cluster,
    NodeAgent,
    agents_on_nodes,
    guard_drops,
    line_across,
    plugin,
    remote_wired,
    require_node_lab,
    send_forged,
    wait_until,
)

from cni_yogurt import lab
from cni_yogurt.agent import devices, firewall, frontend
from cni_yogurt.cluster.nodes import NodeInfo
from cni_yogurt.lab.nodes import (
    VXLAN_IF,
    VXLAN_MTU,
    VXLAN_PORT,
    WG_MTU,
    WG_PORT,
    WIREGUARD,
    ipv4_udp,
    vxlan_packet,
)

NODES = 3
LEASE = 4  # seconds: the node's lease (leaseSeconds), short so that "down twice its lease" is quick

require_node_lab()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    top = tmp_path_factory.mktemp("agent-owned")
    with agents_on_nodes(top, NODES, owned=True, tls=True, leaseSeconds=LEASE) as made:
        yield made


def _record(cluster: Cluster, agent: NodeAgent) -> NodeInfo | None:
    kv = cluster.client.get(cluster.keys.node(agent.name))
    return NodeInfo.decode(kv.value) if kv else None


def _wg_if(cluster: Cluster, agent: NodeAgent) -> str:
    return cluster.nodes.nodes[agent.index].wg_if


def _link(agent: NodeAgent, name: str) -> dict[str, Any]:
    [link] = json.loads(agent.sh("ip", "-j", "-d", "link", "show", "dev", name))
    return dict(link)


def _has_link(agent: NodeAgent, name: str) -> bool:
    return name in [link["ifname"] for link in json.loads(agent.sh("ip", "-j", "link", "show"))]


def test_each_agent_makes_its_wire_and_publishes_only_the_public_key(cluster: Cluster) -> None:
    addresses = set()
    for agent in cluster.agents:
        wg_if = _wg_if(cluster, agent)
        key = agent.data_dir / devices.KEY_FILE
        assert key.stat().st_mode & 0o777 == 0o600
        public = subprocess.run(
            ["wg", "pubkey"], input=key.read_text(), capture_output=True, text=True, check=True
        ).stdout.strip()
        assert agent.sh("wg", "show", wg_if, "public-key").strip() == public
        info = _record(cluster, agent)
        assert info is not None and info.wg_public_key == public and info.wg_port == WG_PORT
        assert ipaddress.IPv4Address(info.wg_address) in WIREGUARD
        addresses.add(info.wg_address)
        # wireguard-go serves the device, in a session of its own: it outlives the agent.
        pid = devices.wireguard_go_pid(wg_if)
        assert pid is not None and os.getsid(pid) != os.getsid(agent.proc.pid if agent.proc else 0)
        # MTUs from the underlay's 1500: WireGuard 1420, the tunnel 1370.
        assert _link(agent, wg_if)["mtu"] == WG_MTU
        vxlan = _link(agent, VXLAN_IF)
        data = vxlan["linkinfo"]["info_data"]
        assert (vxlan["linkinfo"]["info_kind"], data.get("external"), data["port"], vxlan["mtu"]) == (
            "vxlan",
            True,
            VXLAN_PORT,
            VXLAN_MTU,
        )
        assert json.loads((agent.data_dir / devices.OWNED_FILE).read_text()) == {
            "wireguard": "wireguard-go",
            "tunnel": True,
        }
    assert len(addresses) == NODES
    # doctor names the device as the agent made it.
    a = cluster.agents[0]
    run = subprocess.run(
        ["nsenter", f"--net=/run/netns/{a.netns}", *a.command, "doctor", "--json"]
        + ["--state-dir", a.state_dir, "--bpffs-dir", a.bpffs_dir, "--cluster", str(a.cluster_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    found = {f["name"]: f for f in json.loads(run.stdout)}
    assert found["wireguard"]["ok"] and f"(wireguard-go), UDP {WG_PORT}" in found["wireguard"]["detail"], (
        found
    )
    assert found["tunnel"]["ok"], found
    # No private key anywhere in the store.
    kvs, _ = cluster.client.get_prefix(cluster.keys.all())
    secrets = [(a.data_dir / devices.KEY_FILE).read_text().strip().encode() for a in cluster.agents]
    assert not [kv.key for kv in kvs for s in secrets if s in kv.value]


def test_a_line_across_pings_and_talks_tcp_hosts_locked_out_underlay_injection_refused(
    cluster: Cluster,
) -> None:
    a, b = cluster.agents[:2]
    node_a, node_b = cluster.nodes.nodes[:2]
    b_info = _record(cluster, b)
    assert b_info is not None
    with line_across(cluster, a, b, "own1", 11) as (ca, cb, ip_a, ip_b):
        assert lab.ping(ca, ip_b, count=3, wait=2) == 3
        assert lab.ping(cb, ip_a, count=3, wait=2) == 3
        assert lab.tcp_exchange(cb, ip_b, ca)
        assert lab.tcp_exchange(ca, ip_a, cb, port=4243)
        for node in (node_a, node_b):
            assert lab.ping(node.netns, ip_a, count=1, wait=1) == 0
            assert lab.ping(node.netns, ip_b, count=1, wait=1) == 0
        # A VXLAN frame in clear on the underlay with the line's tunnel id, forging node b's
        # WireGuard address as its source: the agent's own rule drops it.
        vni = cluster.vni("own1")
        assert vni
        mac = json.loads(ca.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
        frame = ipv4_udp(
            b_info.wg_address,
            str(node_a.underlay),
            VXLAN_PORT,
            vxlan_packet(vni, mac, ipv4_udp(ip_b, ip_a, 7311, b"forged")),
        )
        before = guard_drops(a)
        assert (
            lab.udp_receive(ca, ip_a, 7311, lambda: send_forged(node_b.netns, frame, str(node_a.underlay)))
            is None
        )
        assert guard_drops(a) > before
        assert "tunnel-only-through-wireguard" in a.sh("nft", "list", "table", "inet", firewall.TABLE)


def _ping_flood(src: lab.Netns, dst: str, count: int, out: list[int]) -> threading.Thread:
    """`count` echoes at 100/s from `src` (each waited for up to 2 s); the replies into `out`."""

    def run() -> None:
        proc = src.run("ping", "-n", "-q", "-i", "0.01", "-W", "2", "-c", str(count), dst)
        line = next((x for x in proc.stdout.splitlines() if "received" in x), "")
        out.append(int(line.split(",")[1].split()[0]) if line else -1)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_agent_restarted_drops_no_packet_of_a_100_per_second_ping(cluster: Cluster) -> None:
    a, b = cluster.agents[:2]
    wg_if = _wg_if(cluster, a)
    before = (_record(cluster, a), _link(a, wg_if)["ifindex"], _link(a, VXLAN_IF)["ifindex"])
    with line_across(cluster, a, b, "own2", 13) as (ca, _cb, _ip_a, ip_b):
        replies: list[int] = []
        flood = _ping_flood(ca, ip_b, 700, replies)  # 7 s, across the stop and the start
        time.sleep(1)
        assert a.stop(signal.SIGTERM) == 0
        a.start().ready()
        flood.join(timeout=60)
        assert replies == [700], a.log_text()
    # The same devices (adopted, not made again), the same key, address and port.
    after = (_record(cluster, a), _link(a, wg_if)["ifindex"], _link(a, VXLAN_IF)["ifindex"])
    assert after == before


def test_an_agent_down_twice_its_lease_brings_its_lines_back_by_itself(cluster: Cluster) -> None:
    a, b = cluster.agents[:2]
    with line_across(cluster, a, b, "own3", 15) as (ca, cb, ip_a, ip_b):
        address = _record(cluster, a)
        a.stop(signal.SIGKILL)
        down = time.monotonic()
        # Its lease runs out: its record and its end's claim go, the partner fails closed.
        assert wait_until(lambda: _record(cluster, a) is None, 3 * LEASE)
        assert wait_until(lambda: remote_wired(b) == {}, 5)
        assert lab.ping(cb, ip_a, count=1, wait=1) == 0
        assert [c.node for c in cluster.claims("own3")] == [b.name]
        time.sleep(max(0.0, 2 * LEASE - (time.monotonic() - down)))
        a.start().ready()
        # Claimed again from the node's registry, under a new lease: the line passes again.
        assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 1, 10), a.log_text()
        assert lab.ping(cb, ip_a, count=3, wait=2) == 3
        claims = {c.node: c for c in cluster.claims("own3")}
        assert sorted(claims) == [a.name, b.name] and claims[a.name].ready
        assert _record(cluster, a) == address  # the same key and WireGuard address
        assert "claimed again" in a.log_text()


def _lost_metric(path: Path) -> float:
    """yogurt_cluster_ends_lost as the agent's metrics socket serves it."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith("yogurt_cluster_ends_lost ")]
    return float(value)


def test_an_end_whose_line_was_taken_meanwhile_stays_closed_and_is_named(cluster: Cluster) -> None:
    a, b, c = cluster.agents
    ca, cb, cc = cluster.container("lost-a"), cluster.container("lost-b"), cluster.container("lost-c")
    ip_a, ip_b, ip_c = f"{CONTAINERS}.71", f"{CONTAINERS}.72", f"{CONTAINERS}.73"
    try:
        assert plugin("ADD", a.conf(line="own4"), ca, "own4-a", cni_args=f"IP={ip_a}/24").rc == 0
        assert plugin("ADD", b.conf(line="own4"), cb, "own4-b", cni_args=f"IP={ip_b}/24").rc == 0
        assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 1, 15)
        a.stop(signal.SIGKILL)
        assert wait_until(lambda: [x.node for x in cluster.claims("own4")] == [b.name], 3 * LEASE)
        # While node a is away its place on the line is free: a third end takes it.
        taken = plugin("ADD", c.conf(line="own4"), cc, "own4-c", cni_args=f"IP={ip_c}/24")
        assert taken.rc == 0, taken.out
        metrics = a.dir / "metrics.sock"
        a.start("--metrics-socket", str(metrics)).ready()
        info = frontend.info(a.state_dir)
        assert info is not None
        assert _lost_metric(metrics) == 1
        [lost] = info["cluster"]["lost"]
        assert lost["end"] == "own4-a/eth0" and lost["line"] == "own4"
        assert sorted(h.split(" on ")[1] for h in lost["holders"]) == [b.name, c.name]
        status = subprocess.run(
            [*a.command, "status", "--state-dir", a.state_dir, "--bpffs-dir", a.bpffs_dir],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "LOST: end own4-a/eth0 of line own4" in status, status
        assert "end lost" in a.log_text()
        # It stays closed; the line's two holders talk.
        assert wait_until(lambda: lab.ping(cc, ip_b, count=1, wait=1) == 1, 15)
        assert lab.ping(ca, ip_b, count=2, wait=1) == 0
        assert sorted(x.node for x in cluster.claims("own4")) == [b.name, c.name]
        # Its DEL works as usual, and it is no longer named.
        assert plugin("DEL", a.conf(line="own4"), ca, "own4-a").rc == 0
        info = frontend.info(a.state_dir)
        assert info is not None and info["cluster"]["lost"] == []
        assert _lost_metric(metrics) == 0
    finally:
        plugin("DEL", a.conf(line="own4"), ca, "own4-a")
        plugin("DEL", b.conf(line="own4"), cb, "own4-b")
        plugin("DEL", c.conf(line="own4"), cc, "own4-c")
    assert cluster.claims("own4") == []


def test_a_device_of_another_kind_is_named_and_never_deleted(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster.agents[2]
    c.sh("ip", "link", "add", "yother0", "type", "bridge")
    try:
        for key in ("wireguardDevice", "tunnelDevice"):
            cfg = json.loads(c.cluster_file.read_text()) | {key: "yother0"}
            d = tmp_path / key
            d.mkdir()
            other = NodeAgent(c.index, c.netns, d, c.bpffs_dir, d / "cluster.json")
            other.cluster_file.write_text(json.dumps(cfg))
            other.start()
            assert other.proc is not None and other.proc.wait(60) == 1, other.log_text()
            assert f"{key} 'yother0' exists and is" in other.log_text()
            assert "never deletes it" in other.log_text()
            assert _has_link(c, "yother0")
    finally:
        c.sh("ip", "link", "del", "yother0")


def test_leave_removes_what_the_agent_made_and_says_what_it_left(cluster: Cluster) -> None:
    """Last: node c leaves for good."""
    c = cluster.agents[2]
    wg_if = _wg_if(cluster, c)
    ctr = cluster.container("leave")
    assert plugin("ADD", c.conf(line="own5"), ctr, "own5-c", cni_args=f"IP={CONTAINERS}.81/24").rc == 0
    address = _record(cluster, c)
    assert address is not None
    assert c.stop(signal.SIGTERM) == 0
    run = subprocess.run(
        ["nsenter", f"--net=/run/netns/{c.netns}", *c.command, "leave", "--cluster", str(c.cluster_file)]
        + ["--state-dir", c.state_dir, "--bpffs-dir", c.bpffs_dir, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["ends_left"] == ["own5-c/eth0 (xnet)"]
    assert report["released"]["wireguard_addresses"] == [address.wg_address]
    assert report["firewall_removed"] is True
    assert not _has_link(c, wg_if) and not _has_link(c, VXLAN_IF)
    assert devices.wireguard_go_pid(wg_if) is None
    assert c.sh("nft", "list", "tables").find(firewall.TABLE) == -1
    assert _record(cluster, c) is None and cluster.claims("own5") == []
    assert (c.data_dir / devices.KEY_FILE).exists()  # kept: the node may come back as itself
    # The end it left is the runtime's to DEL, which works without the agent.
    assert plugin("DEL", c.conf(line="own5"), ctr, "own5-c").rc == 0
