"""packaging/kubernetes/ (node-local lines) and packaging/kubernetes/cluster/ (lines across nodes):
the manifests against the Kubernetes API schema (kubernetes-validate, offline, strict), and what
the schema cannot know: the NetworkAttachmentDefinitions' CNI configs through our own parser, the
example pods' network requests and placement, the cluster file of the ConfigMap through the
agent's parser, the DaemonSets' mounts, and that the agent's arguments name only variables its
environment has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cni_yogurt.cni import attachment, netconf
from cni_yogurt.cni.env import parse_env
from cni_yogurt.cni.errors import CNIError

KUBE = Path(__file__).resolve().parents[2] / "packaging" / "kubernetes"
CLUSTER = KUBE / "cluster"
K8S_VERSION = "1.33.0"  # what the manifests are checked against; they use nothing newer than 1.25
NETWORKS = "k8s.v1.cni.cncf.io/networks"


def documents(directory: Path = KUBE) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str, directory: Path = KUBE) -> list[dict[str, Any]]:
    return [d for d in documents(directory) if d["kind"] == kind]


@pytest.mark.parametrize(
    "doc",
    [
        d
        for directory in (KUBE, CLUSTER)
        for d in documents(directory)
        if "k8s.cni.cncf.io" not in d["apiVersion"]  # a CRD's: no schema (below)
    ],
    ids=lambda d: f"{d['kind']}-{d['metadata']['name']}",
)
def test_manifest_is_valid_for_the_api_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_daemonset() -> None:
    """The check above can fail: a misspelt field and a wrong type are caught."""
    broken = json.loads(json.dumps(of_kind("DaemonSet")[0]))
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(of_kind("DaemonSet")[0]))
    broken["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def delegate_confs(nad: dict[str, Any]) -> list[netconf.NetConf]:
    """The NAD's config as libcni hands each plugin of a conflist to it: with the list's
    cniVersion and name."""
    conf = json.loads(nad["spec"]["config"])
    plugins = conf.get("plugins", [conf])
    return [netconf.parse({**p, "cniVersion": conf["cniVersion"], "name": conf["name"]}) for p in plugins]


def test_the_network_attachment_is_a_yogurt_config_with_the_capabilities() -> None:
    (nad,) = of_kind("NetworkAttachmentDefinition")
    (conf,) = delegate_confs(nad)
    assert conf.type == "yogurt" and conf.name == nad["metadata"]["name"]
    assert conf.ipam is not None and conf.ipam.type == "host-local"
    assert conf.raw["capabilities"] == {"ips": True, "mac": True}


def pod_requests(directory: Path) -> tuple[netconf.NetConf, set[tuple[str, str]], list[Any]]:
    """The directory's NAD config, and the lines and addresses its example pods ask of it, as
    the plugin reads what Multus hands it (cni-args as args.cni, ips as runtimeConfig.ips)."""
    (nad,) = of_kind("NetworkAttachmentDefinition", directory)
    (conf,) = delegate_confs(nad)
    env = parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "net1",
                     "CNI_PATH": "/opt/cni/bin"})  # fmt: skip
    lines: set[tuple[str, str]] = set()
    addresses: list[Any] = []
    pods = of_kind("Pod", directory)
    assert len(pods) == 2
    for pod in pods:
        (request,) = json.loads(pod["metadata"]["annotations"][NETWORKS])
        assert request["name"] == nad["metadata"]["name"]
        args = {"cni": request["cni-args"]}
        runtime = {"ips": request["ips"]}
        lines.add(attachment.line_for(args, env.args, conf.line, conf.name))
        addresses += attachment.requested_ips(args, runtime)
    return conf, lines, addresses


def test_the_example_pods_share_a_line_with_addresses_of_their_own() -> None:
    conf, lines, addresses = pod_requests(KUBE)
    assert lines == {("call-1", "args.cni.line")}
    ranges = [r["subnet"] for rs in conf.ipam.raw["ranges"] for r in rs] if conf.ipam else []
    assert len(set(addresses)) == 2 and all(str(a.network) in ranges for a in addresses)


def test_the_daemonset_installs_then_runs_the_agent_with_the_node_s_paths() -> None:
    (ds,) = of_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] and spec["hostPID"]
    (init,) = spec["initContainers"]
    (agent,) = spec["containers"]
    assert init["command"][0] == "/usr/local/bin/install-cni"
    assert agent["command"] == ["/usr/local/bin/yogurt", "agent", "--state-dir", "/run/cni-yogurt",
                                "--bpffs-dir", "/sys/fs/bpf/cni-yogurt"]  # fmt: skip
    assert agent["securityContext"]["privileged"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounted = {volumes[m["name"]]: m for m in agent["volumeMounts"] if m["name"] in volumes}
    for path in ("/sys/fs/bpf", "/run/cni-yogurt", "/opt/cni/bin", "/etc/cni/net.d", "/run/netns"):
        assert path in mounted and mounted[path]["mountPath"] == path, path
    assert mounted["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert {volumes[m["name"]] for m in init["volumeMounts"]} == {"/opt/cni/bin"}
    assert init["image"] == agent["image"]


# -- cluster mode (packaging/kubernetes/cluster/) -------------------------------------------------


def cluster_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster DaemonSet's pod spec and its agent container."""
    (ds,) = of_kind("DaemonSet", CLUSTER)
    spec = ds["spec"]["template"]["spec"]
    (agent,) = spec["containers"]
    return spec, agent


def mounts(
    spec: dict[str, Any], container: dict[str, Any]
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath -> (the mount, its volume)."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container["volumeMounts"]}


def test_the_cluster_network_attachment_spans_nodes_with_requested_addresses() -> None:
    conf, lines, addresses = pod_requests(CLUSTER)
    assert conf.type == "yogurt" and conf.cluster
    assert conf.ipam is None and conf.mtu is None  # addresses from the pods; the MTU from the agent
    assert conf.raw["capabilities"]["ips"] is True
    assert lines == {("across-1", "args.cni.line")}
    assert len(set(addresses)) == 2 and len({a.network for a in addresses}) == 1


def test_the_cluster_example_pods_keep_off_each_other_s_node() -> None:
    pods = of_kind("Pod", CLUSTER)
    for pod in pods:
        affinity = pod["spec"]["affinity"]
        assert "podAffinity" not in affinity
        (term,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        # The term selects every pod of the line, this one's partner included.
        assert all(
            term["labelSelector"]["matchLabels"].items() <= p["metadata"]["labels"].items() for p in pods
        )


def test_the_cluster_daemonset_replaces_the_node_local_one_with_the_same_install_step() -> None:
    (local,) = of_kind("DaemonSet")
    (ds,) = of_kind("DaemonSet", CLUSTER)
    assert (ds["metadata"]["name"], ds["metadata"]["namespace"]) == (
        local["metadata"]["name"],
        local["metadata"]["namespace"],
    )
    spec, agent = cluster_pod()
    assert spec["initContainers"] == local["spec"]["template"]["spec"]["initContainers"]
    assert spec["hostNetwork"] and agent["securityContext"]["privileged"]


def test_the_agent_s_arguments_name_only_its_environment_from_the_downward_api() -> None:
    from cni_yogurt.cli import _parser

    _, agent = cluster_pod()
    env = {e["name"]: e for e in agent["env"]}
    words = agent["command"] + agent["args"]
    referenced = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(words)))
    assert referenced == {"NODE_NAME", "HOST_IP"} and referenced <= env.keys()
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert words[0] == "/usr/local/bin/yogurt"
    args = _parser().parse_args([w.replace("$(NODE_NAME)", "node-a").replace("$(HOST_IP)", "10.0.0.11")
                                 for w in words[1:]])  # fmt: skip
    assert (args.cmd, args.node, args.address) == ("agent", "node-a", "10.0.0.11")
    assert (args.state_dir, args.bpffs_dir) == ("/run/cni-yogurt", "/sys/fs/bpf/cni-yogurt")
    assert args.cluster


def test_the_configmap_s_cluster_file_is_the_agent_s_with_the_secret_s_files() -> None:
    from cni_yogurt.cli import _parser
    from cni_yogurt.cluster import config

    spec, agent = cluster_pod()
    (cm,) = of_kind("ConfigMap", CLUSTER)
    (secret,) = of_kind("Secret", CLUSTER)
    found = mounts(spec, agent)
    args = _parser().parse_args(agent["command"][1:] + agent["args"])
    # --cluster names the ConfigMap's key, where its volume is mounted.
    mount, volume = found[str(Path(args.cluster).parent)]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    raw = json.loads(cm["data"][Path(args.cluster).name])
    assert "node" not in raw and "address" not in raw  # the downward API's, per node
    cfg = config.parse({**raw, "node": "node-a", "address": "10.0.0.11"}, check_files=False)
    assert cfg.tls and cfg.wireguard_range
    # The TLS files are the Secret's keys, where its volume is mounted.
    for path in (cfg.ca_file, cfg.cert_file, cfg.key_file):
        mount, volume = found[str(Path(path).parent)]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"] and mount["readOnly"]
        assert Path(path).name in secret["stringData"], path
    # What must outlive the agent, on the node: dataDir (the key), wireguard-go's sockets.
    for path, host in ((cfg.data_dir, "/var/lib/cni-yogurt"), ("/var/run/wireguard", "/run/wireguard")):
        assert found[path][1]["hostPath"]["path"] == host, path
    with pytest.raises(CNIError):  # the check can fail: without a node name the file is incomplete
        config.parse(raw, check_files=False)
