"""Small helpers shared by the cluster tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.watch import Watcher


def wait_until(cond: Callable[[], object], timeout: float, pause: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(pause)
    return bool(cond())


def store_view(client: Client, prefix: bytes) -> dict[bytes, bytes]:
    kvs, _ = client.get_prefix(prefix)
    return {kv.key: kv.value for kv in kvs}


def mirror_view(watcher: Watcher) -> dict[bytes, bytes]:
    return {k: kv.value for k, kv in watcher.snapshot().items()}


def converged(watcher: Watcher, client: Client, prefix: bytes, timeout: float = 10.0) -> bool:
    """True once the watcher's mirror equals what the store holds under prefix."""
    return wait_until(lambda: mirror_view(watcher) == store_view(client, prefix), timeout, pause=0.2)
