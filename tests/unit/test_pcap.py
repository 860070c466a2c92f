"""The capture file writer: both formats read back as written, and read by tcpdump (install-deps.sh)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from cni_yogurt.capture import pcap

FRAME_OUT = bytes.fromhex("0a00000000020a00000000010800") + b"E" + bytes(19) + b"out payload"
FRAME_IN = bytes.fromhex("0a00000000010a000000000286dd") + b"`" + bytes(39) + b"in, odd length"
PACKETS = [
    pcap.Packet(1_796_568_001_123_456_789, FRAME_OUT, len(FRAME_OUT), True),
    pcap.Packet(1_796_568_001_223_456_789, FRAME_IN, len(FRAME_IN), False),
    pcap.Packet(1_796_568_002_000_000_001, FRAME_OUT[:20], 1500, True),  # cut at a snap length
]


def _written(fmt: str, snaplen: int = 65535) -> bytes:
    out = io.BytesIO()
    writer = pcap.Writer(out, fmt, snaplen, "c1/eth0", "yogurt line l1, end c1/eth0", 42)
    for packet in PACKETS:
        writer.write(packet)
    return out.getvalue()


def test_pcapng_reads_back_every_byte_time_and_direction() -> None:
    assert pcap.read(_written("pcapng")) == PACKETS


def test_pcap_reads_back_direction_time_and_all_but_the_destination_mac() -> None:
    back = pcap.read(_written("pcap"))
    assert [(p.ts_ns, p.outbound, p.length) for p in back] == [
        (p.ts_ns, p.outbound, p.length) for p in PACKETS
    ]
    assert [p.data for p in back] == [bytes(6) + p.data[6:] for p in PACKETS]


def test_pcapng_blocks_are_aligned_and_their_lengths_agree() -> None:
    data = _written("pcapng")
    at = 0
    while at < len(data):
        kind, length = (
            int.from_bytes(data[at : at + 4], "little"),
            int.from_bytes(data[at + 4 : at + 8], "little"),
        )
        assert length % 4 == 0, kind
        assert data[at + length - 4 : at + length] == data[at + 4 : at + 8]
        at += length
    assert at == len(data)


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="pcapng, pcap"):
        pcap.Writer(io.BytesIO(), "erf", 100, "x", "y", 1)


@pytest.mark.parametrize("fmt", pcap.FORMATS)
def test_tcpdump_reads_both_formats(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / f"c.{fmt}"
    path.write_bytes(_written(fmt))
    run = subprocess.run(
        ["tcpdump", "-r", str(path), "-n", "-tt"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 3, run.stdout
    assert lines[0].startswith("1796568001.123456")
    if fmt == "pcap":  # SLL2: tcpdump says which way each went
        assert [" Out " in lines[0], " In " in lines[1]] == [True, True], run.stdout


DROPPED = pcap.Packet(
    1_796_568_003_000_000_000, FRAME_IN, len(FRAME_IN), False, "unmarked (sent by the host)"
)


def test_a_drop_reads_back_with_why_and_carries_a_tc_shot_verdict() -> None:
    out = io.BytesIO()
    writer = pcap.Writer(out, "pcapng", 65535, "c1/eth0", "d", 42)
    for packet in [*PACKETS, DROPPED]:
        writer.write(packet)
    data = out.getvalue()
    assert pcap.read(data) == [*PACKETS, DROPPED]
    record = pcap.Writer.record("pcapng", DROPPED, 42)
    assert len(record) % 4 == 0 and record[4:8] == record[-4:]
    comment = b"dropped by the guard: unmarked (sent by the host)"
    assert (pcap.OPT_COMMENT).to_bytes(2, "little") + len(comment).to_bytes(2, "little") + comment in record
    # epb_verdict: length 9, type 1 (Linux eBPF TC), then TC_ACT_SHOT as a 64-bit value
    assert bytes.fromhex("0700 0900 01 0200000000000000") in record


def test_classic_pcap_has_no_room_for_a_drop() -> None:
    writer = pcap.Writer(io.BytesIO(), "pcap", 65535, "c1/eth0", "d", 42)
    with pytest.raises(ValueError, match="pcapng"):
        writer.write(DROPPED)


def test_tcpdump_reads_a_file_with_drops(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = pcap.Writer(out, "pcapng", 65535, "c1/eth0", "d", 42)
    for packet in [*PACKETS, DROPPED]:
        writer.write(packet)
    (tmp_path / "d.pcapng").write_bytes(out.getvalue())
    run = subprocess.run(["tcpdump", "-r", str(tmp_path / "d.pcapng"), "-n"], capture_output=True, text=True)
    assert run.returncode == 0 and len(run.stdout.splitlines()) == 4, run
