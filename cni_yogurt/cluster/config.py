"""The cluster configuration: which etcd, how to trust it, who this node is.  Pure: parsing and checks only.

Given as a JSON object (the node agent's file, `yogurt agent --cluster <file>`):

    {"endpoints": ["https://10.0.0.1:2379", ...], "node": "node-a", "prefix": "/cni-yogurt",
     "caFile": "...", "certFile": "...", "keyFile": "...", "timeout": 8,
     "address": "192.0.2.10", "wireguardDevice": "wg0", "tunnelDevice": "yvx0"}

The last three are the node agent's (`yogurt agent --cluster <file>`): the node's underlay address
(other nodes' WireGuard sends to it), the WireGuard device whose public key, port and address the
node publishes (read from the device: the private key is never read), and the tunnel device (an
external-mode VXLAN) that cross-node lines go through.

Every problem is a CNIError with code 7 (invalid config) that names the key and the value at fault.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cni_yogurt.cni.errors import CNIError, Code

# A node name is a DNS-1123 label, as a Kubernetes node's is in practice.
NODE_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
PREFIX_RE = re.compile(r"(/[A-Za-z0-9._-]+)+")
DEFAULT_PREFIX = "/cni-yogurt"
# Every store call ends within this many seconds, failover included: a claim that cannot reach
# a quorum fails with code 11 well inside the runtime's own timeout.
DEFAULT_TIMEOUT = 8.0
MAX_TIMEOUT = 10.0
AGENT_KEYS = frozenset({"address", "wireguardDevice", "tunnelDevice"})
KNOWN_KEYS = (
    frozenset({"endpoints", "node", "prefix", "caFile", "certFile", "keyFile", "timeout"}) | AGENT_KEYS
)
IFNAME_RE = re.compile(r"[^/\s:]{1,15}")


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" | "https"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class ClusterConfig:
    endpoints: tuple[Endpoint, ...]
    node: str
    prefix: str = DEFAULT_PREFIX
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout: float = DEFAULT_TIMEOUT
    address: str = ""  # the agent's: underlay address
    wireguard_device: str = ""
    tunnel_device: str = ""

    @property
    def tls(self) -> bool:
        return self.endpoints[0].scheme == "https"


def _bad(msg: str, details: str) -> CNIError:
    return CNIError(Code.INVALID_CONFIG, f"cluster: {msg}", details)


def parse_endpoint(text: Any) -> Endpoint:
    if not isinstance(text, str) or not text:
        raise _bad("invalid endpoint", f"{text!r} is not a URL like https://10.0.0.1:2379")
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as e:
        raise _bad("invalid endpoint", f"{text!r}: {e}") from None
    if url.scheme not in ("http", "https") or not url.hostname or port is None:
        raise _bad("invalid endpoint", f"{text!r} must be http(s)://host:port")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise _bad("invalid endpoint", f"{text!r} must have no path, query or credentials")
    return Endpoint(url.scheme, url.hostname, port)


def _file(raw: dict[str, Any], key: str, check_files: bool) -> str:
    path = raw.get(key, "")
    if not isinstance(path, str):
        raise _bad(f"invalid {key}", f"{path!r} is not a path")
    if path and check_files and not os.access(path, os.R_OK):
        raise _bad(f"{key} cannot be read", f"{path}: missing or not readable")
    return path


def parse(raw: Any, *, check_files: bool = True) -> ClusterConfig:
    """A ClusterConfig from its JSON object; `check_files=False` skips the readability of the TLS files."""
    if not isinstance(raw, dict):
        raise _bad("must be an object", f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise _bad("unknown keys", ", ".join(unknown))
    eps = raw.get("endpoints")
    if isinstance(eps, str):
        eps = [e for e in eps.split(",") if e]
    if not isinstance(eps, list) or not eps:
        raise _bad("no endpoints", "endpoints must list at least one http(s)://host:port")
    endpoints = tuple(parse_endpoint(e) for e in eps)
    if len({e.scheme for e in endpoints}) > 1:
        raise _bad("mixed endpoints", "all endpoints must be http or all https")
    node = raw.get("node")
    if not isinstance(node, str) or not NODE_RE.fullmatch(node):
        raise _bad("invalid node name", f"{node!r} must be a DNS label (lower case, digits, '-', '.')")
    prefix = raw.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise _bad("invalid prefix", f"{prefix!r} must look like /cni-yogurt")
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise _bad("invalid timeout", f"{timeout!r} must be seconds in (0, {MAX_TIMEOUT:g}]")
    ca, cert, key = (_file(raw, k, check_files) for k in ("caFile", "certFile", "keyFile"))
    if bool(cert) != bool(key):
        raise _bad("certFile and keyFile go together", "give both (a client certificate) or neither")
    if (ca or cert) and endpoints[0].scheme != "https":
        raise _bad("TLS files with http endpoints", "use https:// endpoints with caFile/certFile/keyFile")
    address = raw.get("address", "")
    if address != "":
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise _bad("invalid address", f"{address!r} is not an IP address") from None
    devices = []
    for k in ("wireguardDevice", "tunnelDevice"):
        dev = raw.get(k, "")
        if dev != "" and (not isinstance(dev, str) or not IFNAME_RE.fullmatch(dev)):
            raise _bad(f"invalid {k}", f"{dev!r} is not an interface name")
        devices.append(dev)
    return ClusterConfig(endpoints, node, prefix, ca, cert, key, float(timeout), address, *devices)


def for_agent(cfg: ClusterConfig) -> ClusterConfig:
    """The agent needs to know which devices and address it publishes: code 7 naming what is missing."""
    missing = [
        k
        for k, v in (
            ("address", cfg.address),
            ("wireguardDevice", cfg.wireguard_device),
            ("tunnelDevice", cfg.tunnel_device),
        )
        if not v
    ]
    if missing:
        raise _bad("the agent's keys are missing", ", ".join(missing))
    return cfg


def load(path: str) -> ClusterConfig:
    """The agent's file: the JSON object above (or a network config's `cluster` object form)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise _bad("cannot read the cluster file", f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise _bad("the cluster file is not JSON", f"{path}: {e}") from None
    if isinstance(raw, dict) and isinstance(raw.get("cluster"), dict):
        raw = raw["cluster"]
    return for_agent(parse(raw))
