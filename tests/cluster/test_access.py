"""Reaching the store: TLS with client certificates, and every wrong configuration named clearly."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from etcdlab import EtcdLab, free_ports
from helpers import converged

from cni_yogurt.cluster import lease as leases
from cni_yogurt.cluster.claims import LineClaims
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.config import Endpoint, parse
from cni_yogurt.cluster.errors import StoreRejected, StoreUnavailable
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.nodes import NodeInfo, register
from cni_yogurt.cluster.probe import probe, status_error
from cni_yogurt.cluster.watch import Watcher
from cni_yogurt.cni.errors import CNIError, Code

WG_KEY = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="  # 32 bytes, base64


def test_tls_with_a_client_certificate_claims_leases_and_watches(tls_lab: EtcdLab, keys: Keys) -> None:
    assert tls_lab.tls is not None
    cfg = parse(
        {
            "endpoints": tls_lab.endpoint_urls(),
            "node": "node-a",
            "caFile": tls_lab.tls.ca,
            "certFile": tls_lab.tls.client_cert,
            "keyFile": tls_lab.tls.client_key,
        }
    )
    client = Client.from_config(cfg)
    watcher = Watcher(Client.from_config(cfg), keys.all()).start()
    try:
        lease = leases.grant(client, 30)
        claims = LineClaims(client, keys, cfg.node)
        claims.claim("l", "e1", lease)
        assert [c.end_key for c in claims.ends("l")] == ["e1"]
        assert leases.keep_alive_once(client, lease) > 0
        assert watcher.wait_synced(10)
        assert converged(watcher, client, keys.all())
    finally:
        watcher.stop()


@pytest.mark.parametrize(
    "which, expect",
    [
        ("no client certificate", "refused the TLS session"),
        ("a certificate of another CA", "refused the TLS session"),
        ("no CA", "is not trusted"),
        ("the wrong CA", "is not trusted"),
    ],
)
def test_tls_without_the_right_certificates_is_refused_clearly(
    tls_lab: EtcdLab, which: str, expect: str
) -> None:
    t = tls_lab.tls
    assert t is not None
    files = {
        "no client certificate": {"ca_file": t.ca},
        "a certificate of another CA": {"ca_file": t.ca, "cert_file": t.rogue_cert, "key_file": t.rogue_key},
        "no CA": {"cert_file": t.client_cert, "key_file": t.client_key},
        "the wrong CA": {"ca_file": t.rogue_ca, "cert_file": t.client_cert, "key_file": t.client_key},
    }[which]
    client = Client(tls_lab.endpoints, timeout=5.0, **files)
    started = time.monotonic()
    with pytest.raises(StoreRejected) as refused:
        client.put(b"/x", b"y")
    assert time.monotonic() - started < 3  # not retried until the deadline: retrying cannot fix it
    assert refused.value.code == Code.INVALID_CONFIG
    assert expect in refused.value.msg
    assert str(tls_lab.endpoints[0]) in refused.value.msg or str(tls_lab.endpoints[1]) in refused.value.msg


def test_plain_http_to_a_tls_member_is_refused(tls_lab: EtcdLab) -> None:
    plain = [Endpoint("http", "127.0.0.1", e.port) for e in tls_lab.endpoints]
    with pytest.raises(CNIError) as refused:
        Client(plain, timeout=2.0).put(b"/x", b"y")
    # etcd closes (or resets) a plain HTTP connection on its TLS port without a word: unreachable,
    # with a hint for each member
    assert refused.value.code == Code.TRY_AGAIN_LATER
    said = {part.split(": ", 1)[0]: part for part in refused.value.details.split("; ")}
    for ep in plain:
        assert said[str(ep)].endswith("(is it an https endpoint?)"), said


def test_unreadable_tls_files_are_named() -> None:
    with pytest.raises(StoreRejected) as bad:
        Client([Endpoint("https", "127.0.0.1", 1)], ca_file="/nonexistent/ca.crt")
    assert "/nonexistent/ca.crt" in bad.value.details


def test_a_bad_endpoint_fails_with_11_naming_it(lab: EtcdLab) -> None:
    [dead] = free_ports(1)  # nothing listens there
    client = Client([Endpoint("http", "127.0.0.1", dead)], timeout=2.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as down:
        client.put(b"/x", b"y")
    assert time.monotonic() - started <= 3
    assert down.value.code == Code.TRY_AGAIN_LATER
    assert f"http://127.0.0.1:{dead}" in down.value.details
    assert "refused" in down.value.details.lower()


def test_a_dead_endpoint_among_good_ones_is_skipped(lab: EtcdLab) -> None:
    [dead] = free_ports(1)
    client = Client([Endpoint("http", "127.0.0.1", dead), *lab.endpoints], timeout=3.0)
    started = time.monotonic()
    assert client.put(b"/failover", b"1") > 0
    assert time.monotonic() - started < 2


class _NotEtcd(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"404 page not found\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_etcd() -> Iterator[Endpoint]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotEtcd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Endpoint("http", "127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


def test_something_else_than_etcd_is_named(not_etcd: Endpoint) -> None:
    with pytest.raises(StoreRejected) as wrong:
        Client([not_etcd], timeout=2.0).put(b"/x", b"y")
    assert "is not an etcd v3 gateway" in wrong.value.msg
    assert "HTTP 404" in wrong.value.details


def test_the_watch_mirrors_puts_and_deletes(lab: EtcdLab, keys: Keys) -> None:
    client = lab.client()
    client.put(keys.node("a"), b"1")
    events = []
    watcher = Watcher(lab.client(), keys.all(), on_event=events.append).start()
    try:
        assert watcher.wait_synced(10)
        client.put(keys.node("b"), b"2")
        client.put(keys.node("a"), b"3")
        client.delete(keys.node("b"))
        assert converged(watcher, client, keys.all())
        assert {k: v.value for k, v in watcher.snapshot().items()} == {keys.node("a"): b"3"}
        assert [e.type for e in events] == ["PUT", "PUT", "DELETE"]
        assert watcher.relists == 1
    finally:
        watcher.stop()


def _registered(lab: EtcdLab, keys: Keys, node: str) -> None:
    lease = leases.grant(lab.client(), 30)
    register(lab.client(), keys, NodeInfo(node, "127.0.0.1", WG_KEY, 51820, "127.0.0.1:51820"), lease)


def test_probe_of_a_good_config(lab: EtcdLab, keys: Keys) -> None:
    _registered(lab, keys, "node-a")
    found = probe(parse({"endpoints": lab.endpoint_urls(), "node": "node-a", "prefix": keys.prefix}))
    assert found.ok and found.problems == [] and found.warnings == []
    assert len(found.versions) == 3 and all(v.startswith("3.") for v in found.versions.values())


def test_probe_names_an_unknown_node(lab: EtcdLab, keys: Keys) -> None:
    _registered(lab, keys, "node-a")
    cfg = parse({"endpoints": lab.endpoint_urls(), "node": "node-typo", "prefix": keys.prefix})
    found = probe(cfg)
    assert not found.ok
    assert "node 'node-typo' is not registered" in found.problems[0]
    err = status_error(cfg)
    assert err is not None and err.code == Code.NOT_AVAILABLE == 50 and "node-typo" in err.details


def test_probe_warns_of_a_dead_member_but_passes(lab: EtcdLab, keys: Keys) -> None:
    _registered(lab, keys, "node-a")
    [dead] = free_ports(1)
    urls = [f"http://127.0.0.1:{dead}", *lab.endpoint_urls()]
    found = probe(parse({"endpoints": urls, "node": "node-a", "prefix": keys.prefix}))
    assert found.ok, found.problems
    assert len(found.warnings) == 1 and f"127.0.0.1:{dead}" in found.warnings[0]


def test_status_fails_with_50_when_no_member_can_be_reached() -> None:
    dead = free_ports(2)
    cfg = parse({"endpoints": [f"http://127.0.0.1:{p}" for p in dead], "node": "node-a"})
    started = time.monotonic()
    err = status_error(cfg)
    assert time.monotonic() - started < 10
    assert err is not None and err.code == 50
    for p in dead:
        assert f"127.0.0.1:{p}" in err.details


def test_probe_names_a_refused_client_certificate(tls_lab: EtcdLab) -> None:
    assert tls_lab.tls is not None
    cfg = parse({"endpoints": tls_lab.endpoint_urls(), "node": "node-a", "caFile": tls_lab.tls.ca})
    found = probe(cfg)
    assert not found.ok and len(found.problems) == 3
    assert all("refused the TLS session" in p for p in found.problems)


def test_calls_inside_one_deadline_end_by_it_together() -> None:
    [dead] = free_ports(1)
    client = Client([Endpoint("http", "127.0.0.1", dead)], timeout=5.0)
    started = time.monotonic()
    with client.deadline(1.0):
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                client.put(b"/x", b"y")
    assert time.monotonic() - started < 1.5  # not 3 x 5 s: the operation's deadline holds
