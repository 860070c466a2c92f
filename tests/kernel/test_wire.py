"""The yogurt phone itself: what crosses the wire, and what never does — on every backend."""

from __future__ import annotations

import os

import pytest
from conftest import Node, Phone, addresses, ifindex
from frames import inject, receives, udp_datagram

from cni_yogurt import backend, lab
from cni_yogurt.datapath import program_id
from cni_yogurt.kernel.netlink import Rtnl
from cni_yogurt.kernel.netns import open_netns


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


def test_programs_stay_attached_after_the_plugin_exits(phone: Phone) -> None:
    kind = backend.BY_ATTACH[phone.r1["yogurt"]["attach"]]
    fd = open_netns(phone.one.path)
    try:
        with Rtnl() as host, Rtnl.in_netns(fd) as cont:
            host_index = ifindex(phone.host_one)
            peer_index = cont.link("eth0")["index"]
            pair = backend.Pair(phone.host_one, host_index, peer_index, host, cont, fd)
            for hook in kind.hooks:
                want = program_id(phone.node.pins, hook.program)
                assert backend.attached_ids(kind, pair, hook) == [want], hook
                assert os.path.exists(phone.node.pins.link(phone.host_one, hook.name)) == hook.linked
    finally:
        os.close(fd)


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


@pytest.mark.parametrize("bypass", [False, True], ids=["via-qdisc", "qdisc-bypass"])
def test_frame_injected_by_the_host_never_arrives(phone: Phone, bypass: bool) -> None:
    one, two, a4, b4 = phone.one, phone.two, phone.a4, phone.b4
    port = 7777 + bypass
    packet = udp_datagram(a4, b4, port, b"from the host")
    sent = receives(two, b4, port, lambda: inject(None, phone.host_two, packet, phone.mac_two, bypass))
    assert sent is None
    # control: the very same datagram written by the partner into its own eth0 arrives
    forged_by_partner = udp_datagram(a4, b4, port + 10, b"from yogurt one")
    got = receives(two, b4, port + 10, lambda: inject(one, "eth0", forged_by_partner, phone.mac_two, bypass))
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


def test_a_container_admin_cannot_take_its_guard_away_except_on_tc(node: Node) -> None:
    """What each attach mode guarantees against a container with CAP_NET_ADMIN in its own netns
    (docs/backends.md, "veth attach modes"): it removes whatever tc lets it on its own device; the
    host's frame still never arrives, but where the guard was a cls_bpf filter (tc), it does."""
    phone = Phone(node)  # a phone of its own: the shared one stays whole
    for argv in (
        ["tc", "qdisc", "del", "dev", "eth0", "clsact"],
        ["tc", "filter", "del", "dev", "eth0", "ingress"],
    ):
        phone.two.run(*argv)  # either may fail: nothing of ours there to delete
    packet = udp_datagram(phone.a4, phone.b4, 7790, b"from the host")
    got = receives(
        phone.two, phone.b4, 7790, lambda: inject(None, phone.host_two, packet, phone.mac_two, True)
    )
    if phone.r2["yogurt"]["attach"] == "tc":
        assert got == b"from the host"  # the limit the docs state: the container opened itself
    else:
        assert got is None
        assert lab.ping(phone.one, phone.b4) == 2  # control: the line still works
    phone.hang_up()
