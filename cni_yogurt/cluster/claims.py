"""Line membership across the cluster: at most two ends per line, claimed by etcd transactions.

For a network with "cluster": true the verbs use both: the node-local files under stateDir
(cni_yogurt/line/registry.py, the node's record of its devices) and these claims, made through the
node agent (agent/cluster.py): `claim` reserves the end cluster-wide, `ready`, `release`, `ends`.

How a claim stays safe without a lock:

- It reads the line's ends and the revision R it read them at.  Two ends already: code 100, naming
  who holds them.  Otherwise one transaction writes the new end only if no key under the line's ends
  changed after R (a compare of mod_revision < R+1 over the whole range) and the end's key is new.
  Of several claimers racing from the same state only one such transaction can succeed; the others
  see the new state and try again, so three racing for one line give exactly two ends.
- The end is put under a lease: the claim's own short one while ADD builds the end (a killed ADD's
  claim ages out with it), then, by `ready`, its node's lease (the end lives while its node does).
- Every claim carries a random nonce: a transaction whose answer was lost but which was applied is
  recognised as our own on the retry, not reported as "already attached".
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

from cni_yogurt.cluster import compat
from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.keys import Keys, prefix_end
from cni_yogurt.cluster.lease import Lease
from cni_yogurt.cni.errors import CNIError, Code

MAX_ENDS = 2


@dataclass(frozen=True)
class Claim:
    """One end of a line, as the cluster records it."""

    line: str
    end_key: str  # container id / ifname, as locally
    node: str
    network: str = ""
    ready: bool = False
    nonce: str = ""
    # Its end is set down for the whole line (`yogurt link down --line`): the far end follows.
    # Written only when true (0.5.0 reads a claim without it; one with it, it skips).
    down: bool = False
    # From the store, not in the value:
    lease: int = 0
    revision: int = 0  # the key's create_revision: which claim this is

    def encode(self) -> bytes:
        fields = asdict(self)
        del fields["lease"], fields["revision"]
        if not self.down:
            del fields["down"]
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def decode(cls, kv: gw.KV) -> Claim:
        raw: Any = json.loads(kv.value)
        if not isinstance(raw, dict):
            raise ValueError("a claim is an object")
        fields = compat.known_fields(cls, raw, besides=("lease", "revision"))
        return cls(**fields, lease=kv.lease, revision=kv.create_revision)

    def holder(self) -> str:
        net = f" ({self.network})" if self.network else ""
        return f"{self.end_key}{net} on {self.node}"


@dataclass(frozen=True)
class Reclaimed:
    """What claiming an end again came to: "kept" | "made" | "lost" (and then who holds the line)."""

    outcome: str
    holders: list[Claim]


class LineClaims:
    def __init__(self, client: Client, keys: Keys, node: str) -> None:
        self.client, self.keys, self.node = client, keys, node

    def _decode_all(self, kvs: list[gw.KV]) -> list[Claim]:
        out = []
        for kv in kvs:
            try:
                out.append(Claim.decode(kv))
            except (ValueError, TypeError):
                # Unreadable, but it holds its place: counted, named by its key.
                line = self.keys.line_of(kv.key) or "?"
                out.append(Claim(line, self.keys.end_key_of(kv.key, line), "?", lease=kv.lease))
        return out

    def ends(self, line: str) -> list[Claim]:
        kvs, _ = self.client.get_prefix(self.keys.line_ends(line))
        return self._decode_all(kvs)

    def all_ends(self) -> list[Claim]:
        """Every end of every line, in one read."""
        kvs, _ = self.client.get_prefix(self.keys.lines())
        return self._decode_all([kv for kv in kvs if b"/ends/" in kv.key])

    def by_line(self) -> dict[str, list[Claim]]:
        """Every line's ends, in one read."""
        out: dict[str, list[Claim]] = {}
        for c in self.all_ends():
            out.setdefault(c.line, []).append(c)
        return out

    def ends_on_node(self, node: str | None = None) -> list[Claim]:
        """Every end this node (or `node`) holds, on every line: what its GC compares with the runtime's."""
        node = self.node if node is None else node
        return [c for c in self.all_ends() if c.node == node]

    def claim(self, line: str, end_key: str, lease: Lease, network: str = "") -> Claim:
        """Reserve a place on the line for this node's end, under `lease`.  Code 100 if the line has two
        ends, 105 if this end key is there already, 11 if the store cannot be reached in time."""
        with self.client.deadline():  # the whole claim, however many rounds, within one deadline
            return self._claim(Claim(line, end_key, self.node, network, nonce=secrets.token_hex(8)), lease)

    def _claim(self, mine: Claim, lease: Lease) -> Claim:
        line, end_key = mine.line, mine.end_key
        key, ends = self.keys.line_end(line, end_key), self.keys.line_ends(line)
        resp = self.client.call("kv/range", gw.range_request(ends, prefix_end(ends)))
        while True:
            held, rev = self._decode_all(gw.kvs(resp)), gw.revision(resp)
            for c in held:
                if c.end_key == end_key:
                    if c.nonce == mine.nonce:  # our own, applied though its answer was lost
                        return c
                    raise CNIError(
                        Code.ALREADY_ATTACHED,
                        f"{end_key} is already attached",
                        f"on line {line!r}, node {c.node}; DEL it first",
                    )
            if len(held) >= MAX_ENDS:
                raise CNIError(
                    Code.LINE_FULL,
                    f"line {line!r} already has two ends",
                    "held by " + ", ".join(c.holder() for c in held),
                )
            resp = self.client.txn(
                [
                    gw.compare(ends, "MOD", "LESS", rev + 1, prefix_end(ends)),
                    gw.compare(key, "CREATE", "EQUAL", 0),
                ],
                [gw.op_put(key, mine.encode(), lease.id), gw.op_range(key)],
                [gw.op_range(ends, prefix_end(ends))],
            )
            if gw.succeeded(resp):
                made = gw.txn_ranges(resp)[0]
                return replace(mine, lease=lease.id, revision=made[0].create_revision if made else 0)
            # The failure branch read the line's ends as they are now: try again from there.
            resp = {"header": resp.get("header", {}), "kvs": _raw_kvs(resp)}

    def reclaim(self, end: Claim, node_lease: Lease, held: list[Claim] | None = None) -> Reclaimed:
        """Claim again, ready and under the node's lease, an end the node has and has built (the
        agent's start, a lost lease): kept if its claim is there already (moved under the lease
        if it was under another), made again if absent and the line has room, lost if two other
        ends hold the line now.  `held`: the line's ends as read already (saves a read)."""
        key = self.keys.line_end(end.line, end.end_key)
        with self.client.deadline():
            ends = self.ends(end.line) if held is None else held
            for c in ends:
                if c.end_key != end.end_key:
                    continue
                if c.node != self.node:  # the same container key on another node: not ours to take
                    return Reclaimed("lost", [c])
                if c.ready and c.lease == node_lease.id:
                    return Reclaimed("kept", [])
                now = replace(c, ready=True, lease=node_lease.id)
                resp = self.client.txn(
                    [gw.compare(key, "CREATE", "EQUAL", c.revision)],
                    [gw.op_put(key, now.encode(), node_lease.id)],
                )
                if gw.succeeded(resp):
                    return Reclaimed("kept", [])
                break  # it went meanwhile (its lease ran out): claim it afresh below
            mine = replace(end, node=self.node, ready=True, nonce=secrets.token_hex(8))
            try:
                self._claim(mine, node_lease)
            except CNIError as e:
                if e.code not in (Code.LINE_FULL, Code.ALREADY_ATTACHED):
                    raise
                return Reclaimed("lost", [c for c in self.ends(end.line) if c.end_key != end.end_key])
            return Reclaimed("made", [])

    def ready(self, claim: Claim, node_lease: Lease) -> Claim:
        """The end is built: keep it from now on under its node's lease.  Fails (code 11) if the claim
        is gone meanwhile (its lease ran out: ADD took longer than the claim's TTL)."""
        now = replace(claim, ready=True, lease=node_lease.id)
        key = self.keys.line_end(claim.line, claim.end_key)
        resp = self.client.txn(
            [gw.compare(key, "CREATE", "EQUAL", claim.revision)],
            [gw.op_put(key, now.encode(), node_lease.id)],
        )
        if not gw.succeeded(resp):
            raise CNIError(
                Code.TRY_AGAIN_LATER,
                f"cluster: the claim of {claim.end_key} on line {claim.line!r} expired",
                "the ADD took longer than the claim's lease; retry it",
            )
        return now

    def set_down(self, claim: Claim, down: bool, node_lease: Lease) -> bool:
        """Publish an end's line state in its claim (kept under the node's lease); False if the
        claim is not this one any more (the next view has the new one)."""
        key = self.keys.line_end(claim.line, claim.end_key)
        resp = self.client.txn(
            [gw.compare(key, "CREATE", "EQUAL", claim.revision)],
            [gw.op_put(key, replace(claim, down=down).encode(), node_lease.id)],
        )
        return gw.succeeded(resp)

    def release(self, line: str, end_key: str) -> bool:
        """Remove an end (DEL, GC); True if it was there.  Deleting what is gone is no error."""
        return self.client.delete(self.keys.line_end(line, end_key)) > 0


def _raw_kvs(resp: gw.JSON) -> list[gw.JSON]:
    """The raw kvs of a txn's single range response (to feed the claim loop again)."""
    for r in resp.get("responses", []):
        if "response_range" in r:
            kvs: list[gw.JSON] = r["response_range"].get("kvs", [])
            return kvs
    return []
