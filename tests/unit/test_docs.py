"""The docs stay true: every relative link and anchor in the project's Markdown resolves, and every
`yogurt …` admin command shown in a shell block exists (its --help works).  No root."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
PAGES = sorted({*TOP.glob("*.md"), *TOP.glob("docs/**/*.md"), *TOP.glob("conf/*.md")})
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = FENCE.sub("", page.read_text())
    out = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", page.read_text())) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(TOP)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target}: no {where.relative_to(TOP) if TOP in where.parents else where}")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target}: no heading with that anchor")
    assert broken == []


def _commands() -> list[str]:
    """Every `yogurt <command>` the pages show: at the start of a line (or after &&) in a shell block,
    or at the start of an inline code span (`yogurt status`, `dist/yogurt demo …`)."""
    found = set()
    for page in PAGES:
        text = page.read_text()
        for lang, body in FENCE.findall(text):
            if lang in ("sh", "bash", "console", ""):
                found |= set(re.findall(r"(?:^|&&\s*|\$\s+)yogurt\s+([a-z][a-z-]*)", body, re.M))
        found |= set(re.findall(r"`(?:[\w./-]*/)?yogurt ([a-z][a-z-]*)", FENCE.sub("", text)))
    return sorted(found)


@pytest.mark.parametrize("command", _commands())
def test_every_yogurt_command_shown_exists(command: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cni_yogurt", command, "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        cwd=TOP,
    )
    assert run.returncode == 0 and "usage: yogurt" in run.stdout, run.stdout + run.stderr


def _json_examples() -> list[object]:
    """(where, the JSON text, what it must fail with or "") of every ```json block; a block
    preceded by `<!-- invalid: TEXT -->` is wrong on purpose and must fail saying TEXT."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"(?:<!-- invalid: (.*?) -->\s*\n)?^```json\n(.*?)^```", text, re.S | re.M):
            line = text[: m.start()].count("\n") + 1
            where = f"{page.relative_to(TOP)}:{line}"
            out.append(pytest.param(where, m.group(2), m.group(1) or "", id=where))
    return out


@pytest.mark.parametrize(
    ("where", "body", "fails"), _json_examples(), ids=lambda v: v if ":" in str(v) else ""
)
def test_every_json_example_parses_with_the_projects_own_parser(where: str, body: str, fails: str) -> None:
    """A network config through the plugin's parser, a cluster file through the agent's."""
    import json

    from cni_yogurt.cluster import config
    from cni_yogurt.cni import netconf
    from cni_yogurt.cni.errors import CNIError

    raw = json.loads(body)
    try:
        if "endpoints" in raw:
            config.parse(raw, check_files=False)
        elif raw.get("type") == "yogurt":
            netconf.parse(raw)
        else:
            pytest.fail(f"{where}: a JSON example that is neither a network config nor a cluster file")
    except CNIError as e:
        assert fails and fails in f"{e.msg}: {e.details}", f"{where}: {e.msg}: {e.details}"
        return
    assert not fails, f"{where} is marked invalid ({fails}) but parses"


def test_the_architecture_tree_names_every_module() -> None:
    """docs/architecture.md's tree keeps in step with cni_yogurt/: every module, C file and package of it
    is named there (a package as `name/`, a subpackage's __init__.py only where it holds code of its own)."""
    text = (TOP / "docs" / "architecture.md").read_text()
    tree = next(body for lang, body in FENCE.findall(text) if body.startswith("cni_yogurt/\n"))
    package = TOP / "cni_yogurt"
    missing = []
    for path in sorted(package.rglob("*")):
        if "__pycache__" in path.parts or path.parent.name == "_bpf":
            continue
        if path.is_dir() or path.is_symlink():
            name = rf"{re.escape(path.name)}/"
        elif path.suffix in (".py", ".c"):
            if path.name == "__init__.py" and len(path.read_text().splitlines()) < 30:
                continue
            name = rf"{re.escape(path.name)}\b"
        else:
            continue
        if not re.search(rf"(?<![\w/.]){name}", tree):
            missing.append(str(path.relative_to(TOP)))
    assert missing == []
