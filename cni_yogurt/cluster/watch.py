"""A watch that never misses a change: a mirror of every key under a prefix.

It lists the prefix, then watches from the revision after the list.  When the stream is lost (the
member died or restarted, the connection broke) it resumes on another member from the revision
after the last event it saw, so nothing is missed and nothing is seen twice.  When etcd cannot
resume it there — that revision was compacted away, etcd answers `canceled` with
`compact_revision` — or cancels the watch for any other reason, it lists the prefix again and hands
its owner the whole new state (`on_reset`), which replaces what it had: the mirror converges.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable

from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster.client import Client, Stream
from cni_yogurt.cluster.config import Endpoint
from cni_yogurt.cluster.errors import StoreError
from cni_yogurt.cluster.keys import prefix_end

Snapshot = dict[bytes, gw.KV]
RETRY_PAUSE = 0.2


class Watcher:
    def __init__(
        self,
        client: Client,
        prefix: bytes,
        on_reset: Callable[[Snapshot, int], None] | None = None,
        on_event: Callable[[gw.Event], None] | None = None,
    ) -> None:
        self.client, self.prefix = client, prefix
        self._on_reset, self._on_event = on_reset, on_event
        self.relists = 0  # lists so far: 1 after the start, +1 per compaction or cancel
        self.resumes = 0  # streams resumed after a loss, without a list
        self.last_error = ""
        self._next = 0  # the first revision not yet seen; 0: list first
        self._mirror: Snapshot = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._stream: Stream | None = None
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    # -- owner's side ----------------------------------------------------------------------------

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.interrupt()
        self._thread.join(timeout=self.client.timeout + 2)

    def wait_synced(self, timeout: float) -> bool:
        """True once the first list is in."""
        return self._synced.wait(timeout)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return dict(self._mirror)

    @property
    def endpoint(self) -> Endpoint | None:
        """The member the stream is open on, if one is."""
        stream = self._stream
        return stream.endpoint if stream is not None else None

    @property
    def revision(self) -> int:
        """The store revision the mirror reflects."""
        return self._next - 1

    # -- the thread ------------------------------------------------------------------------------

    def _relist(self) -> None:
        kvs, rev = self.client.get_prefix(self.prefix)
        with self._lock:
            self._mirror = {kv.key: kv for kv in kvs}
            self._next = rev + 1
            self.relists += 1
            snap = dict(self._mirror)
        self._synced.set()
        if self._on_reset is not None:
            self._on_reset(snap, rev)

    def _apply(self, msg: gw.WatchMessage) -> None:
        for ev in msg.events:
            with self._lock:
                if ev.type == "DELETE":
                    self._mirror.pop(ev.kv.key, None)
                else:
                    self._mirror[ev.kv.key] = ev.kv
                self._next = ev.kv.mod_revision + 1
            if self._on_event is not None:
                self._on_event(ev)

    def _follow(self) -> None:
        """One stream, until it ends: returns to resume, sets _next = 0 to list again."""
        req = gw.watch_create(self.prefix, prefix_end(self.prefix), self._next)
        self._stream = self.client.stream("watch", req)
        if self._stopping.is_set():
            self._stream.close()
        try:
            for raw in self._stream:
                msg = gw.watch_message(raw)
                if msg.canceled:  # compacted past _next, or cancelled by the server: list again
                    self.last_error = msg.cancel_reason or f"compacted at {msg.compact_revision}"
                    self._next = 0
                    return
                self._apply(msg)
        finally:
            self._stream.close()
            self._stream = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._next == 0:
                    self._relist()
                    if self._stopping.is_set():
                        return
                self._follow()
                if self._next:
                    self.resumes += 1
            except StoreError as e:
                self.last_error = f"{e.msg}: {e.details}"
            except (OSError, ValueError, http.client.HTTPException) as e:
                self.last_error = str(e) or type(e).__name__
            except Exception as e:  # a mirror that stops silently would be worse: note it, start over
                self.last_error = f"{type(e).__name__}: {e}"
                self._next = 0
            self._stopping.wait(RETRY_PAUSE)
