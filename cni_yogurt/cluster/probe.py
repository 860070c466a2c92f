"""Can this node use the cluster store?  What `yogurt doctor --cluster` prints and the agent checks at start.

Each endpoint is asked for its status on its own (so a dead one is named even when others answer),
then a read that needs a quorum goes through the client as the verbs use it, then this node's
registration is looked up.  A store that cannot be reached makes STATUS fail with code 50.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.config import ClusterConfig
from cni_yogurt.cluster.errors import StoreError
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.cluster.nodes import require
from cni_yogurt.cni.errors import CNIError, Code

PROBE_TIMEOUT = 2.0
MEMBER_TIMEOUT = 1.0  # one member's status: a live member answers in milliseconds
MIN_VERSION = (3, 4)


@dataclass
class Probe:
    problems: list[str] = field(default_factory=list)  # the node cannot use the store
    warnings: list[str] = field(default_factory=list)  # it can, with less margin (a member down)
    versions: dict[str, str] = field(default_factory=dict)  # endpoint -> etcd version

    @property
    def ok(self) -> bool:
        return not self.problems


def probe(cfg: ClusterConfig, *, expect_node: bool = True, timeout: float = PROBE_TIMEOUT) -> Probe:
    out = Probe()
    try:
        client = Client.from_config(cfg)
    except StoreError as e:
        out.problems.append(f"{e.msg}: {e.details}")
        return out
    client.timeout = timeout
    for ep in cfg.endpoints:
        try:
            version = str(client.status(ep, timeout=min(timeout, MEMBER_TIMEOUT)).get("version", "?"))
        except StoreError as e:
            (out.problems if e.code == Code.INVALID_CONFIG else out.warnings).append(
                f"{ep}: {e.msg.removeprefix('cluster: ')} ({e.details})"
            )
            continue
        out.versions[str(ep)] = version
        parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if len(parts) == 2 and parts < MIN_VERSION:
            out.problems.append(f"{ep}: etcd {version} is too old (>= 3.4 needed)")
    if out.problems:
        return out
    try:
        client.get(Keys(cfg.prefix).all())  # linearizable: needs a leader and a quorum
        if expect_node:
            require(client, Keys(cfg.prefix), cfg.node)
    except CNIError as e:
        out.problems.append(f"{e.msg.removeprefix('cluster: ')}: {e.details}")
    if not out.problems and len(out.warnings) == len(cfg.endpoints):
        out.problems.append("no endpoint answered")
    return out


def status_error(cfg: ClusterConfig) -> CNIError | None:
    """STATUS's answer: None if the node can use the store, else the error (code 50) saying why."""
    found = probe(cfg)
    if found.ok:
        return None
    return CNIError(Code.NOT_AVAILABLE, "cluster store not usable", "; ".join(found.problems))
