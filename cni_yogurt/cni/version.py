"""Spec versions this plugin speaks and what each one allows."""

from __future__ import annotations

from cni_yogurt.cni.errors import CNIError, Code

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


def require_supported(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            Code.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )


def require_verb_allowed(verb: str, version: str) -> None:
    since = VERB_SINCE[verb]
    if not at_least(version, since):
        raise CNIError(
            Code.INCOMPATIBLE_VERSION,
            f"config version does not allow {verb}",
            f"{verb} needs cniVersion >= {since}, config is {version}",
        )
