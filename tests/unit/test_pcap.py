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
