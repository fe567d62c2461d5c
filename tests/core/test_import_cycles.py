"""No two modules of packages/*/src import each other in a circle (issue 22: a house a newcomer can read).

Every import statement counts, wherever it stands: at module level, inside a function (a lazy import still
ties the two modules together), under ``if TYPE_CHECKING``. ``from pkg import name`` points at the module
``pkg.name`` when there is one, else at ``pkg`` (its ``__init__``); relative imports are resolved against the
importing module's package. Only the repository's own files are read.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_files(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` under ``root/packages/*/src``."""
    modules: dict[str, Path] = {}
    for src in sorted(root.glob("packages/*/src")):
        for path in sorted(src.rglob("*.py")):
            parts = path.relative_to(src).with_suffix("").parts
            if any(not p.isidentifier() for p in parts):  # build leftovers such as *.egg-info
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first such import}}``, between ``modules`` only."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                found = _known(target, modules)
                if found is not None and found != name:
                    edges.setdefault(found, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One circle per strongly connected group of modules: ``[a, b, ..., a]``, each step an import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(start: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle(sorted(group)[0], group, graph) for group in groups]


def _circle(start: str, group: set[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """The shortest path of imports from ``start`` back to itself inside ``group`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ not in group:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if succ not in previous:
                    previous[succ] = node
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError(f"no circle through {start} in {sorted(group)}")  # a strongly connected group has one


def describe(circle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path], root: Path) -> str:
    steps = [f"{a} (line {graph[a][b]} of {modules[a].relative_to(root)}) imports {b}"
             for a, b in zip(circle, circle[1:], strict=False)]
    return " -> ".join(circle) + "\n    " + "\n    ".join(steps)


def test_no_module_imports_itself_through_others():
    modules = module_files(ROOT)
    assert len(modules) > 50, f"found only {len(modules)} modules under {ROOT / 'packages'}/*/src"
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, ("import circles (move what both sides need into a leaf module, or make one side stop "
                       "importing the other):\n" + "\n".join(describe(c, graph, modules, ROOT) for c in found))


def test_the_check_finds_circles_through_functions_and_relative_imports(tmp_path):
    src = tmp_path / "packages" / "demo" / "src" / "demo"
    (src / "sub").mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "sub" / "__init__.py").write_text("")
    (src / "a.py").write_text("def f():\n    from demo.sub import b\n    return b\n")  # lazy, absolute
    (src / "sub" / "b.py").write_text("from .c import g\n")  # relative, same package
    (src / "sub" / "c.py").write_text("from ..a import f as g\n")  # relative, parent package: closes the circle
    (src / "leaf.py").write_text("import demo.a\nfrom demo.sub.c import g\n")  # imports into the circle only
    modules = module_files(tmp_path)
    graph = import_graph(modules)
    assert graph["demo.a"] == {"demo.sub.b": 2} and graph["demo.sub.c"] == {"demo.a": 1}
    assert cycles(graph) == [["demo.a", "demo.sub.b", "demo.sub.c", "demo.a"]]
    text = describe(cycles(graph)[0], graph, modules, tmp_path)
    assert "demo.a (line 2 of packages/demo/src/demo/a.py) imports demo.sub.b" in text

    (src / "sub" / "c.py").write_text("def g():\n    pass\n")  # the circle broken
    assert cycles(import_graph(module_files(tmp_path))) == []
