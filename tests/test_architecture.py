"""The house stays clean: layers import only downwards, no module imports itself through others,
and every module says what it holds in its opening docstring.

Layers, bottom up: schemas (imports nothing of the project) -> core -> models -> transforms ->
pipelines -> pipelines.cli (the command line). Every import counts, also one inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"schemas": 0, "core": 1, "models": 2, "transforms": 3, "pipelines": 4, "pipelines.cli": 5}


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages."""
    found = {}
    for top in ("schemas", "core", "models", "transforms", "pipelines"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer(module: str) -> int:
    """The rank of the longest layer prefix of a dotted module name."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def project_imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports anywhere in it (``from pkg import module`` resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: project_imports(path, known) - {name} for name, path in known.items()}


def test_imports_point_down_the_layers():
    upward = sorted(f"{m} imports {d}" for m, deps in graph().items() for d in deps if layer(d) > layer(m))
    assert upward == []


def test_schemas_import_nothing_else_of_the_project():
    outside = sorted(f"{m} imports {d}" for m, deps in graph().items() if m.startswith("schemas")
                     for d in deps if not d.startswith("schemas"))
    assert outside == []


def test_no_import_cycles():
    """Tarjan's strongly connected components: any component of two or more modules is a cycle."""
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
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
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checks_see_a_violation(tmp_path):
    """The import reader finds a function-level import and resolves ``from package import module``."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from pipelines import config\n    import transforms.frames\n")
    assert project_imports(path, modules()) == {"pipelines.config", "transforms.frames"}
    assert layer("pipelines.cli.commands") == 5 and layer("pipelines.config") == 4 and layer("schemas.frames") == 0


def test_every_module_opens_with_a_docstring():
    missing = sorted(name for name, path in modules().items()
                     if path.read_text().strip() and ast.get_docstring(ast.parse(path.read_text())) is None)
    assert missing == []
