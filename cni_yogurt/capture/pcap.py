"""Packets into pcap or pcapng, as tcpdump and Wireshark read them.  Pure: bytes in, bytes out.

pcapng (the default) holds one interface per captured end (Ethernet, nanosecond timestamps) and
marks each packet's direction with `epb_flags` (inbound: the partner sent it to this end;
outbound: this end sent it).  A packet the end's guard dropped (`yogurt capture --drops`) is
inbound, with the reason as its comment and the drop as its verdict (`epb_verdict`: eBPF TC,
TC_ACT_SHOT), which Wireshark shows with the packet; classic pcap has no room for either.

Classic pcap has no direction field, so its records use the Linux "cooked" v2 header
(LINKTYPE_LINUX_SLL2), whose packet type says outgoing or to-this-host and whose interface index
names the end; the Ethernet frame's own header follows as its payload type says (ARPHRD_ETHER),
so both directions stay told apart in either format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL2 = 276
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond timestamps
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
BLOCK_SHB, BLOCK_IDB, BLOCK_EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
OPT_END, OPT_COMMENT = 0, 1
OPT_SHB_USERAPPL = 4
OPT_IF_NAME, OPT_IF_DESCRIPTION, OPT_IF_TSRESOL = 2, 3, 9
OPT_EPB_FLAGS, OPT_EPB_VERDICT = 2, 7
VERDICT_EBPF_TC, TC_ACT_SHOT = 1, 2
DROPPED_COMMENT = "dropped by the guard: "  # then why (Packet.dropped)
EPB_INBOUND, EPB_OUTBOUND = 0b01, 0b10
SLL2_HOST, SLL2_OUTGOING = 0, 4  # packet types (to this host, sent by it)
ARPHRD_ETHER = 1
FORMATS = ("pcapng", "pcap")


@dataclass(frozen=True)
class Packet:
    ts_ns: int  # nanoseconds since the epoch
    data: bytes  # the captured bytes (an Ethernet frame, maybe cut at the snap length)
    length: int  # the frame's length on the wire
    outbound: bool  # sent by the captured end (else: sent to it by its partner)
    dropped: str | None = None  # why the end's guard dropped it (else it was on the line)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("=HH", code, len(value)) + _pad4(value)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("=II", kind, length) + body + struct.pack("=I", length)


def _options(*options: bytes) -> bytes:
    return b"".join(options) + struct.pack("=HH", OPT_END, 0) if options else b""


class Writer:
    """Write a capture's header once, then its packets, in one of FORMATS."""

    def __init__(
        self, out: BinaryIO, fmt: str, snaplen: int, interface: str, description: str, ifindex: int
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
        self.out, self.fmt, self.ifindex = out, fmt, ifindex
        self.out.write(self.header(fmt, snaplen, interface, description))

    @staticmethod
    def header(fmt: str, snaplen: int, interface: str, description: str) -> bytes:
        if fmt == "pcap":
            return struct.pack("=IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_LINUX_SLL2)
        shb = _block(
            BLOCK_SHB,
            struct.pack("=IHHq", PCAPNG_BYTE_ORDER, 1, 0, -1)
            + _options(_option(OPT_SHB_USERAPPL, b"yogurt capture")),
        )
        idb = _block(
            BLOCK_IDB,
            struct.pack("=HHI", LINKTYPE_ETHERNET, 0, snaplen)
            + _options(
                _option(OPT_IF_NAME, interface.encode()),
                _option(OPT_IF_DESCRIPTION, description.encode()),
                _option(OPT_IF_TSRESOL, bytes([9])),  # 10^-9 s
            ),
        )
        return shb + idb

    def write(self, packet: Packet) -> None:
        self.out.write(self.record(self.fmt, packet, self.ifindex))

    @staticmethod
    def record(fmt: str, packet: Packet, ifindex: int) -> bytes:
        if fmt == "pcap":
            if packet.dropped:
                raise ValueError("classic pcap has no room for why a packet was dropped: pcapng")
            cooked = sll2(packet, ifindex)
            sec, nsec = divmod(packet.ts_ns, 1_000_000_000)
            on_wire = packet.length + len(cooked) - len(packet.data)  # the cooked header for the Ethernet one
            head = struct.pack("=IIII", sec, nsec, len(cooked), on_wire)
            return head + cooked
        flags = EPB_OUTBOUND if packet.outbound else EPB_INBOUND
        options = [_option(OPT_EPB_FLAGS, struct.pack("=I", flags))]
        if packet.dropped:
            options += [
                _option(OPT_COMMENT, (DROPPED_COMMENT + packet.dropped).encode()),
                _option(OPT_EPB_VERDICT, struct.pack("=Bq", VERDICT_EBPF_TC, TC_ACT_SHOT)),
            ]
        body = (
            struct.pack(
                "=IIIII", 0, packet.ts_ns >> 32, packet.ts_ns & 0xFFFFFFFF, len(packet.data), packet.length
            )
            + _pad4(packet.data)
            + _options(*options)
        )
        return _block(BLOCK_EPB, body)


def sll2(packet: Packet, ifindex: int) -> bytes:
    """The frame as a LINKTYPE_LINUX_SLL2 record: a 20-byte header (EtherType, the interface, the
    direction, the sender's MAC) in place of the 14-byte Ethernet one, then the frame's payload."""
    frame = packet.data
    ethertype = frame[12:14] if len(frame) >= 14 else b"\x00\x00"
    source = frame[6:12] if len(frame) >= 12 else bytes(6)
    kind = SLL2_OUTGOING if packet.outbound else SLL2_HOST
    head = (
        ethertype + b"\x00\x00" + struct.pack(">IHBB", ifindex, ARPHRD_ETHER, kind, 6) + source + b"\x00\x00"
    )
    return head + frame[14:]


def read(data: bytes) -> list[Packet]:
    """What `Writer` wrote, read back (either format): for tests and checks, not a general
    reader (one interface, this byte order).  A pcap record's frame gets back an Ethernet header
    with the sender's MAC and an all-zero destination (SLL2 keeps no more)."""
    (magic,) = struct.unpack_from("=I", data)
    packets = []
    if magic == PCAP_MAGIC_NS:
        at = 24
        while at < len(data):
            sec, nsec, caplen, on_wire = struct.unpack_from("=IIII", data, at)
            cooked = data[at + 16 : at + 16 + caplen]
            ethertype, kind, source = cooked[0:2], cooked[10], cooked[12:18]
            frame = bytes(6) + source + ethertype + cooked[20:]
            packets.append(Packet(sec * 1_000_000_000 + nsec, frame, on_wire - 6, kind == SLL2_OUTGOING))
            at += 16 + caplen
        return packets
    at = 0
    while at < len(data):
        kind, length = struct.unpack_from("=II", data, at)
        if kind == BLOCK_EPB:
            _, hi, lo, caplen, on_wire = struct.unpack_from("=IIIII", data, at + 8)
            frame = data[at + 28 : at + 28 + caplen]
            options = _read_options(data[at + 28 + caplen + (-caplen % 4) : at + length - 4])
            flags = struct.unpack("=I", options[OPT_EPB_FLAGS])[0] if OPT_EPB_FLAGS in options else 0
            comment = options.get(OPT_COMMENT, b"").decode()
            dropped = comment.removeprefix(DROPPED_COMMENT) if comment else None
            packets.append(Packet(hi << 32 | lo, frame, on_wire, flags & 0b11 == EPB_OUTBOUND, dropped))
        at += length
    return packets


def _read_options(data: bytes) -> dict[int, bytes]:
    """A block's options by code (the last of each), up to opt_endofopt."""
    found, at = {}, 0
    while at + 4 <= len(data):
        code, size = struct.unpack_from("=HH", data, at)
        if code == OPT_END:
            break
        found[code] = data[at + 4 : at + 4 + size]
        at += 4 + size + (-size % 4)
    return found
