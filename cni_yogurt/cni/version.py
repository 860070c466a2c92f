"""Spec versions this plugin speaks, what each one allows, and the VERSION answer.

Import-light on purpose (json only; errors are imported where raised):
VERSION is answered from here alone, and runtimes ask it often (podman
before every ADD).
"""

from __future__ import annotations

import json

# Results are rendered for each of these; 0.1.0/0.2.0 predate the
# interfaces/ips result shape and are not supported.
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]

# The first version in which each verb exists (SPEC, "Execution protocol").
VERB_SINCE: dict[str, str] = {
    "ADD": "0.1.0",
    "DEL": "0.1.0",
    "VERSION": "0.1.0",
    "CHECK": "0.4.0",
    "STATUS": "1.1.0",
    "GC": "1.1.0",
}


def parse(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a semantic version: {version!r}")
    major, minor, patch = (int(p) for p in parts)
    return major, minor, patch


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def peek_version(data: bytes) -> str | None:
    """The config's cniVersion if it can be read and is ours, for VERSION and for rendering errors."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    value = obj.get("cniVersion") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and value in SUPPORTED_VERSIONS else None


def version_info(stdin: bytes) -> dict[str, str | list[str]]:
    """The VERSION result: answers even without a config; with one, in its version."""
    requested = peek_version(stdin) if stdin.strip() else None
    return {"cniVersion": requested or LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


def require_supported(version: str) -> None:
    from cni_yogurt.cni.errors import CNIError, Code

    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            Code.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )


def require_verb_allowed(verb: str, version: str) -> None:
    from cni_yogurt.cni.errors import CNIError, Code

    since = VERB_SINCE[verb]
    if not at_least(version, since):
        raise CNIError(
            Code.INCOMPATIBLE_VERSION,
            f"config version does not allow {verb}",
            f"{verb} needs cniVersion >= {since}, config is {version}",
        )
