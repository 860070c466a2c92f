"""The agent's guard on the tunnel's port (agent/firewall.py): the ruleset it hands to nft."""

from __future__ import annotations

import pytest

from cni_yogurt.agent import firewall


def test_the_ruleset_replaces_our_table_whole_and_drops_the_port_off_wireguard() -> None:
    text = firewall.ruleset(4789, "ywg0")
    lines = text.splitlines()
    # created, deleted, made again: one transaction, valid whether or not the table exists
    assert lines[:2] == ["table inet cni_yogurt", "delete table inet cni_yogurt"]
    assert "type filter hook input priority -10; policy accept;" in text
    assert 'udp dport 4789 iifname != "ywg0" counter drop comment "tunnel-only-through-wireguard"' in text


@pytest.mark.parametrize("name", ["", "wg0; flush ruleset", 'wg"0', "a" * 16, "wg 0", "wg0\n"])
def test_a_device_name_nft_could_misread_is_refused(name: str) -> None:
    with pytest.raises(firewall.FirewallError):
        firewall.ruleset(4789, name)


def test_install_refuses_a_tunnel_that_is_not_external_vxlan() -> None:
    for tunnel in (
        firewall.TunnelDevice("under0", "veth", 0, False),
        firewall.TunnelDevice("vx1", "vxlan", 4789, False),
    ):
        with pytest.raises(firewall.FirewallError, match="not a VXLAN device in external mode"):
            firewall.install(tunnel, "ywg0")
