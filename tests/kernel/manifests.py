"""The DaemonSet's pod of packaging/kubernetes/ as a container engine runs it, read from the
manifest files (so the image tests cannot drift from them): `podman run` options for one of its
containers (host namespaces, privilege, volumes mapped to a test's stand-ins), its environment with
the downward API's fields given, and its arguments with `$(VAR)` expanded as the kubelet does."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import yaml
from podman import Podman

from cni_yogurt.agent import frontend

TOP = Path(__file__).resolve().parents[2]
KUBE = TOP / "packaging" / "kubernetes"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(path: Path, kind: str) -> dict[str, Any]:
    """The one document of `kind` in the file."""
    (doc,) = [d for d in documents(path) if d.get("kind") == kind]
    return doc


def daemonset(path: Path = KUBE / "daemonset.yaml") -> dict[str, Any]:
    return one(path, "DaemonSet")


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """The pod spec's container (or init container) `name`."""
    return next(c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name)


def env(container: dict[str, Any], fields: dict[str, str]) -> dict[str, str]:
    """The container's environment: plain values, and the downward API's `fieldRef`s from
    `fields` (fieldPath -> what the kubelet would put there, e.g. spec.nodeName); any other
    source is not mapped here, and fails."""
    found = {}
    for var in container.get("env", []):
        if "value" in var:
            found[var["name"]] = str(var["value"])
            continue
        path = var["valueFrom"]["fieldRef"]["fieldPath"]
        assert path in fields, f"env {var['name']}: no stand-in for {path}"
        found[var["name"]] = fields[path]
    return found


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, environment: dict[str, str]) -> str:
    """The kubelet's expansion of command and args: $(VAR) becomes the container's VAR; a
    reference to a variable it does not have stays as written; $$ is a $."""

    def one_reference(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "$"
        return environment.get(name, m.group(0))

    return _REFERENCE.sub(one_reference, text)


def argv(container: dict[str, Any], environment: dict[str, str]) -> list[str]:
    """What the container runs: its command, then its args, each expanded."""
    return [expand(a, environment) for a in [*container.get("command", []), *container.get("args", [])]]


def podman_run_args(
    pod: dict[str, Any],
    container: dict[str, Any],
    host_paths: dict[str, Path],
    host_pid: bool = True,
    *,
    network: str = "host",
    volume_dirs: dict[str, Path] | None = None,
    environment: dict[str, str] | None = None,
) -> list[str]:
    """`podman run` options for one container of the DaemonSet's pod: its host namespaces,
    privilege and volume mounts (a hostPath in `host_paths` mapped to a scratch dir; a configMap
    or secret volume to the dir in `volume_dirs` under its name, where the test wrote its files).
    `host_pid=False`: the node's PID namespace is not joined even if the pod asks for it.
    `network`: what the node's network is (`ns:/run/netns/<node>` for a lab node).
    `environment`: the container's environment (`env`), passed with -e."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = ["--rm"]
    if pod.get("hostNetwork"):
        args += ["--network", network]
    if pod.get("hostPID") and host_pid:
        args += ["--pid", "host"]
    security = container.get("securityContext", {})
    if security.get("privileged"):
        args.append("--privileged")
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for name, value in (environment or {}).items():
        args += ["-e", f"{name}={value}"]
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if volume.get("emptyDir", {}).get("medium") == "Memory":
            args += ["--tmpfs", mount["mountPath"]]
            continue
        if "configMap" in volume or "secret" in volume:
            source = (volume_dirs or {}).get(mount["name"])
            assert source is not None, f"volume {mount['name']}: no dir with its files"
            args += ["-v", f"{source}:{mount['mountPath']}:ro"]
            continue
        assert "hostPath" in volume, f"{mount['name']}: only hostPath, configMap, secret volumes are mapped"
        source = host_paths.get(volume["hostPath"]["path"])
        assert source is not None, f"{volume['hostPath']['path']} has no scratch stand-in"
        args += ["-v", f"{source}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")]
    return args


def wait_for_agent(podman: Podman, name: str, state_dir: str, timeout: float = 180) -> dict[str, Any]:
    """Until the agent in container `name` answers on <state_dir>/agent.sock (it compiles and
    loads the programs first: bcc, in the container)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = frontend.info(state_dir, timeout=30)
        if found is not None:
            return found
        if podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip() != "true":
            logs = podman("logs", name, check=False)
            raise AssertionError(f"the agent container ended: {logs.stdout} {logs.stderr}")
        time.sleep(0.5)
    logs = podman("logs", name, check=False)
    raise AssertionError(f"the agent did not serve within {timeout}s: {logs.stderr}")
