"""End to end with the CNI project's own runtime, `cnitool`, driving the one-file binary `dist/yogurt`.

Nothing of the venv is on the plugin's path: CNI_PATH holds only `yogurt` (a
link to dist/yogurt, an ELF) and `host-local`; cnitool (built by `make
cnitool`) reads a conflist from NETCONFPATH, execs the plugin, caches the
ADD result and hands it back as prevResult to CHECK and DEL, as a runtime does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BINARY, Node, addresses, ifindex, require_binary

from cni_yogurt import health, lab
from cni_yogurt.line import naming

pytestmark = pytest.mark.runtime
CNITOOL = Path(__file__).resolve().parents[2] / ".cache" / "cnitool" / "bin" / "cnitool"
require_binary("test_cnitool.py", (str(CNITOOL), "build it with `make cnitool`"))


def cnitool_container_id(netns_path: str) -> str:
    """What cnitool passes as CNI_CONTAINERID: a hash of the absolute netns path (cnitool.go)."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns_path).encode()).hexdigest()[:20]


class Cnitool:
    """cnitool with its own NETCONFPATH, CNI_PATH and result cache, for one test."""

    def __init__(self, node: Node, conflist: dict[str, Any]) -> None:
        self.net = conflist["name"]
        self.netconf = node.tmp / "net.d"
        self.netconf.mkdir()
        (self.netconf / "10-yogurt.conflist").write_text(json.dumps(conflist, indent=2))
        self.cni_path = node.binary_bin_dir()
        # libcni 1.1.2 keeps ADD results in /var/lib/cni, fixed, and fails an ADD
        # it cannot cache; the VM's root is read-only. Each run gets a private
        # mount namespace with this test's directory over /var/lib instead: the
        # cache survives from ADD to DEL, and nothing lands on the node.
        self.var_lib = node.tmp / "var-lib"
        self.var_lib.mkdir()

    def __call__(self, verb: str, ns: lab.Netns, **extra_env: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(NETCONFPATH=str(self.netconf), CNI_PATH=str(self.cni_path), **extra_env)
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount --bind "$0" /var/lib && exec "$@"', str(self.var_lib),
                str(CNITOOL), verb, self.net, ns.path]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=900)

    def cached(self) -> list[str]:
        results = self.var_lib / "cni" / "results"
        return sorted(p.name for p in results.iterdir()) if results.exists() else []


def test_cnitool_add_ping_check_del_with_the_binary(node: Node) -> None:
    assert BINARY.read_bytes()[:4] == b"\x7fELF", f"{BINARY} is not the one-file binary"
    conflist = node.conflist(f"cnitool-{node.tag}")
    cnitool = Cnitool(node, conflist)
    assert sorted(os.listdir(cnitool.cni_path)) == ["host-local", "yogurt"]
    one, two = node.netns(), node.netns()
    ids = {ns.name: cnitool_container_id(ns.path) for ns in (one, two)}
    node.runtime_ids |= set(ids.values())

    results = {}
    for ns in (one, two):
        run = cnitool("add", ns)
        assert run.returncode == 0, f"cnitool add {ns.name}: {run.stdout} {run.stderr}"
        result = json.loads(run.stdout)
        host = result["interfaces"][0]["name"]
        assert host == naming.host_ifname(ids[ns.name], "eth0"), result
        node.ifindexes.add(ifindex(host))
        results[ns.name] = result
    assert cnitool.cached() == sorted(f"{cnitool.net}-{ids[ns.name]}-eth0" for ns in (one, two))
    # No "mode" in the conflist: netkit where the kernel has it (the VM), else veth. (libcni
    # re-encodes the result and drops our "yogurt" key, so ask the node.)
    assert {e.device for e in node.ends().values()} == {"netkit" if health.probe_netkit().ok else "veth"}

    a4, _ = addresses(results[one.name])
    b4, _ = addresses(results[two.name])
    assert lab.ping(one, b4) == 2, "one -> two"
    assert lab.ping(two, a4) == 2, "two -> one"

    for ns in (one, two):
        run = cnitool("check", ns)
        assert run.returncode == 0, f"cnitool check {ns.name}: {run.stdout} {run.stderr}"
    for ns in (one, two):
        run = cnitool("del", ns)
        assert run.returncode == 0, f"cnitool del {ns.name}: {run.stdout} {run.stderr}"
    assert cnitool.cached() == []
    assert lab.ping(one, b4) == 0

    # Every verb reached dist/yogurt (the only `yogurt` on CNI_PATH) and succeeded.
    seen = node.plugin_events(set(ids.values()))
    assert seen >= {(verb, cid) for verb in ("ADD", "CHECK", "DEL") for cid in ids.values()}, seen
    # The node fixture then checks that no device, pin, map entry, line end or lease is left.


def test_cnitool_cap_args_give_the_requested_address_and_mac(node: Node) -> None:
    """CAP_ARGS reach the plugin as runtimeConfig, for the capabilities the conflist declares."""
    conflist = node.conflist(f"cnitool-caps-{node.tag}")
    netkit = health.probe_netkit().ok
    conflist["plugins"][0]["capabilities"] = {"ips": True, "mac": True}
    cnitool = Cnitool(node, conflist)
    one = node.netns()
    cid = cnitool_container_id(one.path)
    node.runtime_ids.add(cid)
    caps: dict[str, Any] = {"ips": ["10.42.0.66/24"]} if netkit else {"ips": ["10.42.0.66/24"], "mac": MAC}
    run = cnitool("add", one, CAP_ARGS=json.dumps(caps))
    assert run.returncode == 0, f"cnitool add: {run.stdout} {run.stderr}"
    result = json.loads(run.stdout)
    node.ifindexes.add(ifindex(result["interfaces"][0]["name"]))
    assert [ip["address"] for ip in result["ips"]] == ["10.42.0.66/24"]
    assert "10.42.0.66/24" in one.run("ip", "-o", "addr", "show", "dev", "eth0").stdout
    if not netkit:
        assert result["interfaces"][1]["mac"] == MAC
        assert MAC in one.run("ip", "-o", "link", "show", "eth0").stdout
    run = cnitool("check", one, CAP_ARGS=json.dumps(caps))
    assert run.returncode == 0, f"cnitool check: {run.stdout} {run.stderr}"
    run = cnitool("del", one, CAP_ARGS=json.dumps(caps))
    assert run.returncode == 0, f"cnitool del: {run.stdout} {run.stderr}"


MAC = "02:42:0a:2a:00:42"
