"""The cluster store's pure parts: its configuration, the key layout, etcd's JSON gateway messages,
and the records (nodes, claims) as they are written into etcd."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster.claims import Claim
from cni_yogurt.cluster.config import DEFAULT_PREFIX, DEFAULT_TIMEOUT, Endpoint, parse, parse_endpoint
from cni_yogurt.cluster.keys import Keys, prefix_end
from cni_yogurt.cluster.nodes import NodeInfo
from cni_yogurt.cni.errors import CNIError, Code

WG_KEY = base64.b64encode(bytes(range(32))).decode()


def good(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"endpoints": ["http://10.0.0.1:2379", "http://10.0.0.2:2379"], "node": "node-a"}
    raw.update(over)
    return raw


def test_a_minimal_config_gets_the_defaults() -> None:
    cfg = parse(good())
    assert cfg.endpoints == (Endpoint("http", "10.0.0.1", 2379), Endpoint("http", "10.0.0.2", 2379))
    assert (cfg.node, cfg.prefix, cfg.timeout, cfg.tls) == ("node-a", DEFAULT_PREFIX, DEFAULT_TIMEOUT, False)


def test_endpoints_may_be_one_comma_separated_string_as_etcdctl_takes_them() -> None:
    cfg = parse(good(endpoints="https://a.example:2379,https://[fd00::1]:2379"))
    assert [str(e) for e in cfg.endpoints] == ["https://a.example:2379", "https://[fd00::1]:2379"]
    assert cfg.tls


def test_tls_files_are_checked_for_readability(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    https = ["https://10.0.0.1:2379"]
    assert parse(good(endpoints=https, caFile=str(ca))).ca_file == str(ca)
    with pytest.raises(CNIError) as missing:
        parse(good(endpoints=https, caFile=str(tmp_path / "nope.crt")))
    assert "caFile cannot be read" in missing.value.msg and "nope.crt" in missing.value.details
    assert parse(good(endpoints=https, caFile="/nope"), check_files=False).ca_file == "/nope"


@pytest.mark.parametrize(
    "over, says",
    [
        ({"endpoints": []}, "no endpoints"),
        ({"endpoints": "10.0.0.1:2379"}, "invalid endpoint"),
        ({"endpoints": ["ftp://10.0.0.1:2379"]}, "invalid endpoint"),
        ({"endpoints": ["http://10.0.0.1"]}, "invalid endpoint"),  # no port
        ({"endpoints": ["http://10.0.0.1:99999"]}, "invalid endpoint"),
        ({"endpoints": ["http://10.0.0.1:2379/v3"]}, "invalid endpoint"),
        ({"endpoints": ["http://u:p@10.0.0.1:2379"]}, "invalid endpoint"),
        ({"endpoints": [7]}, "invalid endpoint"),
        ({"endpoints": ["http://a:1", "https://b:1"]}, "mixed endpoints"),
        ({"node": "Node_A"}, "invalid node name"),
        ({"node": ""}, "invalid node name"),
        ({"node": None}, "invalid node name"),
        ({"prefix": "relative"}, "invalid prefix"),
        ({"prefix": "/a//b"}, "invalid prefix"),
        ({"timeout": 0}, "invalid timeout"),
        ({"timeout": 11}, "invalid timeout"),  # a claim must fail within 10 s
        ({"timeout": True}, "invalid timeout"),
        ({"certFile": "/c.crt"}, "certFile and keyFile go together"),
        ({"caFile": "/ca.crt"}, "TLS files with http endpoints"),
        ({"endpoint": ["http://a:1"]}, "unknown keys"),
    ],
)
def test_bad_configs_name_the_key_at_fault(over: dict[str, Any], says: str) -> None:
    with pytest.raises(CNIError) as bad:
        parse(good(**over), check_files=False)
    assert bad.value.code == Code.INVALID_CONFIG
    assert says in bad.value.msg
    assert bad.value.msg.startswith("cluster: ")


def test_a_config_that_is_no_object() -> None:
    with pytest.raises(CNIError) as bad:
        parse(["http://a:1"])
    assert bad.value.code == Code.INVALID_CONFIG


def test_parse_endpoint_keeps_ipv6_hosts() -> None:
    assert parse_endpoint("http://[::1]:2379") == Endpoint("http", "::1", 2379)


def test_the_key_layout() -> None:
    k = Keys("/p")
    assert k.node("node-a") == b"/p/nodes/node-a"
    assert k.line_end("phone", "ctr1/eth0") == b"/p/lines/phone/ends/ctr1%2Feth0"
    assert k.line_vni("phone") == b"/p/lines/phone/vni"
    assert k.vni(42) == b"/p/vni/42"
    assert k.end_key_of(k.line_end("a/b", "c/d"), "a/b") == "c/d"
    assert k.line_of(k.line_end("a/b", "e")) == "a/b"
    assert k.line_of(k.node("x")) is None


def test_no_line_reaches_into_another_lines_keys() -> None:
    k = Keys("/p")
    ends_a = k.line_ends("a")
    for other in ("ab", "a/ends", "a/b", "a%2Fb"):
        assert not k.line_ends(other).startswith(ends_a)
        assert not k.line_end(other, "x").startswith(ends_a)
    with pytest.raises(ValueError):
        k.line_ends("")


def test_prefix_end_is_etcds_range_end() -> None:
    assert prefix_end(b"/p/") == b"/p0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_gateway_messages_encode_bytes_as_base64_and_integers_as_strings() -> None:
    assert gw.put(b"k", b"v", lease=7) == {"key": "aw==", "value": "dg==", "lease": "7"}
    assert gw.put(b"k", b"") == {"key": "aw==", "value": ""}
    assert gw.range_request(b"a", b"b", keys_only=True) == {
        "key": "YQ==",
        "range_end": "Yg==",
        "keys_only": True,
    }
    assert gw.compare(b"k", "CREATE", "EQUAL", 0) == {
        "key": "aw==",
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": "0",
    }
    assert gw.compare(b"k", "VALUE", "EQUAL", b"x", b"l")["value"] == "eA=="
    assert gw.compare(b"k", "MOD", "LESS", 5, b"l")["range_end"] == "bA=="
    with pytest.raises(ValueError):
        gw.compare(b"k", "MOD", "ABOUT", 5)
    t = gw.txn([], [gw.op_put(b"k", b"v")], [gw.op_range(b"k"), gw.op_delete(b"k", b"l")])
    assert t["success"] == [{"request_put": {"key": "aw==", "value": "dg=="}}]
    assert t["failure"][1] == {"request_delete_range": {"key": "aw==", "range_end": "bA=="}}
    assert gw.watch_create(b"p", b"q", 9) == {
        "create_request": {"key": "cA==", "start_revision": "9", "range_end": "cQ=="}
    }


def test_gateway_answers_decode_with_their_zero_values_left_out() -> None:
    # As etcd 3.4 answers: a failed txn has no "succeeded"; a fresh key's fields are strings.
    failed = {"header": {"revision": "12"}, "responses": [{"response_range": {"header": {}}}]}
    assert not gw.succeeded(failed) and gw.revision(failed) == 12 and gw.txn_ranges(failed) == [[]]
    kv = {
        "key": "aw==",
        "create_revision": "3",
        "mod_revision": "4",
        "version": "2",
        "value": "dg==",
        "lease": "99",
    }
    resp = {"header": {"revision": "4"}, "kvs": [kv]}
    assert gw.kvs(resp) == [gw.KV(b"k", b"v", 3, 4, 2, 99)]
    assert gw.kvs({"kvs": [{"key": "aw=="}]}) == [gw.KV(b"k")]  # an empty value is left out


def test_watch_messages_decode() -> None:
    created = gw.watch_message({"result": {"header": {"revision": "4"}, "created": True}})
    assert created.created and created.revision == 4 and created.events == []
    compacted = gw.watch_message({"result": {"header": {}, "canceled": True, "compact_revision": "3"}})
    assert compacted.canceled and compacted.compact_revision == 3
    events = [{"kv": {"key": "aw==", "mod_revision": "5"}}, {"type": "DELETE", "kv": {"key": "aw=="}}]
    ev = gw.watch_message({"result": {"header": {"revision": "6"}, "events": events}})
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in ev.events] == [
        ("PUT", b"k", 5),
        ("DELETE", b"k", 0),
    ]


def test_node_records_round_trip_and_are_checked() -> None:
    info = NodeInfo("node-a", "192.0.2.1", WG_KEY, 51820, "192.0.2.1:51820")
    assert NodeInfo.decode(info.encode()) == info
    assert b"private" not in info.encode()
    for bad in (
        {"name": "Bad_Name"},
        {"address": "not-an-ip"},
        {"wg_public_key": "short"},
        {"wg_public_key": base64.b64encode(b"x" * 31).decode()},
        {"wg_port": 0},
    ):
        fields = {**vars(info), **bad}
        with pytest.raises(ValueError):
            NodeInfo(**fields)
    with pytest.raises(ValueError):
        NodeInfo.decode(b"[]")


def test_claims_round_trip_without_the_stores_fields_in_the_value() -> None:
    c = Claim("phone", "ctr1/eth0", "node-a", "net1", ready=True, nonce="ab", lease=5, revision=9)
    assert b"lease" not in c.encode() and b"revision" not in c.encode()
    back = Claim.decode(gw.KV(b"/p/lines/phone/ends/ctr1%2Feth0", c.encode(), create_revision=9, lease=5))
    assert back == c
    assert c.holder() == "ctr1/eth0 (net1) on node-a"


@pytest.mark.parametrize(
    "status, body, outcome",
    [
        (200, b'{"header": {"revision": "3"}}', "answer"),
        # etcd 3.4's gateway errors (deadline, lease not found, bad JSON, 404: seen against the real one)
        (503, b'{"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14}', "retry"),
        (
            500,
            b'{"error": "context deadline exceeded", "message": "context deadline exceeded", "code": 2}',
            "retry",
        ),
        (500, b'{"error": "etcdserver: request timed out", "code": 14}', "retry"),
        (404, b'{"error": "etcdserver: requested lease not found", "code": 5}', "failed"),
        (400, b'{"error": "invalid character", "code": 3}', "failed"),
        (403, b'{"error": "etcdserver: permission denied", "code": 7}', "rejected"),
        (404, b"404 page not found\n", "rejected"),  # /v3alpha/ on etcd 3.4, or not etcd at all
        (200, b"<html>", "retry"),
    ],
)
def test_gateway_errors_are_sorted_into_retry_refused_or_failed(
    status: int, body: bytes, outcome: str
) -> None:
    from cni_yogurt.cluster.client import Client, _Retry
    from cni_yogurt.cluster.errors import StoreFailed, StoreRejected

    ep = Endpoint("http", "127.0.0.1", 2379)
    if outcome == "answer":
        assert Client._decode(ep, "/v3/kv/put", status, body) == {"header": {"revision": "3"}}
        return
    expected = {"retry": _Retry, "failed": StoreFailed, "rejected": StoreRejected}[outcome]
    with pytest.raises(expected) as caught:
        Client._decode(ep, "/v3/kv/put", status, body)
    if outcome == "failed":
        assert isinstance(caught.value, StoreFailed) and caught.value.grpc_code == json.loads(body)["code"]
        assert caught.value.code == Code.INTERNAL
    if outcome == "rejected":
        assert caught.value.code == Code.INVALID_CONFIG  # type: ignore[attr-defined]


def test_error_answers_inside_a_stream_have_their_own_shape() -> None:
    from cni_yogurt.cluster.client import error_of

    # What etcd 3.4's gateway streams when a watch's member has no leader (seen against the real one)
    streamed = {"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}}
    assert error_of(streamed, 200) == (14, "etcdserver: no leader")
    assert error_of({"error": "x", "message": "etcdserver: no leader", "code": 14}, 503) == (
        14,
        "etcdserver: no leader",
    )
