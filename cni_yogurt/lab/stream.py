"""Sequenced UDP between two containers, about one datagram per millisecond: what a move or a
restart under a live line loses or reorders, counted per datagram."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

from cni_yogurt import lab

PORT = 5454
_SEQ = struct.Struct("!I")
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module does not name it


class Stream:
    """Sequenced UDP datagrams from one container to another, about one per millisecond."""

    def __init__(self, sender: lab.Netns, receiver: lab.Netns, address: str) -> None:
        self.received: list[int] = []
        self.sent = 0
        self._stop = threading.Event()
        self._receiver = receiver
        self._rx = lab.socket_in(receiver, socket.AF_INET, socket.SOCK_DGRAM)
        # FORCE: past net.core.rmem_max (212992 on a stock Debian 12, which would cap 4 MB to
        # 416 kB): a receiver starved on a busy machine must not drop what the wire delivered.
        self._rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)
        self._overflows_before = self.overflows()
        self._rx.bind((address, PORT))
        self._rx.settimeout(0.2)
        self._tx = lab.socket_in(sender, socket.AF_INET, socket.SOCK_DGRAM)
        self._tx.connect((address, PORT))
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._receive)]

    def _send(self) -> None:
        # One CPU for the sender: a veth queues what it transmits on the backlog of the CPU that
        # sent it, so a sender that migrates between two datagrams can have them overtake each
        # other with no upgrade at all (seen once in the emulated 6.1 VM under load). Pinned, a
        # datagram out of order is the move's doing.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # 0: this thread
        while not self._stop.is_set():
            self._tx.send(_SEQ.pack(self.sent) + bytes(64))
            self.sent += 1
            time.sleep(0.001)

    def _receive(self) -> None:
        while not (self._stop.is_set() and len(self.received) >= self.sent):
            try:
                data = self._rx.recv(2048)
            except TimeoutError:
                if self._stop.is_set():
                    return  # nothing more in flight
                continue
            self.received.append(_SEQ.unpack_from(data)[0])

    def start(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, f"only {len(self.received)} datagrams arrived"

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self._rx.close()
        self._tx.close()

    def overflows(self) -> int:
        """UDP datagrams the receiver's netns dropped for a full socket buffer (RcvbufErrors:
        the receiving netns has no other UDP socket)."""
        snmp = self._receiver.run("cat", "/proc/net/snmp").stdout.splitlines()
        names, values = (line.split()[1:] for line in snmp if line.startswith("Udp:"))
        return int(dict(zip(names, values, strict=True))["RcvbufErrors"])

    def lost(self) -> list[int]:
        return sorted(set(range(self.sent)) - set(self.received))

    def overtaken(self) -> list[tuple[int, int]]:
        """(a, b) for each datagram b that arrived right after a later one, a."""
        return [(a, b) for a, b in zip(self.received, self.received[1:], strict=False) if b < a]

    def out_of_order(self) -> int:
        return len(self.overtaken())

    def problems(self) -> str:
        """'' if every datagram sent arrived once and in order; else what went wrong."""
        if self.received == list(range(self.sent)):
            return ""
        lost, late = self.lost(), self.overtaken()
        # Dropped by the receiver's own UDP socket, not on the wire: the harness's loss, not the move's.
        full = self.overflows() - self._overflows_before
        return (
            f"sent {self.sent}, got {len(self.received)}: lost {lost[:20]}, out of order {late[:20]}, "
            f"of the lost {full} dropped for a full receive buffer"
        )
