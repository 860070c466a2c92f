"""End to end with podman 4 (Debian's, CNI backend) and the one-file binary `dist/yogurt`.

Two `podman run --rm --network <yogurt net>` containers (one asking for its address and MAC,
`--network net:ip=...,mac=...`) of a busybox image
made on the spot (started together: their ADDs race for the same line) ping
each other across the line, then end, and their `podman run` tears the network
down and removes them. What podman demands of a plugin beyond cnitool: a VERSION answer it
accepts before anything else, and a container interface with a parseable `mac`
in the ADD result (a netkit device in L3 mode has the all-zero one).
"""

from __future__ import annotations

import pytest
from conftest import Node, ifindex, require_binary
from images import rootfs_tar
from podman import Podman

from cni_yogurt import health
from cni_yogurt.line import naming

pytestmark = pytest.mark.runtime  # the plugin picks its backend, as on a node
require_binary("test_podman.py", ("podman", "install Debian's podman (4.x), without netavark"))

IMAGE = "localhost/yogurt-busybox:1"
NAMES = ("one", "two")
STATIC_IP, STATIC_MAC = "10.42.0.9", "02:42:0a:2a:00:09"
HOLD = ["sh", "-c", "until [ -e /hang-up ]; do sleep 1; done"]  # the container's life: until told


def test_podman_containers_talk_over_the_line_and_leave_nothing(node: Node) -> None:
    conflist = node.conflist(f"podman-{node.tag}")
    # `--network net:ip=...,mac=...` reaches the plugin as runtimeConfig ips / mac, for
    # the capabilities the config declares (conf/10-yogurt.conflist does).
    conflist["plugins"][0]["capabilities"] = {"ips": True, "mac": True}
    net = conflist["name"]
    netkit = health.probe_netkit().ok  # netkit (L3) has no MAC to ask for
    asked = {"one": f"{net}:ip={STATIC_IP}" + ("" if netkit else f",mac={STATIC_MAC}"), "two": net}
    with Podman(node.tmp / "podman", conflist, node.binary_bin_dir()) as podman:
        backend = podman("info", "--format", "{{.Host.NetworkBackend}}").stdout.strip()
        assert backend == "cni", f"podman uses {backend!r}: the test needs its CNI backend (no netavark)"
        podman("import", str(rootfs_tar(node.tmp / "rootfs.tar")), IMAGE)

        # Foreground `podman run --rm`, as people run containers: when the
        # container ends, that same podman process tears its network down
        # (DEL) and removes it. (After `podman stop`, removal is left to
        # conmon's cleanup process alone, which podman 4.3 can lose in a race
        # on a slow machine: podman issue 11384.)
        runs = {
            name: podman.start("run", "--rm", "--name", name, "--network", asked[name], IMAGE, *HOLD)
            for name in NAMES
        }
        ids = []
        for name, run in runs.items():
            podman.wait_running(name, run)
            ids.append(podman("inspect", "--format", "{{.Id}}", name).stdout.strip())
            node.runtime_ids.add(ids[-1])  # podman's CNI_CONTAINERID is the container id
            node.ifindexes.add(ifindex(naming.host_ifname(ids[-1], "eth0")))
        address = f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}'
        ip = {name: podman("inspect", name, "--format", address).stdout.strip() for name in NAMES}
        assert all(ip.values()) and ip["one"] != ip["two"], ip
        assert ip["one"] == STATIC_IP, ip
        if not netkit:
            mac = f'{{{{(index .NetworkSettings.Networks "{net}").MacAddress}}}}'
            assert podman("inspect", "one", "--format", mac).stdout.strip() == STATIC_MAC
            assert STATIC_MAC in podman("exec", "one", "ip", "link", "show", "eth0").stdout
        assert podman.cached_results() == sorted(f"{net}-{cid}-eth0" for cid in ids)

        for src, dst in (("one", "two"), ("two", "one")):
            ping = podman("exec", src, "ping", "-c", "2", "-W", "5", ip[dst], check=False)
            assert ping.returncode == 0, f"{src} -> {dst}: {ping.stdout} {ping.stderr}"

        for name, run in runs.items():
            podman("exec", name, "touch", "/hang-up")
            out, err = run.communicate(timeout=900)
            assert run.returncode == 0, f"podman run {name} exited {run.returncode}: {out} {err}"
            left = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
            assert name not in left, f"--rm did not remove {name}"
        assert podman.cached_results() == []
    # Leaving waited for every process of podman's namespace (conmon, its cleanup) to end by itself.
    assert not podman.survivors, f"processes of podman survived it: {podman.survivors}"

    # ADD and DEL of both containers reached dist/yogurt and succeeded.
    seen = node.plugin_events(set(ids))
    assert seen >= {(verb, cid) for verb in ("ADD", "DEL") for cid in ids}, seen
    # The node fixture then checks that no device, pin, map entry, line end or lease is left.
