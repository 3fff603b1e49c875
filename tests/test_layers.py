"""The house rules: no import cycle between modules, and no package imports one above it (imports inside
functions included), so a lazy import can never hide a cycle."""

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "widthtune"
# bottom up; a package may import only packages of a lower rank (and itself)
RANK = {
    "models": 0,
    "training": 0,
    "search_spaces": 1,
    "trainables": 2,
    "results": 3,
    "analysis": 4,
    "platform": 5,
    "cluster": 6,
    "cli": 7,
}


def module_name(path: Path) -> str:
    parts = ("widthtune", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every widthtune module a file imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from package import submodule` imports the submodule; anything else imports the module itself
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != "widthtune":
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "widthtune"


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for source, targets in edges.items():
        a = package(source)
        for target in targets:
            b = package(target)
            if a == b or a not in RANK or b not in RANK:
                continue
            if RANK[b] >= RANK[a]:
                out.append(f"{source} -> {target} ({a} may not import {b})")
    return sorted(out)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_package_above_it():
    assert layer_violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_are_for():
    edges = {
        "widthtune.models.a": {"widthtune.platform.b"},
        "widthtune.platform.b": {"widthtune.models.a"},
        "widthtune.trainables.c": {"widthtune.results.d"},
    }
    assert layer_violations(edges) == [
        "widthtune.models.a -> widthtune.platform.b (models may not import platform)",
        "widthtune.trainables.c -> widthtune.results.d (trainables may not import results)",
    ]
    assert cycles(edges) == [["widthtune.models.a", "widthtune.platform.b"]]


def test_every_package_has_a_layer():
    packages = {package(m) for m in modules()} - {"widthtune"}
    assert packages <= set(RANK), packages - set(RANK)
