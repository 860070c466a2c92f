"""IPAM delegation (SPEC section 4): exec the plugin named by `ipam.type`.

The delegate gets our environment with CNI_COMMAND set to the verb and the
very stdin we got; its stderr goes straight to ours; its error JSON is
passed on to the runtime unchanged.
"""

from __future__ import annotations

import copy
import ctypes
import fcntl
import functools
import ipaddress
import json
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

from cni_yogurt.cni import version as versions
from cni_yogurt.cni.attachment import K8S_ARGS
from cni_yogurt.cni.env import CniEnv
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.netconf import OUR_ARGS, NetConf
from cni_yogurt.cni.result import Result, parse_result

# What each delegate answered to VERSION, by its file's identity (an upgraded plugin is asked
# again). An exec'd plugin asks at most once anyway; the node agent serves many calls in one
# process, and so skips the refused call and the VERSION exec that an older delegate (Debian 12's
# host-local stops at 1.0.0) costs every 1.1.0 config: two of its three execs per ADD.
_KNOWN_VERSIONS: dict[tuple[str, int, int, int], list[str]] = {}


def _identity(plugin: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(plugin)
    except OSError:
        return None
    return (plugin, st.st_ino, st.st_size, st.st_mtime_ns)


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


PR_SET_PDEATHSIG = 1
SETPRIV = ("/usr/bin/setpriv", "/bin/setpriv")  # util-linux >= 2.33 has --pdeathsig


def _dies_with_caller(caller: int, prctl: Callable[..., int]) -> None:
    """In the delegate's process, before its exec: SIGKILL when the thread that ran it dies."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != caller:  # the caller died before the signal was asked for
        os._exit(1)


def _spawn_args(plugin: str) -> tuple[list[str], dict[str, Any]]:
    """How to exec a delegate so that it dies with the thread that runs it.

    The node agent runs IPAM beside the device work; killed -9 mid-ADD, it must not leave a
    host-local behind that writes its lease after the runtime's retry has cleaned up.  setpriv
    asks for that signal in its own process and execs the plugin, so Python keeps its vfork
    (≈ 1 ms); a preexec function needs a real fork of the caller, ≈ 10 ms for the agent's
    ≈ 150 MB, which is what a node without setpriv pays."""
    for setpriv in SETPRIV:
        if os.access(setpriv, os.X_OK):
            return [setpriv, "--pdeathsig", "KILL", "--", plugin], {}
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    return [plugin], {"preexec_fn": functools.partial(_dies_with_caller, os.getpid(), prctl)}


def exec_delegate(plugin: str, command: str, environ: Mapping[str, str], stdin: bytes) -> bytes:
    env = dict(environ)
    env["CNI_COMMAND"] = command
    argv, dies_with_us = _spawn_args(plugin)
    try:
        proc = subprocess.run(
            argv, input=stdin, stdout=subprocess.PIPE, env=env, check=False, timeout=60, **dies_with_us
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CNIError(Code.IPAM_FAILED, f"cannot run IPAM plugin {plugin}", str(exc)) from exc
    if proc.returncode != 0:
        raise _delegate_error(plugin, command, proc.stdout, proc.returncode)
    answer: bytes = proc.stdout
    return answer


def _delegate_error(plugin: str, command: str, stdout: bytes, returncode: int) -> CNIError:
    try:
        obj = json.loads(stdout)
        return CNIError(int(obj["code"]), str(obj.get("msg", "")), str(obj.get("details", "")))
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError):  # Overflow: "code": 1e999
        detail = stdout.decode(errors="replace").strip()[:500]
        return CNIError(
            Code.IPAM_FAILED, f"IPAM plugin {plugin} {command} failed (exit {returncode})", detail
        )


def _without_our_args(environ: Mapping[str, str]) -> dict[str, str]:
    """The delegate's env: CNI_ARGS minus the keys meant for us, which host-local and
    friends would refuse as unknown; minus the K8S_POD_* and MAC keys we accept without
    IgnoreUnknown too, unless the runtime sent IgnoreUnknown (as CRI runtimes do).  IP
    stays: host-local reads it."""
    env = dict(environ)
    if "CNI_ARGS" in env:
        pairs = [p for p in env["CNI_ARGS"].split(";") if p]
        ignore = any(k == "IgnoreUnknown" and v.lower() in ("1", "true") for k, _, v in map(_pair, pairs))
        drop = OUR_ARGS if ignore else OUR_ARGS | K8S_ARGS | {"MAC"}
        env["CNI_ARGS"] = ";".join(p for p in pairs if p.partition("=")[0] not in drop)
    return env


def _pair(item: str) -> tuple[str, str, str]:
    return item.partition("=")


def _semver(value: str) -> bool:
    try:
        versions.parse(value)
    except ValueError:
        return False
    return True


class IPAM:
    """The IPAM delegate of one invocation.

    Delegates may speak an older spec than the config (Debian 12's host-local
    stops at 1.0.0).  When one answers "incompatible version", we ask for its
    VERSION and repeat the call in the newest version both understand; 1.1.0
    added only optional result fields and the GC/STATUS verbs, which an older
    delegate simply does not get.
    """

    def __init__(self, conf: NetConf, env: CniEnv, environ: Mapping[str, str], stdin: bytes) -> None:
        assert conf.ipam is not None
        self.type = conf.ipam.type
        self._search_path = env.path
        self._environ = _without_our_args(environ)
        self._stdin = stdin

    def _run(self, command: str) -> bytes | None:
        plugin = find_plugin(self.type, self._search_path)
        known = _KNOWN_VERSIONS.get(_identity(plugin) or ("", 0, 0, 0))
        wanted = _config_version(self._stdin)
        if known is not None and wanted is not None and wanted not in known:
            # It refused this version before: hand the call down at once.
            refusal = CNIError(Code.INCOMPATIBLE_VERSION, f"IPAM plugin {self.type} does not speak {wanted}")
            stdin = self._downgraded_stdin(plugin, command, refusal)
            return None if stdin is None else exec_delegate(plugin, command, self._environ, stdin)
        try:
            return exec_delegate(plugin, command, self._environ, self._stdin)
        except CNIError as err:
            if err.code != Code.INCOMPATIBLE_VERSION:
                raise
            stdin = self._downgraded_stdin(plugin, command, err)
            if stdin is None:
                return None
            return exec_delegate(plugin, command, self._environ, stdin)

    def _supported_versions(self, plugin: str) -> list[str]:
        identity = _identity(plugin)
        if identity is not None and identity in _KNOWN_VERSIONS:
            return _KNOWN_VERSIONS[identity]
        raw = exec_delegate(plugin, "VERSION", self._environ, b"")
        try:
            info = json.loads(raw)
            assert isinstance(info, dict) and isinstance(info.get("supportedVersions"), list)
        except (ValueError, RecursionError, AssertionError) as exc:
            raise CNIError(
                Code.IPAM_FAILED, f"IPAM plugin {self.type} answered VERSION with garbage", str(exc)
            ) from exc
        supported = [str(v) for v in info["supportedVersions"]]
        if identity is not None:
            _KNOWN_VERSIONS[identity] = supported
        return supported

    def _downgraded_stdin(self, plugin: str, command: str, refusal: CNIError) -> bytes | None:
        conf = json.loads(self._stdin)
        wanted = str(conf["cniVersion"])
        supported = self._supported_versions(plugin)
        common = [v for v in supported if v in versions.SUPPORTED_VERSIONS and versions.at_least(wanted, v)]
        best = max(common, key=versions.parse, default=None)
        if best is None:
            raise CNIError(
                Code.INCOMPATIBLE_VERSION,
                f"IPAM plugin {self.type} speaks no version we do",
                f"it supports {supported}, config is {wanted}",
            )
        if best == wanted:
            raise refusal  # it speaks our version: the refusal was about something else
        if not versions.at_least(best, versions.VERB_SINCE[command]):
            return None  # e.g. GC for a delegate older than 1.1.0: nothing to forward
        conf["cniVersion"] = best
        return json.dumps(conf).encode()

    def add(self) -> Result:
        out = self._run("ADD") or b""
        try:
            obj = json.loads(out)
        except (ValueError, RecursionError) as exc:
            raise CNIError(Code.IPAM_FAILED, f"IPAM plugin {self.type} returned bad JSON", str(exc)) from exc
        try:
            return parse_result(obj, f"{self.type} result")
        except CNIError as err:
            # A malformed result is the delegate's failure, not a decode failure of our stdin.
            raise CNIError(Code.IPAM_FAILED, err.msg, err.details) from err

    def delete(self) -> None:
        self._run("DEL")
        self._mend()

    def release(self, container_id: str, ifname: str) -> None:
        """DEL for another attachment than this invocation's: what GC owes an end it removes,
        since a delegate older than 1.1.0 (Debian 12's host-local) has no GC of its own."""
        other = copy.copy(self)
        other._environ = {
            **self._environ,
            "CNI_CONTAINERID": container_id,
            "CNI_IFNAME": ifname,
            "CNI_NETNS": "",
            "CNI_ARGS": "",
        }
        other._run("DEL")
        other._mend()

    def _mend(self) -> None:
        if self.type == "host-local":
            mend_host_local(self._stdin)

    def check(self) -> None:
        self._run("CHECK")

    def gc(self) -> None:
        self._run_if_known("GC")

    def status(self) -> None:
        self._run_if_known("STATUS")

    def _run_if_known(self, command: str) -> None:
        """GC and STATUS only reach delegates that know them: an older plugin
        does not answer "unknown verb" but fails on missing ADD variables."""
        plugin = find_plugin(self.type, self._search_path)
        since = versions.VERB_SINCE[command]
        if any(versions.at_least(v, since) for v in self._supported_versions(plugin) if _semver(v)):
            self._run(command)


HOST_LOCAL_DATA_DIR = "/var/lib/cni/networks"  # host-local's default ipam.dataDir


def mend_host_local(stdin: bytes) -> list[str]:
    """Remove the empty lease files of a host-local killed between creating one and writing its
    container's id into it — as the delegate dies with the node agent, killed mid-ADD (see
    _spawn_args): a lease no DEL can release, its address lost to the network for good.  Only
    under host-local's own lock, which it holds for the whole of an allocation, so a lease being
    written is never taken for one left empty; if another delegate holds the lock now, the next
    DEL or GC mends it.  The addresses freed."""
    try:
        conf = json.loads(stdin)
        ipam_conf = conf.get("ipam") or {}
        directory = os.path.join(str(ipam_conf.get("dataDir") or HOST_LOCAL_DATA_DIR), str(conf["name"]))
        fd = os.open(os.path.join(directory, "lock"), os.O_RDONLY)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError):
        return []
    freed = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with os.scandir(directory) as entries:
            for entry in entries:
                if (
                    _is_address(entry.name)
                    and entry.is_file(follow_symlinks=False)
                    and not entry.stat().st_size
                ):
                    os.unlink(entry.path)
                    freed.append(entry.name)
    except OSError:  # held by a delegate now (BlockingIOError), or the directory went
        pass
    finally:
        os.close(fd)  # and with it the lock
    return freed


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _config_version(stdin: bytes) -> str | None:
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):
        return None
    return version if isinstance(version, str) else None
