"""ADD, CHECK, DEL, STATUS and GC on a real kernel, for every spec version and every backend."""

from __future__ import annotations

import os

import pytest
from conftest import BACKENDS, OFFERED, Node, addresses

from cni_yogurt import health, lab
from cni_yogurt.cni.version import SUPPORTED_VERSIONS, at_least
from cni_yogurt.line import naming


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_in_every_version(node: Node, version: str) -> None:
    conf = node.conf(version=version)
    one = node.netns()
    result = node.add(conf, one)
    assert result["cniVersion"] == version
    host, cont = result["interfaces"]
    assert host["name"] == naming.host_ifname(one.name, "eth0") and "sandbox" not in host
    assert {ip["interface"] for ip in result["ips"]} == {1}
    assert all(("version" in ip) == (not at_least(version, "1.0.0")) for ip in result["ips"])
    link = one.run("ip", "-d", "-o", "link", "show", "eth0").stdout
    assert "UP" in link
    if result["yogurt"]["backend"] == "netkit":
        assert cont == {"name": "eth0", "mac": "00:00:00:00:00:00", "sandbox": one.path}
        assert "NOARP" in link and "netkit" in link
    else:  # the container's own MAC, which podman wants
        assert cont == {"name": "eth0", "mac": cont["mac"], "sandbox": one.path} and cont["mac"] in link
        assert "veth" in link
    addrs = one.run("ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert all(ip["address"] in addrs for ip in result["ips"])
    if at_least(version, "0.4.0"):
        run = node.run("CHECK", {**conf, "prevResult": result}, one)
        assert run.rc == 0, run.out
    else:
        run = node.run("CHECK", {**conf, "prevResult": result}, one)
        assert run.rc != 0 and run.out["code"] == 1
    node.delete(conf, one)


def _detach_guard(node: Node, result: dict, ns: lab.Netns) -> None:
    """Take the guard away as an admin could: unpin its link, or delete its tc filter."""
    if result["yogurt"]["attach"] == "tc":
        assert ns.run("tc", "filter", "del", "dev", "eth0", "ingress").returncode == 0
    else:
        os.unlink(node.pins.link(result["interfaces"][0]["name"], "primary"))


def test_check_fails_once_a_program_is_detached(node: Node) -> None:
    conf = node.conf()
    one = node.netns()
    result = node.add(conf, one)
    prev = {**conf, "prevResult": result}
    assert node.run("CHECK", prev, one).rc == 0
    _detach_guard(node, result, one)
    run = node.run("CHECK", prev, one)
    assert run.rc != 0 and run.out["code"] == 103
    assert "primary program" in run.out["details"]
    node.delete(conf, one)


def test_check_notices_a_missing_address(node: Node) -> None:
    conf = node.conf()
    one = node.netns()
    result = node.add(conf, one)
    a4, _ = addresses(result)
    one.run("ip", "addr", "del", f"{a4}/24", "dev", "eth0")
    run = node.run("CHECK", {**conf, "prevResult": result}, one)
    assert run.rc != 0 and run.out["code"] == 103 and a4 in run.out["details"]
    node.delete(conf, one)


def test_del_is_idempotent(node: Node) -> None:
    conf = node.conf()
    one = node.netns()
    node.add(conf, one)
    node.delete(conf, one)
    node.delete(conf, one)  # twice in a row, as containerd does
    node.delete(conf, None, container_id="never-added")
    two = node.netns()
    node.add(conf, two)
    two.delete()  # the netns is gone before DEL (and the device with it)
    node.delete(conf, None, container_id=two.name)


def test_failed_add_rolls_everything_back(node: Node) -> None:
    # A /30 with one usable address: the second ADD fails in IPAM, after its
    # device, links and line place were made.
    conf = node.conf(subnet4="10.77.0.0/30", subnet6=None)
    conf["ipam"]["ranges"] = [
        [{"subnet": "10.77.0.0/30", "rangeStart": "10.77.0.2", "rangeEnd": "10.77.0.2"}]
    ]
    one, two = node.netns(), node.netns()
    node.add(conf, one)
    before = node.leftovers()
    run = node.run("ADD", conf, two)
    assert run.rc != 0 and "Traceback" not in run.stderr
    assert node.leftovers() == before
    assert two.run("ip", "-o", "link", "show", "eth0").returncode != 0
    node.delete(conf, one)


def test_add_into_a_missing_netns_is_an_env_error_and_leaves_nothing(node: Node) -> None:
    conf = node.conf()
    run = lab.run_plugin(
        "ADD", conf, container_id="ghost", netns="/run/netns/does-not-exist", cni_path=node.cni_path
    )
    assert run.rc != 0 and run.out["code"] == 4
    assert node.leftovers() == {}


def test_status_is_ok_where_the_backend_works(node: Node) -> None:
    run = node.run("STATUS", node.conf(), None)
    assert run.rc == 0, run.out
    assert run.out == {}


@pytest.mark.runtime
def test_status_refuses_a_backend_this_kernel_lacks(node: Node) -> None:
    lacking = [b for b, why in OFFERED.items() if why is not None]
    if not lacking:
        pytest.skip("this kernel offers every backend")
    run = node.run("STATUS", node.conf(**BACKENDS[lacking[0]]), None)
    assert run.rc != 0 and run.out["code"] == 50, run.out
    assert "backend" in run.out["details"]


@pytest.mark.runtime
def test_auto_mode_takes_netkit_where_the_kernel_has_it_else_veth(node: Node) -> None:
    conf = node.conf()
    assert "mode" not in conf
    one = node.netns()
    result = node.add(conf, one)
    netkit = health.probe_netkit().ok
    assert result["yogurt"]["backend"] == ("netkit" if netkit else "veth")
    assert one.run("ip", "-d", "link", "show", "eth0").stdout.count("netkit") == int(netkit)
    node.delete(conf, one)


def test_gc_removes_what_the_runtime_no_longer_knows(node: Node) -> None:
    conf = node.conf()
    keep, drop = node.netns(), node.netns()
    kept = node.add(conf, keep)
    dropped = node.add(conf, drop)
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": keep.name, "ifname": "eth0"}]}
    run = node.run("GC", gc_conf, None)
    assert run.rc == 0, run.out
    assert dropped["interfaces"][0]["name"] not in node.devices()
    assert naming.host_ifname(keep.name, "eth0") in node.devices()
    assert list(node.ends()) == [f"{keep.name}/eth0"]
    assert node.map_entries() == {}
    # host-local 1.1.1 knows no GC: the plugin released the dropped end's leases itself
    assert node.leases() == sorted(ip["address"].split("/")[0] for ip in kept["ips"])
    node.delete(conf, keep)
