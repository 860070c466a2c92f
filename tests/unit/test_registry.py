"""The line registry on disk: one file per line, an index by device, migration, healing. No root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cni_yogurt.line import naming
from cni_yogurt.line.registry import End, Registry, _line_file, others_on_line


def _end(cid: str, line: str) -> End:
    return End(cid, "eth0", line, "net", f"/run/netns/{cid}", naming.host_ifname(cid, "eth0"), ready=True)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    r = Registry(str(tmp_path))
    with r.transaction() as ends:
        for i in range(20):
            e = _end(f"c{i}", f"line{i // 2}")
            ends[e.key] = e
    return r


def test_a_line_transaction_sees_its_line_and_the_device_s_end_only(registry: Registry) -> None:
    with registry.transaction("line3", naming.host_ifname("c11", "eth0")) as ends:
        assert sorted(ends) == ["c10/eth0", "c11/eth0", "c6/eth0", "c7/eth0"]  # line3, and c11's line5
    with registry.transaction("new line") as ends:
        assert ends == {}


def test_what_a_line_transaction_changes_is_all_that_is_written(registry: Registry) -> None:
    files = {p: p.stat().st_mtime_ns for p in Path(registry.path).iterdir()}
    with registry.transaction("line3") as ends:
        ends["c6/eth0"].ready = False
        ends.pop("c7/eth0")
        extra = _end("c99", "line3")
        ends[extra.key] = extra
    changed = [p.name for p, t in files.items() if p.stat().st_mtime_ns != t]
    assert len(changed) == 1
    all_ends = registry.snapshot()
    assert len(all_ends) == 20 and "c7/eth0" not in all_ends and not all_ends["c6/eth0"].ready
    assert others_on_line(all_ends, all_ends["c99/eth0"]) == [all_ends["c6/eth0"]]
    index = Path(registry.index_dir)
    assert not (index / naming.host_ifname("c7", "eth0")).exists()
    assert json.loads((index / extra.host_ifname).read_text()) == "line3"


def test_an_emptied_line_leaves_no_file(registry: Registry) -> None:
    with registry.transaction("line0") as ends:
        ends.clear()
    assert len(os.listdir(registry.path)) == 9 and len(os.listdir(registry.index_dir)) == 18


def test_an_index_entry_without_its_end_is_harmless(registry: Registry) -> None:
    """What a process killed between writing the index and the line file leaves."""
    ghost = naming.host_ifname("ghost", "eth0")
    (Path(registry.index_dir) / ghost).write_text(json.dumps("line4"))
    with registry.transaction(host_ifname=ghost) as ends:
        assert sorted(ends) == ["c8/eth0", "c9/eth0"]


def test_the_single_file_of_older_releases_is_moved_over(tmp_path: Path) -> None:
    ends = {e.key: vars(e) for e in (_end("a", "l1"), _end("b", "l1"), _end("c", "l2"))}
    (tmp_path / "lines.json").write_text(json.dumps({"ends": ends}))
    r = Registry(str(tmp_path))
    with r.transaction("l2", naming.host_ifname("c", "eth0")) as some:
        assert set(some) == {"a/eth0", "b/eth0", "c/eth0"}  # everything, the first time
    assert not (tmp_path / "lines.json").exists()
    assert set(r.snapshot()) == {"a/eth0", "b/eth0", "c/eth0"}
    with r.transaction("l1") as some:
        assert set(some) == {"a/eth0", "b/eth0"}


@pytest.mark.parametrize("garbage", ["", "{", '{"ends": [1]}', '{"ends": {"x": {"who": 1}}}', "\udcff"])
def test_a_damaged_line_file_heals_from_the_kernel(registry: Registry, garbage: str) -> None:
    victim = Path(registry.path) / _line_file("line3")
    victim.write_text(garbage, errors="surrogateescape")
    assert registry.damage() is not None
    with registry.transaction("line4") as ends:  # other lines are not the damaged one's business
        assert sorted(ends) == ["c8/eth0", "c9/eth0"]
    rebuilt = {"k/eth0": _end("k", "line3")}
    heard: list[str] = []
    healing = Registry(os.path.dirname(registry.path), recover=lambda: dict(rebuilt), on_heal=heard.append)
    with healing.transaction("line3") as ends:
        assert set(ends) == {"k/eth0"}
    assert heard and "rebuilt 1 ends" in heard[0]
    assert (Path(registry.path + ".damaged") / "lines" / victim.name).exists()
    assert set(healing.snapshot()) == {"k/eth0"} and healing.damage() is None


def test_files_are_root_only(registry: Registry) -> None:
    for path in (*Path(registry.path).iterdir(), *Path(registry.index_dir).iterdir()):
        assert path.stat().st_mode & 0o777 == 0o600
    assert Path(registry.path).stat().st_mode & 0o777 == 0o700


def test_an_end_s_pod_is_kept_and_files_without_it_still_load(tmp_path: Path) -> None:
    r = Registry(str(tmp_path))
    held = _end("p1", "l1")
    held.pod_namespace, held.pod_name, held.pod_uid = "shop", "web-0", "u-1"
    older = {k: v for k, v in vars(_end("o1", "l1")).items() if not k.startswith("pod_")}
    with r.transaction("l1") as ends:
        ends[held.key] = held
    path = Path(registry_file(r, "l1"))
    raw = json.loads(path.read_text())
    raw["ends"]["o1/eth0"] = older  # as a release before pods wrote it
    path.write_text(json.dumps(raw))
    ends = r.snapshot()
    assert ends["p1/eth0"].pod == "shop/web-0" and ends["p1/eth0"].pod_uid == "u-1"
    assert ends["o1/eth0"].pod == "" and r.damage() is None
    assert ends["p1/eth0"].holder() == "p1/eth0 (net, pod shop/web-0)"
    assert ends["o1/eth0"].holder() == "o1/eth0 (net)"


def registry_file(r: Registry, line: str) -> str:
    return os.path.join(r.path, _line_file(line))


def test_cluster_is_written_only_for_cluster_ends_and_unknown_fields_are_left_out(tmp_path: Path) -> None:
    r = Registry(str(tmp_path))
    local, spanning = _end("c1", "l1"), _end("c2", "l1")
    spanning.cluster = True
    with r.transaction("l1") as ends:
        ends[local.key], ends[spanning.key] = local, spanning
    written = json.loads(Path(r.path, _line_file("l1")).read_text())["ends"]
    # A node-local end's record is what earlier releases wrote (and can read: a rollback).
    assert "cluster" not in written["c1/eth0"] and written["c2/eth0"]["cluster"] is True
    assert set(written["c1/eth0"]) <= _release_end_fields("abi4-f9b534a")
    # A later release's field is left out here, the end loads.
    written["c1/eth0"]["from_the_future"] = 1
    Path(r.path, _line_file("l1")).write_text(json.dumps({"line": "l1", "ends": written}))
    loaded = r.snapshot()
    assert loaded["c1/eth0"] == local and loaded["c2/eth0"].cluster is True


def _release_end_fields(kept: str) -> set[str]:
    """The fields of End in a kept release's wheel (tests/kernel/releases/), read, not imported."""
    import ast
    import zipfile

    (wheel,) = (Path(__file__).parents[1] / "kernel" / "releases" / kept).glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        tree = ast.parse(z.read("cni_yogurt/line/registry.py"))
    (end,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "End")
    return {n.target.id for n in end.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def test_an_end_without_a_pod_is_written_as_the_0_4_0_release_reads_it(tmp_path: Path) -> None:
    r = Registry(str(tmp_path))
    plain, held = _end("c1", "l1"), _end("c2", "l1")
    held.pod_namespace, held.pod_name, held.pod_uid = "shop", "web-0", "u1"
    with r.transaction("l1") as ends:
        ends[plain.key], ends[held.key] = plain, held
    written = json.loads(Path(r.path, _line_file("l1")).read_text())["ends"]
    known = _release_end_fields("abi4-f9b534a")
    assert "pod_name" not in known  # else this test no longer tests anything
    assert set(written["c1/eth0"]) <= known
    assert written["c2/eth0"]["pod_name"] == "web-0"
    assert r.snapshot() == {plain.key: plain, held.key: held}
