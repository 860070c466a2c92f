"""Which releases can share a cluster: the cluster protocol each node's agent publishes.  Pure.

Two nodes carry a line between them only if their releases agree on two things: the records in
etcd (cluster/keys.py: nodes, ends, tunnel ids, WireGuard addresses) and the tunnel's wire (a
line's packets in VXLAN with the line's id, between the nodes' WireGuard addresses, received by
the tunnel program).  That agreement is the cluster protocol, one number.  A release that
changes either so that an older release would misread it raises PROTOCOL; one that only adds
what older releases ignore keeps it.

Each agent publishes `<prefix>/releases/<node>` under its node's lease: its version, pin ABI,
commit and protocol.  A node with no such record runs 0.5.0, the one release with lines across
nodes from before the records (protocol 1).  An end whose partner's node speaks a protocol this
release does not is never wired to it: the end stays closed, an ADD that would make such a line
fails, and the agent's status, metrics and log name the node and its release.

Records are read for the fields this release knows; fields a later release adds are ignored, so
that a node of that release is not taken for damage.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Any

PROTOCOL = 1  # this release's
SPEAKS = frozenset({1})  # the protocols whose nodes this release carries lines with


@dataclass(frozen=True)
class NodeRelease:
    version: str
    abi: int
    protocol: int
    commit: str = ""
    published: bool = True  # False: the node published no record (0.5.0)

    @property
    def compatible(self) -> bool:
        return self.protocol in SPEAKS

    def encode(self) -> bytes:
        fields = asdict(self)
        del fields["published"]
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> NodeRelease:
        raw: Any = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("a release record is an object")
        version, commit = raw.get("version"), raw.get("commit")
        if not isinstance(version, str) or not version:
            raise ValueError("a release record names its version")
        return cls(
            version,
            _positive(raw, "abi"),
            _positive(raw, "protocol"),
            commit if isinstance(commit, str) else "",
        )

    def describe(self) -> str:
        made = self.version if self.published else f"{self.version} (no release record)"
        return f"{made}, ABI {self.abi}, cluster protocol {self.protocol}"


def known_fields(cls: type, raw: dict[str, Any], *, besides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a record this release knows (a dataclass's, but `besides`): those a later
    release added are left out, so that its records read here as they would have been written."""
    names = {f.name for f in dataclasses.fields(cls)} - set(besides)
    return {k: v for k, v in raw.items() if k in names}


def _positive(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"a release record's {name} is a positive integer")
    return value


# What a node that published no release record runs: 0.5.0, the first release with lines across
# nodes and the last before the records.
UNPUBLISHED = NodeRelease("0.5.0", 5, 1, "868c94a", published=False)


def of(releases: dict[str, NodeRelease], node: str) -> NodeRelease:
    """The release a node runs, as its record says (UNPUBLISHED without one)."""
    return releases.get(node, UNPUBLISHED)


def refusal(node: str, theirs: NodeRelease, mine: NodeRelease) -> str:
    """Why a line to `node` is not carried, in words an operator can act on."""
    return (
        f"node {node} runs {theirs.describe()}; this node runs {mine.describe()} and carries lines "
        f"only with cluster protocol {', '.join(map(str, sorted(SPEAKS)))}: "
        "run releases of one cluster protocol on both nodes (CHANGELOG.md says which)"
    )
