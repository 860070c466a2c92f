"""The yogurt phone itself: what crosses the wire, and what never does."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable

from conftest import Node, Phone, addresses, ifindex

from cni_yogurt import lab
from cni_yogurt.datapath import HOOKS
from cni_yogurt.kernel import bpf
from cni_yogurt.kernel.netns import create_in, open_netns


def test_two_ends_ping_and_talk_tcp_both_ways_v4_and_v6(phone: Phone) -> None:
    one, two = phone.one, phone.two
    assert phone.a6 and phone.b6
    assert lab.ping(one, phone.b4) == 2
    assert lab.ping(two, phone.a4) == 2
    assert lab.ping(one, phone.b6) == 2
    assert lab.ping(two, phone.a6) == 2
    assert lab.tcp_exchange(two, phone.b4, one)
    assert lab.tcp_exchange(one, phone.a4, two)
    assert lab.tcp_exchange(two, phone.b6, one)
    assert lab.tcp_exchange(one, phone.a6, two)


def test_links_stay_attached_after_the_plugin_exits(phone: Phone) -> None:
    index = ifindex(phone.host_one)
    for hook, attach_type in HOOKS:
        prog_fd = bpf.obj_get(phone.node.pins.prog(hook))
        want = bpf.object_id(prog_fd)
        os.close(prog_fd)
        assert bpf.prog_query(index, attach_type) == [want], hook
        assert os.path.exists(phone.node.pins.link(phone.host_one, hook))


def test_host_cannot_reach_a_container_even_with_an_address_and_route(phone: Phone) -> None:
    b4, device = phone.b4, phone.host_two
    os.system(f"ip addr add 10.42.0.254/32 dev {device}; ip route add {b4}/32 dev {device}")
    try:
        assert lab.ping(None, b4) == 0
        assert not lab.tcp_exchange(phone.two, b4, None, port=4343, timeout=1.5)
        # control: the partner still gets through while the host is refused
        assert lab.ping(phone.one, b4) == 2
    finally:
        os.system(f"ip route del {b4}/32 dev {device}; ip addr del 10.42.0.254/32 dev {device}")


def test_a_container_cannot_reach_the_host(phone: Phone) -> None:
    # The host listens on an address of the container's own host-side device:
    # the peer hook sends everything to the partner, nothing to the host.
    os.system(f"ip addr add 10.42.0.253/24 dev {phone.host_one}")
    try:
        assert lab.ping(phone.one, "10.42.0.253") == 0
        assert lab.ping(phone.one, phone.b4) == 2  # control
    finally:
        os.system(f"ip addr del 10.42.0.253/24 dev {phone.host_one}")


def _udp_datagram(src: str, dst: str, port: int, payload: bytes) -> bytes:
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


def _inject(netns: lab.Netns | None, device: str, packet: bytes) -> None:
    def make() -> socket.socket:
        return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))

    if netns is None:
        sock = make()
    else:
        fd = open_netns(netns.path)
        sock = create_in(fd, make)
        os.close(fd)
    # a dropped frame may surface as ENOBUFS on the sender
    with sock, contextlib.suppress(OSError):
        sock.sendto(packet, (device, 0x0800))


def _receives(netns: lab.Netns, address: str, port: int, send: Callable[[], None]) -> bytes | None:
    fd = open_netns(netns.path)
    sock = create_in(fd, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    os.close(fd)
    with sock:
        sock.bind((address, port))
        sock.settimeout(1.5)
        send()
        try:
            return sock.recv(100)
        except TimeoutError:
            return None


def test_frame_injected_by_the_host_never_arrives(phone: Phone) -> None:
    one, two, a4, b4 = phone.one, phone.two, phone.a4, phone.b4
    packet = _udp_datagram(a4, b4, 7777, b"from the host")
    assert _receives(two, b4, 7777, lambda: _inject(None, phone.host_two, packet)) is None
    # control: the very same datagram written by the partner into its own eth0 arrives
    forged_by_partner = _udp_datagram(a4, b4, 7778, b"from yogurt one")
    got = _receives(two, b4, 7778, lambda: _inject(one, "eth0", forged_by_partner))
    assert got == b"from yogurt one"


def test_two_lines_cannot_reach_each_other(node: Node) -> None:
    red, blue = node.conf(line="red"), node.conf(line="blue")
    r1, r2, b1, b2 = (node.netns() for _ in range(4))
    res = {ns.name: node.add(conf, ns) for conf, ns in ((red, r1), (red, r2), (blue, b1), (blue, b2))}
    b1_ip, _ = addresses(res[b1.name])
    b2_ip, _ = addresses(res[b2.name])
    r2_ip, _ = addresses(res[r2.name])
    assert lab.ping(r1, r2_ip) == 2  # control: the red line works
    assert lab.ping(r1, b1_ip) == 0
    assert lab.ping(r1, b2_ip) == 0
    assert not lab.tcp_exchange(b1, b1_ip, r1, timeout=1.5)
    for conf, ns in ((red, r1), (red, r2), (blue, b1), (blue, b2)):
        node.delete(conf, ns)
