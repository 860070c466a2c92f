"""Leases: what makes a node's records vanish from the cluster when the node does.

A lease is granted with a TTL; while someone keeps it alive (KeepAlive, the node agent's thread)
every key put under it stays; when the keep-alives stop — the node died, lost its network, or its
agent was killed — etcd deletes them all once the TTL has run out.  Revoking deletes them at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.errors import GRPC_NOT_FOUND, StoreError, StoreFailed, StoreUnavailable


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


class LeaseLost(StoreError):
    """The lease expired or was revoked: every key under it is gone."""


def grant(client: Client, ttl: int) -> Lease:
    """A new lease (etcd rounds a TTL up to its minimum, about 2 s with default timings)."""
    resp = client.call("lease/grant", {"TTL": str(ttl)})
    return Lease(int(resp["ID"]), int(resp["TTL"]))


def keep_alive_once(client: Client, lease: Lease) -> int:
    """Refresh the lease; its TTL again.  LeaseLost if it is gone."""
    stream = client.stream("lease/keepalive", {"ID": str(lease.id)}, read_timeout=client.timeout)
    try:
        msg = next(iter(stream), None)
    except (OSError, ValueError) as e:  # no answer in time (a member without a leader), or garbage
        raise StoreUnavailable(
            f"cluster: lease {lease.id:x} not refreshed", str(e) or type(e).__name__
        ) from None
    finally:
        stream.close()
    ttl = int((msg or {}).get("result", {}).get("TTL", 0))
    if ttl <= 0:
        raise LeaseLost(50, f"cluster: lease {lease.id:x} has expired", "its keys are gone")
    return ttl


def revoke(client: Client, lease: Lease) -> None:
    """Delete the lease and every key under it; a lease already gone is no error."""
    try:
        client.call("lease/revoke", {"ID": str(lease.id)})
    except StoreFailed as e:
        if e.grpc_code != GRPC_NOT_FOUND:
            raise


class KeepAlive:
    """Keeps a lease alive from a daemon thread, refreshing it every TTL/3.

    A refresh that fails is retried at the next tick: a member killed or a short loss of quorum costs
    nothing as long as the lease has time left.  `lost` is set once the lease is found expired (the
    node's records are gone and must be written again under a new lease) and `on_lost` is called.
    """

    def __init__(self, client: Client, lease: Lease, on_lost: Callable[[], None] | None = None) -> None:
        self.client, self.lease = client, lease
        self.lost = threading.Event()
        self.last_error: str = ""
        self._stop = threading.Event()
        self._on_lost = on_lost
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.id:x}", daemon=True)

    def start(self) -> KeepAlive:
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = max(self.lease.ttl / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                keep_alive_once(self.client, self.lease)
                self.last_error = ""
            except LeaseLost as e:
                self.last_error = e.msg
                self.lost.set()
                if self._on_lost is not None:
                    self._on_lost()
                return
            except StoreError as e:
                self.last_error = f"{e.msg}: {e.details}"

    def stop(self, *, revoke_lease: bool = False) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.client.timeout + 1)
        if revoke_lease:
            revoke(self.client, self.lease)
