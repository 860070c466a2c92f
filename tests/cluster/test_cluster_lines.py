"""Lines across nodes, end to end: nodes of cni_yogurt/lab/nodes.py (netns, wireguard-go), a
three-member etcd on the lab's underlay (in the hub's netns, tests/cluster/etcdlab.py), and on each
node a real `yogurt agent --cluster`, entered into the node's network namespace only (nsenter --net:
`ip netns exec` would remount /sys and hide bpffs), with its own stateDir and bpffsDir.  The plugin
is exec'd as a runtime would; it hands each call to the node's agent by stateDir.

Root, wireguard-go, wg, nft and an etcd (`make cluster-net`).  A minute or two: three agents load
their programs.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcdlab import EtcdLab
from helpers import (
    CONTAINERS,
    Cluster,
    NodeAgent,
    agents_on_nodes,
    devices,
    guard_drops,
    line_across,
    plugin,
    remote_wired,
    require_node_lab,
    send_forged,
    wait_until,
)

from cni_yogurt import lab
from cni_yogurt.agent import firewall, frontend
from cni_yogurt.capture import pcap
from cni_yogurt.cluster.nodes import NodeInfo
from cni_yogurt.cni.errors import Code
from cni_yogurt.lab.nodes import NFT_TABLE, STORE_ADDRESS, VXLAN_MTU, VXLAN_PORT, ipv4_udp, vxlan_packet
from cni_yogurt.line import naming

NODES = 3


require_node_lab()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with agents_on_nodes(tmp_path_factory.mktemp("cluster-lines"), NODES) as made:
        yield made


def _agent_of(cluster: Cluster, i: int) -> NodeAgent:
    return cluster.agents[i]


def test_agents_register_their_nodes_and_set_wireguard_peers_from_etcd(cluster: Cluster) -> None:
    kvs, _ = cluster.client.get_prefix(cluster.keys.nodes())
    infos = {i.name: i for i in (NodeInfo.decode(kv.value) for kv in kvs)}
    assert sorted(infos) == [a.name for a in cluster.agents]
    for node, agent in zip(cluster.nodes.nodes, cluster.agents, strict=True):
        info = infos[agent.name]
        assert (info.address, info.wg_public_key, info.wg_address) == (
            str(node.underlay),
            node.public_key,
            str(node.wg_addr),
        )
        assert all(kv.lease for kv in kvs)
    # The lab gave WireGuard no peers: the agents set them from the nodes registered.
    a, b = cluster.nodes.nodes[:2]
    assert wait_until(lambda: lab.ping(a.netns, str(b.wg_addr), count=1, wait=2) == 1, 15)
    peers = dict(line.split("\t") for line in a.sh("wg", "show", a.wg_if, "allowed-ips").splitlines())
    assert peers == {n.public_key: f"{n.wg_addr}/32" for n in cluster.nodes.nodes[1:]}


def test_three_adds_racing_on_three_nodes_give_two_ends(cluster: Cluster) -> None:
    runs: dict[int, lab.PluginRun] = {}
    ctrs = [cluster.container(f"race{i}") for i in range(NODES)]

    def add(i: int) -> None:
        conf = _agent_of(cluster, i).conf(line="race")
        runs[i] = plugin("ADD", conf, ctrs[i], f"race-{i}", cni_args=f"IP={CONTAINERS}.{10 + i}/24")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(NODES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = sorted(i for i, r in runs.items() if r.rc == 0)
    lost = [r for r in runs.values() if r.rc != 0]
    assert len(won) == 2, runs
    [loser] = lost
    assert loser.out["code"] == Code.LINE_FULL, loser.out
    assert "held by" in loser.out["details"] and "on node-" in loser.out["details"]
    assert sorted(c.node for c in cluster.claims("race")) == [f"node-{i}" for i in won]
    assert all(c.ready for c in cluster.claims("race"))
    loser_i = next(i for i in runs if i not in won)
    assert devices(_agent_of(cluster, loser_i)) == []  # the loser built nothing
    for i in range(NODES):
        assert plugin("DEL", _agent_of(cluster, i).conf(line="race"), ctrs[i], f"race-{i}").rc == 0
    assert cluster.claims("race") == []
    assert cluster.vni("race") is None
    assert all(devices(a) == [] for a in cluster.agents)


def test_a_cross_node_line_is_claimed_on_both_nodes_with_a_tunnel_id(cluster: Cluster) -> None:
    a, b = cluster.agents[:2]
    ca, cb = cluster.container("xa"), cluster.container("xb")
    try:
        ra = plugin("ADD", a.conf(line="x1"), ca, "x1-a", cni_args=f"IP={CONTAINERS}.1/24")
        assert ra.rc == 0, ra.out
        [only] = cluster.claims("x1")
        assert (only.node, only.ready, only.end_key) == ("node-0", True, "x1-a/eth0")
        rb = plugin("ADD", b.conf(line="x1"), cb, "x1-b", cni_args=f"IP={CONTAINERS}.2/24")
        assert rb.rc == 0, rb.out
        assert sorted((c.node, c.ready) for c in cluster.claims("x1")) == [("node-0", True), ("node-1", True)]
        # Both ends ready on two nodes: the reconcilers allocate the line's tunnel id (one, by transaction).
        assert wait_until(lambda: cluster.vni("x1") is not None, 10)
    except BaseException:
        plugin("DEL", a.conf(line="x1"), ca, "x1-a")
        plugin("DEL", b.conf(line="x1"), cb, "x1-b")
        raise
    assert plugin("DEL", a.conf(line="x1"), ca, "x1-a").rc == 0
    assert [c.node for c in cluster.claims("x1")] == ["node-1"]
    assert cluster.vni("x1") is not None  # the line still has an end
    assert plugin("DEL", b.conf(line="x1"), cb, "x1-b").rc == 0
    assert cluster.claims("x1") == []
    assert cluster.vni("x1") is None


def test_ping_and_tcp_across_nodes_hosts_locked_out_and_del_fails_closed(cluster: Cluster) -> None:
    """Needs the cross-node datapath (line/remote.py): fails, not skips, where it is missing."""
    a, b = cluster.agents[:2]
    ca, cb = cluster.container("pa"), cluster.container("pb")
    ip_a, ip_b = f"{CONTAINERS}.21", f"{CONTAINERS}.22"
    try:
        # No mtu in the config: the pair gets what the tunnel inside WireGuard carries.
        added = plugin("ADD", a.conf(line="p1"), ca, "p1-a", cni_args=f"IP={ip_a}/24")
        assert added.rc == 0, added.out
        assert [i.get("mtu") for i in added.out["interfaces"]] == [VXLAN_MTU, VXLAN_MTU]
        assert plugin("ADD", b.conf(line="p1"), cb, "p1-b", cni_args=f"IP={ip_b}/24").rc == 0
        assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 1, 15), a.log_text() + b.log_text()
        for ctr in (ca, cb):
            [eth0] = json.loads(ctr.run("ip", "-j", "link", "show", "eth0").stdout)
            assert eth0["mtu"] == VXLAN_MTU
        # A full-size packet that may not be fragmented crosses (ICMP 8 + IPv4 20 bytes of headers).
        full = ca.run("ping", "-n", "-q", "-c", "1", "-W", "2", "-M", "do", "-s", str(VXLAN_MTU - 28), ip_b)
        assert " 1 received" in full.stdout, full.stdout + full.stderr
        assert lab.ping(cb, ip_a, count=3, wait=2) == 3
        assert lab.tcp_exchange(cb, ip_b, ca)
        assert lab.tcp_exchange(ca, ip_a, cb, port=4243)
        # Neither node's host reaches either container.
        for node in cluster.nodes.nodes[:2]:
            assert lab.ping(node.netns, ip_a, count=1, wait=1) == 0
            assert lab.ping(node.netns, ip_b, count=1, wait=1) == 0
        # DEL of one end: the other fails closed within a second.
        assert plugin("DEL", a.conf(line="p1"), ca, "p1-a").rc == 0
        time.sleep(1)
        assert remote_wired(b) == {}  # its agent heard of it and cut its end's wiring
        assert lab.ping(cb, ip_a, count=2, wait=1) == 0
    finally:
        plugin("DEL", a.conf(line="p1"), ca, "p1-a")
        plugin("DEL", b.conf(line="p1"), cb, "p1-b")
    assert cluster.claims("p1") == []
    assert cluster.vni("p1") is None


def test_an_agent_killed_keeps_its_lines_and_resyncs_when_restarted(cluster: Cluster) -> None:
    a, b = cluster.agents[:2]
    ca, cb = cluster.container("ka"), cluster.container("kb")
    ip_a, ip_b = f"{CONTAINERS}.51", f"{CONTAINERS}.52"
    try:
        assert plugin("ADD", a.conf(line="k1", mtu=VXLAN_MTU), ca, "k1-a", cni_args=f"IP={ip_a}/24").rc == 0
        assert plugin("ADD", b.conf(line="k1", mtu=VXLAN_MTU), cb, "k1-b", cni_args=f"IP={ip_b}/24").rc == 0
        assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 1, 15)
        lease = cluster.claims("k1")[0].lease
        replies: list[int] = []
        pinging = threading.Thread(target=lambda: replies.append(lab.ping(ca, ip_b, count=40, wait=1)))
        pinging.start()  # 8 s of echoes, every 0.2 s, across the kill and the restart
        time.sleep(0.5)
        a.stop(signal.SIGKILL)
        a.start().ready()
        pinging.join()
        assert replies == [40]  # pinned: the line did without its agent; the restart changed nothing
        # The restarted agent adopted its node's lease: the claims never lapsed.
        assert sorted(c.lease for c in cluster.claims("k1") if c.node == "node-0") == [lease]
        assert lab.ping(ca, ip_b, count=5, wait=1) == 5
        assert lab.tcp_exchange(cb, ip_b, ca)
    finally:
        plugin("DEL", a.conf(line="k1"), ca, "k1-a")
        plugin("DEL", b.conf(line="k1"), cb, "k1-b")
    assert cluster.claims("k1") == []


def test_a_failed_add_leaves_no_claim(cluster: Cluster) -> None:
    a = cluster.agents[0]
    ctr = cluster.container("fail")
    conf = a.conf(line="f1")
    assert plugin("ADD", conf, ctr, "f1-a", cni_args=f"IP={CONTAINERS}.31/24").rc == 0
    # Another attachment into the same netns under the same ifname: refused after its claim was made.
    bad = plugin("ADD", a.conf(line="f2"), ctr, "f2-a", cni_args=f"IP={CONTAINERS}.32/24")
    assert bad.rc != 0 and "already exists" in bad.out["msg"], bad.out
    assert cluster.claims("f2") == []
    assert plugin("DEL", conf, ctr, "f1-a").rc == 0
    assert cluster.claims("f1") == []


def test_an_mtu_larger_than_the_tunnel_carries_is_refused_before_anything_exists(cluster: Cluster) -> None:
    a = cluster.agents[0]
    ctr = cluster.container("bigmtu")
    big = plugin("ADD", a.conf(line="m1", mtu=VXLAN_MTU + 1), ctr, "m1-a", cni_args=f"IP={CONTAINERS}.35/24")
    assert big.rc != 0 and big.out["code"] == Code.INVALID_CONFIG, big.out
    assert f"at most {VXLAN_MTU}" in big.out["details"], big.out
    assert cluster.claims("m1") == [] and naming.host_ifname("m1-a", "eth0") not in devices(a)
    smaller = plugin("ADD", a.conf(line="m1", mtu=1280), ctr, "m1-a", cni_args=f"IP={CONTAINERS}.35/24")
    assert smaller.rc == 0, smaller.out
    assert [i.get("mtu") for i in smaller.out["interfaces"]] == [1280, 1280]
    assert plugin("DEL", a.conf(line="m1"), ctr, "m1-a").rc == 0
    assert cluster.claims("m1") == []


def test_without_the_agent_add_fails_with_11_and_del_still_works(cluster: Cluster, tmp_path: Path) -> None:
    a = cluster.agents[0]
    conf = a.conf(line="n1") | {"stateDir": str(tmp_path / "no-agent")}
    ctr = cluster.container("noagent")
    run = plugin("ADD", conf, ctr, "n1-a")
    assert run.rc != 0 and run.out["code"] == Code.TRY_AGAIN_LATER, run.out
    assert "start yogurt agent" in run.out["msg"]
    assert cluster.claims("n1") == []
    assert plugin("DEL", conf, ctr, "n1-a").rc == 0
    status = plugin("STATUS", conf, None, "")
    assert status.rc != 0 and status.out["code"] == Code.NOT_AVAILABLE


def test_quorum_lost_add_fails_with_11_in_bounded_time_and_status_50(cluster: Cluster) -> None:
    a, b, c = cluster.agents
    ctr = cluster.container("quorum")
    conf = a.conf(line="q1")
    assert plugin("STATUS", conf, None, "").rc == 0
    with line_across(cluster, b, c, "q0", 70) as (cb, cc, ip_b, ip_c):
        cluster.store.kill(1)
        cluster.store.kill(2)
        try:
            started = time.monotonic()
            run = plugin("ADD", conf, ctr, "q1-a", cni_args=f"IP={CONTAINERS}.41/24")
            took = time.monotonic() - started
            assert run.rc != 0 and run.out["code"] == Code.TRY_AGAIN_LATER, run.out
            assert took <= 10.0, took
            assert devices(a) == []  # nothing left on the node
            assert ctr.run("ip", "-j", "link", "show", "eth0").returncode != 0
            status = plugin("STATUS", conf, None, "")
            assert status.rc != 0 and status.out["code"] == Code.NOT_AVAILABLE, status.out
            assert lab.ping(cb, ip_c, count=5, wait=1) == 5  # an existing line keeps passing packets
            # DEL does not wait for the store: its local part is done, its claim released later.
            started = time.monotonic()
            assert plugin("DEL", c.conf(line="q0"), cc, "q0-y").rc == 0
            assert time.monotonic() - started < 6
            assert devices(c) == []
        finally:
            cluster.store.start_member(1)
            cluster.store.start_member(2)
            cluster.store.wait_healthy()
        assert cluster.claims("q1") == []
        assert wait_until(lambda: plugin("STATUS", conf, None, "").rc == 0, 15)
        # The claim of the end DELeted meanwhile: released by its agent once the store is back.
        assert wait_until(lambda: [x.node for x in cluster.claims("q0")] == ["node-1"], 15)


def test_a_member_killed_during_traffic_and_adds(cluster: Cluster) -> None:
    a, b, c = cluster.agents
    with line_across(cluster, a, b, "m0", 80) as (ca, cb, ip_a, ip_b):
        pinging = threading.Thread(target=lambda: results.append(lab.ping(ca, ip_b, count=20, wait=1)))
        results: list[int] = []
        pinging.start()
        leader = cluster.store.leader()
        cluster.store.kill(leader)
        try:
            with line_across(cluster, a, c, "m1", 90) as (
                ca1,
                cc1,
                ip_a1,
                ip_c1,
            ):  # ADDs through the election
                assert wait_until(lambda: lab.ping(ca1, ip_c1, count=1, wait=1) == 1, 15)
        finally:
            pinging.join()
            cluster.store.start_member(leader)
            cluster.store.wait_healthy()
        assert results == [20]  # not one packet of the existing line lost


@contextlib.contextmanager
def _cut_off(agent: NodeAgent) -> Iterator[None]:
    """The node cannot reach the store: its packets to it dropped, its connections to it killed."""
    chain = f"type filter hook output priority 0; ip daddr {STORE_ADDRESS} drop"
    rules = f"table inet yogurt_cut {{\n chain out {{\n {chain}\n }}\n}}\n"
    subprocess.run(["ip", "netns", "exec", agent.netns, "nft", "-f", "-"], input=rules, text=True, check=True)
    subprocess.run(
        ["ip", "netns", "exec", agent.netns, "ss", "-K", "dst", str(STORE_ADDRESS)],
        capture_output=True,
        check=False,
    )
    try:
        yield
    finally:
        subprocess.run(
            ["ip", "netns", "exec", agent.netns, "nft", "delete", "table", "inet", "yogurt_cut"], check=True
        )


def _watch(agent: NodeAgent) -> dict[str, Any]:
    info = frontend.info(agent.state_dir, timeout=10)
    assert info is not None
    found = info["cluster"]
    assert isinstance(found, dict)
    return found


def _relists(agent: NodeAgent) -> int:
    return int(_watch(agent)["relists"])


def _revision(agent: NodeAgent) -> int:
    return int(_watch(agent)["revision"])


def test_an_agent_behind_a_compaction_lists_again_and_converges(cluster: Cluster) -> None:
    a, b = cluster.agents[:2]
    with line_across(cluster, a, b, "w1", 100) as (ca, cb, ip_a, ip_b):
        assert wait_until(lambda: len(remote_wired(b)) == 1, 10)
        before = _relists(b)
        with _cut_off(b):
            assert plugin("DEL", a.conf(line="w1"), ca, "w1-x").rc == 0  # b does not hear of it
            assert [c.node for c in cluster.claims("w1")] == ["node-1"]
            time.sleep(1)
            assert len(remote_wired(b)) == 1
            compacted = cluster.store.compact()
        assert compacted > _revision(b)
        # Its watch resumes from a revision compacted away: it lists again, and cuts the wiring.
        assert wait_until(lambda: remote_wired(b) == {}, 20), b.log_text()
        assert _relists(b) > before


def test_a_node_cut_off_past_its_lease_registers_and_claims_again(cluster: Cluster) -> None:
    a, b = cluster.agents[:2]
    with line_across(cluster, a, b, "r1", 110) as (ca, cb, ip_a, ip_b):
        assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 1, 15)
        old = cluster.client.get(cluster.keys.node(a.name))
        assert old is not None
        with _cut_off(a):
            assert wait_until(lambda: cluster.client.get(cluster.keys.node(a.name)) is None, 25)
            assert [c.node for c in cluster.claims("r1")] == ["node-1"]
            time.sleep(1)
            assert lab.ping(cb, ip_a, count=2, wait=1) == 0  # its partner failed closed
        # Back: a new lease, its record and its end's claim again, the line passes again.
        assert wait_until(lambda: sorted(c.node for c in cluster.claims("r1")) == ["node-0", "node-1"], 25), (
            a.log_text()
        )
        new = cluster.client.get(cluster.keys.node(a.name))
        assert new is not None and new.lease != old.lease
        assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 1, 15)


def test_gc_releases_the_claims_of_ends_the_runtime_no_longer_knows(cluster: Cluster) -> None:
    a = cluster.agents[0]
    ctr = cluster.container("gc")
    conf = a.conf(line="gc1")
    assert plugin("ADD", conf, ctr, "gc1-a", cni_args=f"IP={CONTAINERS}.121/24").rc == 0
    assert [c.node for c in cluster.claims("gc1")] == ["node-0"]
    assert plugin("GC", conf | {"cni.dev/valid-attachments": []}, None, "").rc == 0
    assert cluster.claims("gc1") == []
    assert devices(a) == []


def test_a_node_gone_past_its_lease_fails_closed_at_its_partner_and_comes_back(cluster: Cluster) -> None:
    a, c = cluster.agents[0], cluster.agents[2]
    ca, cc = cluster.container("ga"), cluster.container("gc")
    ip_a, ip_c = f"{CONTAINERS}.61", f"{CONTAINERS}.63"
    key = cluster.keys.node(c.name)
    try:
        assert plugin("ADD", a.conf(line="g1", mtu=VXLAN_MTU), ca, "g1-a", cni_args=f"IP={ip_a}/24").rc == 0
        assert plugin("ADD", c.conf(line="g1", mtu=VXLAN_MTU), cc, "g1-c", cni_args=f"IP={ip_c}/24").rc == 0
        assert wait_until(lambda: lab.ping(ca, ip_c, count=1, wait=1) == 1, 15)
        c.stop(signal.SIGKILL)
        assert cluster.client.get(key) is not None  # alive until the TTL runs out
        assert wait_until(lambda: cluster.client.get(key) is None, 20), "the node's lease did not run out"
        assert [x.node for x in cluster.claims("g1")] == ["node-0"]  # its claim went with it
        time.sleep(1)
        assert lab.ping(ca, ip_c, count=2, wait=1) == 0  # its partner failed closed
        assert lab.ping(cc, ip_a, count=2, wait=1) == 0
        c.start().ready()
        assert wait_until(lambda: cluster.client.get(key) is not None, 10)
    finally:
        plugin("DEL", a.conf(line="g1"), ca, "g1-a")
        plugin("DEL", c.conf(line="g1"), cc, "g1-c")
    assert cluster.claims("g1") == []
    assert cluster.vni("g1") is None


def _agent_start_error(cluster: Cluster, tmp_path: Path, **changes: Any) -> str:
    """Start a second agent on node 0 with a changed cluster file; its error (it must not start)."""
    a = cluster.agents[0]
    cfg = json.loads(a.cluster_file.read_text()) | changes
    d = tmp_path / f"other-{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    other = NodeAgent(0, a.netns, d, a.bpffs_dir, d / "cluster.json")
    other.cluster_file.write_text(json.dumps(cfg))
    other.start()
    assert other.proc is not None
    assert other.proc.wait(60) == 1, other.log_text()
    return other.log_text()


def test_the_agent_names_a_wrong_cluster_configuration_at_start(cluster: Cluster, tmp_path: Path) -> None:
    assert "cluster store not usable" in _agent_start_error(
        cluster, tmp_path, endpoints=[f"http://{STORE_ADDRESS}:1"]
    )
    # node-1's name, node 0's WireGuard key: another node holds that name.
    assert "is held by another live node" in _agent_start_error(cluster, tmp_path, node="node-1")
    assert "invalid endpoint" in _agent_start_error(cluster, tmp_path, endpoints=["etcd:2379"])
    # The underlay's veth is neither WireGuard nor a tunnel: named, and never deleted.
    assert "wireguardDevice 'under0' exists and is not WireGuard (veth" in _agent_start_error(
        cluster, tmp_path, wireguardDevice="under0"
    )
    assert "tunnelDevice 'under0' exists and is veth, not VXLAN" in _agent_start_error(
        cluster, tmp_path, tunnelDevice="under0"
    )
    assert "under0" in cluster.agents[0].sh("ip", "-br", "link", "show", "under0")


def test_the_agent_names_a_bad_certificate_at_start(cluster: Cluster, tmp_path: Path) -> None:
    """A TLS store (client certificates) on the same underlay: a certificate of another CA, or a CA
    that did not sign the server's, is named and the agent does not start."""
    with EtcdLab(tls=True, netns=cluster.nodes.hub.name, host=str(STORE_ADDRESS)) as secure:
        assert secure.tls is not None
        base = {"endpoints": secure.endpoint_urls(), "caFile": secure.tls.ca}
        rogue = base | {"certFile": secure.tls.rogue_cert, "keyFile": secure.tls.rogue_key}
        said = _agent_start_error(cluster, tmp_path, **rogue)
        assert "refused the TLS session" in said and "certFile" in said, said
        untrusted = base | {"caFile": secure.tls.rogue_ca}
        untrusted |= {"certFile": secure.tls.client_cert, "keyFile": secure.tls.client_key}
        said = _agent_start_error(cluster, tmp_path, **untrusted)
        assert "is not trusted" in said and "caFile" in said, said
        # The right files: the store is usable (doctor: only the registration is missing there).
        good = base | {"certFile": secure.tls.client_cert, "keyFile": secure.tls.client_key}
        cfg = tmp_path / "tls.json"
        cfg.write_text(json.dumps(json.loads(cluster.agents[0].cluster_file.read_text()) | good))
        found = _doctor(cluster.agents[0], cfg)
        assert not found["ok"] and "not registered" in found["detail"] and "TLS" not in found["detail"], found


def _doctor_all(a: NodeAgent, cluster_file: Path) -> list[dict[str, Any]]:
    argv = [*lab.self_command(), "doctor", "--json", "--state-dir", a.state_dir, "--bpffs-dir", a.bpffs_dir]
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{a.netns}", *argv, "--cluster", str(cluster_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    found: list[dict[str, Any]] = json.loads(out)
    return found


def _doctor(a: NodeAgent, cluster_file: Path) -> dict[str, Any]:
    [found] = [f for f in _doctor_all(a, cluster_file) if f["name"] == "cluster"]
    return found


def test_doctor_reports_the_store(cluster: Cluster, tmp_path: Path) -> None:
    a = cluster.agents[0]
    good = _doctor(a, a.cluster_file)
    assert good["ok"] and "node node-0 registered" in good["detail"], good
    [agent] = [f for f in _doctor_all(a, a.cluster_file) if f["name"] == "agent"]
    assert "cluster node node-0, lease " in agent["detail"], agent
    [tunnel] = [f for f in _doctor_all(a, a.cluster_file) if f["name"] == "tunnel"]
    assert tunnel["ok"] and "only through" in tunnel["detail"], tunnel
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(json.loads(a.cluster_file.read_text()) | {"node": "node-9"}))
    found = _doctor(a, bad)
    assert not found["ok"] and "node-9" in found["detail"], found


def test_the_agent_keeps_the_tunnel_port_to_wireguard_a_forged_source_never_arrives(cluster: Cluster) -> None:
    """An injector on the underlay forges the partner node's WireGuard address as the outer
    source of a VXLAN frame with the line's tunnel id, sent in clear to the node's underlay
    address: the tunnel program alone would take it (the outer source is all it can see).  The
    agent's nftables rule (agent/firewall.py) drops it; without that rule it arrives, which
    is why the agent puts it there itself.  The lab's own rule is out of the way meanwhile."""
    x, y = cluster.agents[:2]
    node_x, node_y = cluster.nodes.nodes[0], cluster.nodes.nodes[1]
    with line_across(cluster, x, y, "forge", 41) as (cx, _cy, ip_x, ip_y):
        vni = cluster.vni("forge")
        assert vni
        [link] = json.loads(subprocess.run(
            ["ip", "-n", cx.name, "-j", "link", "show", "eth0"], capture_output=True, text=True, check=True
        ).stdout)  # fmt: skip

        def forged(port: int) -> bytes:
            inner = ipv4_udp(ip_y, ip_x, port, b"forged")
            return ipv4_udp(
                str(node_y.wg_addr),
                str(node_x.underlay),
                VXLAN_PORT,
                vxlan_packet(vni, link["address"], inner),
            )

        def send(port: int) -> Callable[[], None]:
            return lambda: send_forged(node_y.netns, forged(port), str(node_x.underlay))

        x.sh("nft", "delete", "table", "inet", NFT_TABLE)
        try:
            assert "tunnel-only-through-wireguard" in x.sh("nft", "list", "table", "inet", firewall.TABLE)
            before = guard_drops(x)
            assert lab.udp_receive(cx, ip_x, 7301, send(7301)) is None
            assert guard_drops(x) > before
            # The control: without the agent's rule the forged frame is taken as the partner's.
            x.sh("nft", "delete", "table", "inet", firewall.TABLE)
            assert lab.udp_receive(cx, ip_x, 7302, send(7302)) == b"forged"
        finally:
            subprocess.run(
                ["ip", "netns", "exec", x.netns, "nft", "-f", "-"],
                input=firewall.ruleset(VXLAN_PORT, node_x.wg_if), text=True, check=True,
            )  # fmt: skip
            cluster.nodes._firewall(node_x)  # noqa: SLF001  (the lab's own rules, put back)
        assert lab.udp_receive(cx, ip_x, 7303, send(7303)) is None


def _link(agent: NodeAgent, *argv: str) -> subprocess.CompletedProcess[str]:
    """`yogurt link …` on the node, on its agent's dirs."""
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{agent.netns}", *lab.self_command(), "link", *argv,
         "--state-dir", agent.state_dir, "--bpffs-dir", agent.bpffs_dir],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def _carrier(ctr: lab.Netns) -> bool:
    [link] = json.loads(ctr.run("ip", "-j", "link", "show", "eth0").stdout)
    return "NO-CARRIER" not in link["flags"]


def _delivered(src: lab.Netns, dst: lab.Netns, address: str) -> bool:
    send = lambda: lab.udp_send(src, b"far-end", address, 4344)  # noqa: E731
    return lab.udp_receive(dst, address, 4344, send, wait=1.0) == b"far-end"


def test_a_line_set_down_on_one_node_goes_down_on_the_other_and_comes_back(cluster: Cluster) -> None:
    """Link state across nodes (line/linkstate.py): the line's state travels in the end's claim,
    and the far node's agent sets its end the same; one end alone leaves the far end's carrier."""
    a, b = _agent_of(cluster, 0), _agent_of(cluster, 1)
    with line_across(cluster, a, b, "lk1", 61) as (cx, cy, ip_x, ip_y):
        run = _link(a, "down", "--line", "lk1")
        assert run.returncode == 0, run.stderr
        assert not _carrier(cx)
        assert wait_until(lambda: not _carrier(cy), 10), b.log_text()  # the far end follows
        assert not _delivered(cy, cx, ip_x) and not _delivered(cx, cy, ip_y)
        assert [c.down for c in cluster.claims("lk1") if c.node == a.name] == [True]
        refused = _link(b, "up", "--line", "lk1")  # it was set down on a: up there
        assert refused.returncode == 1 and "set it up there" in refused.stderr, refused.stderr
        run = _link(a, "up", "--line", "lk1")
        assert run.returncode == 0, run.stderr
        assert _carrier(cx) and wait_until(lambda: _carrier(cy), 10), b.log_text()
        assert wait_until(lambda: lab.ping(cx, ip_y, count=1, wait=1) == 1, 10), a.log_text()
        assert lab.ping(cy, ip_x, count=1, wait=1) == 1
        assert [c.down for c in cluster.claims("lk1")] == [False, False]
        # One end alone: the far end keeps carrier, and nothing passes either way.
        run = _link(a, "down", "--end", "lk1-x/eth0")
        assert run.returncode == 0, run.stderr
        assert not _carrier(cx) and _carrier(cy)
        assert not _delivered(cy, cx, ip_x) and not _delivered(cx, cy, ip_y)
        assert _carrier(cy)  # still, after the agents' reconciles
        assert _link(a, "up", "--end", "lk1-x/eth0").returncode == 0
        assert wait_until(lambda: lab.ping(cx, ip_y, count=1, wait=1) == 1, 10), a.log_text()


def _on_node(agent: NodeAgent, *argv: str, **kw: Any) -> subprocess.Popen[str]:
    """`yogurt …` run on the node (its netns), on its agent's dirs."""
    return subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{agent.netns}", *lab.self_command(), *argv,
         "--state-dir", agent.state_dir, "--bpffs-dir", agent.bpffs_dir],
        text=True, **kw,
    )  # fmt: skip


def test_a_capture_on_one_node_holds_both_ways_of_a_line_across(cluster: Cluster, tmp_path: Path) -> None:
    """`yogurt capture` of an end whose partner is on the other node: what it sends, copied at its
    sender, and what arrives for it, copied at the node's tunnel device (capture/tap.py) — not what
    arrives there for another line. With --drops: what came through the tunnel for the end passes
    its guard, and is not reported as dropped (the capture's copy of the guard's verdict)."""
    a, b = _agent_of(cluster, 0), _agent_of(cluster, 1)
    path = tmp_path / "across.pcapng"
    with (
        line_across(cluster, a, b, "cp1", 63) as (cx, cy, ip_x, ip_y),
        line_across(cluster, a, b, "cp2", 65) as (ox, oy, other_x, _),
    ):
        proc = _on_node(
            a, "capture", "--end", "cp1-x/eth0", "--drops", "-w", str(path), stderr=subprocess.PIPE
        )
        try:

            def started() -> bool:
                status = _on_node(a, "status", stdout=subprocess.PIPE)
                out, _ = status.communicate(timeout=60)
                return any(line.startswith("line cp1:") and "CAPTURED" in line for line in out.splitlines())

            assert wait_until(started, 120), "the capture did not start"
            lab.udp_send(cx, b"capture across: x to y", ip_y, 7311)
            lab.udp_send(cy, b"capture across: y to x", ip_x, 7312)
            lab.udp_send(oy, b"capture across: another line", other_x, 7313)  # same tunnel, not this line
            time.sleep(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=30)
        assert proc.returncode == 0, errors
        got = [p for p in pcap.read(path.read_bytes()) if b"capture across: " in p.data and p.data[23] == 17]
        assert [(p.outbound, p.data[42:], p.dropped) for p in got] == [
            (True, b"capture across: x to y", None),
            (False, b"capture across: y to x", None),
        ], got
        assert lab.ping(cx, ip_y, count=1, wait=1) == 1  # the line was never touched
