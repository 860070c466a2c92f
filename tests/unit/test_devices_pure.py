"""The agent's wire devices, their pure parts: the MTU arithmetic, the address candidates, what the
agent records as made."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cni_yogurt.agent.devices import Owned, mtus
from cni_yogurt.cluster.wgaddress import candidates


def test_mtus_derive_from_the_underlay_unless_given() -> None:
    assert mtus(1500) == (1420, 1370)  # WireGuard less 80, the tunnel less 50 more
    assert mtus(9000) == (8920, 8870)
    assert mtus(1500, wireguard_mtu=1400) == (1400, 1350)
    assert mtus(1500, tunnel_mtu=1300) == (1420, 1300)


def test_address_candidates_put_the_remembered_first_and_skip_the_taken() -> None:
    net = ipaddress.IPv4Network("10.99.0.0/29")
    assert candidates(net, set()) == [f"10.99.0.{i}" for i in range(1, 7)]
    assert candidates(net, {"10.99.0.1"}, remembered="10.99.0.5")[:2] == ["10.99.0.5", "10.99.0.2"]
    # Taken, outside the range, or the network/broadcast address: not remembered.
    for bad in ("10.99.0.2", "10.98.0.1", "10.99.0.0", "10.99.0.7", "garbage"):
        assert candidates(net, {"10.99.0.2"}, remembered=bad)[0] == "10.99.0.1"


def test_what_the_agent_made_is_recorded_and_read_back(tmp_path: Path) -> None:
    assert Owned.load(str(tmp_path)) == Owned()  # nothing made yet
    Owned("wireguard-go", True).save(str(tmp_path))
    assert Owned.load(str(tmp_path)) == Owned("wireguard-go", True)
    assert (tmp_path / "owned.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "owned.json").write_text("{")
    assert Owned.load(str(tmp_path)) == Owned()
