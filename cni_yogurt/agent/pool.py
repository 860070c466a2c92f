"""Pairs made ahead by the node agent, so that an ADD does not wait for the attaches.

Each tcx attach waits for an RCU grace period in the kernel (under the rtnl
lock), so a veth end's two attaches are most of an ADD.  The agent makes a
few veth pairs ahead, both programs attached, and an ADD takes one: it
renames the host side, pins the two links as that end's, and moves the
container side into the container's netns under the CNI ifname.  The move
costs one grace period of its own (the kernel's rcu_barrier in a netns
change), the two attaches cost two.  The rest of ADD (line, label, IPAM,
addresses, map) is the same code either way: the pool is only a faster way
to get a device.

A pooled pair is closed: no map entry, so its sender drops everything and
its guard passes nothing.  Its container side waits in a netns of the
agent's own that nothing but an fd keeps alive (no bind mount), with the
ifindex both devices share (README "One ifindex per pair"); its links are
not pinned, the agent holds their fds.  So the pool dies with the agent:
killed or stopped, its fds close, the netns goes and takes every pooled pair
with it, and the links detach.  Nothing is ever pinned, labelled or named
for the line registry (host-side names start with `ygp`, which
naming.is_ours refuses), so GC, the sweep and recovery never see a pooled
pair as an end.

Only veth pairs with tcx links are pooled: a tc filter does not survive the
move (the kernel drops a device's qdiscs when it changes netns) and costs no
grace period anyway; netkit ADDs take the usual path.  A take that does not
fit (another bpffs dir, programs reloaded since the pair was made, the
ifindex taken in the container's netns: EBUSY) gives the pair up and lets
the usual path make one.  The pool refills in a thread of its own, only
once no call has been in flight for a moment (QUIET): its attaches hold the
rtnl lock through their grace periods, and a runtime's calls come in runs
(a pod's ADD, then its partner's, then CHECKs).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cni_yogurt import backend, datapath
from cni_yogurt.datapath import Pins
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.kernel.netns import new_netns

PREFIX = "ygp"  # host-side names of pooled pairs: never naming.is_ours
DEFAULT_SIZE = 8
KIND = backend.VETH_TCX
_RETRY = 2.0  # seconds after a failed refill
QUIET = 0.25  # seconds without a call before the refill goes on


@dataclass
class Pooled:
    host_ifname: str
    index: int  # both devices'
    links: dict[str, int] = field(default_factory=dict)  # hook -> link fd, held
    programs: dict[str, int] = field(default_factory=dict)  # hook -> program id attached

    def close(self) -> None:
        for fd in self.links.values():
            os.close(fd)
        self.links.clear()


class Pool:
    def __init__(self, pins: Pins, size: int, log: Any) -> None:
        self.pins = pins
        self.size = size
        self.log = log
        self.netns_fd = new_netns()
        self._ready: deque[Pooled] = deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._last_call = 0.0  # when the last call ended (monotonic)
        self._stopped = False
        self.taken = 0
        self.missed = 0
        self._thread = threading.Thread(target=self._refill, name="pool", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- the agent's side ----------------------------------------------------

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """A call in flight: the refill waits until none is."""
        with self._cond:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._last_call = time.monotonic()
                self._cond.notify_all()

    def ready(self) -> int:
        with self._cond:
            return len(self._ready)

    def indexes(self) -> list[int]:
        with self._cond:
            return [p.index for p in self._ready]

    def close(self) -> None:
        """Stop refilling; delete the pooled pairs (closing the netns would too, later)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(30)
        with self._cond:
            left = list(self._ready)
            self._ready.clear()
        with Rtnl() as host:
            for pooled in left:
                self._discard(pooled, host)
        os.close(self.netns_fd)

    # -- ADD's side ------------------------------------------------------------

    def take_into(
        self,
        kind: backend.Backend,
        pins: Pins,
        host: Rtnl,
        host_ifname: str,
        netns_fd: int,
        ifname: str,
        mtu: int | None,
        mac: str | None,
    ) -> int | None:
        """A pooled pair made this end's: host side renamed `host_ifname`, its links pinned
        as the end's, the container side in `netns_fd` as `ifname` with the same ifindex.
        None if no pair fits (nothing is left behind then: the usual path takes over)."""
        if kind != KIND or pins != self.pins:
            return None
        with self._cond:
            pooled = self._ready.popleft() if self._ready else None
            self._cond.notify_all()
        if pooled is None:
            self.missed += 1
            return None
        pinned = False
        try:
            if pooled.programs != _programs(pins):
                raise LookupError("the programs were loaded again since this pair was made")
            host.set_link(pooled.index, name=host_ifname, mtu=mtu)  # EEXIST: not ours to touch
            pinned = True
            backend.pin_held(pins, host_ifname, pooled.links)
            with Rtnl.in_netns(self.netns_fd) as pool:
                pool.move_link(pooled.index, netns_fd, ifname)
            if mtu or mac:
                with Rtnl.in_netns(netns_fd) as cont:
                    cont.set_link(pooled.index, mtu=mtu, mac=mac)
        except (OSError, LookupError) as exc:
            self.log.info("pool: pair given up, making one", index=pooled.index, reason=str(exc))
            if pinned:
                datapath.detach(pins, host_ifname)
            self._discard(pooled, host)
            self.missed += 1
            return None
        pooled.close()  # the pins hold the links now
        self.taken += 1
        return pooled.index

    # -- refill ------------------------------------------------------------------

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (wait := self._wait()) != 0.0:
                    self._cond.wait(wait)
                if self._stopped:
                    return
            try:
                pooled = self._make()
            except Exception as exc:  # noqa: BLE001  (the pool is an optimisation: ADD works without)
                self.log.warning("pool: cannot make a pair", error=f"{type(exc).__name__}: {exc}")
                with self._cond:
                    self._cond.wait(_RETRY)
                continue
            with self._cond:
                self._ready.append(pooled)
                if self._stopped:
                    return  # close() deletes it with the rest

    def _wait(self) -> float | None:
        """How long the refill waits before its next pair (None: until woken; 0: not at all)."""
        if len(self._ready) >= self.size or self._in_flight:
            return None
        return max(0.0, self._last_call + QUIET - time.monotonic())

    def _make(self) -> Pooled:
        name = PREFIX + secrets.token_hex(6)
        with Rtnl() as host, Rtnl.in_netns(self.netns_fd) as pool:
            index = backend.create_pair(KIND, host, name, f"p{secrets.token_hex(6)}", self.netns_fd, None)
            pooled = Pooled(name, index)
            try:
                pair = backend.Pair(name, index, index, host, pool, self.netns_fd)
                pooled.programs = _programs(self.pins)
                pooled.links = backend.attach_held(KIND, self.pins, pair)
            except BaseException:
                self._discard(pooled, host)
                raise
        return pooled

    def _discard(self, pooled: Pooled, host: Rtnl) -> None:
        with contextlib.suppress(OSError):
            host.delete_link(pooled.index)  # both devices: the peer goes with it
        pooled.close()


def _programs(pins: Pins) -> dict[str, int]:
    return {hook.name: datapath.program_id(pins, hook.program) for hook in KIND.hooks}
