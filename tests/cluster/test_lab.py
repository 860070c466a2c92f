"""The lab runs the etcd it says, found in the documented order: $YOGURT_ETCD, the one unpacked by
packaging/fetch-etcd.sh, then PATH; and refuses an etcd older than 3.4."""

from __future__ import annotations

import os
from pathlib import Path

import etcdlab
import pytest
from etcdlab import ETCD, EtcdLab, etcd_version, find_etcd


def test_the_lab_runs_the_etcd_it_names(lab: EtcdLab) -> None:
    for proc in lab.procs:
        assert proc is not None
        assert os.readlink(f"/proc/{proc.pid}/exe") == os.path.realpath(ETCD)


def fake_etcd(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\n")
    path.chmod(0o755)
    return path


def test_yogurt_etcd_then_the_unpacked_one_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    on_path = fake_etcd(tmp_path / "bin" / "etcd", "3.5.0")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv("YOGURT_ETCD_CACHE", str(cache))
    monkeypatch.delenv("YOGURT_ETCD", raising=False)
    assert find_etcd() == (str(on_path), "PATH")  # the cache is not finished: PATH's
    unpacked = fake_etcd(cache / "usr" / "bin" / "etcd", "3.4.23")
    assert find_etcd() == (str(on_path), "PATH")  # unpacked, but no .complete yet
    (cache / ".complete").touch()
    assert find_etcd() == (str(unpacked), "packaging/fetch-etcd.sh")
    monkeypatch.setenv("YOGURT_ETCD", "/opt/etcd/etcd")
    assert find_etcd() == ("/opt/etcd/etcd", "YOGURT_ETCD")


def test_an_etcd_older_than_3_4_or_no_etcd_at_all_is_refused(tmp_path: Path) -> None:
    assert etcd_version(str(fake_etcd(tmp_path / "new" / "etcd", "3.4.23"))) == (3, 4, 23)
    with pytest.raises(RuntimeError, match=r"is etcd 3\.3\.27; the lab needs >= 3\.4"):
        etcd_version(str(fake_etcd(tmp_path / "old" / "etcd", "3.3.27")))
    with pytest.raises(RuntimeError, match="is not a working etcd"):
        etcd_version(str(fake_etcd(tmp_path / "junk" / "etcd", "").with_name("missing")))


def test_without_any_etcd_the_lab_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcdlab, "ETCD", "")
    with pytest.raises(RuntimeError, match="packaging/fetch-etcd.sh"):
        EtcdLab()
