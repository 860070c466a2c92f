"""A small etcd v3 client over the JSON gateway: http.client and ssl from the standard library.

What it adds to plain HTTP: a list of endpoints with failover (a member that refuses, times out,
has no leader or no quorum is skipped, the next one tried, round after round), one deadline per
call however many members are tried, TLS with a CA and a client certificate, and errors that say
whether the store is unreachable (retry later) or refuses us (fix the configuration).

A request that failed after it was sent may still have been applied: the callers' transactions
are written so that running one twice is harmless (compare first, and recognise their own write).

The one-file binary carries ssl (and so OpenSSL) for this module alone: no plugin verb imports it,
but every exec of the binary unpacks its libraries (README, "TLS and the one-file binary").
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from cni_yogurt.cluster import gateway as gw
from cni_yogurt.cluster.config import ClusterConfig, Endpoint
from cni_yogurt.cluster.errors import (
    GRPC_PERMISSION_DENIED,
    GRPC_UNAUTHENTICATED,
    RETRYABLE,
    StoreFailed,
    StoreRejected,
    StoreUnavailable,
)

# "hasleader" (etcd's require-leader, passed through the gateway as gRPC metadata): a member that has
# lost its leader answers "no leader" at once rather than after its own 7 s timeout, so the next
# member is tried at once; and it ends our watch streams rather than leaving them open and silent.
HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-Hasleader": "true"}
CONNECT_TIMEOUT = 1.0  # per member: a dead one must not eat the whole deadline
BACKOFF = (0.05, 0.1, 0.2, 0.4)  # between rounds over every endpoint


# What a member says when it cannot serve a request now (no leader, no quorum, an election), though
# the gateway may wrap it as gRPC code 2 "Unknown" (its own deadline ran out waiting for the member).
RETRYABLE_MESSAGES = (
    "deadline exceeded",
    "timed out",
    "no leader",
    "leader changed",
    "not capable",
    "too many",
)


def error_of(msg: gw.JSON, status: int) -> tuple[int, str]:
    """gRPC code and message of an error answer: {"error", "message", "code"} for a call,
    {"error": {"grpc_code", "message", ...}} inside a stream."""
    err = msg.get("error")
    if isinstance(err, dict):
        return int(err.get("grpc_code", 0)), str(err.get("message") or status)
    return int(msg.get("code", 0)), str(msg.get("message") or err or status)


class _Retry(Exception):
    """This member cannot serve the request now; try the next one.  `rejected`: it refused us (TLS),
    which is reported as such if every member does, rather than retried until the deadline."""

    def __init__(self, msg: str, rejected: StoreRejected | None = None) -> None:
        super().__init__(msg)
        self.rejected = rejected


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise StoreRejected("cluster: cannot load the TLS files", f"{ca_file or cert_file}: {e}") from None
    return ctx


def _keepalive(sock: socket.socket) -> None:
    """Notice a member that vanished without closing (power off, partition) within ~10 s on long streams."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, val in (("TCP_KEEPIDLE", 4), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)


class Stream:
    """A response that goes on (watch, lease keep-alive): one JSON object per line."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, endpoint: Endpoint):
        self.conn, self.resp, self.endpoint = conn, resp, endpoint

    def __iter__(self) -> Iterator[gw.JSON]:
        while True:
            line = self.resp.readline()
            if not line:
                return  # the member closed the stream
            if line.strip():
                msg = json.loads(line)
                if "error" in msg:
                    code, text = error_of(msg, 200)
                    raise StoreFailed(f"cluster: stream from {self.endpoint} ended", text, code)
                yield msg

    def interrupt(self) -> None:
        """Wakes a thread blocked reading the stream, from another thread: it sees the stream end
        and closes it itself (closing it from here would race with its read)."""
        sock = self.conn.sock
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Ends the stream, from the thread that reads it."""
        self.interrupt()
        self.conn.close()


class Client:
    def __init__(
        self,
        endpoints: tuple[Endpoint, ...] | list[Endpoint],
        *,
        timeout: float = 8.0,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        netns: str = "",
    ) -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._ctx = tls_context(ca_file, cert_file, key_file) if endpoints[0].scheme == "https" else None
        self._current = 0  # the member that answered last: tried first next time
        self._local = threading.local()  # one kept-alive connection per thread
        # Connect from inside this network namespace (a path), whatever the caller's: the node lab's
        # tools, in the host's netns, reach an etcd that listens on the lab's underlay.
        self.netns = netns

    @classmethod
    def from_config(cls, cfg: ClusterConfig) -> Client:
        return cls(
            cfg.endpoints,
            timeout=cfg.timeout,
            ca_file=cfg.ca_file,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
        )

    # -- transport ---------------------------------------------------------------------------------

    def _connect(self, ep: Endpoint, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if ep.scheme == "https":
            conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=self._ctx)
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
        if self.netns:
            from cni_yogurt.kernel.netns import run_in

            plain, netns = conn.connect, self.netns

            def connect_there() -> None:
                run_in(netns, plain)

            conn.connect = connect_there  # type: ignore[method-assign]
        return conn

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._current + i) % n for i in range(n)]

    def _exchange(
        self, i: int, path: str, body: bytes, remaining: float, stream: bool, read_timeout: float | None
    ) -> Any:
        """One request to endpoint i: the decoded answer (or a Stream), _Retry, or a StoreError."""
        ep = self.endpoints[i]
        cached = getattr(self._local, "conn", None)
        conn = cached[1] if cached and cached[0] == i and not stream else None
        fresh = conn is None
        try:
            if conn is None:
                conn = self._connect(ep, min(CONNECT_TIMEOUT, remaining))
                conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(remaining)
            conn.request("POST", path, body, HEADERS)
            resp = conn.getresponse()
            if stream and resp.status == 200:
                conn.sock.settimeout(read_timeout)
                _keepalive(conn.sock)
                return Stream(conn, resp, ep)
            data = resp.read()
        except ssl.SSLCertVerificationError as e:
            self._drop(conn)
            why = StoreRejected(
                f"cluster: {ep} is not trusted", f"{getattr(e, 'verify_message', e)} (check caFile)"
            )
            raise _Retry(f"{ep}: {why.details}", why) from None
        except ssl.SSLError as e:
            # Our client certificate refused (or missing), or the server speaks no TLS.
            self._drop(conn)
            why = StoreRejected(
                f"cluster: {ep} refused the TLS session",
                f"{getattr(e, 'reason', None) or e} (check certFile/keyFile and caFile)",
            )
            raise _Retry(f"{ep}: {why.details}", why) from None
        except (OSError, http.client.HTTPException) as e:
            self._drop(conn)
            if not fresh:  # a kept-alive connection the member closed meanwhile: once more, fresh
                return self._exchange(i, path, body, remaining, stream, read_timeout)
            reason = str(e) or type(e).__name__
            # etcd closes plain HTTP on a TLS port unanswered, or resets it (whichever its TLS
            # handshake read does first with our request's bytes).
            unanswered = (http.client.RemoteDisconnected, ConnectionResetError)
            if isinstance(e, unanswered) and ep.scheme == "http":
                reason += " (is it an https endpoint?)"
            raise _Retry(f"{ep}: {reason}") from None
        if stream:  # an error answer to a stream request: not kept
            self._drop(conn)
        else:
            self._local.conn = (i, conn)
        return self._decode(ep, path, resp.status, data)

    def _drop(self, conn: http.client.HTTPConnection | None) -> None:
        if conn is not None:
            conn.close()
        cached = getattr(self._local, "conn", None)
        if cached and cached[1] is conn:
            self._local.conn = None

    @staticmethod
    def _decode(ep: Endpoint, path: str, status: int, data: bytes) -> gw.JSON:
        try:
            msg = json.loads(data)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            if status == 200:
                raise _Retry(f"{ep}: garbled answer")
            raise StoreRejected(
                f"cluster: {ep} is not an etcd v3 gateway", f"POST {path}: HTTP {status} {data[:80]!r}"
            )
        if status == 200 and "error" not in msg:
            return msg
        code, text = error_of(msg, status)
        if code in RETRYABLE or status in (502, 503, 504) or any(m in text for m in RETRYABLE_MESSAGES):
            raise _Retry(f"{ep}: {text}")
        if code in (GRPC_UNAUTHENTICATED, GRPC_PERMISSION_DENIED) or status in (401, 403):
            raise StoreRejected(f"cluster: {ep} denied access", text)
        raise StoreFailed(f"cluster: {path} failed", text, code)

    def _call(
        self, path: str, req: gw.JSON, timeout: float | None, stream: bool, read_timeout: float | None = None
    ) -> Any:
        now = time.monotonic()
        deadline = now + (self.timeout if timeout is None else timeout)
        outer = getattr(self._local, "deadline", None)
        if outer is not None:  # inside an operation of several calls: its deadline holds
            deadline = min(deadline, outer)
        budget = max(deadline - now, 0.0)
        body = json.dumps(req).encode()
        errors: dict[str, str] = {}
        for rnd in range(1_000_000):
            rejections: list[StoreRejected] = []
            for i in self._order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    out = self._exchange(i, path, body, remaining, stream, read_timeout)
                except _Retry as e:
                    errors[str(self.endpoints[i])] = str(e).split(": ", 1)[-1]
                    if e.rejected is not None:
                        rejections.append(e.rejected)
                    continue
                self._current = i
                return out
            if len(rejections) == len(self.endpoints):  # every member refuses us: a configuration problem
                raise rejections[0]
            pause = BACKOFF[min(rnd, len(BACKOFF) - 1)]
            if deadline - time.monotonic() <= pause:
                break
            time.sleep(pause)
        tried = "; ".join(f"{ep}: {err}" for ep, err in errors.items()) or "no time left"
        raise StoreUnavailable(f"cluster: no etcd member answered {path} within {budget:.3g} s", tried)

    # -- the API -----------------------------------------------------------------------------------

    @contextmanager
    def deadline(self, seconds: float | None = None) -> Iterator[None]:
        """Every call made inside (by this thread) ends by one deadline, `timeout` by default: an
        operation of several calls, like a claim, fails within it as a single call does."""
        outer = getattr(self._local, "deadline", None)
        mine = time.monotonic() + (self.timeout if seconds is None else seconds)
        self._local.deadline = mine if outer is None else min(outer, mine)
        try:
            yield
        finally:
            self._local.deadline = outer

    def call(self, path: str, req: gw.JSON, *, timeout: float | None = None) -> gw.JSON:
        """POST req to /v3/<path> on a member that can serve it; its answer."""
        out: gw.JSON = self._call(f"/v3/{path}", req, timeout, stream=False)
        return out

    def stream(
        self, path: str, req: gw.JSON, *, timeout: float | None = None, read_timeout: float | None = None
    ) -> Stream:
        """Open a streaming call (watch, keepalive) on a member that accepts it within the deadline.
        Reading it then waits up to `read_timeout` for each message (None: as long as the connection
        lives, which TCP keep-alive checks)."""
        out: Stream = self._call(f"/v3/{path}", req, timeout, stream=True, read_timeout=read_timeout)
        return out

    def get(self, key: bytes) -> gw.KV | None:
        found = gw.kvs(self.call("kv/range", gw.range_request(key)))
        return found[0] if found else None

    def get_prefix(self, prefix: bytes) -> tuple[list[gw.KV], int]:
        """Every key under prefix, and the revision they were read at."""
        from cni_yogurt.cluster.keys import prefix_end

        resp = self.call("kv/range", gw.range_request(prefix, prefix_end(prefix)))
        return gw.kvs(resp), gw.revision(resp)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return gw.revision(self.call("kv/put", gw.put(key, value, lease)))

    def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        return int(self.call("kv/deleterange", gw.delete(key, range_end)).get("deleted", 0))

    def txn(
        self, compares: list[gw.JSON], success: list[gw.JSON], failure: list[gw.JSON] | None = None
    ) -> gw.JSON:
        return self.call("kv/txn", gw.txn(compares, success, failure))

    def compact(self, revision: int) -> None:
        self.call("kv/compaction", {"revision": str(revision), "physical": True})

    def status(self, endpoint: Endpoint | None = None, timeout: float | None = None) -> gw.JSON:
        """The answering member's status (version, leader, revision); of `endpoint` alone if given."""
        if endpoint is None:
            return self.call("maintenance/status", {}, timeout=timeout)
        one = Client([endpoint], timeout=self.timeout, netns=self.netns)
        one._ctx = self._ctx
        return one.call("maintenance/status", {}, timeout=timeout)
