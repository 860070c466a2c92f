"""The yogurt phone itself: what crosses the wire, and what never does."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable

from conftest import Node, addresses

from cni_yogurt import lab
from cni_yogurt.datapath import HOOKS
from cni_yogurt.kernel import bpf
from cni_yogurt.kernel.netns import create_in, open_netns


def _phone(node: Node, **conf_kw: object) -> tuple[dict, lab.Netns, lab.Netns, dict, dict]:
    conf = node.conf(**conf_kw)
    one, two = node.netns(), node.netns()
    return conf, one, two, node.add(conf, one), node.add(conf, two)


def test_two_ends_ping_and_talk_tcp_both_ways_v4_and_v6(node: Node) -> None:
    conf, one, two, r1, r2 = _phone(node)
    (a4, a6), (b4, b6) = addresses(r1), addresses(r2)
    assert a6 and b6
    assert lab.ping(one, b4) == 2
    assert lab.ping(two, a4) == 2
    assert lab.ping(one, b6) == 2
    assert lab.ping(two, a6) == 2
    assert lab.tcp_exchange(two, b4, one)
    assert lab.tcp_exchange(one, a4, two)
    assert lab.tcp_exchange(two, b6, one)
    assert lab.tcp_exchange(one, a6, two)
    node.delete(conf, one)
    node.delete(conf, two)


def test_links_stay_attached_after_the_plugin_exits(node: Node) -> None:
    conf, one, two, r1, _ = _phone(node)
    host_ifname = r1["interfaces"][0]["name"]
    with open(f"/sys/class/net/{host_ifname}/ifindex") as f:
        ifindex = int(f.read())
    for hook, attach_type in HOOKS:
        prog_fd = bpf.obj_get(node.pins.prog(hook))
        want = bpf.object_id(prog_fd)
        os.close(prog_fd)
        assert bpf.prog_query(ifindex, attach_type) == [want], hook
        assert os.path.exists(node.pins.link(host_ifname, hook))
    node.delete(conf, one)
    node.delete(conf, two)


def test_host_cannot_reach_a_container_even_with_an_address_and_route(node: Node) -> None:
    conf, one, two, r1, r2 = _phone(node)
    b4, _ = addresses(r2)
    device = r2["interfaces"][0]["name"]
    os.system(f"ip addr add 10.42.0.254/32 dev {device}; ip route add {b4}/32 dev {device}")
    try:
        assert lab.ping(None, b4) == 0
        assert not lab.tcp_exchange(two, b4, None, port=4343, timeout=1.5)
        # control: the partner still gets through while the host is refused
        assert lab.ping(one, b4) == 2
    finally:
        os.system(f"ip route del {b4}/32 dev {device}")
    node.delete(conf, one)
    node.delete(conf, two)


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


def test_frame_injected_by_the_host_never_arrives(node: Node) -> None:
    conf, one, two, r1, r2 = _phone(node)
    (a4, _), (b4, _) = addresses(r1), addresses(r2)
    host_side_two = r2["interfaces"][0]["name"]
    packet = _udp_datagram(a4, b4, 7777, b"from the host")
    got = _receives(two, b4, 7777, lambda: _inject(None, host_side_two, packet))
    assert got is None
    # control: the very same datagram written by the partner into its own eth0 arrives
    forged_by_partner = _udp_datagram(a4, b4, 7778, b"from yogurt one")
    got = _receives(two, b4, 7778, lambda: _inject(one, "eth0", forged_by_partner))
    assert got == b"from yogurt one"
    node.delete(conf, one)
    node.delete(conf, two)


def test_a_container_cannot_reach_the_host(node: Node) -> None:
    conf = node.conf()
    one = node.netns()
    r1 = node.add(conf, one)
    device = r1["interfaces"][0]["name"]
    os.system(f"ip addr add 10.42.0.254/24 dev {device}")
    assert lab.ping(one, "10.42.0.254") == 0  # unpaired: dropped
    two = node.netns()
    node.add(conf, two)
    assert lab.ping(one, "10.42.0.254") == 0  # paired: goes to the partner, not the host
    node.delete(conf, one)
    node.delete(conf, two)


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
