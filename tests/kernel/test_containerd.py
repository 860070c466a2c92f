"""End to end with containerd 1.6 (Debian 12's) through the CRI gRPC API, as a kubelet drives it.

Two pod sandboxes on one yogurt line: RunPodSandbox makes each (containerd
creates the netns and calls CNI ADD with the sandbox id as CNI_CONTAINERID,
then starts the pause container), they ping each other, and
StopPodSandbox/RemovePodSandbox take them down (containerd 1.6 calls DEL on
both). The daemon is private to this module (tests/kernel/cri.py); its CNI
bin dir holds only `yogurt` (a link to dist/yogurt, an ELF), `host-local`
and `loopback` (containerd sets up every sandbox's lo with it).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import cri
import grpc
import pytest
from conftest import BINARY, Node, binary_bin_dir, ifindex, plugin_log, require_binary

from cni_yogurt.line import naming

pytestmark = pytest.mark.runtime  # the plugin picks its backend, as on a node
require_binary("test_containerd.py")
if cri.missing():
    pytest.fail("test_containerd.py: " + "; ".join(cri.missing()), pytrace=False)

SUBNET = "10.42.0.0/24"


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cri.Containerd]:
    base = tmp_path_factory.mktemp("containerd")
    cni_bin = binary_bin_dir(base / "cni-bin", "host-local", "loopback")
    # In the VM, next to the plugin's log, in the result dir the host keeps.
    out = os.environ.get("YOGURT_VM_OUT")
    log = Path(out) / f"containerd-{base.name}.log" if out else None
    with cri.Containerd(base, cni_bin, log_path=log) as daemon:
        yield daemon
    assert not daemon.survivors, f"processes of containerd survived it: {daemon.survivors}"


@pytest.fixture
def pods(node: Node, containerd: cri.Containerd) -> Iterator[cri.Containerd]:
    """containerd for one test; set up after `node`, so torn down before it.

    A sandbox the test leaves (when it fails half-way) is stopped and removed
    through CRI, as a kubelet would, before the node fixture looks for
    leftovers: what it then finds is the plugin's, not the test's. So is any
    container the plugin logged for the test's networks, also that of a
    RunPodSandbox that failed (and so never told the test its sandbox id).
    """
    networks = len(containerd.networks)
    yield containerd
    containerd.remove_all()
    node.runtime_ids |= _logged_container_ids(set(containerd.networks[networks:]))


def _logged_container_ids(networks: set[str]) -> set[str]:
    events = plugin_log(f'"{net}"' for net in networks) if networks else []
    return {e["container_id"] for e in events if e.get("network") in networks and e.get("container_id")}


def test_containerd_cri_two_sandboxes_on_one_line_with_the_binary(node: Node, pods: cri.Containerd) -> None:
    assert BINARY.read_bytes()[:4] == b"\x7fELF", f"{BINARY} is not the one-file binary"
    assert sorted(os.listdir(pods.cni_bin_dir)) == ["host-local", "loopback", "yogurt"]
    assert (pods.cni_bin_dir / "yogurt").resolve() == BINARY.resolve()
    conflist = node.conflist(f"containerd-{node.tag}", SUBNET)
    net = conflist["name"]
    pods.use_network(conflist)

    sandboxes = []
    for name in ("one", "two"):
        sandboxes.append(pods.run_pod_sandbox(f"{name}-{node.tag}"))
        node.runtime_ids.add(sandboxes[-1].id)  # containerd's CNI_CONTAINERID is the sandbox id
    one, two = sandboxes
    for sandbox in (one, two):
        assert sandbox.state == "SANDBOX_READY", sandbox
        assert ipaddress.ip_address(sandbox.ip) in ipaddress.ip_network(SUBNET), sandbox
        node.ifindexes.add(ifindex(naming.host_ifname(sandbox.id, "eth0")))
    assert one.ip != two.ip
    assert pods.cni_cache() == sorted(
        [f"{net}-{s.id}-eth0" for s in (one, two)] + [f"cni-loopback-{s.id}-lo" for s in (one, two)]
    )

    # From the host, in each sandbox's netns: its only process is the pause container.
    for a, b in ((one, two), (two, one)):
        run = pods.ping(a, b.ip)
        assert run.returncode == 0, f"{a.name} -> {b.name} ({b.ip}): {run.stdout} {run.stderr}"

    pods.stop_pod_sandbox(one.id)
    assert pods.sandbox(one.id).state == "SANDBOX_NOTREADY"
    assert not os.path.exists(pods.host_path(one.netns)), "StopPodSandbox leaves the netns"
    run = pods.ping(two, one.ip)  # the line is hung up: two's end fails closed
    assert run.returncode != 0, f"two -> one after one stopped: {run.stdout}"
    pods.stop_pod_sandbox(two.id)
    for sandbox in (one, two):
        pods.remove_pod_sandbox(sandbox.id)
    assert pods.sandbox_ids() == []
    assert not os.path.exists(pods.host_path(two.netns))
    assert pods.cni_cache() == []

    # ADD and DEL reached dist/yogurt (the only `yogurt` in containerd's CNI
    # bin dir) with the sandbox ids, and succeeded.
    seen = node.plugin_events({one.id, two.id})
    assert seen >= {(verb, s.id) for verb in ("ADD", "DEL") for s in (one, two)}, seen
    # The node fixture then checks that no device, pin, map entry, line end or
    # lease is left; the containerd fixture, that no shim or pause process is.


def multus_delegate(node: Node, line: str, ips: list[str]) -> dict[str, object]:
    """A network as Multus hands it to its delegate for one pod: the NetworkAttachmentDefinition's
    config, with the pod's cni-args in args.cni and its requested ips in runtimeConfig (the
    delegate declares the `ips` capability). containerd reads one conflist for every pod, so
    the test swaps it per pod, as Multus's per-pod delegate config would differ."""
    conflist = node.conflist(f"multus-{node.tag}", SUBNET)
    plugin = conflist["plugins"][0]
    del plugin["line"]  # the line comes from the pod's cni-args alone
    plugin["capabilities"] = {"ips": True}
    plugin["args"] = {"cni": {"line": line}}
    if ips:
        plugin["runtimeConfig"] = {"ips": ips}
    return conflist


def test_containerd_multus_shaped_pods_get_their_addresses_on_their_line(
    node: Node, pods: cri.Containerd
) -> None:
    line = f"call-{node.tag}"
    wanted = {"one": "10.42.0.91", "two": "10.42.0.92"}
    sandboxes = {}
    for name, ip in wanted.items():
        pods.use_network(multus_delegate(node, line, [f"{ip}/24"]))
        sandboxes[name] = pods.run_pod_sandbox(f"{name}-{node.tag}")
        node.runtime_ids.add(sandboxes[name].id)
        node.ifindexes.add(ifindex(naming.host_ifname(sandboxes[name].id, "eth0")))
    one, two = sandboxes["one"], sandboxes["two"]
    assert (one.ip, two.ip) == (wanted["one"], wanted["two"])
    ends = {e.container_id: e for e in node.ends().values()}
    for name, sandbox in sandboxes.items():
        end = ends[sandbox.id]
        assert end.line == line, end
        # containerd's K8S_POD_* args, from the CRI PodSandboxConfig metadata
        assert (end.pod_namespace, end.pod_name) == ("yogurt-test", f"{name}-{node.tag}"), end
        assert end.pod_uid == sandbox.info["config"]["metadata"]["uid"], end
    for a, b in ((one, two), (two, one)):
        run = pods.ping(a, b.ip)
        assert run.returncode == 0, f"{a.name} -> {b.name} ({b.ip}): {run.stdout} {run.stderr}"

    # A third pod naming the same line: code 100, naming the pods that hold it.
    pods.use_network(multus_delegate(node, line, []))
    with pytest.raises(grpc.RpcError) as refused:
        pods.run_pod_sandbox(f"three-{node.tag}")
    text = str(refused.value.details())
    assert "already has two ends" in text, text
    assert f"pod yogurt-test/one-{node.tag}" in text and f"pod yogurt-test/two-{node.tag}" in text, text

    for sandbox in (one, two):
        pods.stop_pod_sandbox(sandbox.id)
        pods.remove_pod_sandbox(sandbox.id)
    assert pods.cni_cache() == []
