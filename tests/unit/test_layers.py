"""The floor plan: every import in the package (at module level, inside functions and under
TYPE_CHECKING alike) runs down a floor or stays on its own, and no two modules import each other."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. A module may import from its own floor or any floor below it.
FLOORS = ["core", "datasets", "configs", "cache", "extract", "align", "retrieve", "orchestration", "pipeline"]
# The package's own __init__ sits above everything: it hands out the face's API.
TOP = "__init__"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return "cvgl." + ".".join(parts) if parts != ["__init__"] else "cvgl"


def package_files() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    files = {"cvgl": ROOT / "__init__.py", "cvgl.pipeline": ROOT / "pipeline.py"}
    for floor in FLOORS[:-1]:
        for path in sorted((ROOT / floor).rglob("*.py")):
            files[_module_name(path)] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source, as dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from cvgl.x import y` names module cvgl.x.y when y is one, else an attribute of cvgl.x.
            subs = [f"{mod}.{a.name}" for a in node.names]
            targets = [t for t in subs if t in known]
            if len(targets) < len(subs):
                targets.append(mod)
        for t in targets:
            if not (t == "cvgl" or t.startswith("cvgl.")):
                continue
            while t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t != name:
                out.add(t)
    return out


def floor_of(module: str) -> int:
    if module == "cvgl":
        return len(FLOORS)
    return FLOORS.index(module.split(".")[1])


@functools.cache
def import_graph() -> dict[str, set[str]]:
    files = package_files()
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def _is_package_of(pkg: str, module: str) -> bool:
    return module.startswith(pkg + ".")


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, dsts in sorted(graph.items()):
        for dst in sorted(dsts):
            if floor_of(dst) > floor_of(src):
                bad.append(f"{src} -> {dst}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def floor_drawing(graph: dict[str, set[str]]) -> str:
    """Mermaid graph of the imports between floors, top floor first."""
    arrows = {(_floor_label(s), _floor_label(d)) for s, dsts in graph.items() for d in dsts}
    order = ["cvgl", *reversed(FLOORS)]
    lines = ["graph TD"]
    for a, b in sorted(arrows, key=lambda ab: (order.index(ab[0]), order.index(ab[1]))):
        if a != b:
            lines.append(f"    {a} --> {b}")
    return "\n".join(lines)


def _floor_label(module: str) -> str:
    return "cvgl" if module == "cvgl" else module.split(".")[1]


def test_imports_only_run_down_the_floors():
    graph = import_graph()
    bad = upward_arrows(graph)
    assert not bad, "imports up a floor:\n  " + "\n  ".join(bad) + "\n\n" + floor_drawing(graph)


def test_no_module_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_drawing_in_the_docs_matches_the_code():
    # docs/floors.md shows the imports between floors; it must be the code's, arrows pointing down.
    graph = import_graph()
    drawing = floor_drawing(graph)
    doc = (ROOT / "docs" / "floors.md").read_text()
    assert drawing in doc, "docs/floors.md is stale; replace its mermaid block with:\n" + drawing
    order = ["cvgl", *reversed(FLOORS)]
    for line in drawing.splitlines()[1:]:
        a, _, b = line.split()
        assert order.index(a) < order.index(b), line


def test_the_checker_sees_imports_inside_functions_and_type_checking(tmp_path):
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from cvgl.align.stage import run\n"
        "def f():\n    import cvgl.retrieve.runner\n    from cvgl.orchestration import sweep\n"
        "from .. import pipeline\n"
    )
    p = tmp_path / "m.py"
    p.write_text(src)
    known = {"cvgl.align.stage", "cvgl.retrieve.runner", "cvgl.orchestration", "cvgl.orchestration.sweep",
             "cvgl.pipeline", "cvgl.cache.m"}
    got = imports_of("cvgl.cache.m", p, known)
    assert got == {"cvgl.align.stage", "cvgl.retrieve.runner", "cvgl.orchestration.sweep", "cvgl.pipeline"}
    assert upward_arrows({"cvgl.cache.m": got}) == sorted(f"cvgl.cache.m -> {d}" for d in got)
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_every_package_import_names_a_module_that_exists():
    # An import of a moved or deleted module fails only when its line runs (often inside a function).
    known = set(package_files())
    missing = []
    for name, path in package_files().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("cvgl."):
                if node.module not in known:
                    missing.append(f"{name}: from {node.module} import …")
            elif isinstance(node, ast.Import):
                missing += [f"{name}: import {a.name}" for a in node.names if a.name.startswith("cvgl.") and a.name not in known]
    assert not missing, "\n".join(missing)
