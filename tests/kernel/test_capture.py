"""`yogurt capture` on a real line, per backend: the file holds exactly the frames the two ends
sent, each with its direction, in pcapng and pcap, read back by us and by tcpdump; to stdout into
a pipe; with a snap length; visible in `yogurt status` while it runs; nothing left attached when
it ends, even by SIGKILL; root only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Node, Phone, ifindex
from frames import inject, udp_datagram

from cni_yogurt import lab
from cni_yogurt.capture import pcap, tap
from cni_yogurt.datapath import CounterMap
from cni_yogurt.line.registry import Registry

NOBODY = 65534


def _yogurt(conf: dict, *argv: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*lab.self_command(), *argv, "--state-dir", conf["stateDir"]], **kw)  # type: ignore[call-overload]


def _captured_now(phone: Phone) -> bool:
    """What `yogurt status` says of the phone's line (other tests' lines share the state dir)."""
    conf = phone.conf
    status = subprocess.run(
        [*lab.self_command(), "status", "--state-dir", conf["stateDir"], "--bpffs-dir", conf["bpffsDir"]],
        capture_output=True,
        text=True,
        check=False,
    )
    mine = f"{phone.one.name}/eth0"
    return any(
        mine in line and "CAPTURED" in line for line in status.stdout.splitlines() if line.startswith("line ")
    )


@contextlib.contextmanager
def capturing(phone: Phone, *argv: str, **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    """`yogurt capture` of the phone's first end, started and seen in `yogurt status` (bcc compiles
    first: a few seconds), then stopped by SIGTERM as an admin's Ctrl-C or kill would."""
    proc = _yogurt(phone.conf, "capture", "--end", f"{phone.one.name}/eth0", *argv, **kw)
    try:
        deadline = time.monotonic() + 120
        while not _captured_now(phone):
            assert proc.poll() is None, f"capture exited {proc.returncode} before it started"
            assert time.monotonic() < deadline, "capture did not start"
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _frame(dst_mac: str, src_mac: str, packet: bytes) -> bytes:
    return bytes.fromhex(dst_mac.replace(":", "") + src_mac.replace(":", "")) + b"\x08\x00" + packet


def _sent(phone: Phone) -> tuple[bytes, bytes]:
    """One frame each way, made by hand (so every byte is known), sent from each container."""
    out = udp_datagram(phone.a4, phone.b4, 7801, b"yogurt capture: one to two")
    back = udp_datagram(phone.b4, phone.a4, 7802, b"yogurt capture: two to one")
    inject(phone.one, "eth0", out, phone.mac_two)
    inject(phone.two, "eth0", back, phone.mac_one)
    return out, back


def _ours(packets: list[pcap.Packet]) -> list[pcap.Packet]:
    """The hand-made datagrams: not the containers' IPv6 chatter, nor the ICMP "port unreachable"
    each answers with (it quotes the datagram)."""
    return [p for p in packets if b"yogurt capture: " in p.data and p.data[23] == 17]


@pytest.fixture
def phone(node: Node) -> Iterator[Phone]:
    made = Phone(node, subnet4="10.43.0.0/24", subnet6="fd43::/64")
    yield made
    made.hang_up()


@pytest.mark.parametrize("fmt", pcap.FORMATS)
def test_a_capture_holds_exactly_what_the_two_ends_sent_each_way(
    phone: Phone, fmt: str, tmp_path: Path
) -> None:
    path = tmp_path / f"line.{fmt}"
    with capturing(phone, "-w", str(path), "--format", fmt) as proc:
        out, back = _sent(phone)
        time.sleep(0.5)  # the reader's next poll
    assert proc.returncode == 0
    got = _ours(pcap.read(path.read_bytes()))
    assert [p.outbound for p in got] == [True, False]
    netkit = phone.r1["yogurt"]["backend"] == "netkit"
    for packet, (sent, dst, src) in zip(
        got, [(out, phone.mac_two, phone.mac_one), (back, phone.mac_one, phone.mac_two)], strict=True
    ):
        assert packet.data[14:] == sent and packet.length == len(sent) + 14
        assert packet.data[12:14] == b"\x08\x00"
        if not netkit:  # netkit's L3 devices put an all-zero Ethernet header in front
            want = _frame(dst, src, sent)
            assert packet.data == (
                want if fmt == "pcapng" else bytes(6) + want[6:]
            )  # pcap (SLL2) keeps no destination
    assert abs(got[0].ts_ns - time.time_ns()) < 60e9
    read = subprocess.run(
        ["tcpdump", "-r", str(path), "-n", "-e"], capture_output=True, text=True, check=False
    )
    assert read.returncode == 0, read.stderr
    assert f"{phone.a4}.5555 > {phone.b4}.7801: UDP" in read.stdout, read.stdout
    assert f"{phone.b4}.5555 > {phone.a4}.7802: UDP" in read.stdout, read.stdout


def test_to_stdout_into_tcpdump_with_a_snap_length(phone: Phone) -> None:
    tcpdump = subprocess.Popen(
        ["tcpdump", "-r", "-", "-n", "-x", "udp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tcpdump.stdin is not None and tcpdump.stdout is not None and tcpdump.stderr is not None
    with capturing(phone, "-w", "-", "-s", "40", "--duration", "60", stdout=tcpdump.stdin) as proc:
        _sent(phone)
        time.sleep(0.5)
    assert proc.returncode == 0
    tcpdump.stdin.close()  # our copy of the pipe: tcpdump reads to its end
    text, errors = tcpdump.stdout.read().decode(), tcpdump.stderr.read().decode()
    assert tcpdump.wait(30) == 0, errors
    assert f"{phone.a4}.5555 > {phone.b4}.7801" in text, text
    # 40 bytes kept of each: 14 of Ethernet and 26 of IP (-x prints those), two hex lines at most.
    assert "0x0010:" in text and "0x0020:" not in text, text


def test_visible_while_it_runs_and_nothing_left_after_sigkill(phone: Phone, tmp_path: Path) -> None:
    end = Registry(phone.conf["stateDir"]).snapshot()[f"{phone.one.name}/eth0"]
    where = tap.tap_of(end, outbound=True)
    with capturing(phone, "-w", str(tmp_path / "x.pcapng")) as proc:
        assert tap.captured(where.host_ifindex, where.attach_type)
        # Both ways of the line: the capture copies at the partner's sender too.
        assert _captured_metric(phone) == {end.key: 1.0, f"{phone.two.name}/eth0": 1.0}
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    deadline = time.monotonic() + 10  # the kernel drops the links once the dead process's fds close
    while tap.captured(where.host_ifindex, where.attach_type) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tap.captured(where.host_ifindex, where.attach_type)
    assert not _captured_now(phone)
    assert _captured_metric(phone) == {end.key: 0.0, f"{phone.two.name}/eth0": 0.0}
    assert lab.ping(phone.one, phone.b4) == 2  # the line itself was never touched


def _captured_metric(phone: Phone) -> dict[str, float]:
    """yogurt_end_captured of the phone's ends, as the node agent's collector reports it."""
    from cni_yogurt.agent.metrics import EndCounters

    mine = {f"{ns.name}/eth0" for ns in (phone.one, phone.two)}
    found = {}
    for family in EndCounters(phone.conf["stateDir"], phone.conf["bpffsDir"]).collect():
        if family.name == "yogurt_end_captured":
            found |= {s.labels["end"]: s.value for s in family.samples if s.labels["end"] in mine}
    return found


def test_root_only(phone: Phone, tmp_path: Path) -> None:
    run = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *lab.self_command(),
         "capture", "--end", f"{phone.one.name}/eth0", "-w", str(tmp_path / "no.pcapng"),
         "--state-dir", phone.conf["stateDir"]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 1 and "root only" in run.stderr, run
    assert not (tmp_path / "no.pcapng").exists()
    assert not _captured_now(phone)


def test_an_unknown_end_is_named(phone: Phone, tmp_path: Path) -> None:
    run = subprocess.run(
        [*lab.self_command(), "capture", "--line", "no-such-line", "-w", str(tmp_path / "no.pcapng"),
         "--state-dir", phone.conf["stateDir"]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 1 and "no line 'no-such-line' on this node" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_a_program_that_does_not_compile_is_named_not_a_traceback(phone: Phone, tmp_path: Path) -> None:
    broken = tmp_path / "bpf"
    broken.mkdir()
    (broken / "yogurt.bpf.c").write_text("")  # the loader's source: not read here (the wire is loaded)
    (broken / "capture.bpf.c").write_text("int yogurt_capture(struct __sk_buff *skb) { return nonsense; }\n")
    run = subprocess.run(
        [*lab.self_command(), "capture", "--end", f"{phone.one.name}/eth0", "-w", str(tmp_path / "no.pcapng"),
         "--state-dir", phone.conf["stateDir"]],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "YOGURT_BPF_SOURCE": str(broken / "yogurt.bpf.c")},
    )  # fmt: skip
    assert run.returncode == 1 and "cannot load the capture program" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not _captured_now(phone)


def test_drops_are_what_the_guard_dropped_with_why(phone: Phone, tmp_path: Path) -> None:
    """--drops: frames the host sends into the first end's host-side device (with and without
    PACKET_QDISC_BYPASS) are in the file, each with why, as many as the guard counted, and the
    line's own packets are not marked as dropped."""
    path = tmp_path / "drops.pcapng"
    injected = udp_datagram(phone.b4, phone.a4, 7803, b"yogurt capture: sent by the host")
    before = _unmarked(phone)
    with capturing(phone, "-w", str(path), "--drops") as proc:
        out, back = _sent(phone)
        for bypass in (False, True):
            for _ in range(5):
                inject(None, phone.host_one, injected, phone.mac_one, bypass)
        time.sleep(0.5)  # the reader's next poll
    assert proc.returncode == 0
    assert _unmarked(phone) - before == 10
    got = _ours(pcap.read(path.read_bytes()))
    assert [p.data[14:] for p in got if p.dropped is None] == [out, back]
    drops = [p for p in got if p.dropped is not None]
    assert len(drops) == 10, [p.dropped for p in got]
    for packet in drops:
        assert packet.data[14:] == injected and not packet.outbound
        assert packet.dropped == tap.DROPPED[1]
    read = subprocess.run(["tcpdump", "-r", str(path), "-n"], capture_output=True, text=True, check=False)
    assert read.returncode == 0, read.stderr
    assert read.stdout.count(f"{phone.b4}.5555 > {phone.a4}.7803: UDP") == 10, read.stdout


def _unmarked(phone: Phone) -> int:
    """What the first end's guard counted as dropped for want of the mark."""
    with CounterMap(phone.node.pins) as counters:
        got = counters.get(ifindex(phone.host_one))
    assert got is not None
    return got["drop_unmarked"]


def test_drops_need_pcapng(phone: Phone, tmp_path: Path) -> None:
    run = subprocess.run(
        [*lab.self_command(), "capture", "--end", f"{phone.one.name}/eth0", "-w", str(tmp_path / "x.pcap"),
         "--format", "pcap", "--drops", "--state-dir", phone.conf["stateDir"]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "pcapng" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "x.pcap").exists()
