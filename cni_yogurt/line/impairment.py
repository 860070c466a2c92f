"""Impairments: what an end's sender does to what it sends, as a lab's link would — loss,
corruption, duplication, a rate — done in the wire's own programs (bpf/yogurt.bpf.c,
`impaired`), where no container reaches them.

Per end and direction: an end's impairments act on the packets it sends (a line impaired both
ways has both ends set).  They are declared in the network's config or per attachment
(`impairments`, cni/attachment.py), set at run time by `yogurt impair set|show|reset`, and live
in the line registry (End.impair, a canonical spec string such as "loss=10 rate=100000") and in
the pins' impair map, which the sender looks up per packet: an end without an entry is sent as
is.  The registry's copy is what a move to a new release's programs writes into its map.

Delay and jitter are not done: holding a packet needs a queue, and the kernel's queues that can
delay (fq's time-to-send, netem) overwrite the mark in skb->cb (docs/labs.md, measured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cni_yogurt.datapath import ImpairMap, Pins, Thresholds
from cni_yogurt.line.registry import End, Registry

# What a lab's netem users ask for that a queue would have to do (refused, with the reason).
QUEUED = ("delay", "jitter")
PERCENT = ("loss", "corruption", "duplicate")
MAX_RATE_KBIT = 100_000_000  # 100 Gbit/s
# The bucket holds 200 ms at the rate, and at least two of the largest packets a sender sees (a
# 64 KiB GSO packet).  With no queue, TCP meets a policer: measured on a veth line at 100 Mbit/s,
# iperf3 over TCP got 51 % of the rate with 100 ms, 97 % with 200 ms (UDP 100 % with either).
MIN_BURST_BYTES = 2 * 65536
BURST_SECONDS = 0.200
_FRACTION = 1 << 32


class ImpairmentError(ValueError):
    """An impairment that cannot be done: the message says which and why."""


@dataclass(frozen=True)
class Impairment:
    loss: float = 0.0  # percent of packets dropped
    corruption: float = 0.0  # percent sent with one bit of their IPv4 header flipped
    duplicate: float = 0.0  # percent sent twice
    rate: int = 0  # kbit/s of frames (Ethernet header included), 0: no limit

    @classmethod
    def parse(cls, given: Mapping[str, Any]) -> Impairment:
        """From a config's `impairments` object or the CLI's flags; every value checked."""
        known = {f.name for f in fields(cls)}
        queued = sorted(k for k in given if k in QUEUED and given[k])
        if queued:
            raise ImpairmentError(
                f"{', '.join(queued)}: not done by cni-yogurt's programs (a queue would overwrite the "
                "wire's mark); see docs/labs.md for what to use instead"
            )
        unknown = sorted(set(given) - known - set(QUEUED))
        if unknown:
            raise ImpairmentError(
                f"unknown impairment {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        values: dict[str, Any] = {}
        for name in PERCENT:
            value = given.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
                raise ImpairmentError(f"{name}: {value!r} is not a percentage (0..100)")
            values[name] = float(value)
        rate = given.get("rate", 0)
        if isinstance(rate, bool) or not isinstance(rate, int) or not 0 <= rate <= MAX_RATE_KBIT:
            raise ImpairmentError(f"rate: {rate!r} is not a whole number of kbit/s (0..{MAX_RATE_KBIT})")
        return cls(rate=rate, **values)

    @classmethod
    def from_spec(cls, spec: str) -> Impairment:
        """From End.impair ("loss=10 rate=100000"); "" is none."""
        given: dict[str, Any] = {}
        for item in spec.split():
            name, _, value = item.partition("=")
            given[name] = int(value) if name == "rate" else float(value)
        return cls.parse(given)

    def spec(self) -> str:
        """Canonical, only what is set: "" for none (End.impair, `yogurt status`)."""
        return " ".join(f"{name}={_number(value)}" for name, value in self.items())

    def items(self) -> list[tuple[str, float | int]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)]

    def __bool__(self) -> bool:
        return bool(self.items())

    def thresholds(self) -> Thresholds:
        """struct yogurt_impair as the programs read it: (loss, corrupt, duplicate) as fractions
        of 2^32, the rate as picoseconds per byte and the bucket's depth in ns."""
        loss, corrupt, duplicate = (_fraction(getattr(self, name)) for name in PERCENT)
        if not self.rate:
            return loss, corrupt, duplicate, 0, 0
        bytes_per_second = self.rate * 1000 / 8
        ps_per_byte = max(1, round(1e12 / bytes_per_second))
        burst_bytes = max(MIN_BURST_BYTES, bytes_per_second * BURST_SECONDS)
        return loss, corrupt, duplicate, ps_per_byte, math.ceil(burst_bytes * ps_per_byte / 1000)


def _fraction(percent: float) -> int:
    return min(_FRACTION - 1, round(percent / 100 * _FRACTION))


def _number(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write(pins: Pins, end: End) -> None:
    """Put an end's impairments (End.impair) into its pins' map, or take them out: ADD before
    it wires, a move before its hooks switch.  Pins before ABI 6 have none (nothing to do)."""
    if not end.host_ifindex or not pins.has_impair():
        return
    impairment = Impairment.from_spec(end.impair) if end.impair else Impairment()
    with ImpairMap(pins) as impairs:
        if impairment:
            impairs.set(end.host_ifindex, impairment.thresholds())
        else:
            impairs.clear(end.host_ifindex)


def apply(registry: Registry, pins: Pins, keys: list[str], impairment: Impairment) -> list[End]:
    """Set (or, with none, reset) the impairments of the ends `keys`: registry and maps, under
    the registry's lock.  An end on an older release's programs, which cannot impair, is refused
    before anything changes (ImpairmentError: `yogurt upgrade` moves it)."""
    with registry.transaction() as ends:
        chosen = [ends[key] for key in keys if key in ends]
        older = [e.key for e in chosen if e.host_ifindex and not e.pin_dir(pins).has_impair()]
        if older and impairment:
            raise ImpairmentError(
                f"{', '.join(older)}: on an older release's programs, which cannot impair "
                "(yogurt upgrade moves them onto this release's)"
            )
        for end in chosen:
            end.impair = impairment.spec()
            if end.ready and not end.leaving:
                write(end.pin_dir(pins), end)
        return chosen


def shown(pins: Pins, end: End) -> dict[str, Any]:
    """What `yogurt status` and `yogurt impair show` say of an end's impairments: asked (the
    registry), whether the map has exactly that (they differ only while a change is cut short,
    which the next set mends), and what they did: lost, over_rate, duplicated, corrupted; `spec`
    is what was asked as people read it (Impairment.spec)."""
    asked = Impairment.from_spec(end.impair) if end.impair else Impairment()
    found: tuple[Thresholds, dict[str, int]] | None = None
    own = end.pin_dir(pins)
    if end.host_ifindex and own.has_impair():
        with ImpairMap(own) as impairs:
            found = impairs.get(end.host_ifindex)
    in_force = (found[0] if found else None) == (asked.thresholds() if asked else None)
    return {
        "asked": dict(asked.items()),
        "spec": asked.spec(),
        "in_force": in_force,
        "did": found[1] if found else None,
    }
