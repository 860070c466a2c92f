"""Structured logs: JSON lines to the file, errors also to stderr, never stdout."""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cni_yogurt.log import get_logger


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_gets_json_lines_with_context(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.jsonl"
    stderr = io.StringIO()
    log = get_logger(str(path), stderr, verb="ADD", container_id="ctr-1", ifname="eth0")
    log.info("invocation", outcome="ok", duration_ms=1.5)
    log.error("invocation", outcome="error", code=7, msg="bad config")

    info, error = lines(path)
    for record in (info, error):
        assert record["verb"] == "ADD"
        assert record["container_id"] == "ctr-1"
        assert record["ifname"] == "eth0"
        assert record["pid"] == os.getpid()
        assert record["event"] == "invocation"
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0)
    assert (info["level"], info["outcome"], info["duration_ms"]) == ("info", "ok", 1.5)
    assert (error["level"], error["code"], error["msg"]) == ("error", 7, "bad config")

    # Only the error reaches stderr, as the same JSON line; nothing reaches stdout.
    assert [json.loads(line) for line in stderr.getvalue().splitlines()] == [error]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("level", ["warning", "critical"])
def test_warnings_and_worse_reach_stderr(level: str, tmp_path: Path) -> None:
    stderr = io.StringIO()
    getattr(get_logger(str(tmp_path / "log.jsonl"), stderr), level)("careful")
    assert json.loads(stderr.getvalue())["event"] == "careful"


def test_debug_stays_in_file(tmp_path: Path) -> None:
    stderr = io.StringIO()
    get_logger(str(tmp_path / "log.jsonl"), stderr).debug("detail")
    assert stderr.getvalue() == ""
    assert lines(tmp_path / "log.jsonl")[0]["event"] == "detail"


def test_bind_adds_context(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = get_logger(str(path), io.StringIO(), verb="DEL")
    log.bind(line="l1").info("unwired")
    log.info("done")
    bound, plain = lines(path)
    assert (bound["verb"], bound["line"]) == ("DEL", "l1")
    assert "line" not in plain


def test_appends_across_invocations(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    get_logger(str(path), io.StringIO(), verb="ADD").info("first")
    get_logger(str(path), io.StringIO(), verb="DEL").info("second")
    assert [(r["verb"], r["event"]) for r in lines(path)] == [("ADD", "first"), ("DEL", "second")]


def test_creates_log_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "log.jsonl"
    get_logger(str(path), io.StringIO()).info("hello")
    assert lines(path)[0]["event"] == "hello"


def test_no_file_logs_everything_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    stderr = io.StringIO()
    log = get_logger(None, stderr, verb="STATUS")
    log.info("fine")
    log.error("broken")
    records = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert [(r["event"], r["level"], r["verb"]) for r in records] == [
        ("fine", "info", "STATUS"),
        ("broken", "error", "STATUS"),
    ]
    assert capsys.readouterr().out == ""


def test_unopenable_log_file_falls_back_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "log.jsonl"  # its "directory" is a regular file, even root cannot create it
    stderr = io.StringIO()
    log = get_logger(str(path), stderr)
    log.info("still logged")
    assert json.loads(stderr.getvalue())["event"] == "still logged"
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(path) in captured.err  # the reason is said once


def test_default_stderr_is_sys_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    get_logger(str(tmp_path / "log.jsonl")).error("oops", code=101)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["code"] == 101
