"""Nodes: each registers itself under its lease, so that a node gone for good drops out by itself.

The record holds what other nodes need to reach this one through WireGuard: its underlay address,
its WireGuard public key and port, and the tunnel endpoint.  The private key never leaves the node.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from dataclasses import asdict, dataclass
from typing import Any

from cni_yogurt.cluster import compat
from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.config import NODE_RE
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.lease import Lease
from cni_yogurt.cni.errors import CNIError, Code


@dataclass(frozen=True)
class NodeInfo:
    name: str
    address: str  # underlay IP the tunnel's outer packets use
    wg_public_key: str  # base64, 32 bytes
    wg_port: int
    tunnel_endpoint: str  # host:port other nodes send to (usually address:wg_port)
    wg_address: str = ""  # the node's address inside WireGuard: a line's outer source and destination

    def __post_init__(self) -> None:
        if not NODE_RE.fullmatch(self.name):
            raise ValueError(f"invalid node name {self.name!r}")
        ipaddress.ip_address(self.address)
        try:
            if len(base64.b64decode(self.wg_public_key, validate=True)) != 32:
                raise ValueError
        except (ValueError, binascii.Error):
            raise ValueError(f"invalid WireGuard public key {self.wg_public_key!r}") from None
        if self.wg_address:
            ipaddress.IPv4Address(self.wg_address)
        if not 0 < self.wg_port < 65536:
            raise ValueError(f"invalid WireGuard port {self.wg_port}")

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> NodeInfo:
        raw: Any = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("a node record is an object")
        return cls(**compat.known_fields(cls, raw))


def register(client: Client, keys: Keys, info: NodeInfo, lease: Lease) -> int:
    """Publish this node under its lease (replacing a record of an earlier life); the revision."""
    return client.put(keys.node(info.name), info.encode(), lease.id)


def deregister(client: Client, keys: Keys, name: str) -> None:
    client.delete(keys.node(name))


def nodes(client: Client, keys: Keys) -> dict[str, NodeInfo]:
    """Every live node; a record that does not parse is left out (damage; the fields a later
    release adds are ignored, compat.known_fields)."""
    found, _ = client.get_prefix(keys.nodes())
    out: dict[str, NodeInfo] = {}
    for kv in found:
        try:
            info = NodeInfo.decode(kv.value)
        except (ValueError, TypeError):
            continue
        out[info.name] = info
    return out


def require(client: Client, keys: Keys, name: str) -> NodeInfo:
    """This node's record, or an error saying why the node cannot take part in cluster lines."""
    kv = client.get(keys.node(name))
    if kv is None:
        raise CNIError(
            Code.NOT_AVAILABLE,
            f"cluster: node {name!r} is not registered",
            f"no {keys.node(name).decode()} in etcd: is the node name right and its agent running?",
        )
    try:
        return NodeInfo.decode(kv.value)
    except (ValueError, TypeError) as e:
        raise CNIError(Code.NOT_AVAILABLE, f"cluster: node {name!r} has a bad record", str(e)) from None
