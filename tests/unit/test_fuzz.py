"""Hostile input, fuzzed: the protocol layer (cni/) under arbitrary environments and stdin, in-process.

Whatever comes in, `skel.run` answers the way the spec says a plugin answers: one JSON object on
stdout (nothing at all for a successful DEL/CHECK/STATUS/GC), an error with a code we document and a
supported cniVersion, a non-zero exit, no exception out of it and no traceback anywhere but the log
file.  Parsing never ends in 999 (that is for the unexpected, and nothing about input is).  The
oracles for *which* code are the spec's own rules (the kernel's dev_valid_name, the container id
grammar, "stdin is a JSON object"), not the parser's code.

Derandomized, so CI sees the same examples every run: YOGURT_FUZZ_RANDOM=1 explores new ones,
YOGURT_FUZZ_SCALE=10 runs ten times as many.
"""

from __future__ import annotations

import io
import json
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_yogurt.cni import env as cni_env
from cni_yogurt.cni import ipam, netconf, skel
from cni_yogurt.cni.errors import CNIError, Code
from cni_yogurt.cni.result import Interface, IPConfig, Result, parse_result
from cni_yogurt.cni.version import LATEST, SUPPORTED_VERSIONS, VERB_SINCE, at_least

VERBS = cni_env.VERBS
KNOWN_CODES = {c.value for c in Code}
# What parsing env + stdin may answer: the version, env, decode and config codes.
PARSE_CODES = {Code.INCOMPATIBLE_VERSION, Code.INVALID_ENV, Code.DECODE_FAILURE, Code.INVALID_CONFIG}

_SCALE = float(os.environ.get("YOGURT_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * _SCALE)),
        deadline=None,
        derandomize=os.environ.get("YOGURT_FUZZ_RANDOM") != "1",
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- strategies ----------------------------------------------------------------

NASTY = [
    "",
    "eth0",
    "lo",
    ".",
    "..",
    "a/b",
    "../../etc/passwd",
    "a:b",
    "a b",
    " ",
    "\t",
    "x" * 15,
    "x" * 16,
    "é" * 7 + "a",
    "é" * 8,
    "\u00a0",
    "\u2028",
    "eth0\n",
    "c" * 1000,
    "-lead",
    "ctr-1",
    "\udcff",
    "et\udc80h0",
    "\u202e0hte",
    "💥",
    "=",
    ";",
    ";;=;",
    "IgnoreUnknown=1",
    "IgnoreUnknown=true;K8S_POD_NAME=x",
    "YOGURT_LINE=a/b",
    "YOGURT_LINE=../x",
    "YOGURT_LINE=",
    "/proc/self/ns/net",
    "/dev/null",
    "/",
]

# Environment values as os.environ makes them: any bytes but NUL, decoded with surrogate escapes.
env_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.binary(max_size=40).filter(lambda b: b"\0" not in b).map(os.fsdecode),
)

CNI_VARS = {
    "CNI_CONTAINERID": "ctr-1",
    "CNI_NETNS": "/var/run/netns/ctr-1",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
    "CNI_ARGS": "",
}


@st.composite
def environs(draw: st.DrawFn, command: str | None = None, hostile: bool = True) -> dict[str, str]:
    """CNI_COMMAND plus each CNI_* variable valid, missing or (if hostile) anything at all."""
    env: dict[str, str] = {}
    cmd = draw(st.one_of(st.sampled_from(VERBS), st.none(), env_text)) if command is None else command
    if cmd is not None:
        env["CNI_COMMAND"] = cmd
    for name, valid in CNI_VARS.items():
        how = draw(st.sampled_from(["valid", "missing", "hostile"] if hostile else ["valid", "missing"]))
        if how == "valid":
            env[name] = valid
        elif how == "hostile":
            env[name] = draw(env_text)
    if hostile:
        env.update(draw(st.dictionaries(env_text, env_text, max_size=3)))
    return env


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(NASTY),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)

versions_any = st.one_of(
    st.sampled_from(SUPPORTED_VERSIONS),
    st.sampled_from(["0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.1", "1.1.0.0", "v1.1.0", "", "01.1.0", "1.1.0 "]),
    json_scalars,
)

ipam_values = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["host-local", "static", "..", ".", "a/b", ""])}),
    st.fixed_dictionaries({"type": json_scalars}),
    json_values,
)


@st.composite
def results(draw: st.DrawFn) -> Any:
    """Results and things shaped almost like one: prevResult, IPAM answers."""
    iface = st.fixed_dictionaries(
        {"name": st.one_of(st.text(max_size=8), json_scalars)},
        optional={
            "mac": json_scalars,
            "sandbox": json_scalars,
            "mtu": json_scalars,
            "socketPath": json_scalars,
            "pciID": json_scalars,
        },
    )
    address = st.one_of(
        st.sampled_from(["10.1.0.5/24", "fd00::5/64", "10.1.0.5", "300.1.1.1/24", "::/0", "10.0.0.0/33"]),
        json_scalars,
    )
    ip = st.fixed_dictionaries(
        {"address": address},
        optional={
            "gateway": st.one_of(st.sampled_from(["10.1.0.1", "fd00::1", "nope"]), json_scalars),
            "interface": st.one_of(st.integers(-2, 4), json_scalars),
            "version": json_scalars,
        },
    )
    route = st.fixed_dictionaries(
        {"dst": address},
        optional={
            "gw": st.one_of(st.sampled_from(["10.1.0.1", "fd00::1"]), json_scalars),
            **{k: st.one_of(st.integers(-1, 2**33), json_scalars) for k in ("mtu", "priority", "table")},
        },
    )
    dns = st.fixed_dictionaries(
        {},
        optional={
            "nameservers": st.one_of(st.lists(st.text(max_size=8), max_size=3), json_values),
            "domain": json_scalars,
            "search": st.lists(st.text(max_size=8), max_size=3),
            "options": json_values,
        },
    )
    shaped = st.fixed_dictionaries(
        {},
        optional={
            "cniVersion": versions_any,
            "interfaces": st.one_of(st.lists(iface, max_size=3), json_values),
            "ips": st.one_of(st.lists(ip, max_size=3), json_values),
            "routes": st.one_of(st.lists(route, max_size=3), json_values),
            "dns": st.one_of(dns, json_values),
        },
    )
    return draw(st.one_of(shaped, shaped, json_values))


@st.composite
def confs(draw: st.DrawFn, log_dir: Path, version: Any = None) -> dict[str, Any]:
    """A network config: valid to start with, then keys changed, dropped or added at random.

    `logFile` stays under `log_dir` (it is the one key the dispatcher acts on), hostile all the same.
    """
    conf: dict[str, Any] = {
        "cniVersion": draw(versions_any) if version is None else version,
        "name": "fuzznet",
        "type": "yogurt",
        "stateDir": str(log_dir / "state"),
        "bpffsDir": str(log_dir / "bpffs"),
    }
    mutations: dict[str, st.SearchStrategy[Any]] = {
        "name": st.one_of(st.sampled_from(NASTY), json_scalars),
        "type": json_scalars,
        "ipam": ipam_values,
        "cniVersions": st.one_of(st.lists(versions_any, max_size=3), json_values),
        "dns": json_values,
        "args": json_values,
        "runtimeConfig": json_values,
        "prevResult": results(),
        "line": st.one_of(st.sampled_from(NASTY), json_scalars),
        "bpffsDir": json_scalars,
        "stateDir": json_scalars,
        "mtu": st.one_of(st.integers(0, 70000), json_scalars),
        "mode": st.one_of(st.sampled_from(["auto", "netkit", "veth", "Veth", ""]), json_scalars),
        "vethAttach": st.one_of(st.sampled_from(["auto", "tcx", "tc", "xdp"]), json_scalars),
        "linkState": st.one_of(st.sampled_from(["up", "down", "Down", ""]), json_scalars),
        "cni.dev/valid-attachments": st.one_of(
            st.lists(
                st.fixed_dictionaries({"containerID": json_scalars, "ifname": json_scalars}), max_size=3
            ),
            json_values,
        ),
        "cni.dev/attachments": json_values,
    }
    for key in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=4, unique=True)):
        conf[key] = draw(mutations[key])
    for key in draw(st.lists(st.sampled_from(["name", "type", "cniVersion"]), max_size=1)):
        conf.pop(key, None)
    conf.update(draw(st.dictionaries(st.text(max_size=12), json_values, max_size=3)))
    log_name = draw(
        st.one_of(
            st.just("log.jsonl"), st.text(max_size=12), st.sampled_from([*NASTY, "a\0b", "\ud800", "x" * 300])
        )
    )
    conf["logFile"] = draw(
        st.sampled_from([str(log_dir / "log.jsonl"), "", str(log_dir), str(log_dir / "sub" / "x.log")])
        | st.just(str(log_dir / log_name.replace("/", "_")))
    )
    return conf


def encoded(conf: Any) -> bytes:
    return json.dumps(conf).encode("utf-8", "surrogatepass")


raw_stdin = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b" ",
            b"null",
            b"[]",
            b"{}",
            b"\xef\xbb\xbf{}",
            b'{"cniVersion": "1.1.0"',
            b'{"cniVersion": "1.1.0", "name": "\xff\xfe", "type": "yogurt"}',
            b'{"cniVersion": NaN, "name": "n", "type": "t"}',
            b'{"cniVersion": "1.1.0", "name": "n", "type": "t", "mtu": 1e999}',
            b'{"cniVersion": "1.1.0", "name": "n", "type": "t", "mtu": ' + b"9" * 5000 + b"}",
            b'{"cniVersion": "1.1.0", "name": "n", "type": "t", "name": 7}',
            b'{"cniVersion": "1.1.0", "name": "\\ud800", "type": "t"}',
        ]
    ),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    json_values.map(encoded),
)


# -- running the dispatcher --------------------------------------------------


@dataclass
class Verbs:
    """Stand-in verbs that succeed (or raise `fail`), recording each call."""

    fail: BaseException | None = None
    calls: list[str] = field(default_factory=list)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail is not None:
            raise self.fail

    def add(self, inv: skel.Invocation) -> Result:
        self._call("ADD")
        return Result([Interface("yg0", sandbox=inv.env.netns)], [IPConfig(ip_interface("10.99.0.2/24"), 0)])

    def delete(self, inv: skel.Invocation) -> None:
        self._call("DEL")

    def check(self, inv: skel.Invocation) -> None:
        self._call("CHECK")

    def status(self, inv: skel.Invocation) -> None:
        self._call("STATUS")

    def gc(self, inv: skel.Invocation) -> None:
        self._call("GC")


@dataclass
class Answer:
    rc: int
    stdout: str
    stderr: str
    out: dict[str, Any] | None
    calls: list[str]


def minimal_conf(log_dir: Path, version: str = LATEST, log_file: str = "log.jsonl") -> dict[str, Any]:
    """The smallest valid config, logging into the test's own dir."""
    return {"cniVersion": version, "name": "fuzznet", "type": "yogurt", "logFile": str(log_dir / log_file)}


def assert_refused(answer: Answer, code: int) -> None:
    """An error answer with this spec code: exit 1, the error JSON on stdout."""
    assert answer.rc == 1 and answer.out is not None and answer.out["code"] == code, answer


def invoke(environ: dict[str, str], stdin: bytes, verbs: Verbs | None = None) -> Answer:
    """skel.run as the executable runs it; asserts what holds for every answer."""
    verbs = verbs or Verbs()
    stdout, stderr = io.StringIO(), io.StringIO()
    rc = skel.run(environ, io.BytesIO(stdin), stdout, stderr, lambda: verbs)
    text = stdout.getvalue()
    assert rc in (0, 1), rc
    assert "Traceback" not in text + stderr.getvalue(), stderr.getvalue()
    out = None
    if text:
        # Exactly one line, one JSON object, encodable as the runtime reads it (UTF-8).
        assert text.endswith("\n") and text.count("\n") == 1, text
        text.encode()
        out = json.loads(text)
        assert isinstance(out, dict), text
    if rc != 0:
        assert out is not None and {"cniVersion", "code", "msg"} <= set(out), text
        assert out["code"] in KNOWN_CODES, out
        assert out["cniVersion"] in SUPPORTED_VERSIONS, out
        assert isinstance(out["msg"], str) and out["msg"], out
        assert set(out) <= {"cniVersion", "code", "msg", "details"}, out
        assert not verbs.calls or verbs.fail is not None, (verbs.calls, out)
    else:
        assert verbs.fail is None or not verbs.calls
        command = environ.get("CNI_COMMAND")
        if command in ("ADD", "VERSION"):
            assert out is not None and out.get("cniVersion") in SUPPORTED_VERSIONS, text
        else:
            assert text == "", text
        if command != "VERSION":
            assert verbs.calls == [command], verbs.calls
    return Answer(rc, text, stderr.getvalue(), out, verbs.calls)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where fuzzed configs log; the default log file (/var/log) is moved here as well."""
    path = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(netconf, "DEFAULT_LOG_FILE", str(path / "default.log"))
        yield path


# -- the dispatcher, end to end ----------------------------------------------


@fuzz(2500)
@given(data=st.data())
def test_anything_in_gets_a_spec_answer(log_dir: Path, data: st.DataObject) -> None:
    environ = data.draw(environs(), label="environ")
    stdin = data.draw(st.one_of(confs(log_dir).map(encoded), raw_stdin), label="stdin")
    answer = invoke(environ, stdin)
    if answer.rc != 0:
        assert answer.out is not None and answer.out["code"] in PARSE_CODES, answer.out


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("command", VERBS)
@fuzz(40)
@given(data=st.data())
def test_every_verb_and_version_with_valid_input(
    log_dir: Path, command: str, version: str, data: st.DataObject
) -> None:
    """Valid env, a valid config with unknown keys added: success exactly where the verb exists."""
    conf = minimal_conf(log_dir, version)
    reserved = set(conf) | {"ipam", "prevResult", "dns", "args", "runtimeConfig", "cniVersions", "mtu"}
    reserved |= {"line", "bpffsDir", "stateDir", "mode", "vethAttach", "cni.dev/valid-attachments"}
    reserved |= {"cni.dev/attachments", "linkState"}
    extra = data.draw(st.dictionaries(st.text(max_size=12), json_values, max_size=4), label="extra")
    conf.update({k: v for k, v in extra.items() if k not in reserved})
    environ = data.draw(environs(command, hostile=False), label="environ")
    answer = invoke(environ, encoded(conf))
    missing = [v for v in cni_env._REQUIRED[command] if v not in environ]
    if command == "VERSION":
        assert answer.rc == 0 and answer.out == {
            "cniVersion": version,
            "supportedVersions": [*SUPPORTED_VERSIONS],
        }
    elif missing:
        assert_refused(answer, Code.INVALID_ENV)
        assert answer.out["cniVersion"] == version
    elif not at_least(version, VERB_SINCE[command]):
        assert_refused(answer, Code.INCOMPATIBLE_VERSION)
    else:
        assert answer.rc == 0, answer
        if command == "ADD":
            assert answer.out is not None and answer.out["cniVersion"] == version


def kernel_rejects_ifname(value: str) -> bool:
    """dev_valid_name() over the bytes the kernel would get, plus what we refuse on top:
    non-UTF-8, Unicode whitespace (the kernel only knows ASCII) and `lo`, which every netns has."""
    raw = value.encode("utf-8", "surrogateescape")
    try:
        raw.decode()
    except UnicodeDecodeError:
        return True
    return (
        not raw
        or len(raw) > 15
        or raw in (b".", b"..")
        or any(b in b"/: \t\n\v\f\r\0" for b in raw)
        or any(c.isspace() for c in value)
        or value == "lo"
    )


def container_id_invalid(value: str) -> bool:
    allowed = set(string.ascii_letters + string.digits + "_.-")
    return not value or not (value[0].isascii() and value[0].isalnum()) or not set(value) <= allowed


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
@fuzz(200)
@given(ifname=env_text, container_id=env_text)
def test_hostile_names_are_env_errors(log_dir: Path, command: str, ifname: str, container_id: str) -> None:
    environ = {**CNI_VARS, "CNI_COMMAND": command, "CNI_IFNAME": ifname, "CNI_CONTAINERID": container_id}
    conf = minimal_conf(log_dir)
    answer = invoke(environ, encoded(conf))
    if container_id_invalid(container_id) or kernel_rejects_ifname(ifname):
        assert_refused(answer, Code.INVALID_ENV)
    else:
        assert answer.rc == 0, answer


@fuzz(300)
@given(
    command=st.sampled_from([v for v in VERBS if v != "VERSION"]),
    cni_args=st.one_of(
        env_text,
        st.lists(
            st.tuples(
                st.sampled_from(["YOGURT_LINE", "IgnoreUnknown", "K8S_POD_NAME", "FOO", "", "a=b"]), env_text
            ),
            max_size=3,
        ).map(lambda pairs: ";".join(f"{k}={v}" for k, v in pairs)),
    ),
)
def test_cni_args_are_env_errors_or_accepted(log_dir: Path, command: str, cni_args: str) -> None:
    environ = {**CNI_VARS, "CNI_COMMAND": command, "CNI_ARGS": cni_args}
    conf = minimal_conf(log_dir)
    answer = invoke(environ, encoded(conf))
    pairs = [p.partition("=") for p in cni_args.split(";") if p]
    malformed = any(not sep or not key for key, sep, _ in pairs)
    args = {key: value for key, _, value in pairs}
    unknown = set(args) - {"YOGURT_LINE", "IgnoreUnknown", "K8S_POD_NAME"}  # K8S_POD_*: read, so known
    ignoring = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    if malformed or (unknown and not ignoring):
        assert_refused(answer, Code.INVALID_ENV)
    else:
        assert answer.rc == 0, answer


@fuzz(400)
@given(
    command=st.sampled_from([v for v in VERBS if v != "VERSION"]),
    stdin=raw_stdin,
)
def test_stdin_that_is_no_json_object_is_a_decode_failure(log_dir: Path, command: str, stdin: bytes) -> None:
    try:
        is_object = isinstance(json.loads(stdin), dict)
    except (ValueError, RecursionError):
        is_object = False
    answer = invoke({**CNI_VARS, "CNI_COMMAND": command}, stdin)
    if not is_object:
        assert_refused(answer, Code.DECODE_FAILURE)
        assert answer.out["cniVersion"] == LATEST
    else:
        assert answer.rc == 0 or (answer.out is not None and answer.out["code"] in PARSE_CODES), answer


@fuzz(200)
@given(stdin=st.one_of(raw_stdin, st.builds(lambda v: encoded({"cniVersion": v}), versions_any)))
def test_version_always_answers(stdin: bytes) -> None:
    answer = invoke({"CNI_COMMAND": "VERSION"}, stdin)
    assert answer.rc == 0 and answer.out is not None
    assert answer.out["supportedVersions"] == list(SUPPORTED_VERSIONS)
    try:
        obj = json.loads(stdin)
    except (ValueError, RecursionError):
        obj = None
    asked = obj.get("cniVersion") if isinstance(obj, dict) else None
    assert answer.out["cniVersion"] == (asked if asked in SUPPORTED_VERSIONS else LATEST)


@fuzz(150)
@given(
    command=st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC"]),
    name=st.one_of(
        st.text(max_size=20), st.sampled_from(["", ".", "..", "a\0b", "\ud800", "\udcff", "x" * 300])
    ),
)
def test_a_log_file_that_cannot_be_opened_fails_nothing(log_dir: Path, command: str, name: str) -> None:
    """logFile is ours to open: a NUL, an unencodable character, a directory, a name too long."""
    conf = minimal_conf(log_dir, log_file=name)
    answer = invoke({**CNI_VARS, "CNI_COMMAND": command}, encoded(conf))
    assert answer.rc == 0, answer


EXCEPTIONS = st.one_of(
    st.builds(CNIError, st.sampled_from(sorted(KNOWN_CODES)), st.text(min_size=1, max_size=20), env_text),
    st.builds(RuntimeError, env_text),
    st.builds(OSError, st.integers(0, 200), env_text),
    st.builds(KeyError, env_text),
    st.builds(UnicodeEncodeError, st.just("utf-8"), env_text, st.just(0), st.just(1), env_text),
    st.just(AssertionError()),
    st.just(RecursionError("deep")),
)


@fuzz(200)
@given(
    command=st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC"]),
    version=st.sampled_from(SUPPORTED_VERSIONS),
    exc=EXCEPTIONS,
)
def test_a_failing_verb_is_error_json_never_a_traceback(
    log_dir: Path, command: str, version: str, exc: Exception
) -> None:
    if not at_least(version, VERB_SINCE[command]):
        version = LATEST
    conf = minimal_conf(log_dir, version)
    answer = invoke({**CNI_VARS, "CNI_COMMAND": command}, encoded(conf), Verbs(fail=exc))
    assert answer.rc == 1 and answer.out is not None
    assert answer.out["cniVersion"] == version
    assert answer.out["code"] == (exc.code if isinstance(exc, CNIError) else Code.INTERNAL)


# -- the parsers on their own ------------------------------------------------


@fuzz(400)
@given(environ=st.one_of(environs(), st.dictionaries(env_text, env_text, max_size=6)))
def test_parse_env_returns_or_raises_code_4(environ: dict[str, str]) -> None:
    try:
        parsed = cni_env.parse_env(environ)
    except CNIError as err:
        assert err.code == Code.INVALID_ENV
        return
    assert parsed.command in VERBS
    if parsed.ifname:
        assert not kernel_rejects_ifname(parsed.ifname)
    if parsed.container_id:
        assert not container_id_invalid(parsed.container_id)


@fuzz(500)
@given(data=st.data())
def test_netconf_parse_returns_or_raises_a_config_code(log_dir: Path, data: st.DataObject) -> None:
    obj = data.draw(st.one_of(st.dictionaries(st.text(max_size=12), json_values), confs(log_dir)))
    try:
        conf = netconf.parse(obj)
    except CNIError as err:
        assert err.code in PARSE_CODES - {Code.INVALID_ENV}, err
        return
    assert conf.cni_version in SUPPORTED_VERSIONS
    assert conf.name and conf.type
    assert conf.mode in netconf.MODES and conf.veth_attach in netconf.VETH_ATTACH


@fuzz(600)
@given(obj=results(), version=st.sampled_from(SUPPORTED_VERSIONS))
def test_results_parse_or_fail_and_render_in_every_version(obj: Any, version: str) -> None:
    try:
        result = parse_result(obj, "prevResult")
    except CNIError as err:
        assert err.code == Code.DECODE_FAILURE, err
        return
    rendered = result.to_json(version)
    json.dumps(rendered)  # renders to plain JSON
    again = parse_result(json.loads(json.dumps(rendered)), "prevResult")
    assert again.to_json(version) == rendered


@fuzz(200)
@given(stdout=st.one_of(raw_stdin, results().map(encoded), json_values.map(lambda v: encoded({"code": v}))))
def test_delegate_errors_are_cni_errors(stdout: bytes) -> None:
    err = ipam._delegate_error("/usr/lib/cni/host-local", "ADD", stdout, 1)
    assert isinstance(err, CNIError) and isinstance(err.code, int)


@fuzz(200)
@given(name=env_text, path=st.lists(env_text, max_size=3))
def test_find_plugin_finds_only_executable_files(name: str, path: list[str]) -> None:
    try:
        found = ipam.find_plugin(name, tuple(path))
    except CNIError as err:
        assert err.code == Code.INVALID_CONFIG
        return
    assert os.path.isfile(found) and os.access(found, os.X_OK)
