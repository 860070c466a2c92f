"""Tunnel ids (VNI, 24 bits) for lines that span nodes, unique in the cluster, allocated by transaction.

Two keys hold an allocation, written together: <prefix>/vni/<n> (the line's name) and
<prefix>/lines/<line>/vni (n).  A line asks for one when its second end is on another node; the
lowest free id is taken, so ids are reused once released.  They carry no lease: a line keeps its
id as long as it has an end, whichever node dies.  `release_if_unused` (DEL of a line's last end)
and `sweep` (GC: lines whose ends all aged out with their leases) free ids only while the line
has no end, checked in the same transaction.
"""

from __future__ import annotations

from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.errors import StoreUnavailable
from cni_yogurt.cluster.keys import Keys, prefix_end
from cni_yogurt.cni.errors import CNIError, Code

FIRST, LAST = 1, (1 << 24) - 1  # VNI 0 is "none" to VXLAN/Geneve tools
MAX_ATTEMPTS = 64


def lowest_free(used: set[int]) -> int:
    n = FIRST
    while n in used:
        n += 1
    if n > LAST:
        raise CNIError(Code.TRY_AGAIN_LATER, "cluster: no tunnel id left", f"all {LAST} are in use")
    return n


def vni_of(client: Client, keys: Keys, line: str) -> int | None:
    kv = client.get(keys.line_vni(line))
    return int(kv.value) if kv else None


def allocated(client: Client, keys: Keys) -> dict[int, str]:
    """Every allocated tunnel id and its line."""
    kvs, _ = client.get_prefix(keys.vnis())
    head = len(keys.vnis())
    return {int(kv.key[head:]): kv.value.decode() for kv in kvs}


def allocate(client: Client, keys: Keys, line: str) -> int:
    """The line's tunnel id: the one it has, or the lowest free one, claimed for it."""
    with client.deadline():
        return _allocate(client, keys, line)


def _allocate(client: Client, keys: Keys, line: str) -> int:
    mine = keys.line_vni(line)
    for _ in range(MAX_ATTEMPTS):
        have = vni_of(client, keys, line)
        if have is not None:
            return have
        n = lowest_free(set(allocated(client, keys)))
        resp = client.txn(
            [gw.compare(mine, "CREATE", "EQUAL", 0), gw.compare(keys.vni(n), "CREATE", "EQUAL", 0)],
            [gw.op_put(keys.vni(n), line.encode()), gw.op_put(mine, str(n).encode())],
        )
        if gw.succeeded(resp):
            return n
        # Someone took n, or gave this line its id meanwhile: look again.
    raise StoreUnavailable(f"cluster: no tunnel id for line {line!r}", f"{MAX_ATTEMPTS} races lost in a row")


def release_if_unused(client: Client, keys: Keys, line: str) -> bool:
    """Free the line's tunnel id if the line has no end left; True if freed."""
    n = vni_of(client, keys, line)
    if n is None:
        return False
    ends = keys.line_ends(line)
    resp = client.txn(
        [
            gw.compare(ends, "CREATE", "EQUAL", 0, prefix_end(ends)),  # over a range: true iff it is empty
            gw.compare(keys.line_vni(line), "VALUE", "EQUAL", str(n).encode()),
            gw.compare(keys.vni(n), "VALUE", "EQUAL", line.encode()),
        ],
        [gw.op_delete(keys.line_vni(line)), gw.op_delete(keys.vni(n))],
    )
    return gw.succeeded(resp)


def sweep(client: Client, keys: Keys) -> list[int]:
    """Free every tunnel id whose line has no end left; the ids freed."""
    return [n for n, line in sorted(allocated(client, keys).items()) if release_if_unused(client, keys, line)]
