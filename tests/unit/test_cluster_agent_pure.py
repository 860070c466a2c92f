"""The node agent's cluster side, its pure parts: the agent's keys in the cluster file, a network's
`cluster` key, the view parsed from the mirror and the plan the reconciler carries out."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from cni_yogurt.agent.peers import wanted_peers
from cni_yogurt.agent.plan import View, parse_view, plan
from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster.claims import Claim
from cni_yogurt.cluster.config import for_agent, load, parse
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.nodes import NodeInfo
from cni_yogurt.cni import netconf
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.line.registry import End

KEYS = Keys("/t")
AGENT = {"address": "10.215.0.1", "wireguardDevice": "wg0", "tunnelDevice": "yvx0"}


def _key(i: int) -> str:
    return base64.b64encode(bytes([i]) * 32).decode()


def _node(name: str, i: int, wg: str = "") -> NodeInfo:
    return NodeInfo(name, f"10.215.0.{i}", _key(i), 51820, f"10.215.0.{i}:51820", wg or f"10.216.0.{i}")


def _store(raw: dict[str, Any]) -> dict[str, Any]:
    return {"endpoints": ["http://10.215.0.250:2379"], "node": "node-a", **raw}


def test_the_agents_keys_parse_and_are_required_by_the_agent_only(tmp_path: Path) -> None:
    cfg = parse(_store(AGENT))
    assert (cfg.address, cfg.wireguard_device, cfg.tunnel_device) == ("10.215.0.1", "wg0", "yvx0")
    assert parse(_store({})).address == ""  # a store client needs none of them
    with pytest.raises(CNIError) as e:
        for_agent(parse(_store({})))
    assert e.value.code == Code.INVALID_CONFIG and "address" in e.value.details


def test_the_agent_owns_its_devices_by_default_names_ports_and_a_persistent_data_dir() -> None:
    cfg = for_agent(parse(_store({"address": "10.215.0.1"})))
    # Port 0: an adopted device keeps its own; one the agent makes gets 51830 (WireGuard), 4789 (VXLAN).
    assert (cfg.wireguard_device, cfg.wireguard_port, cfg.tunnel_device, cfg.tunnel_port) == (
        "ywg0",
        0,
        "yvx0",
        0,
    )
    assert (cfg.wireguard_mtu, cfg.tunnel_mtu, cfg.wireguard_address, cfg.wireguard_range) == (0, 0, "", "")
    assert (cfg.data_dir, cfg.lease_seconds) == ("/var/lib/cni-yogurt", 10)
    given = parse(
        _store(
            {
                "address": "10.215.0.1",
                "wireguardAddress": "10.99.0.11/24",
                "wireguardPort": 51820,
                "wireguardMtu": 1400,
                "tunnelMtu": 1350,
                "dataDir": "/srv/yogurt/",
                "leaseSeconds": 60,
            }
        )
    )
    assert (given.wireguard_address, given.wireguard_port, given.wireguard_mtu, given.tunnel_mtu) == (
        "10.99.0.11/24",
        51820,
        1400,
        1350,
    )
    assert (given.data_dir, given.lease_seconds) == ("/srv/yogurt", 60)
    assert parse(_store({"wireguardRange": "10.99.0.0/16"})).wireguard_range == "10.99.0.0/16"


def test_node_and_address_from_the_command_line_replace_the_files(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"endpoints": ["http://10.215.0.250:2379"], "node": "from-file"}))
    cfg = load(str(path), node="node-b", address="10.215.0.2")
    assert (cfg.node, cfg.address) == ("node-b", "10.215.0.2")
    with pytest.raises(CNIError) as e:
        load(str(path))  # no address anywhere
    assert "address" in e.value.details


@pytest.mark.parametrize(
    ("over", "says"),
    [
        ({"address": "10.215.0"}, "invalid address"),
        ({"wireguardDevice": "a/b"}, "invalid wireguardDevice"),
        ({"tunnelDevice": "x" * 16}, "invalid tunnelDevice"),
        ({"tunnelDevice": 3}, "invalid tunnelDevice"),
        ({"tunnelDevice": "wg0"}, "one name"),
        ({"wireguardPort": -1}, "invalid wireguardPort"),
        ({"wireguardPort": "51820"}, "invalid wireguardPort"),
        ({"tunnelPort": 70000}, "invalid tunnelPort"),
        ({"wireguardMtu": 576}, "invalid wireguardMtu"),
        ({"tunnelMtu": True}, "invalid tunnelMtu"),
        ({"leaseSeconds": 1}, "invalid leaseSeconds"),
        ({"leaseSeconds": 7200}, "invalid leaseSeconds"),
        ({"dataDir": "var/lib"}, "invalid dataDir"),
        ({"wireguardAddress": "10.99.0.11"}, "invalid wireguardAddress"),
        ({"wireguardAddress": "fd00::1/64"}, "invalid wireguardAddress"),
        ({"wireguardRange": "10.99.0.0/30"}, "invalid wireguardRange"),
        ({"wireguardRange": "10.99.0.1/24"}, "invalid wireguardRange"),
        ({"wireguardRange": "10.99.0.0/24", "wireguardAddress": "10.99.0.1/24"}, "exclude each other"),
    ],
)
def test_bad_agent_keys_are_named(over: dict[str, Any], says: str) -> None:
    with pytest.raises(CNIError) as e:
        parse(_store(AGENT | over))
    assert e.value.code == Code.INVALID_CONFIG and says in e.value.msg


def test_the_cluster_file_is_read_whole_or_from_a_cluster_key(tmp_path: Path) -> None:
    plain, nested, broken = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    plain.write_text(json.dumps(_store(AGENT)))
    nested.write_text(json.dumps({"cluster": _store(AGENT)}))
    broken.write_text("{")
    assert load(str(plain)) == load(str(nested))
    for path, says in ((broken, "not JSON"), (tmp_path / "none.json", "cannot read")):
        with pytest.raises(CNIError) as e:
            load(str(path))
        assert e.value.code == Code.INVALID_CONFIG and says in e.value.msg


def test_a_network_opts_in_with_cluster_true() -> None:
    base = {"cniVersion": "1.1.0", "name": "n", "type": "yogurt"}
    assert netconf.parse(base).cluster is False
    assert netconf.parse(base | {"cluster": True}).cluster is True
    with pytest.raises(CNIError) as e:
        netconf.parse(base | {"cluster": {"endpoints": []}})
    assert e.value.code == Code.INVALID_CONFIG and "cluster" in e.value.msg


def _kv(key: bytes, value: bytes, lease: int = 0, rev: int = 1) -> gw.KV:
    return gw.KV(key, value, create_revision=rev, mod_revision=rev, version=1, lease=lease)


def _claim(line: str, key: str, node: str, ready: bool = True) -> gw.KV:
    return _kv(KEYS.line_end(line, key), Claim(line, key, node, "net", ready).encode(), lease=7)


def _end(key: str, line: str, index: int, *, ready: bool = True, leaving: bool = False) -> End:
    cid, ifname = key.split("/")
    return End(cid, ifname, line, "net", "/run/netns/x", f"yg{index}", index, index + 1, ready, leaving)


def _snapshot(*kvs: gw.KV) -> dict[bytes, gw.KV]:
    return {kv.key: kv for kv in kvs}


def test_the_view_parses_nodes_claims_and_tunnel_ids_and_skips_garbage() -> None:
    snap = _snapshot(
        _kv(KEYS.node("node-a"), _node("node-a", 1).encode()),
        _kv(KEYS.node("node-b"), b"{garbage"),
        _claim("l1", "c1/eth0", "node-a"),
        _kv(KEYS.line_end("l1", "c2/eth0"), b"[]"),
        _kv(KEYS.line_vni("l1"), b"7"),
        _kv(KEYS.vni(7), b"l1"),
    )
    view = parse_view(KEYS, snap)
    assert list(view.nodes) == ["node-a"]
    assert [c.end_key for c in view.ends["l1"]] == ["c1/eth0"]
    assert view.vnis == {"l1": 7}


def test_the_plan_wires_ends_whose_partner_is_ready_on_another_node() -> None:
    snap = _snapshot(
        _kv(KEYS.node("node-a"), _node("node-a", 1).encode()),
        _kv(KEYS.node("node-b"), _node("node-b", 2).encode()),
        _claim("across", "c1/eth0", "node-a"),
        _claim("across", "c2/eth0", "node-b"),
        _claim("waiting", "c3/eth0", "node-a"),
        _claim("waiting", "c4/eth0", "node-b", ready=False),  # its ADD is still building it
        _claim("local", "c5/eth0", "node-a"),
        _claim("local", "c6/eth0", "node-a"),  # both ends here: wired locally, not through the tunnel
        _claim("gone", "c7/eth0", "node-a"),  # no end on the node any more
        _claim("leaving", "c8/eth0", "node-a"),
        _claim("leaving", "c9/eth0", "node-b"),
    )
    local = {
        e.key: e
        for e in (
            _end("c1/eth0", "across", 10),
            _end("c3/eth0", "waiting", 12),
            _end("c5/eth0", "local", 14),
            _end("c6/eth0", "local", 16),
            _end("c8/eth0", "leaving", 18, ready=False, leaving=True),
        )
    }
    todo = plan(parse_view(KEYS, snap), "node-a", local)
    assert todo.wire == {10: ("across", "node-b")}
    assert [(c.line, c.end_key) for c in todo.orphans] == [("gone", "c7/eth0")]
    assert list(todo.peers) == ["node-b"]


def test_a_partner_whose_node_is_gone_is_not_wired() -> None:
    view = View(
        ends={"l": [Claim("l", "a/eth0", "node-a", ready=True), Claim("l", "b/eth0", "node-b", ready=True)]}
    )
    assert plan(view, "node-a", {"a/eth0": _end("a/eth0", "l", 3)}).wire == {}


def test_wireguard_peers_come_from_the_other_nodes() -> None:
    peers = wanted_peers({"node-b": _node("node-b", 2)})
    assert peers == {_key(2): ("10.215.0.2:51820", "10.216.0.2/32")}


def test_a_claim_carries_its_lines_down_state_only_when_set() -> None:
    up = Claim("l", "c/eth0", "node-a", "net", True)
    assert "down" not in json.loads(up.encode())  # as 0.5.0 writes and reads it
    down = Claim("l", "c/eth0", "node-a", "net", True, down=True)
    assert json.loads(down.encode())["down"] is True
    assert Claim.decode(_kv(KEYS.line_end("l", "c/eth0"), down.encode(), lease=7)).down
