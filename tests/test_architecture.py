"""The layout's rules, measured: rooms import only rooms below them, no module imports
itself back through others, no function is longer than 80 lines, no CLI module is longer
than 400 lines (docs/architecture.md). ``python tests/test_architecture.py`` prints the
import graph by room and every breach."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "harness"
PACKAGE = "fwbench.harness"

# Each room's rank: a module may import its own room and the rooms of a lower rank only.
RANKS = {"core": 0, "catalog": 1, "measure": 1, "run": 2, "check": 3, "report": 3,
         "cli": 4, "entry": 4}
# Modules directly in harness/ that are not the core: entry points run by users.
ENTRY = {"conformance"}  # the backend conformance suite (pytest --pyargs), plugin-facing
MAX_FUNCTION_LINES = 80
MAX_CLI_MODULE_LINES = 400


def module_name(path: Path) -> str:
    rel = path.relative_to(HARNESS).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def room(module: str) -> str:
    parts = module[len(PACKAGE) + 1:].split(".") if module != PACKAGE else [""]
    if parts[0] in RANKS:  # a room's package or one of its modules
        return parts[0]
    return "entry" if parts[0] in ENTRY else "core"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The harness modules ``path`` imports, wherever the import statement is (a function's
    imports count: they run)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:  # "pkg.mod.Class" -> "pkg.mod"
                t = t.rpartition(".")[0]
            if t and t != name and t != PACKAGE:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(p, m, set(found)) for m, p in found.items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, targets in sorted(g.items()):
        for t in sorted(targets):
            a, b = room(m), room(t)
            if a != b and RANKS[b] >= RANKS[a]:
                out.append(f"{m} ({a}) imports {t} ({b})")
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{p.relative_to(HARNESS.parent)}:{node.lineno} {node.name}: {n} lines")
    return out


def long_cli_modules(limit: int = MAX_CLI_MODULE_LINES) -> list[str]:
    return [f"{p.relative_to(HARNESS.parent)}: {n} lines"
            for m, p in modules().items() if room(m) == "cli"
            if (n := len(p.read_text().splitlines())) > limit]


# ---------------------------------------------------------------------------- tests


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_no_import_points_up():
    assert upward(graph()) == []


def test_every_module_has_a_room():
    assert {room(m) for m in modules()} <= set(RANKS)


def test_no_function_longer_than_80_lines():
    assert long_functions() == []


def test_cli_modules_under_400_lines():
    assert long_cli_modules() == []


def test_every_room_is_a_package_the_wheel_ships():
    """pyproject lists packages explicitly: a subpackage missing there is missing from a
    non-editable install (an editable one would hide it)."""
    import re

    text = (HARNESS.parent / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(fwbench\.harness[\w.]*)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    packages = {module_name(p) for p in HARNESS.rglob("__init__.py")}
    assert packages <= listed, sorted(packages - listed)


def test_the_checks_can_fail():
    """The checkers find what they look for: a cycle, an upward import, a long function."""
    g = {f"{PACKAGE}.spec": {f"{PACKAGE}.run.runner"}, f"{PACKAGE}.run.runner": {f"{PACKAGE}.spec"}}
    assert cycles(g) == [sorted(g)]
    assert upward(g) == [f"{PACKAGE}.spec (core) imports {PACKAGE}.run.runner (run)"]
    assert long_functions(limit=1)


if __name__ == "__main__":
    g = graph()
    by_room: dict[str, list[str]] = {}
    for m in g:
        by_room.setdefault(room(m), []).append(m)
    for r in sorted(by_room, key=lambda r: (RANKS[r], r)):
        deps = sorted({room(t) for m in by_room[r] for t in g[m]} - {r},
                      key=lambda x: (RANKS[x], x))
        print(f"{r:8} (rank {RANKS[r]}) {len(by_room[r]):2d} modules, imports: {', '.join(deps) or '-'}")
    found = cycles(g)
    print(f"import cycles: {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    up = upward(g)
    print(f"imports that point up: {len(up)}")
    for line in up:
        print("  " + line)
    lf = long_functions()
    print(f"functions over {MAX_FUNCTION_LINES} lines: {len(lf)}")
    for line in lf:
        print("  " + line)
    lc = long_cli_modules()
    print(f"cli modules over {MAX_CLI_MODULE_LINES} lines: {len(lc)}")
    for line in lc:
        print("  " + line)
    sys.exit(1 if found or up or lf or lc else 0)
