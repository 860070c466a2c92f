"""etcd's v3 JSON gateway messages (etcd >= 3.4, paths under /v3/).  Pure: encoding and decoding only.

The gateway is grpc-gateway over etcd's own gRPC API: the same messages as JSON, bytes as base64,
64-bit integers as strings, fields left out when they hold their zero value (a failed txn has no
"succeeded", a first revision no "create_revision").
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


def kv_from(raw: JSON) -> KV:
    return KV(
        key=unb64(raw.get("key", "")),
        value=unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def revision(resp: JSON) -> int:
    """The store's revision when it answered (the header every response carries)."""
    return int(resp.get("header", {}).get("revision", 0))


def kvs(resp: JSON) -> list[KV]:
    return [kv_from(kv) for kv in resp.get("kvs", [])]


def range_request(key: bytes, range_end: bytes | None = None, *, keys_only: bool = False) -> JSON:
    req: JSON = {"key": b64(key)}
    if range_end is not None:
        req["range_end"] = b64(range_end)
    if keys_only:
        req["keys_only"] = True
    return req


def put(key: bytes, value: bytes, lease: int = 0) -> JSON:
    req: JSON = {"key": b64(key), "value": b64(value)}
    if lease:
        req["lease"] = str(lease)
    return req


def delete(key: bytes, range_end: bytes | None = None) -> JSON:
    req: JSON = {"key": b64(key)}
    if range_end is not None:
        req["range_end"] = b64(range_end)
    return req


# Compare targets and the field each one reads.
_TARGET_FIELD = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "VALUE": "value"}


def compare(
    key: bytes, target: str, result: str, operand: int | bytes, range_end: bytes | None = None
) -> JSON:
    """One txn condition: `target` of `key` (every key in [key, range_end) if given) `result` `operand`.
    target: VERSION | CREATE | MOD | VALUE; result: EQUAL | GREATER | LESS | NOT_EQUAL."""
    fld = _TARGET_FIELD[target]
    if result not in ("EQUAL", "GREATER", "LESS", "NOT_EQUAL"):
        raise ValueError(f"unknown compare result {result!r}")
    cmp: JSON = {"key": b64(key), "target": target, "result": result}
    cmp[fld] = b64(operand) if isinstance(operand, bytes) else str(operand)
    if range_end is not None:
        cmp["range_end"] = b64(range_end)
    return cmp


def txn(compares: list[JSON], success: list[JSON], failure: list[JSON] | None = None) -> JSON:
    """A transaction; `success`/`failure` hold ops made by op_put, op_delete and op_range."""
    return {"compare": compares, "success": success, "failure": failure or []}


def op_put(key: bytes, value: bytes, lease: int = 0) -> JSON:
    return {"request_put": put(key, value, lease)}


def op_delete(key: bytes, range_end: bytes | None = None) -> JSON:
    return {"request_delete_range": delete(key, range_end)}


def op_range(key: bytes, range_end: bytes | None = None) -> JSON:
    return {"request_range": range_request(key, range_end)}


def succeeded(resp: JSON) -> bool:
    return bool(resp.get("succeeded", False))


def txn_ranges(resp: JSON) -> list[list[KV]]:
    """The kvs of every range op a txn ran, in order."""
    return [kvs(r["response_range"]) for r in resp.get("responses", []) if "response_range" in r]


@dataclass(frozen=True)
class Event:
    type: str  # "PUT" | "DELETE"
    kv: KV


@dataclass(frozen=True)
class WatchMessage:
    revision: int = 0
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    events: list[Event] = field(default_factory=list)


def watch_create(key: bytes, range_end: bytes | None, start_revision: int) -> JSON:
    req: JSON = {"key": b64(key), "start_revision": str(start_revision)}
    if range_end is not None:
        req["range_end"] = b64(range_end)
    return {"create_request": req}


def watch_message(raw: JSON) -> WatchMessage:
    """One line of the watch stream: {"result": {...}} (or {"error": ...}, raised by the caller)."""
    res = raw.get("result", {})
    return WatchMessage(
        revision=revision(res),
        created=bool(res.get("created", False)),
        canceled=bool(res.get("canceled", False)),
        compact_revision=int(res.get("compact_revision", 0)),
        cancel_reason=str(res.get("cancel_reason", "")),
        events=[Event(ev.get("type", "PUT"), kv_from(ev.get("kv", {}))) for ev in res.get("events", [])],
    )
