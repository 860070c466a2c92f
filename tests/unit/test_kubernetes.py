"""packaging/kubernetes/: the manifests against the Kubernetes API schema (kubernetes-validate,
offline, strict), and what the schema cannot know: the NetworkAttachmentDefinition's CNI config
through our own parser, the example pods' network requests, the DaemonSet's mounts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cni_yogurt.cni import attachment, netconf
from cni_yogurt.cni.env import parse_env

KUBE = Path(__file__).resolve().parents[2] / "packaging" / "kubernetes"
K8S_VERSION = "1.33.0"  # what the manifests are checked against; they use nothing newer than 1.25
NETWORKS = "k8s.v1.cni.cncf.io/networks"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


@pytest.mark.parametrize(
    "doc",
    [d for d in documents() if "k8s.cni.cncf.io" not in d["apiVersion"]],  # a CRD's: no schema (below)
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


def test_the_example_pods_share_a_line_with_addresses_of_their_own() -> None:
    (nad,) = of_kind("NetworkAttachmentDefinition")
    (conf,) = delegate_confs(nad)
    env = parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "net1",
                     "CNI_PATH": "/opt/cni/bin"})  # fmt: skip
    lines, addresses = set(), []
    pods = of_kind("Pod")
    assert len(pods) == 2
    for pod in pods:
        (request,) = json.loads(pod["metadata"]["annotations"][NETWORKS])
        assert request["name"] == nad["metadata"]["name"]
        # What Multus hands the delegate: cni-args as args.cni, ips as runtimeConfig.ips.
        args = {"cni": request["cni-args"]}
        runtime = {"ips": request["ips"]}
        lines.add(attachment.line_for(args, env.args, conf.line, conf.name))
        addresses += attachment.requested_ips(args, runtime)
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
