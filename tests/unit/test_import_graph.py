"""No import cycle inside cni_yogurt.  No root, nothing imported: the graph is read from the source.

Every import counts, at module level and inside functions alike: a function-level import runs as soon
as that function does (the agent imports agent/metrics.py when asked for metrics), and a cycle there
is as real at that moment as one at the top, only later and harder to see.  Imports under
`if TYPE_CHECKING:` do not count: they never run.  An edge goes from a module to the cni_yogurt
module it names (`from cni_yogurt.x import y` names cni_yogurt.x.y where that is a module, else
cni_yogurt.x); importing a submodule runs its package's __init__ first, but a package is not taken
to depend on its children, so that `from cni_yogurt import lab` is one edge to cni_yogurt.lab.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cni_yogurt"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["cni_yogurt", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([base] if base else [])])
                named = (f"{base}.{alias.name}" for alias in node.names)
                targets = [full if full in known else base for full in named]
            for target in targets:
                while target and target not in known:  # `import cni_yogurt.x.y` as a name of x's
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_the_graph_sees_the_package() -> None:
    edges = graph()
    assert "cni_yogurt.agent.server" in edges and "cni_yogurt.lab.cluster" in edges
    assert "cni_yogurt.agent.metrics" in edges["cni_yogurt.agent.server"]  # a function-level import
    assert "cni_yogurt.agent.server" not in edges["cni_yogurt.agent.metrics"]  # not even for types
    assert "cni_yogurt.lab.nodes" in edges["cni_yogurt.lab.cluster"]


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_cni_yogurt() -> None:
    assert cycles(graph()) == []
