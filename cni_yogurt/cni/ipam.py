"""IPAM delegation (SPEC section 4): exec the plugin named by `ipam.type`.

The delegate gets our environment with CNI_COMMAND set to the verb and the
very stdin we got; its stderr goes straight to ours; its error JSON is
passed on to the runtime unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping

from cni_yogurt.cni.env import CniEnv
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.netconf import NetConf
from cni_yogurt.cni.result import Result, parse_result


def find_plugin(name: str, search_path: tuple[str, ...]) -> str:
    for directory in search_path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(
        Code.INVALID_CONFIG,
        f'failed to find plugin "{name}" in path {list(search_path)}',
        "ipam.type names a plugin that is not in CNI_PATH",
    )


def exec_delegate(
    plugin: str, command: str, environ: Mapping[str, str], stdin: bytes
) -> bytes:
    env = dict(environ)
    env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run(
            [plugin], input=stdin, stdout=subprocess.PIPE, env=env, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CNIError(Code.IPAM_FAILED, f"cannot run IPAM plugin {plugin}", str(exc)) from exc
    if proc.returncode != 0:
        raise _delegate_error(plugin, command, proc.stdout, proc.returncode)
    return proc.stdout


def _delegate_error(plugin: str, command: str, stdout: bytes, returncode: int) -> CNIError:
    try:
        obj = json.loads(stdout)
        return CNIError(int(obj["code"]), str(obj.get("msg", "")), str(obj.get("details", "")))
    except (ValueError, KeyError, TypeError):
        detail = stdout.decode(errors="replace").strip()[:500]
        return CNIError(
            Code.IPAM_FAILED, f"IPAM plugin {plugin} {command} failed (exit {returncode})", detail
        )


class IPAM:
    """The IPAM delegate of one invocation."""

    def __init__(self, conf: NetConf, env: CniEnv, environ: Mapping[str, str], stdin: bytes) -> None:
        assert conf.ipam is not None
        self.type = conf.ipam.type
        self._search_path = env.path
        self._environ = environ
        self._stdin = stdin

    def _run(self, command: str) -> bytes:
        plugin = find_plugin(self.type, self._search_path)
        return exec_delegate(plugin, command, self._environ, self._stdin)

    def add(self) -> Result:
        out = self._run("ADD")
        try:
            obj = json.loads(out)
        except ValueError as exc:
            raise CNIError(Code.IPAM_FAILED, f"IPAM plugin {self.type} returned bad JSON", str(exc)) from exc
        return parse_result(obj, f"{self.type} result")

    def delete(self) -> None:
        self._run("DEL")

    def check(self) -> None:
        self._run("CHECK")

    def gc(self) -> None:
        self._run("GC")

    def status(self) -> None:
        self._run("STATUS")
