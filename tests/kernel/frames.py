"""Frames and datagrams made by hand, to send past the host's stack and see what arrives."""

from __future__ import annotations

import contextlib
import socket
import struct

from cni_yogurt import lab
from cni_yogurt.kernel.netns import run_in

PACKET_QDISC_BYPASS = 20  # <linux/if_packet.h>: skip the qdisc layer, and with it tc egress
SOL_PACKET = 263


def udp_datagram(src: str, dst: str, port: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet (L3 netkit devices carry no link-layer header)."""
    udp = struct.pack("!HHHH", 5555, port, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    words = struct.unpack("!10H", header)
    csum = sum(words)
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    return header[:10] + struct.pack("!H", csum) + header[12:] + udp


def inject(netns: lab.Netns | None, device: str, packet: bytes, dst_mac: str, bypass: bool = False) -> None:
    """Send an IPv4 packet out of `device` from an AF_PACKET socket, as anyone with CAP_NET_RAW can."""

    def make() -> socket.socket:
        return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))

    sock = make() if netns is None else run_in(netns.path, make)
    # With bypass, the frame goes straight to the driver: no qdisc, no tc egress.
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, int(bypass))
    # The link-layer destination (veth: the container's MAC; netkit, L3, has none).
    address = (device, 0x0800, 0, 0, bytes.fromhex(dst_mac.replace(":", "")))
    # a dropped frame may surface as ENOBUFS on the sender
    with sock, contextlib.suppress(OSError):
        sock.sendto(packet, address)


# What a UDP socket on address:port in a netns gets while send() runs: the lab's.
receives = lab.udp_receive
