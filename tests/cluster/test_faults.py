"""The store under faults, each on a three-member lab of its own: a member killed during claims,
quorum lost, a node gone for good, the watcher behind a compaction or on a member that restarts."""

from __future__ import annotations

import threading
import time

import pytest
from etcdlab import EtcdLab
from helpers import converged, store_view, wait_until

from cni_yogurt.cluster import lease as leases
from cni_yogurt.cluster.claims import Claim, LineClaims
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.errors import StoreUnavailable
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.nodes import NodeInfo, nodes, register
from cni_yogurt.cluster.watch import Watcher
from cni_yogurt.cni.errors import CNIError, Code

KEYS = Keys("/faults")
WG_KEY = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="  # 32 bytes, base64


def test_claims_go_on_while_the_leader_is_killed(own_lab: EtcdLab) -> None:
    client = own_lab.client()
    claims = LineClaims(client, KEYS, "node-a")
    lease = leases.grant(client, 60)
    done: list[Claim] = []
    failed: list[CNIError] = []
    stop = threading.Event()

    def claimer() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            try:
                done.append(claims.claim(f"line{i}", "ctr/eth0", lease))
            except CNIError as e:
                failed.append(e)
            i += 1

    t = threading.Thread(target=claimer)
    t.start()
    assert wait_until(lambda: len(done) >= 10, timeout=20)
    killed = own_lab.leader()
    before = len(done)
    own_lab.kill(killed)
    assert wait_until(lambda: len(done) >= before + 20, timeout=30), (len(done), failed[:3])
    stop.set()
    t.join(timeout=30)
    assert failed == []
    # Every claim is there exactly once, though some answers may have come from a member that died.
    for c in done:
        assert [e.end_key for e in claims.ends(c.line)] == ["ctr/eth0"]


def test_quorum_lost_a_claim_fails_with_11_within_10_s_and_leaves_nothing(own_lab: EtcdLab) -> None:
    client = own_lab.client()
    claims = LineClaims(client, KEYS, "node-a")
    claim_lease = leases.grant(client, 3)  # what the ADD took before the store failed
    own_lab.kill(1)
    own_lab.kill(2)
    started = time.monotonic()
    with pytest.raises(CNIError) as lost:
        claims.claim("l", "ctr/eth0", claim_lease)
    took = time.monotonic() - started
    assert lost.value.code == Code.TRY_AGAIN_LATER == 11
    assert took <= 10, took
    assert "no etcd member answered" in lost.value.msg
    for ep in own_lab.endpoint_urls():
        assert ep in lost.value.details  # each member and what it said
    with pytest.raises(StoreUnavailable):  # nor can a new ADD get a lease
        leases.grant(own_lab.client(timeout=2.0), 3)
    own_lab.start_member(1)
    own_lab.start_member(2)
    own_lab.wait_healthy()
    # Whatever the lone member may have accepted ages out with the claim's lease.
    assert wait_until(lambda: claims.ends("l") == [], timeout=claim_lease.ttl + 6)
    assert store_view(client, KEYS.line_ends("l")) == {}


def test_a_node_gone_for_good_drops_out_with_its_ends(own_lab: EtcdLab) -> None:
    client = own_lab.client()
    node_lease = leases.grant(client, 2)
    keeper = leases.KeepAlive(client, node_lease).start()
    register(client, KEYS, NodeInfo("node-a", "127.0.0.1", WG_KEY, 51820, "127.0.0.1:51820"), node_lease)
    claims = LineClaims(client, KEYS, "node-a")
    claims.ready(claims.claim("l", "ctr/eth0", leases.grant(client, 30)), node_lease)
    watcher = Watcher(own_lab.client(), KEYS.all()).start()
    try:
        assert watcher.wait_synced(10)
        assert KEYS.node("node-a") in watcher.snapshot()
        time.sleep(node_lease.ttl * 2)  # kept alive: still there
        assert "node-a" in nodes(client, KEYS) and len(claims.ends("l")) == 1
        keeper.stop()  # the node dies
        assert wait_until(lambda: "node-a" not in nodes(client, KEYS), timeout=node_lease.ttl + 6)
        assert claims.ends("l") == []
        assert converged(watcher, client, KEYS.all())
        assert KEYS.node("node-a") not in watcher.snapshot()
    finally:
        watcher.stop()


def _churn(client: Client, n: int) -> None:
    for i in range(n):
        client.put(KEYS.node(f"n{i}"), f"v{i}".encode())
    client.delete(KEYS.node("n0"))


def test_a_watcher_behind_a_compaction_lists_again_and_converges(own_lab: EtcdLab) -> None:
    client = own_lab.client()
    client.put(KEYS.node("before"), b"1")
    # The watcher knows one member only, so that it falls behind while that member is down.
    watcher = Watcher(Client([own_lab.endpoints[0]], timeout=2.0), KEYS.all()).start()
    try:
        assert watcher.wait_synced(10)
        assert watcher.relists == 1
        own_lab.kill(0)
        _churn(client, 5)
        client.delete(KEYS.node("before"))
        own_lab.compact()
        own_lab.start_member(0)
        assert converged(watcher, client, KEYS.all(), timeout=20), watcher.last_error
        assert watcher.relists == 2, watcher.last_error
        assert "compact" in watcher.last_error
    finally:
        watcher.stop()


def test_a_watcher_whose_member_restarts_resumes_and_converges(own_lab: EtcdLab) -> None:
    client = own_lab.client()
    watcher = Watcher(own_lab.client(), KEYS.all()).start()
    try:
        assert watcher.wait_synced(10)
        client.put(KEYS.node("first"), b"1")
        assert converged(watcher, client, KEYS.all())
        assert wait_until(lambda: watcher.endpoint is not None, timeout=5)
        serving = own_lab.endpoints.index(watcher.endpoint)  # type: ignore[arg-type]
        own_lab.kill(serving)
        _churn(client, 5)
        assert converged(watcher, client, KEYS.all(), timeout=20), watcher.last_error
        assert watcher.resumes >= 1 and watcher.relists == 1  # resumed from its revision: no list needed
        own_lab.start_member(serving)
        own_lab.wait_healthy()
        client.put(KEYS.node("after"), b"2")
        assert converged(watcher, client, KEYS.all())
    finally:
        watcher.stop()


def test_a_watch_on_a_member_cut_off_from_the_quorum_ends_rather_than_going_silent(own_lab: EtcdLab) -> None:
    client = own_lab.client()
    # The watcher knows one member only: the one that will be left alone.
    watcher = Watcher(Client([own_lab.endpoints[0]], timeout=2.0), KEYS.all()).start()
    try:
        assert watcher.wait_synced(10)
        assert wait_until(lambda: watcher.endpoint is not None, timeout=5)
        own_lab.kill(1)
        own_lab.kill(2)
        assert wait_until(lambda: "no leader" in watcher.last_error, timeout=15), watcher.last_error
        own_lab.start_member(1)
        own_lab.start_member(2)
        own_lab.wait_healthy()
        client.put(KEYS.node("after"), b"1")
        assert converged(watcher, client, KEYS.all(), timeout=20), watcher.last_error
    finally:
        watcher.stop()
