"""The agent's upgrade and mixed releases across nodes, from the real earlier release.

Two lab nodes (an underlay only, a TLS etcd) each run the node agent of a kept release that has
lines across nodes (tests/kernel/releases/, ABI >= 5), installed from its own wheel into a venv
of its own (cni_yogurt/lab/releases.py): it makes its WireGuard (wireguard-go here) and tunnel
devices, as in cluster mode on Kubernetes.  A line across the two nodes and a node-local line on
the first carry sequenced UDP both ways, one datagram per millisecond; the first node's agent is
stopped and this release's started on the same dirs, as a DaemonSet's rolling update and a
package upgrade under systemd do.  Not one datagram may be lost or reordered on either line.

Then the cluster runs mixed: the first node on this release, the second on the older one.  A new
line across is made and removed by both, each through its own release's plugin; the upgraded
node's agent names the other node's release.  Last the second node is upgraded too.

Root, wireguard-go, wg, nft and an etcd (`make cluster-net`); about a minute per release.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import CONTAINERS, Cluster, NodeAgent, agents_on_nodes, plugin, require_node_lab, wait_until

from cni_yogurt import __version__, lab
from cni_yogurt import release as this_release
from cni_yogurt.agent import frontend
from cni_yogurt.cluster import compat
from cni_yogurt.cni.errors import Code
from cni_yogurt.lab import releases
from cni_yogurt.lab.nodes import VXLAN_MTU
from cni_yogurt.lab.stream import Stream

RELEASES_DIR = Path(__file__).parents[1] / "kernel" / "releases"
# The releases whose agents make lines across nodes (ABI 5 was the first).
ACROSS = [r for r in releases.kept(RELEASES_DIR) if r.abi >= 5]

require_node_lab()


@pytest.fixture(scope="module", params=ACROSS, ids=lambda r: r.name)
def older_release(request: pytest.FixtureRequest) -> releases.Release:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def older(older_release: releases.Release, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The older release's `yogurt` (plugin and agent alike)."""
    venv = tmp_path_factory.mktemp(f"release-{older_release.commit}") / "venv"
    return releases.install(older_release, venv)


@pytest.fixture(scope="module")
def cluster(older: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    top = tmp_path_factory.mktemp("release-across")
    with agents_on_nodes(top, 2, command=older, owned=True, tls=True) as made:
        yield made


def _add(agent: NodeAgent, ctr: lab.Netns, line: str, cid: str, ip: str, **conf: Any) -> None:
    run = plugin(
        "ADD",
        agent.conf(line=line, mtu=VXLAN_MTU, **conf),
        ctr,
        cid,
        cni_args=f"IP={ip}/24",
        exe=agent.command,
    )
    assert run.rc == 0, (run.out, agent.log_text())


def _delete(agent: NodeAgent, ctr: lab.Netns, line: str, cid: str, **conf: Any) -> None:
    run = plugin("DEL", agent.conf(line=line, **conf), ctr, cid, exe=agent.command)
    assert run.rc == 0, (run.out, agent.log_text())


def _upgrade(agent: NodeAgent) -> None:
    """Stop the node's agent (SIGTERM, as systemd and the kubelet do) and start this release's
    on the same cluster file, stateDir, dataDir and pins."""
    assert agent.stop(signal.SIGTERM) == 0, agent.log_text()
    agent.command = lab.self_command()
    agent.start().ready()
    info = frontend.info(agent.state_dir)
    assert info is not None and (info["version"], info["commit"]) == (__version__, this_release.commit()), (
        info
    )


def _peers(agent: NodeAgent) -> dict[str, dict[str, Any]]:
    """The other nodes' releases as this release's agent reports them."""
    info = frontend.info(agent.state_dir)
    assert info is not None
    return {p["node"]: p for p in info["cluster"]["nodes"]}


def test_an_agent_upgraded_under_live_lines_loses_no_datagram_and_runs_mixed(
    cluster: Cluster, older: list[str], older_release: releases.Release
) -> None:
    a, b = cluster.agents
    assert a.command == b.command == older
    across = (cluster.container("rel-xa"), cluster.container("rel-xb"))
    local = (cluster.container("rel-la"), cluster.container("rel-lb"))
    ip = {name: f"{CONTAINERS}.{n}" for n, name in enumerate(("xa", "xb", "la", "lb", "ma", "mb"), 31)}
    node_local = {"name": "lnet", "cluster": False}
    _add(a, across[0], "rel1", "rel1-a", ip["xa"])
    _add(b, across[1], "rel1", "rel1-b", ip["xb"])
    _add(a, local[0], "rel2", "rel2-a", ip["la"], **node_local)
    _add(a, local[1], "rel2", "rel2-b", ip["lb"], **node_local)
    assert wait_until(lambda: lab.ping(across[0], ip["xb"], count=1, wait=1) == 1, 15), a.log_text()
    assert lab.ping(local[0], ip["lb"], count=1, wait=1) == 1

    streams = [
        Stream(across[0], across[1], ip["xb"]),
        Stream(across[1], across[0], ip["xa"]),
        Stream(local[0], local[1], ip["lb"]),
        Stream(local[1], local[0], ip["la"]),
    ]
    for stream in streams:
        stream.start()
    try:
        for stream in streams:
            stream.wait_for(300)
        _upgrade(a)
        for stream, count in zip(streams, [len(s.received) for s in streams], strict=True):
            stream.wait_for(count + 1000)  # a second more on the new agent
    finally:
        for stream in streams:
            stream.stop()
    for stream in streams:
        assert stream.problems() == "", stream.problems()

    # Mixed: node a on this release, node b on the older one, each through its own plugin.
    assert b.command == older
    mixed = (cluster.container("rel-ma"), cluster.container("rel-mb"))
    _add(a, mixed[0], "rel3", "rel3-a", ip["ma"])
    _add(b, mixed[1], "rel3", "rel3-b", ip["mb"])
    assert wait_until(lambda: lab.ping(mixed[0], ip["mb"], count=1, wait=1) == 1, 15), a.log_text()
    assert lab.ping(mixed[1], ip["ma"], count=2, wait=1) == 2
    # This release's agent knows which release the other node runs: 0.5.0 published none (the
    # first release with lines across nodes, whose cluster protocol is this one's), later ones do.
    peer = _peers(a)[b.name]
    published = older_release.version != compat.UNPUBLISHED.version
    assert (peer["published"], peer["protocol"], peer["compatible"]) == (published, compat.PROTOCOL, True), (
        peer
    )
    assert peer["version"] == older_release.version, peer
    _delete(a, mixed[0], "rel3", "rel3-a")
    _delete(b, mixed[1], "rel3", "rel3-b")
    assert cluster.claims("rel3") == []

    # The second node upgraded too: the line across still passes, then everything goes.
    _upgrade(b)
    assert wait_until(lambda: lab.ping(across[0], ip["xb"], count=1, wait=1) == 1, 15), b.log_text()
    assert wait_until(lambda: _peers(a)[b.name]["version"] == __version__, 10), _peers(a)
    assert lab.ping(across[1], ip["xa"], count=2, wait=1) == 2
    _delete(a, across[0], "rel1", "rel1-a")
    _delete(b, across[1], "rel1", "rel1-b")
    _delete(a, local[0], "rel2", "rel2-a", **node_local)
    _delete(a, local[1], "rel2", "rel2-b", **node_local)
    assert cluster.claims("rel1") == []


def test_a_node_of_another_cluster_protocol_gets_no_line_and_is_named(cluster: Cluster) -> None:
    """Node b claims (by its release record) a cluster protocol this release does not speak: a's
    end of their line is cut and stays closed, a's ADD of a new end partnering b fails with 106
    leaving nothing, status and metrics name b; b's true record back, the line passes again."""
    a, b = cluster.agents
    for agent in (a, b):
        if agent.command != lab.self_command():
            _upgrade(agent)
    ca, cb = cluster.container("prot-a"), cluster.container("prot-b")
    cc = cluster.container("prot-c")
    ip_a, ip_b, ip_c = (f"{CONTAINERS}.{n}" for n in (41, 42, 43))
    _add(a, ca, "prot1", "prot1-a", ip_a)
    _add(b, cb, "prot1", "prot1-b", ip_b)
    assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 1, 15), a.log_text()
    # b's partner for a second line is there before a's end comes.
    _add(b, cluster.container("prot-d"), "prot2", "prot2-b", f"{CONTAINERS}.44")
    key = cluster.keys.release(b.name)
    true_record = cluster.client.get(key)
    assert true_record is not None
    future = compat.NodeRelease("9.0.0", 42, compat.PROTOCOL + 1, "f00f00f")
    cluster.client.put(key, future.encode(), true_record.lease)
    try:
        assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 0, 15), a.log_text()
        refused = frontend.info(a.state_dir)["cluster"]["refused"]  # type: ignore[index]
        assert [(r["node"], r["lines"]) for r in refused] == [(b.name, ["prot1"])], refused
        assert "9.0.0" in refused[0]["why"] and "cluster protocol 2" in refused[0]["why"]
        status = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                a.netns,
                *lab.self_command(),
                "status",
                "--state-dir",
                a.state_dir,
                "--bpffs-dir",
                a.bpffs_dir,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert status.returncode == 0 and f"REFUSED: lines prot1 stay closed: node {b.name} runs 9.0.0" in (
            status.stdout
        ), status.stdout + status.stderr
        assert "lines to a node of another cluster protocol stay closed" in a.log_text()
        before = helpers.devices(a)
        run = plugin("ADD", a.conf(line="prot2", mtu=VXLAN_MTU), cc, "prot2-a", cni_args=f"IP={ip_c}/24")
        assert run.rc != 0 and run.out["code"] == Code.INCOMPATIBLE_RELEASE, run.out
        assert "9.0.0" in run.out["details"], run.out
        assert helpers.devices(a) == before and [c.node for c in cluster.claims("prot2")] == [b.name]
    finally:
        cluster.client.put(key, true_record.value, true_record.lease)
    assert wait_until(lambda: lab.ping(ca, ip_b, count=1, wait=1) == 1, 15), a.log_text()
    assert frontend.info(a.state_dir)["cluster"]["refused"] == []  # type: ignore[index]
    _delete(a, ca, "prot1", "prot1-a")
    _delete(b, cb, "prot1", "prot1-b")
    _delete(b, cluster.containers[-1], "prot2", "prot2-b")
    assert cluster.claims("prot1") == cluster.claims("prot2") == []
