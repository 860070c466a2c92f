"""Where the cluster's records live in etcd.  Pure.

    <prefix>/nodes/<node>                 a node: address, WireGuard public key and port (its lease)
    <prefix>/lines/<line>/ends/<end key>  an end of a line (the claim's lease, then its node's)
    <prefix>/lines/<line>/vni             the line's tunnel id, once it spans nodes
    <prefix>/vni/<n>                      who holds tunnel id n (the line's name)
    <prefix>/wireguard/<ip>               who holds a WireGuard address of the cluster's range
    <prefix>/releases/<node>              the release a node's agent runs (its lease; compat.py)

Names are percent-encoded into one path segment each, so that no name can reach into another's
keys ("a" never prefixes "a/b": the end key "ctr/eth0" becomes "ctr%2Feth0").
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote


def segment(name: str) -> str:
    if not name:
        raise ValueError("an empty name has no key")
    return quote(name, safe="")


def prefix_end(prefix: bytes) -> bytes:
    """The end of the range of every key that starts with `prefix` (etcd's range_end convention)."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"  # every key


@dataclass(frozen=True)
class Keys:
    prefix: str = "/cni-yogurt"

    def node(self, node: str) -> bytes:
        return f"{self.prefix}/nodes/{segment(node)}".encode()

    def nodes(self) -> bytes:
        return f"{self.prefix}/nodes/".encode()

    def line_ends(self, line: str) -> bytes:
        return f"{self.prefix}/lines/{segment(line)}/ends/".encode()

    def line_end(self, line: str, end_key: str) -> bytes:
        return self.line_ends(line) + segment(end_key).encode()

    def line_vni(self, line: str) -> bytes:
        return f"{self.prefix}/lines/{segment(line)}/vni".encode()

    def lines(self) -> bytes:
        return f"{self.prefix}/lines/".encode()

    def vni(self, n: int) -> bytes:
        return f"{self.prefix}/vni/{n}".encode()

    def vnis(self) -> bytes:
        return f"{self.prefix}/vni/".encode()

    def wireguard_address(self, ip: str) -> bytes:
        """A node's address inside WireGuard, allocated from the cluster's range: the node's name."""
        return f"{self.prefix}/wireguard/{ip}".encode()

    def wireguard_addresses(self) -> bytes:
        return f"{self.prefix}/wireguard/".encode()

    def release(self, node: str) -> bytes:
        return f"{self.prefix}/releases/{segment(node)}".encode()

    def releases(self) -> bytes:
        return f"{self.prefix}/releases/".encode()

    def node_of_release(self, key: bytes) -> str:
        """The node a key under releases() is of."""
        head = self.releases()
        if not key.startswith(head) or b"/" in key[len(head) :]:
            raise ValueError(f"{key!r} is not a node's release record")
        return unquote(key[len(head) :].decode())

    def all(self) -> bytes:
        return f"{self.prefix}/".encode()

    def end_key_of(self, key: bytes, line: str) -> str:
        """The end key back from a key under line_ends(line)."""
        head = self.line_ends(line)
        if not key.startswith(head):
            raise ValueError(f"{key!r} is not an end of line {line!r}")
        return unquote(key[len(head) :].decode())

    def line_of(self, key: bytes) -> str | None:
        """The line a key under lines() belongs to, or None."""
        head = self.lines()
        if not key.startswith(head):
            return None
        return unquote(key[len(head) :].split(b"/", 1)[0].decode())
