"""Mixed releases in one cluster, the pure parts: the release record a node's agent publishes,
how it is read (what a later release adds is ignored; damage is refused), and the plan that
carries no line to a node of another cluster protocol."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_cluster_agent_pure import KEYS, _claim, _end, _kv, _node, _snapshot

from cni_yogurt import __version__
from cni_yogurt.agent.cluster import this_release
from cni_yogurt.agent.plan import parse_view, plan
from cni_yogurt.cluster import compat
from cni_yogurt.cluster.compat import NodeRelease
from cni_yogurt.datapath import ABI


def test_this_release_publishes_its_version_abi_and_protocol_and_reads_back() -> None:
    mine = this_release()
    assert (mine.version, mine.abi, mine.protocol) == (__version__, ABI, compat.PROTOCOL)
    assert mine.compatible and mine.published
    assert NodeRelease.decode(mine.encode()) == mine
    assert "published" not in json.loads(mine.encode())


def test_fields_a_later_release_adds_are_ignored() -> None:
    raw = {"version": "0.9.0", "abi": 9, "protocol": 1, "commit": "abc1234", "zones": ["a"], "x": {}}
    got = NodeRelease.decode(json.dumps(raw).encode())
    assert got == NodeRelease("0.9.0", 9, 1, "abc1234") and got.compatible


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"abi": 5, "protocol": 1},
        {"version": "", "abi": 5, "protocol": 1},
        {"version": "1.0.0", "abi": "5", "protocol": 1},
        {"version": "1.0.0", "abi": 5, "protocol": 0},
        {"version": "1.0.0", "abi": 5, "protocol": True},
        {"version": "1.0.0", "abi": 5},
    ],
)
def test_a_damaged_release_record_is_refused(raw: Any) -> None:
    with pytest.raises(ValueError):
        NodeRelease.decode(json.dumps(raw).encode())


def test_a_node_without_a_record_runs_0_5_0_which_speaks_protocol_1() -> None:
    before = compat.of({}, "node-b")
    assert (before.version, before.protocol, before.published, before.compatible) == ("0.5.0", 1, False, True)
    assert "no release record" in before.describe()


def _across(release: NodeRelease | None) -> tuple[Any, Any]:
    kvs = [
        _kv(KEYS.node("node-a"), _node("node-a", 1).encode()),
        _kv(KEYS.node("node-b"), _node("node-b", 2).encode()),
        _claim("across", "c1/eth0", "node-a"),
        _claim("across", "c2/eth0", "node-b"),
    ]
    if release is not None:
        kvs.append(_kv(KEYS.release("node-b"), release.encode()))
    view = parse_view(KEYS, _snapshot(*kvs))
    return view, plan(view, "node-a", {"c1/eth0": _end("c1/eth0", "across", 10)})


@pytest.mark.parametrize("release", [None, NodeRelease("0.5.1", 5, 1), NodeRelease("0.8.0", 8, 1)])
def test_a_partner_on_a_node_of_this_protocol_is_wired(release: NodeRelease | None) -> None:
    view, todo = _across(release)
    assert todo.wire == {10: ("across", "node-b")} and todo.refused == {}
    assert compat.of(view.releases, "node-b") == (release or compat.UNPUBLISHED)


def test_a_partner_on_a_node_of_another_protocol_is_refused_and_named() -> None:
    theirs = NodeRelease("1.0.0", 9, compat.PROTOCOL + 1, "def5678")
    view, todo = _across(theirs)
    assert todo.wire == {} and todo.refused == {"node-b": ["across"]}
    assert list(todo.peers) == ["node-b"]  # still a WireGuard peer: nothing of a line passes
    why = compat.refusal("node-b", compat.of(view.releases, "node-b"), this_release())
    assert "node node-b runs 1.0.0" in why and f"cluster protocol {compat.PROTOCOL + 1}" in why
    assert __version__ in why


def test_a_release_key_names_its_node_and_nothing_else() -> None:
    assert KEYS.node_of_release(KEYS.release("node/x")) == "node/x"
    for key in (KEYS.node("node-a"), KEYS.releases() + b"a/b"):
        with pytest.raises(ValueError):
            KEYS.node_of_release(key)


def test_node_and_claim_records_of_a_later_release_read_for_the_fields_known_here() -> None:
    from cni_yogurt.cluster.claims import Claim
    from cni_yogurt.cluster.nodes import NodeInfo

    node = _node("node-b", 2)
    later = json.dumps({**json.loads(node.encode()), "zone": "b", "mtu": 1400}).encode()
    assert NodeInfo.decode(later) == node
    claim = Claim("l", "c/eth0", "node-b", "net", True)
    raw = {**json.loads(claim.encode()), "pod": {"name": "p"}, "lease": 99}
    got = Claim.decode(_kv(KEYS.line_end("l", "c/eth0"), json.dumps(raw).encode(), lease=7))
    assert (got.line, got.end_key, got.node, got.ready, got.lease) == ("l", "c/eth0", "node-b", True, 7)
    with pytest.raises(TypeError):  # a field this release needs is missing: damage, as before
        NodeInfo.decode(json.dumps({"name": "node-b"}).encode())
