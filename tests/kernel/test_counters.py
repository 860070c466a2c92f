"""What the wire stopped, counted per end; and the 64-bit mark against what the host's stack leaves in cb.

The guard reads skb->cb words that, on the host's own transmit and forward
paths, hold what IPv4/IPv6 left there (IPCB/IP6CB: option and extension
header offsets). Packets the host sends or forwards with IPv4 options or IPv6
extension headers must never pass, and must show up as "unmarked" drops.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
from collections.abc import Callable, Iterator

from conftest import BPFFS_DIR, STATE_DIR, Phone, ifindex
from frames import inject, receives, udp_datagram

from cni_yogurt import lab
from cni_yogurt.datapath import CounterMap
from cni_yogurt.kernel.netns import create_in, open_netns

PHONE_SUBNETS = ("10.43.0.0/24", "fd43::/64")  # test_wire's phone routes host traffic to 10.42.0.x
IP_OPTIONS = 4
IPV6_HOPOPTS = 54
IPV6_DSTOPTS = 59
RECORD_ROUTE = bytes([7, 11, 4]) + bytes(8) + b"\x00"  # RR with two slots, then end of options
PADN_8 = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # an 8-byte hop-by-hop / destination options header


def _counters(phone: Phone, device: str) -> dict[str, int]:
    with CounterMap(phone.node.pins) as counters:
        got = counters.get(ifindex(device))
    assert got is not None, f"no counters for {device}"
    return got


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def _host_route_to(phone: Phone, address: str) -> Iterator[None]:
    """Give the host every means to reach the second container: an address, a route, a neighbour."""
    device, six = phone.host_two, ":" in address
    undo: list[Callable[[], object]] = []
    try:
        if six:  # the plugin turns IPv6 off on host-side devices; an admin could turn it on again
            _sh("sysctl", "-qw", f"net.ipv6.conf.{device}.disable_ipv6=0")
            undo.append(lambda: _sh("sysctl", "-qw", f"net.ipv6.conf.{device}.disable_ipv6=1"))
        family = "-6" if six else "-4"
        _sh("ip", family, "route", "add", address, "dev", device)
        undo.append(lambda: _sh("ip", family, "route", "del", address, "dev", device))
        if phone.mac_two != "00:00:00:00:00:00":  # veth: no ARP/ND answer will come, so say it
            _sh("ip", family, "neigh", "replace", address, "lladdr", phone.mac_two, "dev", device)
            undo.append(lambda: _sh("ip", family, "neigh", "del", address, "dev", device))
        yield
    finally:
        for step in reversed(undo):
            with contextlib.suppress(subprocess.CalledProcessError):
                step()


def _send_with(address: str, port: int, level: int, option: int, value: bytes, count: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(level, option, value)
        for _ in range(count):
            sock.sendto(b"from the host, with options", (address, port))


def test_host_frames_are_counted_as_unmarked_exactly(phone: Phone) -> None:
    packet = udp_datagram(phone.a4, phone.b4, 7801, b"counted")
    before = _counters(phone, phone.host_two)
    for bypass in (False, True):
        for _ in range(5):
            inject(None, phone.host_two, packet, phone.mac_two, bypass)
    after = _counters(phone, phone.host_two)
    assert after["drop_unmarked"] - before["drop_unmarked"] == 10
    assert after["drop_wrong_sender"] == before["drop_wrong_sender"]


def test_partners_count_what_they_send(phone: Phone) -> None:
    one, two = _counters(phone, phone.host_one), _counters(phone, phone.host_two)
    assert lab.ping(phone.one, phone.b4, count=3) == 3
    one_after, two_after = _counters(phone, phone.host_one), _counters(phone, phone.host_two)
    assert one_after["redirected_packets"] - one["redirected_packets"] >= 3
    assert two_after["redirected_packets"] - two["redirected_packets"] >= 3  # the replies
    assert one_after["redirected_bytes"] - one["redirected_bytes"] >= 3 * 84
    assert one_after["drop_not_wired"] == one["drop_not_wired"]


def test_status_shows_the_counters(phone: Phone) -> None:
    # The containers' own IPv6 (router solicitations, MLD) may still cross the line while
    # status runs: what it shows must lie between what the map held before and after.
    devices = (phone.host_one, phone.host_two)
    before = {device: _counters(phone, device) for device in devices}
    argv = [*lab.self_command(), "status", "--json", "--bpffs-dir", BPFFS_DIR, "--state-dir", STATE_DIR]
    report = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout)
    after = {device: _counters(phone, device) for device in devices}
    ends = {e["host_ifname"]: e for line in report["lines"].values() for e in line}
    for device in devices:
        shown = ends[device]["counters"]
        assert shown.keys() == before[device].keys()
        assert all(before[device][k] <= shown[k] <= after[device][k] for k in shown), (before, shown, after)


def test_host_sent_ipv4_options_never_pass(phone: Phone) -> None:
    before = _counters(phone, phone.host_two)
    with _host_route_to(phone, phone.b4):
        got = receives(
            phone.two,
            phone.b4,
            7802,
            lambda: _send_with(phone.b4, 7802, socket.IPPROTO_IP, IP_OPTIONS, RECORD_ROUTE, 3),
        )
    assert got is None
    assert _counters(phone, phone.host_two)["drop_unmarked"] - before["drop_unmarked"] >= 3


def test_host_sent_ipv6_extension_headers_never_pass(phone: Phone) -> None:
    b6 = phone.b6
    assert b6
    for option in (IPV6_HOPOPTS, IPV6_DSTOPTS):
        before = _counters(phone, phone.host_two)
        with _host_route_to(phone, phone.b6):
            got = receives(
                phone.two, b6, 7803, lambda o=option: _send_with(b6, 7803, socket.IPPROTO_IPV6, o, PADN_8, 3)
            )
        assert got is None
        assert _counters(phone, phone.host_two)["drop_unmarked"] - before["drop_unmarked"] >= 3


def test_forwarded_ipv4_with_options_never_passes(phone: Phone) -> None:
    """A remote sender's packet, routed by the host towards the container, IP options and all."""
    net = f"10.251.{random.randrange(256)}"
    outside = lab.Netns(f"yt-out-{phone.node.tag}").create()
    host_end, out_end = f"yto{phone.node.tag}", "eth0"
    try:
        _sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", out_end, "netns", outside.name)
        _sh("ip", "addr", "add", f"{net}.1/30", "dev", host_end)
        _sh("ip", "link", "set", host_end, "up")
        # Forwarding for packets that come in on this device only: the node's own setting stays.
        _sh(
            "sysctl", "-qw", f"net.ipv4.conf.{host_end}.forwarding=1", f"net.ipv4.conf.{host_end}.rp_filter=0"
        )
        for cmd in (
            ("ip", "addr", "add", f"{net}.2/30", "dev", out_end),
            ("ip", "link", "set", out_end, "up"),
            ("ip", "route", "add", "default", "via", f"{net}.1"),
        ):
            assert outside.run(*cmd).returncode == 0, cmd
        before = _counters(phone, phone.host_two)

        def send_from_outside() -> None:
            fd = open_netns(outside.path)
            sock = create_in(fd, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            os.close(fd)
            with sock:
                sock.setsockopt(socket.IPPROTO_IP, IP_OPTIONS, RECORD_ROUTE)
                for _ in range(3):
                    sock.sendto(b"forwarded, with options", (phone.b4, 7804))

        with _host_route_to(phone, phone.b4):
            assert receives(phone.two, phone.b4, 7804, send_from_outside) is None
        assert _counters(phone, phone.host_two)["drop_unmarked"] - before["drop_unmarked"] >= 3
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _sh("ip", "link", "del", host_end)
        outside.delete()
