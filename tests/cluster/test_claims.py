"""Line claims against a real etcd: at most two ends, races, leases, release."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from etcdlab import EtcdLab
from helpers import wait_until

from cni_yogurt.cluster import lease as leases
from cni_yogurt.cluster.claims import Claim, LineClaims
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cni.errors import CNIError, Code


def claims_of(lab: EtcdLab, keys: Keys, node: str) -> LineClaims:
    return LineClaims(lab.client(), keys, node)


def test_two_ends_win_the_third_gets_100_naming_the_holders(lab: EtcdLab, keys: Keys) -> None:
    a, b, c = (claims_of(lab, keys, n) for n in ("node-a", "node-b", "node-c"))
    lease = leases.grant(lab.client(), 30)
    first = a.claim("phone", "ctr1/eth0", lease, network="net1")
    b.claim("phone", "ctr2/eth0", lease, network="net1")
    with pytest.raises(CNIError) as full:
        c.claim("phone", "ctr3/eth0", lease)
    assert full.value.code == Code.LINE_FULL == 100
    assert "'phone' already has two ends" in full.value.msg
    assert "ctr1/eth0 (net1) on node-a" in full.value.details
    assert "ctr2/eth0 (net1) on node-b" in full.value.details
    assert sorted(e.end_key for e in a.ends("phone")) == ["ctr1/eth0", "ctr2/eth0"]
    assert first.revision > 0 and first.lease == lease.id and not first.ready
    # Another line is unaffected; a line whose name prefixes this one's too.
    c.claim("phone2", "ctr3/eth0", lease)
    c.claim("phon", "ctr4/eth0", lease)
    assert len(a.ends("phone")) == 2
    leases.revoke(lab.client(), lease)


def test_the_same_end_twice_is_already_attached(lab: EtcdLab, keys: Keys) -> None:
    a = claims_of(lab, keys, "node-a")
    lease = leases.grant(lab.client(), 30)
    a.claim("l", "ctr1/eth0", lease)
    with pytest.raises(CNIError) as twice:
        a.claim("l", "ctr1/eth0", lease)
    assert twice.value.code == Code.ALREADY_ATTACHED
    assert "node-a" in twice.value.details
    leases.revoke(lab.client(), lease)


def test_release_frees_the_place(lab: EtcdLab, keys: Keys) -> None:
    a = claims_of(lab, keys, "node-a")
    lease = leases.grant(lab.client(), 30)
    a.claim("l", "e1", lease)
    a.claim("l", "e2", lease)
    assert a.release("l", "e1") is True
    assert a.release("l", "e1") is False  # DEL twice: nothing to do, no error
    a.claim("l", "e3", lease)
    assert sorted(e.end_key for e in a.ends("l")) == ["e2", "e3"]
    leases.revoke(lab.client(), lease)
    assert a.ends("l") == []  # revoking the lease took its ends


def test_three_threads_racing_for_each_line_give_exactly_two_ends(lab: EtcdLab, keys: Keys) -> None:
    lines = [f"race{i}" for i in range(8)]
    lease = leases.grant(lab.client(), 60)
    results: dict[tuple[str, int], object] = {}
    barrier = threading.Barrier(3)

    def racer(n: int) -> None:
        claims = claims_of(lab, keys, f"node-{n}")  # a client of its own, as on its own node
        barrier.wait(timeout=10)
        for line in lines:
            try:
                results[line, n] = claims.claim(line, f"ctr{n}/eth0", lease)
            except CNIError as e:
                results[line, n] = e

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for line in lines:
        outcome = [results[line, n] for n in range(3)]
        won = [o for o in outcome if isinstance(o, Claim)]
        lost = [o for o in outcome if isinstance(o, CNIError)]
        assert len(won) == 2 and len(lost) == 1, outcome
        assert lost[0].code == Code.LINE_FULL
        for w in won:
            assert w.end_key in lost[0].details
        assert sorted(e.end_key for e in claims_of(lab, keys, "x").ends(line)) == sorted(
            w.end_key for w in won
        )
    leases.revoke(lab.client(), lease)


LINES = 6
RACER = """
import sys, json
sys.path.insert(0, {here!r})
from cni_yogurt.cluster.claims import LineClaims
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.config import parse_endpoint
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.lease import Lease
from cni_yogurt.cni.errors import CNIError
client = Client([parse_endpoint(u) for u in {urls!r}])
claims = LineClaims(client, Keys({prefix!r}), sys.argv[1])
import time
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all three at once
out = []
for i in range({lines}):
    try:
        c = claims.claim(f"proc-line{{i}}", sys.argv[1] + "/eth0", Lease({lease}, 60))
        out.append({{"won": c.end_key}})
    except CNIError as e:
        out.append({{"code": e.code, "details": e.details}})
print(json.dumps(out))
"""


def test_three_processes_racing_give_two_ends_and_one_100(lab: EtcdLab, keys: Keys) -> None:
    import json

    lease = leases.grant(lab.client(), 60)
    script = RACER.format(
        here=str(Path(__file__).parent),
        urls=lab.endpoint_urls(),
        prefix=keys.prefix,
        lease=lease.id,
        lines=LINES,
    )
    start_at = time.time() + 2.0  # after they have imported and connected
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"node-{n}", str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    per_proc = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    for line in range(LINES):
        outs = [per_proc[n][line] for n in range(3)]
        assert sorted("won" in o for o in outs) == [False, True, True], outs
        loser = next(o for o in outs if "code" in o)
        assert loser["code"] == 100
        for o in outs:
            if "won" in o:
                assert o["won"] in loser["details"]
    leases.revoke(lab.client(), lease)


def test_a_killed_adds_claim_ages_out_with_its_lease(lab: EtcdLab, keys: Keys) -> None:
    a = claims_of(lab, keys, "node-a")
    claim_lease = leases.grant(lab.client(), 2)  # what an ADD takes; nobody keeps it alive
    a.claim("l", "killed/eth0", claim_lease)
    assert len(a.ends("l")) == 1
    # etcd expires leases with some slack (it checks every 500 ms, leader-side)
    assert wait_until(lambda: a.ends("l") == [], timeout=claim_lease.ttl + 6), a.ends("l")
    a.claim("l", "next/eth0", leases.grant(lab.client(), 30))


def test_ready_moves_the_end_to_its_nodes_lease(lab: EtcdLab, keys: Keys) -> None:
    client = lab.client()
    a = claims_of(lab, keys, "node-a")
    node_lease, claim_lease = leases.grant(client, 60), leases.grant(client, 60)
    claim = a.claim("l", "ctr1/eth0", claim_lease)
    done = a.ready(claim, node_lease)
    assert done.ready
    leases.revoke(client, claim_lease)  # the ADD's own lease ends with it
    [end] = a.ends("l")
    assert end.ready and end.lease == node_lease.id and end.node == "node-a"
    leases.revoke(client, node_lease)  # the node is gone for good: its ends go too
    assert a.ends("l") == []


def test_ready_after_the_claim_expired_fails_with_11(lab: EtcdLab, keys: Keys) -> None:
    client = lab.client()
    a = claims_of(lab, keys, "node-a")
    claim_lease = leases.grant(client, 30)
    claim = a.claim("l", "slow/eth0", claim_lease)
    leases.revoke(client, claim_lease)  # as if it had run out
    with pytest.raises(CNIError) as late:
        a.ready(claim, leases.grant(client, 30))
    assert late.value.code == Code.TRY_AGAIN_LATER
    assert a.ends("l") == []  # and it did not come back


def test_keep_alive_holds_a_lease_and_its_loss_is_noticed(lab: EtcdLab, keys: Keys) -> None:
    client = lab.client()
    lease = leases.grant(client, 2)
    client.put(keys.node("node-a"), b"x", lease.id)
    keeper = leases.KeepAlive(client, lease).start()
    time.sleep(lease.ttl * 2.5)
    assert client.get(keys.node("node-a")) is not None, keeper.last_error
    assert not keeper.lost.is_set()
    keeper.stop()
    assert wait_until(lambda: client.get(keys.node("node-a")) is None, timeout=lease.ttl + 6)
    with pytest.raises(leases.LeaseLost):
        leases.keep_alive_once(client, lease)
    lost = threading.Event()
    again = leases.grant(client, 2)
    keeper = leases.KeepAlive(client, again, on_lost=lost.set).start()
    leases.revoke(client, again)
    assert lost.wait(timeout=5) and keeper.lost.is_set()
    keeper.stop()


def test_a_nodes_ends_across_lines_for_its_gc(lab: EtcdLab, keys: Keys) -> None:
    client = lab.client()
    lease = leases.grant(client, 30)
    a, b = claims_of(lab, keys, "node-a"), claims_of(lab, keys, "node-b")
    a.claim("l1", "c1/eth0", lease)
    b.claim("l1", "c2/eth0", lease)
    a.claim("l2", "c3/eth0", lease)
    vni_line = "l2"
    from cni_yogurt.cluster import vni

    vni.allocate(client, keys, vni_line)  # not an end: left out
    assert sorted((c.line, c.end_key) for c in a.ends_on_node()) == [("l1", "c1/eth0"), ("l2", "c3/eth0")]
    assert [c.end_key for c in a.ends_on_node("node-b")] == ["c2/eth0"]
    a.release("l1", "c1/eth0")
    assert [c.end_key for c in a.ends_on_node()] == ["c3/eth0"]
    leases.revoke(client, lease)


def test_an_unreadable_end_still_holds_its_place(lab: EtcdLab, keys: Keys) -> None:
    client = lab.client()
    lease = leases.grant(client, 30)
    client.put(keys.line_end("l", "damaged/eth0"), b"\x00not json", lease.id)
    a = claims_of(lab, keys, "node-a")
    a.claim("l", "ctr1/eth0", lease)
    with pytest.raises(CNIError) as full:
        a.claim("l", "ctr2/eth0", lease)
    assert full.value.code == Code.LINE_FULL
    assert "damaged/eth0 on ?" in full.value.details  # named by its key, its node unknown
    assert a.release("l", "damaged/eth0")
    a.claim("l", "ctr2/eth0", lease)
    leases.revoke(client, lease)


def test_reclaim_keeps_moves_makes_again_or_names_the_end_lost(lab: EtcdLab, keys: Keys) -> None:
    """What the agent does at its start and after a lost lease, for each end on its node."""
    client = lab.client()
    a, b, c = (claims_of(lab, keys, n) for n in ("node-a", "node-b", "node-c"))
    old, new = leases.grant(client, 30), leases.grant(client, 30)
    mine = Claim("r", "ctr1/eth0", "node-a", "net1")
    a.ready(a.claim("r", "ctr1/eth0", old, "net1"), old)
    # Under the node's lease already: kept, nothing written.
    rev = client.get(keys.line_end("r", "ctr1/eth0"))
    assert a.reclaim(mine, old).outcome == "kept"
    assert client.get(keys.line_end("r", "ctr1/eth0")) == rev
    # Under another lease (an earlier life's): moved under the node's, the same claim.
    assert a.reclaim(mine, new).outcome == "kept"
    [moved] = a.ends("r")
    assert (moved.lease, moved.ready, moved.revision) == (new.id, True, rev.create_revision if rev else -1)
    # Gone with its lease: made again, ready, under the node's.
    leases.revoke(client, new)
    assert a.ends("r") == []
    fresh = leases.grant(client, 30)
    assert a.reclaim(mine, fresh).outcome == "made"
    [made] = a.ends("r")
    assert (made.node, made.ready, made.lease, made.network) == ("node-a", True, fresh.id, "net1")
    # Gone, and two other ends took the line meanwhile: lost, naming them; nothing written.
    leases.revoke(client, fresh)
    other = leases.grant(client, 30)
    b.claim("r", "ctr2/eth0", other)
    c.claim("r", "ctr3/eth0", other)
    got = a.reclaim(mine, leases.grant(client, 30))
    assert got.outcome == "lost"
    assert sorted(h.holder() for h in got.holders) == ["ctr2/eth0 on node-b", "ctr3/eth0 on node-c"]
    assert sorted(e.node for e in a.ends("r")) == ["node-b", "node-c"]
    leases.revoke(client, other)


def test_wireguard_addresses_are_allocated_once_per_node_and_kept(lab: EtcdLab, keys: Keys) -> None:
    from cni_yogurt.cluster import wgaddress

    client = lab.client()
    net = "10.99.0.0/29"  # six hosts
    got = {n: wgaddress.allocate(client, keys, n, net) for n in ("a", "b", "c")}
    assert sorted(got.values()) == ["10.99.0.1", "10.99.0.2", "10.99.0.3"]
    # A node asking again gets its own back, whatever it remembers.
    assert wgaddress.allocate(client, keys, "b", net, remembered="10.99.0.6") == got["b"]
    # A node the store forgot (rebuilt) takes back what it remembers, if free.
    assert wgaddress.release(client, keys, "c") == [got["c"]]
    assert wgaddress.allocate(client, keys, "d", net, remembered="10.99.0.5") == "10.99.0.5"
    assert wgaddress.allocate(client, keys, "c", net, remembered=got["c"]) == got["c"]
    # Remembered but taken by another: the lowest free instead.
    assert wgaddress.allocate(client, keys, "e", net, remembered=got["a"]) == "10.99.0.4"
    assert wgaddress.allocate(client, keys, "f", net) == "10.99.0.6"
    with pytest.raises(CNIError) as full:
        wgaddress.allocate(client, keys, "g", net)
    assert full.value.code == Code.TRY_AGAIN_LATER and "no WireGuard address left" in full.value.msg
    assert wgaddress.owners(client, keys)[got["a"]] == "a"


def test_racing_nodes_get_distinct_wireguard_addresses(lab: EtcdLab, keys: Keys) -> None:
    from cni_yogurt.cluster import wgaddress

    got: dict[str, str] = {}

    def take(n: str) -> None:
        got[n] = wgaddress.allocate(lab.client(), keys, n, "10.99.0.0/24")

    threads = [threading.Thread(target=take, args=(f"n{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got.values())) == 8
