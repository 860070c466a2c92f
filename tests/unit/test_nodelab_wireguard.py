"""Which WireGuard the node lab runs (cni_yogurt/lab/nodes.py), as far as that is decided without a
kernel: the kinds asked for by name or by YOGURT_LAB_WIREGUARD, and the tools each needs.  Whether
the kernel has WireGuard, and the lab on it, are root tests (tests/cluster/test_nodelab.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cni_yogurt.lab.nodes import WIREGUARD_ENV, NodeLabError, missing_tools, wireguard_kind


def test_go_is_taken_when_asked_for_by_name_or_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wireguard_kind("go") == "go"
    monkeypatch.setenv(WIREGUARD_ENV, "go")
    assert wireguard_kind() == "go"
    assert wireguard_kind(None) == "go"


def test_an_unknown_kind_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NodeLabError, match="'userspace': not one of auto, kernel, go"):
        wireguard_kind("userspace")
    monkeypatch.setenv(WIREGUARD_ENV, "wg0")
    with pytest.raises(NodeLabError, match="'wg0'"):
        wireguard_kind()


def test_wireguard_go_is_a_needed_tool_only_where_the_lab_runs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    assert missing_tools("go", extra=("nsenter",)) == ["wireguard-go", "wg", "nft", "ip", "nsenter"]
    # A kind that cannot be is not a reason to ask for wireguard-go: the lab names it at start.
    assert missing_tools("nope") == ["wg", "nft", "ip"]
    for tool in ("wireguard-go", "wg", "nft", "ip"):
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    assert missing_tools("go") == []
