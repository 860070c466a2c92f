"""Tunnel ids against a real etcd: unique under races, stable per line, reused, kept while a line has ends."""

from __future__ import annotations

import threading

from etcdlab import EtcdLab

from cni_yogurt.cluster import lease as leases
from cni_yogurt.cluster import vni
from cni_yogurt.cluster.claims import LineClaims
from cni_yogurt.cluster.keys import Keys


def test_ids_are_unique_under_races_and_stable_per_line(lab: EtcdLab, keys: Keys) -> None:
    lines = [f"l{i}" for i in range(12)]
    got: dict[tuple[int, str], int] = {}
    barrier = threading.Barrier(4)

    def allocator(n: int) -> None:
        client = lab.client()  # each as on its own node
        barrier.wait(timeout=10)
        # Every thread asks for every line (in its own order): a line gets one id, whoever asks.
        for line in lines[n:] + lines[:n]:
            got[n, line] = vni.allocate(client, keys, line)

    threads = [threading.Thread(target=allocator, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(got) == 4 * len(lines)
    per_line = {line: {got[n, line] for n in range(4)} for line in lines}
    assert all(len(ids) == 1 for ids in per_line.values()), per_line
    ids = [next(iter(v)) for v in per_line.values()]
    assert sorted(ids) == list(range(1, len(lines) + 1))  # unique, and the lowest free ones
    client = lab.client()
    assert vni.allocated(client, keys) == {next(iter(per_line[line])): line for line in lines}


def test_an_id_is_freed_only_once_its_line_has_no_end_and_then_reused(lab: EtcdLab, keys: Keys) -> None:
    client = lab.client()
    claims = LineClaims(client, keys, "node-a")
    lease = leases.grant(client, 30)
    claims.claim("a", "e1", lease)
    claims.claim("b", "e1", lease)
    va, vb = vni.allocate(client, keys, "a"), vni.allocate(client, keys, "b")
    assert (va, vb) == (1, 2)
    assert vni.release_if_unused(client, keys, "a") is False  # an end is still there
    assert vni.vni_of(client, keys, "a") == 1
    claims.release("a", "e1")
    assert vni.release_if_unused(client, keys, "a") is True
    assert vni.vni_of(client, keys, "a") is None and 1 not in vni.allocated(client, keys)
    assert vni.allocate(client, keys, "c") == 1  # the lowest free one: reused
    assert vni.allocate(client, keys, "a") == 3


def test_sweep_frees_the_ids_of_lines_whose_ends_aged_out(lab: EtcdLab, keys: Keys) -> None:
    client = lab.client()
    claims = LineClaims(client, keys, "node-a")
    gone, kept = leases.grant(client, 30), leases.grant(client, 30)
    claims.claim("dead", "e1", gone)
    claims.claim("alive", "e1", kept)
    vni.allocate(client, keys, "dead")
    vni.allocate(client, keys, "alive")
    leases.revoke(client, gone)  # the node holding it went for good
    assert vni.sweep(client, keys) == [1]
    assert vni.allocated(client, keys) == {2: "alive"}
    leases.revoke(client, kept)


def test_lowest_free_skips_used_ids() -> None:
    assert vni.lowest_free(set()) == 1
    assert vni.lowest_free({1, 2, 4}) == 3
