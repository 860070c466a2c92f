"""The agent's wire devices on a real kernel (cni_yogurt/agent/devices.py), without etcd: in a
throw-away netns with an underlay only, `devices.ensure` makes the WireGuard device — the kernel's
where the kernel has WireGuard (the VM: `make cluster-net-vm`), else wireguard-go (here) — its key,
port, address and MTU, and the tunnel device; adopts them at the next start; refuses devices of
another kind without touching them; makes again a tunnel of its own with other settings; and
removes exactly what it made.  Root, wg, wireguard-go where the kernel has no WireGuard.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import require_node_lab

from cni_yogurt import lab
from cni_yogurt.agent import devices
from cni_yogurt.lab.nodes import kernel_wireguard

require_node_lab()

UNDERLAY = "10.217.0.1/24"  # inside the test's netns only


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[lab.Netns, dict[str, Any]]]:
    tag = secrets.token_hex(3)
    ns = lab.Netns(f"ydev-{tag}").create()
    try:
        ns_run(ns, "ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1")
        ns_run(ns, "ip", "addr", "add", UNDERLAY, "dev", "under0")
        ns_run(ns, "ip", "link", "set", "under0", "up")
        cfg = {
            "endpoints": ["http://127.0.0.1:2379"],  # never asked: no store here
            "node": "node-a",
            "address": UNDERLAY.split("/")[0],
            "wireguardDevice": f"ywg{tag}",  # unique on the host: wireguard-go's socket dir is shared
            "tunnelDevice": "yvx0",
            "dataDir": str(tmp_path / "data"),
        }
        yield ns, cfg
    finally:
        pid = devices.wireguard_go_pid(f"ywg{tag}")
        if pid is not None:
            subprocess.run(["kill", str(pid)], check=False)
        ns.delete()


def ns_run(ns: lab.Netns, *argv: str) -> str:
    run = ns.run(*argv)
    assert run.returncode == 0, f"{argv}: {run.stderr}"
    return run.stdout


ENSURE = """
import dataclasses, json, sys
from cni_yogurt.agent import devices
from cni_yogurt.cluster import config
cfg = config.parse(json.loads(sys.argv[1]))
try:
    if sys.argv[2] == "remove":
        print(json.dumps({"removed": devices.remove_owned(cfg)}))
    else:
        print(json.dumps(dataclasses.asdict(devices.ensure(cfg, sys.argv[2]))))
except devices.DeviceError as e:
    print(json.dumps({"error": str(e)}))
"""


def ensure(ns: lab.Netns, cfg: dict[str, Any], address: str = "10.99.0.7/24") -> dict[str, Any]:
    """devices.ensure (or "remove": remove_owned) run in the netns, as the agent runs it in its node's."""
    out = ns_run(ns, sys.executable, "-c", ENSURE, json.dumps(cfg), address)
    return dict(json.loads(out))


def link(ns: lab.Netns, name: str) -> dict[str, Any] | None:
    found = json.loads(ns_run(ns, "ip", "-j", "-d", "link", "show"))
    return next((x for x in found if x["ifname"] == name), None)


def test_made_then_adopted_then_removed(node: tuple[lab.Netns, dict[str, Any]]) -> None:
    ns, cfg = node
    wg_if, data = cfg["wireguardDevice"], Path(cfg["dataDir"])
    kind = "kernel" if kernel_wireguard() else "wireguard-go"
    made = ensure(ns, cfg)
    assert "error" not in made, made
    assert made["made"] == [f"{wg_if} ({kind})", "yvx0 (vxlan, UDP 4789)"]
    assert (made["port"], made["address"], made["wireguard_mtu"], made["tunnel_mtu"]) == (
        51830,
        "10.99.0.7",
        1420,
        1370,
    )
    key = data / devices.KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    assert ns_run(ns, "wg", "show", wg_if, "public-key").strip() == made["public_key"]
    assert ns_run(ns, "wg", "show", wg_if, "listen-port").strip() == "51830"
    wg_link, vx_link = link(ns, wg_if), link(ns, "yvx0")
    assert wg_link is not None and vx_link is not None
    assert wg_link["linkinfo"]["info_kind"] == ("wireguard" if kind == "kernel" else "tun")
    assert "UP" in wg_link["flags"] and "UP" in vx_link["flags"]
    vx = vx_link["linkinfo"]["info_data"]
    assert (vx_link["linkinfo"]["info_kind"], vx.get("external"), vx["port"]) == ("vxlan", True, 4789)
    addresses = json.loads(ns_run(ns, "ip", "-j", "-4", "addr", "show", "dev", wg_if))[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addresses] == [("10.99.0.7", 24)]
    # The next start adopts all of it: the same devices, key and port; nothing made.
    again = ensure(ns, cfg)
    assert again["made"] == [] and again["public_key"] == made["public_key"]
    assert (link(ns, wg_if) or {})["ifindex"] == wg_link["ifindex"]
    assert (link(ns, "yvx0") or {})["ifindex"] == vx_link["ifindex"]
    # A tunnel of its own with another port: made again (a VXLAN's port cannot change in place).
    moved = ensure(ns, cfg | {"tunnelPort": 4790})
    assert moved["made"] == ["yvx0 (vxlan, UDP 4790)"], moved
    # Removed: what it made, and the key kept.
    removed = ensure(ns, cfg, "remove")["removed"]
    assert removed[0] == "yvx0" and removed[1].startswith(wg_if)
    assert link(ns, wg_if) is None and link(ns, "yvx0") is None
    assert devices.wireguard_go_pid(wg_if) is None
    assert key.exists()
    # Made again from the same key: the node comes back as itself.
    back = ensure(ns, cfg)
    assert back["public_key"] == made["public_key"]
    ensure(ns, cfg, "remove")


def test_devices_of_another_kind_or_hand_made_settings_are_named_and_left(
    node: tuple[lab.Netns, dict[str, Any]],
) -> None:
    ns, cfg = node
    ns_run(ns, "ip", "link", "add", "yother0", "type", "bridge")
    said = ensure(ns, cfg | {"wireguardDevice": "yother0"})
    assert "wireguardDevice 'yother0' exists and is not WireGuard (bridge" in said["error"], said
    said = ensure(ns, cfg | {"tunnelDevice": "yother0"})
    assert "tunnelDevice 'yother0' exists and is bridge, not VXLAN" in said["error"], said
    assert link(ns, "yother0") is not None
    # A VXLAN made by hand, not in external mode: named, never changed or deleted.
    ns_run(ns, "ip", "link", "add", "yvxhand", "type", "vxlan", "id", "7", "dstport", "4791")
    said = ensure(ns, cfg | {"tunnelDevice": "yvxhand"})
    assert "made by hand with other settings (not external)" in said["error"], said
    hand = link(ns, "yvxhand")
    assert hand is not None and hand["linkinfo"]["info_data"]["id"] == 7
    ensure(ns, cfg, "remove")


def test_a_hand_made_wireguard_device_keeps_its_key_and_port(node: tuple[lab.Netns, dict[str, Any]]) -> None:
    """Today's setups (docs/across-nodes.md: devices made by hand) are adopted as they are."""
    ns, cfg = node
    wg_if = cfg["wireguardDevice"]
    made = ensure(ns, cfg)  # a device to stand for the operator's, made with its own key below
    ensure_key = Path(cfg["dataDir"], devices.KEY_FILE)
    ensure_key.unlink()
    Path(cfg["dataDir"], devices.OWNED_FILE).unlink()  # not the agent's any more: hand-made
    own = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    key_file = Path(cfg["dataDir"], "operator.key")
    key_file.write_text(own)
    ns_run(ns, "wg", "set", wg_if, "private-key", str(key_file), "listen-port", "51820")
    adopted = ensure(ns, cfg, "")
    public = subprocess.run(
        ["wg", "pubkey"], input=own, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert (adopted["public_key"], adopted["port"], adopted["address"]) == (public, 51820, made["address"])
    assert not ensure_key.exists()  # the operator's key stays the device's own; none written
    assert adopted["made"] == []
    # Not the agent's: leave removes none of it.
    assert ensure(ns, cfg, "remove")["removed"] == []
    assert link(ns, wg_if) is not None and link(ns, "yvx0") is not None
