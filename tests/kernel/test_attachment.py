"""Per-attachment choices on a real kernel, per backend: the line from args.cni (Multus), the
requested addresses and MAC (capabilities), and the pod that holds an end (CRI's K8S_POD_*)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import Node, addresses, private_dirs

from cni_yogurt import lab
from cni_yogurt.line import naming
from cni_yogurt.line.recovery import parse_alias
from cni_yogurt.line.registry import _line_file

POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"


def test_the_line_from_args_cni_wins_and_wires(node: Node) -> None:
    """Multus's cni-args arrive as args.cni: they win over CNI_ARGS and the config's line."""
    conf = node.conf(line="from-config", args={"cni": {"line": f"multus-{node.tag}"}})
    one, two = node.netns(), node.netns()
    r1 = node.add(conf, one, cni_args="YOGURT_LINE=from-env")
    r2 = node.add(conf, two)
    assert {e.line for e in node.ends().values()} == {f"multus-{node.tag}"}
    assert r1["yogurt"]["line"] == f"multus-{node.tag}"
    assert lab.ping(one, addresses(r2)[0]) == 2
    node.delete(conf, one)
    node.delete(conf, two)


def test_an_invalid_line_names_its_source_and_leaves_nothing(node: Node) -> None:
    conf = node.conf(args={"cni": {"line": "../etc"}})
    one = node.netns()
    run = node.run("ADD", conf, one)
    assert run.rc == 1 and run.out["code"] == 7 and "args.cni.line" in run.out["msg"], run.out
    assert node.leftovers() == {}


def test_requested_addresses_and_mac(node: Node) -> None:
    """runtimeConfig.ips through host-local, and the MAC on veth (netkit: refused, code 7)."""
    mac = "02:42:de:ad:be:ef"
    asked = {"ips": ["10.42.0.77/24", "fd42::77/64"], "mac": mac}
    conf = node.conf(capabilities={"ips": True, "mac": True}, runtimeConfig=asked)
    one, two = node.netns(), node.netns()
    if node.backend == "netkit":
        run = node.run("ADD", conf, one)
        assert run.rc == 1 and run.out["code"] == 7 and "netkit" in run.out["msg"], run.out
        assert node.leftovers() == {}
        conf["runtimeConfig"] = {"ips": asked["ips"]}
    result = node.add(conf, one)
    assert sorted(ip["address"] for ip in result["ips"]) == ["10.42.0.77/24", "fd42::77/64"]
    addrs = one.run("ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert "10.42.0.77/24" in addrs and "fd42::77/64" in addrs
    if node.backend != "netkit":
        assert result["interfaces"][1]["mac"] == mac
        assert mac in one.run("ip", "-o", "link", "show", "eth0").stdout
    partner = node.add(node.conf(name=conf["name"]), two)  # host-local picks the other one
    assert lab.ping(two, "10.42.0.77") == 2
    assert addresses(partner)[0] != "10.42.0.77"
    node.delete(conf, one)
    node.delete(conf, two)


def test_an_address_the_ipam_cannot_give_fails_and_leaves_nothing(node: Node) -> None:
    conf = node.conf(runtimeConfig={"ips": ["10.99.7.7/24"]})  # outside host-local's ranges
    one = node.netns()
    run = node.run("ADD", conf, one)
    assert run.rc == 1 and "10.99.7.7" in run.out["msg"] + run.out.get("details", ""), run.out
    assert node.leftovers() == {}
    assert one.run("ip", "-o", "link", "show", "eth0").returncode != 0


def test_requested_addresses_without_ipam_are_set_directly(node: Node) -> None:
    conf = node.conf()
    del conf["ipam"]
    one, two = node.netns(), node.netns()
    r1 = node.add({**conf, "runtimeConfig": {"ips": ["192.168.77.1/24"]}}, one)
    node.add({**conf, "args": {"cni": {"ips": ["192.168.77.2/24"]}}}, two)
    assert [ip["address"] for ip in r1["ips"]] == ["192.168.77.1/24"]
    assert r1["ips"][0]["interface"] == 1
    assert lab.ping(one, "192.168.77.2") == 2
    node.delete(conf, one)
    node.delete(conf, two)


def test_the_pod_is_recorded_shown_and_named_when_the_line_is_full(node: Node) -> None:
    conf = node.conf()
    one, two, three = node.netns(), node.netns(), node.netns()
    r1 = node.add(conf, one, cni_args=POD_ARGS.format(name="web-0"))
    node.add(conf, two, cni_args=POD_ARGS.format(name="web-1"))
    end = node.ends()[f"{one.name}/eth0"]
    assert (end.pod_namespace, end.pod_name, end.pod_uid) == ("shop", "web-0", "uid-web-0")
    label = subprocess.run(
        ["ip", "-j", "link", "show", r1["interfaces"][0]["name"]], capture_output=True, text=True, check=True
    )
    ident = parse_alias(json.loads(label.stdout)[0]["ifalias"])
    assert ident is not None and (ident["pn"], ident["p"], ident["pu"]) == ("shop", "web-0", "uid-web-0")
    status = subprocess.run(
        [
            *lab.self_command(),
            "status",
            "--json",
            "--bpffs-dir",
            conf["bpffsDir"],
            "--state-dir",
            conf["stateDir"],
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = {e["end"]: e["pod"] for e in json.loads(status.stdout)["lines"][conf["name"]]}
    assert shown[f"{one.name}/eth0"] == {"namespace": "shop", "name": "web-0", "uid": "uid-web-0"}
    text = subprocess.run(
        [*lab.self_command(), "status", "--bpffs-dir", conf["bpffsDir"], "--state-dir", conf["stateDir"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pod shop/web-1 (uid uid-web-1)" in text
    run = node.run("ADD", conf, three, cni_args=POD_ARGS.format(name="web-2"))
    assert run.rc == 1 and run.out["code"] == 100, run.out
    assert "pod shop/web-0" in run.out["details"] and "pod shop/web-1" in run.out["details"]
    assert naming.host_ifname(three.name, "eth0") not in node.devices()
    node.delete(conf, one)
    node.delete(conf, two)


def test_the_pod_survives_a_registry_rebuilt_from_device_labels(node: Node, tmp_path: Path) -> None:
    with private_dirs(node, tmp_path, "podlabel") as conf:
        one, two = node.netns(), node.netns()
        node.add(conf, one, cni_args=POD_ARGS.format(name="web-0"))
        node.add(conf, two)
        line_file = Path(conf["stateDir"]) / "lines" / _line_file(conf["name"])
        line_file.write_text("{ truncated")
        node.delete(conf, two)  # a verb on the line: it heals the registry from the kernel first
        (end,) = node.ends().values()
        assert (end.container_id, end.pod_namespace, end.pod_name, end.pod_uid) == (
            one.name,
            "shop",
            "web-0",
            "uid-web-0",
        )
        node.delete(conf, one)


IGNORANT_IPAM = """#!/bin/sh
# An IPAM plugin that ignores requested addresses: it always hands out .5, and logs its verbs.
echo "$CNI_COMMAND" >> "$0.calls"
case "$CNI_COMMAND" in
ADD) echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.42.0.5/24"}]}' ;;
VERSION) echo '{"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}' ;;
esac
"""


def test_an_ipam_that_ignores_the_request_fails_the_add_and_is_rolled_back(
    node: Node, tmp_path: Path
) -> None:
    plugin = tmp_path / "bin" / "ignorant"
    plugin.parent.mkdir()
    plugin.write_text(IGNORANT_IPAM)
    plugin.chmod(0o755)
    node.cni_path = str(plugin.parent)
    conf = node.conf(version="1.0.0", runtimeConfig={"ips": ["10.42.0.77/24"]}, ipam={"type": "ignorant"})
    one = node.netns()
    run = node.run("ADD", conf, one)
    assert run.rc == 1 and run.out["code"] == 104, run.out
    assert "10.42.0.77" in run.out["details"] and "10.42.0.5" in run.out["details"], run.out
    assert (tmp_path / "bin" / "ignorant.calls").read_text().split() == ["ADD", "DEL"]  # its lease released
    assert node.leftovers() == {}
    assert one.run("ip", "-o", "link", "show", "eth0").returncode != 0


def test_a_mac_on_a_netkit_network_is_refused_before_anything_is_made(node: Node) -> None:
    """Also where the kernel has no netkit: the refusal comes from the config, before the device."""
    conf = node.conf(mode="netkit", runtimeConfig={"mac": "02:42:de:ad:be:ef"})
    conf.pop("vethAttach", None)
    one = node.netns()
    run = node.run("ADD", conf, one)
    assert run.rc == 1 and run.out["code"] == 7, run.out
    assert "netkit devices (L3) have none" in run.out["msg"] and "veth" in run.out["details"], run.out
    assert "Traceback" not in run.stderr
    assert node.leftovers() == {}
    assert one.run("ip", "-o", "link", "show", "eth0").returncode != 0
