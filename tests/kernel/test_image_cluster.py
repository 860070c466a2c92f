"""The image of `make image` in cluster mode, on two lab nodes, as packaging/kubernetes/cluster/
has it run: one line across the nodes through the installed front end.

Two nodes of the node lab with nothing but their underlay (no WireGuard, no VXLAN, no nftables:
the agent makes them), and a TLS etcd on the underlay (in the hub's netns). On each node, under
the test's private podman, in the node's network namespace ("hostNetwork"):

- the DaemonSet's install step, with its mount (the node's /opt/cni/bin a scratch dir of the node);
- the DaemonSet's agent container, as the manifest gives it: its command and args with `$(VAR)`
  expanded from its env as the kubelet does (the downward API's spec.nodeName and status.hostIP
  given the lab node's name and underlay address), privileged, its hostPath volumes mapped to the
  node's scratch dirs (a bpffs of the node's own at /sys/fs/bpf, its dataDir, wireguard-go's socket
  dir, its state dir), the ConfigMap's files (cluster.json, with the lab's endpoints and a prefix of
  the test's) and the Secret's (the lab's CA, client certificate and key) where the manifest mounts
  them.

Then each example pod of example-pods.yaml, one per node (their anti-affinity), gets its end: the
NetworkAttachmentDefinition's config, as Multus hands it to the delegate (its cni-args as args.cni,
its ips as runtimeConfig.ips), exec'd as the node's runtime would: /opt/cni/bin/yogurt (the front
end the install step put there) in the node's network namespace and with the node's view of
/run/cni-yogurt, /sys/fs/bpf, /opt/cni/bin and the log file. Ping both ways; neither node's host
reaches either container; DEL on both leaves nothing, in etcd or on the nodes. The agents stopped
(SIGTERM, exit 0), `yogurt leave` from the image on each node, with the agent container's mounts
and arguments, takes the nodes out: nothing left in etcd, the nodes back to their underlay alone.

Not the node's PID namespace (as in test_image.py: the test's podman runs without cgroups). So
wireguard-go, which the agent starts where the kernel has no WireGuard (here), ends with the agent's
container, as it does with a kubelet, which stops every process of a container's cgroup.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary
from manifests import KUBE, argv, container, daemonset, documents, env, one, podman_run_args, wait_for_agent
from podman import Podman

from cni_yogurt import lab
from cni_yogurt.agent import frontend
from cni_yogurt.agent.firewall import TABLE as FIREWALL_TABLE
from cni_yogurt.cluster.config import DEFAULT_TUNNEL_DEVICE, DEFAULT_WIREGUARD_DEVICE
from cni_yogurt.cluster.keys import Keys
from cni_yogurt.lab.etcd import ETCD, EtcdLab
from cni_yogurt.lab.nodes import STORE_ADDRESS, NodeLab
from cni_yogurt.line import naming
from cni_yogurt.line.registry import Registry

pytestmark = pytest.mark.runtime
require_binary(
    "test_image_cluster.py",
    ("podman", "install Debian's podman (4.x)"),
    ("nsenter", "util-linux"),
    (ETCD or "etcd", "packaging/fetch-etcd.sh (make kernel-native runs it)"),
)

CLUSTER = KUBE / "cluster"
IMAGE = "localhost/cni-yogurt:latest"
NETWORKS = "k8s.v1.cni.cncf.io/networks"
CNI_BIN = "/opt/cni/bin"  # the node's, where the runtime finds the plugin
PING_WITHIN = 20.0  # seconds for the first answer across: handshakes, the reconcilers' wiring

# A command run as on node <netns>: a private mount namespace with the node's own /run (its
# /run/cni-yogurt; /run/netns kept), /sys/fs/bpf, /opt/cni/bin and log file bound from the node's
# dir, then the node's network namespace.  $0: the node's dir; $1: its netns; then the command.
NODE_VIEW = r"""
set -eu
d=$0 netns=$1
shift
mount --rbind /run/netns "$d/view/netns"
mount -t tmpfs view /run
mkdir -p /run/netns /run/cni-yogurt
mount --move "$d/view/netns" /run/netns
mount --bind "$d/state" /run/cni-yogurt
mount --bind "$d/bpffs" /sys/fs/bpf
mount -t tmpfs view /opt
mkdir -p /opt/cni/bin
mount --bind "$d/cni-bin" /opt/cni/bin
mount -t tmpfs view /var/log
touch /var/log/cni-yogurt.log
mount --bind "$d/cni-yogurt.log" /var/log/cni-yogurt.log
exec nsenter --net="/run/netns/$netns" -- "$@"
"""


@dataclass
class Node:
    """One lab node as the DaemonSet's pod sees it: its name, address and scratch dirs."""

    index: int
    netns: str
    address: str
    dir: Path

    @property
    def name(self) -> str:  # what spec.nodeName says
        return f"lab-node-{self.index}"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def host_paths(self) -> dict[str, Path]:
        """The DaemonSet's hostPath paths -> this node's stand-ins (the kernel headers are the
        machine's: the image does not carry them)."""
        return {
            "/sys/fs/bpf": self.dir / "bpffs",
            "/run/cni-yogurt": self.state,
            "/run/netns": Path("/run/netns"),
            "/opt/cni/bin": self.dir / "cni-bin",
            "/etc/cni/net.d": self.dir / "net.d",
            "/var/log/cni-yogurt.log": self.dir / "cni-yogurt.log",
            "/var/lib/cni-yogurt": self.dir / "data",
            "/run/wireguard": self.dir / "wireguard",
            "/lib/modules": Path("/lib/modules"),
            "/usr/src": Path("/usr/src"),
        }

    def make(self) -> Node:
        for sub in ("state", "bpffs", "cni-bin", "net.d", "data", "wireguard", "view/netns", "config", "tls"):
            (self.dir / sub).mkdir(parents=True)
        (self.dir / "cni-yogurt.log").touch()
        # A bpffs of the node's own: its pins apart from the machine's and the other node's.
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.dir / "bpffs")], check=True)
        return self

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.dir / "bpffs")], check=False)

    def plugin(self, verb: str, conf: dict[str, Any], ctr: lab.Netns, cid: str, ifname: str) -> lab.PluginRun:
        """The installed front end, exec'd as this node's runtime would."""
        view = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", NODE_VIEW]
        return lab.run_plugin(
            verb,
            conf,
            container_id=cid,
            netns=ctr.path,
            ifname=ifname,
            cni_path=CNI_BIN,
            exe=[*view, str(self.dir), self.netns, f"{CNI_BIN}/yogurt"],
        )

    def links(self) -> dict[str, str]:
        """The node's devices: name -> kind ("" for none)."""
        out = subprocess.run(
            ["ip", "-n", self.netns, "-j", "-d", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        return {ln["ifname"]: ln.get("linkinfo", {}).get("info_kind", "") for ln in json.loads(out)}


def write_volumes(node: Node, store: EtcdLab, prefix: str) -> dict[str, Path]:
    """The ConfigMap's and the Secret's files of the DaemonSet's volumes, as the kubelet writes
    them for the pod, into the node's dirs: cluster.json with the lab's endpoints and `prefix`,
    the TLS files the cluster file names with the lab's CA, client certificate and key.  The
    volume name -> its dir."""
    assert store.tls is not None
    config_map = one(CLUSTER / "cluster-config.yaml", "ConfigMap")
    secret = one(CLUSTER / "etcd-client-secret.example.yaml", "Secret")
    pod = daemonset(CLUSTER / "daemonset.yaml")["spec"]["template"]["spec"]
    dirs = {}
    for volume in pod["volumes"]:
        if volume.get("configMap", {}).get("name") == config_map["metadata"]["name"]:
            dirs[volume["name"]] = node.dir / "config"
        elif volume.get("secret", {}).get("secretName") == secret["metadata"]["name"]:
            dirs[volume["name"]] = node.dir / "tls"
    assert sorted(dirs.values()) == [node.dir / "config", node.dir / "tls"], dirs
    for key, text in config_map["data"].items():
        if key == "cluster.json":
            raw = json.loads(text)
            raw.update(endpoints=store.endpoint_urls(), prefix=prefix)
            lab_files = {
                "caFile": store.tls.ca,
                "certFile": store.tls.client_cert,
                "keyFile": store.tls.client_key,
            }
            for field, source in lab_files.items():
                name = Path(raw[field]).name  # the Secret's key, under the secret volume's mountPath
                assert name in secret["stringData"], f"{field}: {name} is not a key of the Secret"
                target = node.dir / "tls" / name
                target.write_bytes(Path(source).read_bytes())
                target.chmod(0o400)
            text = json.dumps(raw)
        (node.dir / "config" / key).write_text(text)
    assert sorted(os.listdir(node.dir / "tls")) == sorted(secret["stringData"]), (
        "a Secret file was not written"
    )
    return dirs


def pod_request(pod: dict[str, Any], nad: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """What Multus hands the delegate for this pod: the NAD's plugin config with the list's
    cniVersion and name, args.cni from cni-args, runtimeConfig.ips from ips; the interface; the address."""
    (request,) = json.loads(pod["metadata"]["annotations"][NETWORKS])
    assert request["name"] == nad["metadata"]["name"]
    conflist = json.loads(nad["spec"]["config"])
    (plugin,) = conflist["plugins"]
    conf = {k: v for k, v in plugin.items() if k != "capabilities"}
    conf.update(cniVersion=conflist["cniVersion"], name=conflist["name"], args={"cni": request["cni-args"]})
    conf["runtimeConfig"] = {"ips": request["ips"]}
    (ip,) = request["ips"]
    return conf, request["interface"], ip.split("/")[0]


def line_ends(node: Node) -> list[str]:
    return [name for name in node.links() if naming.is_ours(name)]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[NodeLab, list[Node]]]:
    with NodeLab(2, devices=False) as made:
        found = [
            Node(n.index, n.netns.name, str(n.underlay), tmp_path / f"node{n.index}").make()
            for n in made.nodes
        ]
        try:
            yield made, found
        finally:
            for node in found:
                node.unmount()
    assert made.leftovers() == []


def test_the_image_in_cluster_mode_carries_a_line_across_two_nodes(
    nodes: tuple[NodeLab, list[Node]], tmp_path: Path
) -> None:
    made, (n0, n1) = nodes
    for node in (n0, n1):  # nothing prepared on the nodes but their underlay
        assert set(node.links()) == {"lo", "under0"}, node.links()
    spec = daemonset(CLUSTER / "daemonset.yaml")["spec"]["template"]["spec"]
    init, agent = container(spec, "install-plugin"), container(spec, "agent")
    nad = one(CLUSTER / "network-attachment.yaml", "NetworkAttachmentDefinition")
    pods = [d for d in documents(CLUSTER / "example-pods.yaml") if d["kind"] == "Pod"]
    assert len(pods) == 2
    requests = [pod_request(pod, nad) for pod in pods]
    line = requests[0][0]["args"]["cni"]["line"]
    context = tmp_path / "context"
    subprocess.run(["bash", str(KUBE / "build-image.sh"), "--stage", str(context)], check=True)

    keys = Keys(f"/yogurt-k8s-{made.tag}")
    # The pods' network namespaces: made before podman's mount namespace, which keeps /run/netns
    # as it is when made (the agents open them there).
    ctrs = [lab.Netns(f"yk8s-{made.tag}-pod{i}") for i in range(2)]
    store = EtcdLab(tls=True, size=1, netns=made.hub.name, host=str(STORE_ADDRESS), etcd=ETCD)
    names = [f"yogurt-agent-{made.tag}-{node.index}" for node in (n0, n1)]
    try:
        for ctr in ctrs:
            ctr.create()
        client = store.start().client()
        volumes = [write_volumes(node, store, keys.prefix) for node in (n0, n1)]
        conflist = {"cniVersion": "1.0.0", "name": f"unused-{made.tag}", "plugins": [{"type": "yogurt"}]}
        with Podman(tmp_path / "podman", conflist, n0.dir / "cni-bin", host_netns=True) as podman:
            podman("build", "--quiet", "-t", IMAGE, str(context))
            for node, dirs, name in zip((n0, n1), volumes, names, strict=True):
                network = f"ns:/run/netns/{node.netns}"
                run = podman(
                    "run",
                    *podman_run_args(spec, init, node.host_paths(), host_pid=False, network=network),
                    IMAGE,
                    *argv(init, env(init, {})),
                    check=False,
                )
                assert run.returncode == 0, f"install step on {node.name}: {run.stdout} {run.stderr}"
                assert sorted(os.listdir(node.dir / "cni-bin")) == ["yogurt", "yogurt-full"]
                # The agent container, as the manifest has it, with the downward API's values.
                environment = env(agent, {"spec.nodeName": node.name, "status.hostIP": node.address})
                command = argv(agent, environment)
                assert f"--node={node.name}" in command and f"--address={node.address}" in command, command
                args = podman_run_args(
                    spec, agent, node.host_paths(), host_pid=False, network=network,
                    volume_dirs=dirs, environment=environment,
                )  # fmt: skip
                podman("run", "-d", "--name", name, *[a for a in args if a != "--rm"], IMAGE, *command)
            for node, name in zip((n0, n1), names, strict=True):
                served = wait_for_agent(podman, name, str(node.state))
                assert served.get("cluster"), f"{node.name}: the agent serves without its cluster: {served}"

            # The agent made the node's wire: WireGuard (wireguard-go here) and the tunnel device.
            for node in (n0, n1):
                links = node.links()
                assert links.get(DEFAULT_WIREGUARD_DEVICE) in ("wireguard", "tun"), links
                assert links.get(DEFAULT_TUNNEL_DEVICE) == "vxlan", links
            kvs, _ = client.get_prefix(keys.nodes())
            assert len(kvs) == 2, f"both nodes registered in etcd under {keys.prefix}: {kvs}"

            # One example pod per node (their anti-affinity), on one line.
            added: list[int] = []
            try:
                for i, (node, ctr, (conf, ifname, _)) in enumerate(
                    zip((n0, n1), ctrs, requests, strict=True)
                ):
                    add = node.plugin("ADD", conf, ctr, f"pod-{i}", ifname)
                    assert add.rc == 0, f"ADD on {node.name}: {add.out} {add.stderr}"
                    added.append(i)
                ips = [ip for _, _, ip in requests]
                logs = "".join(podman("logs", n, check=False).stderr[-2000:] for n in names)
                deadline = time.monotonic() + PING_WITHIN
                while lab.ping(ctrs[0], ips[1], count=1, wait=1) != 1:
                    assert time.monotonic() < deadline, f"no answer across within {PING_WITHIN}s: {logs}"
                assert lab.ping(ctrs[1], ips[0], count=3, wait=2) == 3
                assert lab.ping(ctrs[0], ips[1], count=3, wait=2) == 3
                # Neither node's host reaches either container: not the other node's (no route
                # anywhere), nor its own, even with an address and a route on the line's host end.
                for node, lab_node, own in zip((n0, n1), made.nodes, ips, strict=True):
                    (end,) = line_ends(node)
                    ip_netns = ["ip", "-n", node.netns]
                    subprocess.run([*ip_netns, "addr", "add", "10.219.9.254/32", "dev", end], check=True)
                    subprocess.run([*ip_netns, "route", "add", f"{own}/32", "dev", end], check=True)
                    for ip in ips:
                        assert lab.ping(lab_node.netns, ip, count=2, wait=1) == 0, f"{node.name} reached {ip}"
                    subprocess.run([*ip_netns, "addr", "del", "10.219.9.254/32", "dev", end], check=True)
                assert lab.ping(ctrs[1], ips[0], count=1, wait=2) == 1  # the line itself still passes
                # Both ends claimed in etcd by their nodes' agents, served through the front end.
                kvs, _ = client.get_prefix(keys.line_ends(line))
                assert len(kvs) == 2
                for node in (n0, n1):
                    assert len(line_ends(node)) == 1
                    answer = frontend.info(str(node.state), timeout=30)
                    assert answer is not None and int(str(answer["served"])) >= 1, answer
            finally:
                dels = [
                    (i, (n0, n1)[i].plugin("DEL", requests[i][0], ctrs[i], f"pod-{i}", requests[i][1]))
                    for i in added
                ]
            for i, delete in dels:
                assert delete.rc == 0, f"DEL of pod-{i}: {delete.out} {delete.stderr}"

            # Nothing of the line is left: in etcd, on either node.
            kvs, _ = client.get_prefix(keys.line_ends(line))
            assert kvs == []
            assert client.get(keys.line_vni(line)) is None
            for node in (n0, n1):
                assert line_ends(node) == [], node.links()
                assert Registry(str(node.state)).snapshot() == {}
            assert lab.ping(ctrs[0], requests[1][2], count=1, wait=1) == 0

            # SIGTERM, as the kubelet stops them: a clean exit.
            for name in names:
                podman("stop", "--time", "30", name)
                code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
                assert code == "0", (
                    f"{name} exited {code}: {podman('logs', name, check=False).stderr[-2000:]}"
                )

            # Uninstall: `yogurt leave` on each node, its agent gone, with the agent container's
            # mounts, network and arguments (all but --address, which leave does not take).
            for node, dirs in zip((n0, n1), volumes, strict=True):
                environment = env(agent, {"spec.nodeName": node.name, "status.hostIP": node.address})
                command = argv(agent, environment)
                leave = [command[0], "leave", *(a for a in command[2:] if not a.startswith("--address"))]
                args = podman_run_args(
                    spec, agent, node.host_paths(), host_pid=False, network=f"ns:/run/netns/{node.netns}",
                    volume_dirs=dirs, environment=environment,
                )  # fmt: skip
                run = podman("run", *args, IMAGE, *leave, check=False)
                assert run.returncode == 0, f"leave on {node.name}: {run.stdout} {run.stderr}"
                # wireguard-go ended with the agent's container; leave removed the tunnel device
                # and the nftables table: the node has its underlay alone again.
                assert set(node.links()) == {"lo", "under0"}, (node.links(), run.stdout)
                tables = subprocess.run(
                    ["ip", "netns", "exec", node.netns, "nft", "list", "tables"],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                assert FIREWALL_TABLE not in tables, tables
            kvs, _ = client.get_prefix(keys.all())
            assert kvs == [], f"left in etcd: {[kv.key for kv in kvs]}"
        assert podman.survivors == []
    finally:
        store.close()
        for ctr in ctrs:
            ctr.delete()
