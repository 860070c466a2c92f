"""Line membership, shared by every plugin process on the node.

State lives under /run (tmpfs) so a reboot clears it together with the
devices and the bpffs pins it describes.  One file per line, so that what
ADD, DEL and CHECK read and write does not grow with the number of lines on
the node; one index entry per end, from its host-side device name to its
line, for the verbs that know an attachment but not its line:

    <stateDir>/lines/<digest of the line name>.json   {"line": name, "ends": {key: end}}
    <stateDir>/ends/<host-side ifname>                 the end's line name
    <stateDir>/lines.lock                              one flock for all of it

Every change happens under the flock; each file is written atomically (write
+ rename).  Adding an end writes its index entry before its line file and
removing one its line file first, so that a process killed in between leaves
at most an index entry that points at nothing (ignored, and dropped by the
next write), never an end that its own verbs cannot find.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from cni_yogurt.datapath import Pins
from cni_yogurt.lock import locked


@dataclass
class End:
    """One container attachment on a line."""

    container_id: str
    ifname: str
    line: str
    network: str
    netns: str
    host_ifname: str
    host_ifindex: int = 0
    peer_ifindex: int = 0
    ready: bool = False  # device, programs and addresses are in place
    leaving: bool = False  # DEL has hung it up and is tearing it down
    device: str = "netkit"  # backend: the pair's link kind, "netkit" | "veth"
    attach: str = "netkit"  # how its programs attach: "netkit" | "tcx" | "tc" | "split"
    pins: str = ""  # the pin dir (<bpffsDir>/v<ABI>) of its programs and map
    # The Kubernetes pod that holds it, as its CRI runtime named it in CNI_ARGS ("" if none);
    # files written before these fields load with the defaults.
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    # Claimed in the cluster store (a network with "cluster": true): what the node agent claims
    # again at its start and after a lost lease (agent/cluster.py).
    cluster: bool = False
    # Link state (line/linkstate.py): "" up; else down — its host device is down, so its container
    # sees no carrier, and it is wired to no partner, so nothing passes either way — and why:
    # "end" (this end alone), "line" (the whole line: a partner on another node follows), or
    # "partner" (following its line's end on another node, which is "line").
    down: str = ""
    # Impairments of what it sends (line/impairment.py): their canonical spec, "" for none.
    impair: str = ""

    @property
    def key(self) -> str:
        return attachment_key(self.container_id, self.ifname)

    @property
    def wire(self) -> tuple[int, int]:
        return self.host_ifindex, self.peer_ifindex

    @property
    def pod(self) -> str:
        """namespace/name of its pod, or "" for an end no pod holds."""
        if not self.pod_name:
            return ""
        return f"{self.pod_namespace}/{self.pod_name}" if self.pod_namespace else self.pod_name

    def holder(self) -> str:
        """Who holds it, for people: the attachment, its network and its pod if known."""
        return f"{self.key} ({self.network}" + (f", pod {self.pod}" if self.pod else "") + ")"

    def pin_dir(self, default: Pins) -> Pins:
        """Where its programs, map entries and links are: the pin dir it was added with (an
        older release's until it is moved), or `default` for an end recorded without one."""
        return Pins(self.pins) if self.pins else default


def _fields(end: End) -> dict[str, Any]:
    """An end as a plain dict: every field is a scalar, so a shallow copy is enough (asdict deep-copies).
    The fields later than 0.4.0 only where they are set (`cluster` where true, the pod where one holds
    the end): a node-local end without a pod is written as 0.4.0 wrote it, and 0.4.0 reads it after
    a rollback (it refuses a file with a field it does not know, and rebuilds its registry from the
    kernel: tests/kernel/test_upgrade_from_release.py)."""
    fields = dict(vars(end))
    for name in _LATER_FIELDS:
        if not fields[name]:
            del fields[name]
    return fields


# Fields 0.4.0 (f9b534a) does not know, left out of the file while empty (see _fields).
_LATER_FIELDS = ("cluster", "pod_namespace", "pod_name", "pod_uid", "down", "impair")


def attachment_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


def _line_file(line: str) -> str:
    from cni_yogurt.line.naming import sha256_hex

    return sha256_hex(line.encode(errors="surrogatepass"))[:32] + ".json"


# What reading a truncated, garbage or foreign state file raises.
DAMAGED = (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeDecodeError)


class Registry:
    """The line files under their lock.  `recover` rebuilds the ends from the kernel when a
    file is damaged (line/recovery.py); `on_heal` hears about it (the verb's log)."""

    def __init__(
        self,
        state_dir: str,
        recover: Callable[[], dict[str, End]] | None = None,
        on_heal: Callable[[str], None] | None = None,
    ) -> None:
        self.path = os.path.join(state_dir, "lines")
        self.index_dir = os.path.join(state_dir, "ends")
        self.lock_path = os.path.join(state_dir, "lines.lock")
        # One file for all ends, as releases before ABI 4 kept it: the first verb moves it over.
        self.legacy_path = os.path.join(state_dir, "lines.json")
        self._recover = recover
        self._on_heal = on_heal

    # -- reading ---------------------------------------------------------------

    def _load_all(self) -> dict[str, End]:
        """Every end; raises one of DAMAGED if a file is not ours to read."""
        ends: dict[str, End] = {}
        if os.path.exists(self.legacy_path):
            ends.update(_load_ends(self.legacy_path))
        for name in _listdir(self.path):
            if name.endswith(".json"):
                ends.update(_load_ends(os.path.join(self.path, name)))
        return ends

    def _load_some(self, lines: set[str], host_ifname: str) -> dict[str, End]:
        """The ends of these lines and of the line `host_ifname`'s end is on."""
        if host_ifname:
            try:
                with open(os.path.join(self.index_dir, host_ifname), encoding="utf-8") as f:
                    lines = lines | {str(json.load(f))}
            except FileNotFoundError:
                pass
        ends: dict[str, End] = {}
        for line in lines:
            with suppress(FileNotFoundError):
                ends.update(_load_ends(os.path.join(self.path, _line_file(line))))
        return ends

    def _heal(self, why: str) -> dict[str, End]:
        """Move the damaged state aside and save what the kernel shows instead (lock held).
        Without `recover` (a reader, not a verb) the files are left as they are and read as empty."""
        if self._recover is None:
            return {}
        import shutil  # not on the hot path: it imports bz2, lzma and zlib

        aside = f"{self.path}.damaged"
        shutil.rmtree(aside, ignore_errors=True)
        os.makedirs(aside, mode=0o700)
        for path in (self.legacy_path, self.path, self.index_dir):
            if os.path.exists(path):
                os.replace(path, os.path.join(aside, os.path.basename(path)))
        ends = self._recover()
        self._write(ends, {})
        if self._on_heal is not None:
            self._on_heal(
                f"line state was damaged ({why}); rebuilt {len(ends)} ends from the kernel; kept {aside}"
            )
        return ends

    def damage(self) -> str | None:
        """What is wrong with the line files, without healing them (for `yogurt doctor`)."""
        try:
            self._load_all()
        except DAMAGED as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    # -- writing ---------------------------------------------------------------

    def _write(self, ends: dict[str, End], was: dict[str, dict[str, Any]]) -> None:
        """Save the lines on which an end came, went or changed since `was` (the ends' fields
        when they were read; every end of such a line is in `ends`): index new ends first,
        rewrite their lines, drop the entries of removed ends."""
        now = {k: _fields(v) for k, v in ends.items()}
        changed = {v["line"] for k, v in now.items() if was.get(k) != v}
        changed |= {v["line"] for k, v in was.items() if k not in now}
        if not changed and not os.path.exists(self.legacy_path):
            return
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.makedirs(self.index_dir, mode=0o700, exist_ok=True)
        indexed = {v["host_ifname"] for v in was.values()}
        for v in now.values():
            if v["host_ifname"] not in indexed:
                _write_file(os.path.join(self.index_dir, v["host_ifname"]), json.dumps(v["line"]))
        for line in changed:
            members = {k: v for k, v in now.items() if v["line"] == line}
            path = os.path.join(self.path, _line_file(line))
            if members:
                _write_file(path, json.dumps({"line": line, "ends": dict(sorted(members.items()))}))
            else:
                _unlink(path)
        kept = {v["host_ifname"] for v in now.values()}
        for v in was.values():
            if v["host_ifname"] not in kept:
                _unlink(os.path.join(self.index_dir, v["host_ifname"]))
        _unlink(self.legacy_path)  # migrated (or never there): its ends are in the line files now

    # -- transactions ----------------------------------------------------------

    @contextmanager
    def transaction(self, line: str | None = None, host_ifname: str = "") -> Iterator[dict[str, End]]:
        """The ends, locked; changes made to the dict are saved on a clean exit.

        Without arguments: every end of the node.  With `line` and/or `host_ifname` (the
        verbs' hot path): only the ends of that line and of the line that host-side
        device's end is on, whatever else the node holds; changes may touch only those."""
        partial = line is not None or bool(host_ifname)
        some = {line} if line is not None else set()
        with locked(self.lock_path):
            migrate = os.path.exists(self.legacy_path)  # the first verb after an upgrade from 0.3
            try:
                ends = self._load_some(some, host_ifname) if partial and not migrate else self._load_all()
            except DAMAGED as exc:
                ends = self._heal(f"{type(exc).__name__}: {exc}")
                migrate = False
                if partial:
                    ends = self._load_some(some, host_ifname)
            was = {} if migrate else {k: _fields(v) for k, v in ends.items()}  # migrating: write all
            yield ends
            self._write(ends, was)

    def snapshot(self) -> dict[str, End]:
        """Every end, read under the lock; written back only to heal (with `recover`)."""
        with locked(self.lock_path):
            try:
                return self._load_all()
            except DAMAGED as exc:
                return self._heal(f"{type(exc).__name__}: {exc}")


def _load_ends(path: str) -> dict[str, End]:
    """The ends in one file of ours (a line's, or the older release's lines.json)."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    known = _END_FIELDS
    # A later release's fields are left out: its ends still load here (a rollback keeps its lines).
    return {
        str(key): End(**{k: v for k, v in value.items() if k in known}) for key, value in raw["ends"].items()
    }


_END_FIELDS = frozenset(End.__dataclass_fields__)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _write_file(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    # Root-only whatever the runtime's umask: whoever can write it can rewire lines.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def others_on_line(ends: dict[str, End], end: End) -> list[End]:
    """The other ends that hold a place on this end's line (one being deleted holds none)."""
    return [e for e in ends.values() if e.line == end.line and e.key != end.key and not e.leaving]
