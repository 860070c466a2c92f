"""The pin layout across releases, and the bpf(2) attribute for moving a link: pure, no root."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cni_yogurt import datapath, faults
from cni_yogurt.datapath import Pins
from cni_yogurt.kernel import bpf


def test_pins_know_their_abi_and_find_other_releases_newest_first(tmp_path: Path) -> None:
    for name in ("v3", "v12", "v4", "vx", "links", "v"):
        (tmp_path / name).mkdir()
    pins = Pins(str(tmp_path / "v4"))
    assert pins.abi == 4
    assert [p.abi for p in pins.others()] == [12, 3]
    assert Pins(str(tmp_path / "links")).abi == 0
    assert Pins.under(str(tmp_path)).root == str(tmp_path / f"v{datapath.ABI}")


def test_no_other_release_where_the_parent_is_missing(tmp_path: Path) -> None:
    assert Pins(str(tmp_path / "nowhere" / "v4")).others() == []


def test_the_pin_set_includes_the_mark() -> None:
    pins = Pins("/x/v4")
    assert "/x/v4/mark" in pins.objects()
    assert pins.objects()[-1] == "/x/v4/prog_primary"  # pinned last: it completes the set


@pytest.mark.parametrize(
    ("value", "abi"), [("5", 5), ("", None), ("0", None), ("-1", None), ("5x", None), ("99999", None)]
)
def test_the_test_abi_knob_takes_only_small_positive_numbers(
    monkeypatch: pytest.MonkeyPatch, value: str, abi: int | None
) -> None:
    monkeypatch.setenv("YOGURT_TEST_ABI", value)
    assert faults.test_abi() == abi


def test_link_update_attr_swaps_the_program_of_whatever_the_link_runs() -> None:
    attr = bpf.link_update_attr(7, 9)
    assert len(attr) == 128
    assert struct.unpack_from("=IIII", attr) == (7, 9, 0, 0)  # no BPF_F_REPLACE, no old_prog_fd
    assert not any(attr[16:])


def test_siblings_share_the_bpffs_dir() -> None:
    pins = Pins("/sys/fs/bpf/a/v4")
    assert pins.sibling("/sys/fs/bpf/a/v3") and pins.sibling("/sys/fs/bpf/a/v4")
    assert not pins.sibling("/sys/fs/bpf/b/v3")  # another network's bpffsDir
    assert not pins.sibling("")  # an end recorded before pins were recorded


def test_the_pin_set_of_abi_5_has_the_tunnel_and_its_maps() -> None:
    pins = Pins("/x/v5")
    for name in ("remote", "tunnel_in", "tunnel_counters", "prog_tunnel"):
        assert f"/x/v5/{name}" in pins.objects()
    assert pins.objects()[-1] == "/x/v5/prog_primary"


def test_an_older_release_s_pin_dir_is_complete_without_what_came_later() -> None:
    v4 = Pins("/x/v4").objects()
    assert "/x/v4/mark" in v4 and "/x/v4/prog_primary" in v4
    assert not any(p.endswith(("remote", "tunnel_in", "tunnel_counters", "prog_tunnel")) for p in v4)
    assert "/x/v3/mark" not in Pins("/x/v3").objects()
    assert "/x/v3/pairs" in Pins("/x/v3").objects()


def test_tunnel_link_pins_are_not_taken_for_an_end_s(tmp_path: Path) -> None:
    pins = Pins(str(tmp_path / "v5"))
    Path(pins.links_dir).mkdir(parents=True)
    for name in ("yg0123456789ab_peer", "yg0123456789ab_primary", "yvx0_tunnel"):
        (Path(pins.links_dir) / name).touch()
    assert datapath.pinned_link_names(pins) == {"yg0123456789ab"}  # GC sweeps ends' pins only
    assert datapath.pinned_link_names(pins, datapath.TUNNEL_HOOK) == {"yvx0"}
    assert Path(pins.link("yvx0", datapath.TUNNEL_HOOK)).name == "yvx0_tunnel"


def test_wire_remote_refuses_a_vni_out_of_range_before_touching_the_kernel() -> None:
    import ipaddress

    from cni_yogurt.line import remote

    node = ipaddress.IPv4Address("10.216.0.2")
    for vni in (0, -1, 1 << 24):
        with pytest.raises(ValueError, match="VNI"):
            remote.wire_remote(Pins("/nowhere/v5"), 7, remote.RemotePartner(vni, node), 3)
