"""Line membership, shared by every plugin process on the node.

State lives under /run (tmpfs) so a reboot clears it together with the
devices and the bpffs pins it describes.  Every change happens under one
flock and is written atomically (write + rename).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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
    attach: str = "netkit"  # how its programs attach: "netkit" | "tcx" | "tc"
    pins: str = ""  # the pin dir (<bpffsDir>/v<ABI>) of its programs and map

    @property
    def key(self) -> str:
        return attachment_key(self.container_id, self.ifname)

    @property
    def wire(self) -> tuple[int, int]:
        return self.host_ifindex, self.peer_ifindex


def _fields(end: End) -> dict[str, Any]:
    """An end as a plain dict: every field is a scalar, so a shallow copy is enough (asdict deep-copies)."""
    return dict(vars(end))


def attachment_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


# What reading a truncated, garbage or foreign lines.json raises.
DAMAGED = (ValueError, TypeError, KeyError, AttributeError, RecursionError)


class Registry:
    """lines.json under its lock.  `recover` rebuilds the ends from the kernel when the
    file is damaged (line/recovery.py); `on_heal` hears about it (the verb's log)."""

    def __init__(
        self,
        state_dir: str,
        recover: Callable[[], dict[str, End]] | None = None,
        on_heal: Callable[[str], None] | None = None,
    ) -> None:
        self.path = os.path.join(state_dir, "lines.json")
        self.lock_path = os.path.join(state_dir, "lines.lock")
        self._recover = recover
        self._on_heal = on_heal

    def _load(self) -> dict[str, End]:
        """The ends in lines.json; raises FileNotFoundError, or one of DAMAGED if it is not ours to read."""
        with open(self.path, encoding="utf-8") as f:
            raw = json.load(f)
        return {str(key): End(**value) for key, value in raw["ends"].items()}

    def _read(self) -> dict[str, End]:
        try:
            return self._load()
        except FileNotFoundError:
            return {}
        except DAMAGED as exc:
            return self._heal(f"{type(exc).__name__}: {exc}")

    def _heal(self, why: str) -> dict[str, End]:
        """Move the damaged file aside and save what the kernel shows instead (lock held).
        Without `recover` (a reader, not a verb) the file is left as it is and reads as empty."""
        if self._recover is None:
            return {}
        aside = f"{self.path}.damaged"
        os.replace(self.path, aside)
        ends = self._recover()
        self._write(ends)
        if self._on_heal is not None:
            self._on_heal(
                f"{self.path} was damaged ({why}); rebuilt {len(ends)} ends from the kernel; kept {aside}"
            )
        return ends

    def damage(self) -> str | None:
        """What is wrong with lines.json, without healing it (for `yogurt doctor`)."""
        try:
            self._load()
        except FileNotFoundError:
            return None
        except DAMAGED as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _write(self, ends: dict[str, End]) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        # json.dumps without indent: the C encoder (json.dump and indent take the pure-Python one),
        # so that a node with a thousand ends still saves in about a millisecond.
        text = json.dumps({"ends": {k: _fields(v) for k, v in sorted(ends.items())}})
        # Root-only whatever the runtime's umask: whoever can write it can rewire lines.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.path)

    @contextmanager
    def transaction(self) -> Iterator[dict[str, End]]:
        """The ends, locked; changes made to the dict are saved on a clean exit."""
        with locked(self.lock_path):
            ends = self._read()
            before = {k: _fields(v) for k, v in ends.items()}
            yield ends
            if {k: _fields(v) for k, v in ends.items()} != before:
                self._write(ends)

    def snapshot(self) -> dict[str, End]:
        with locked(self.lock_path):
            return self._read()


def others_on_line(ends: dict[str, End], end: End) -> list[End]:
    """The other ends that hold a place on this end's line (one being deleted holds none)."""
    return [e for e in ends.values() if e.line == end.line and e.key != end.key and not e.leaving]
