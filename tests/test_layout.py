"""The house rules of DESIGN §2, read from the source: the floors, no import circle, thin command modules."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"fgssl": 0, "strategies": 1, "client": 2, "server": 2, "simulations": 3, "cli": 4}


def _modules() -> dict[str, Path]:
    out = {}
    for package in FLOORS:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every project module `name` imports, at the top or inside a function, resolved to a module of MODULES."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _floor(module: str) -> int:
    return FLOORS[module.split(".")[0]]


def test_no_module_imports_a_higher_floor() -> None:
    upward = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts if _floor(t) > _floor(m))
    assert not upward, upward


def test_the_method_never_imports_flower() -> None:
    flwr = []
    for name, path in MODULES.items():
        if name.split(".")[0] == "fgssl":
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                        [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                flwr += [f"{name}: {m}" for m in mods if m.split(".")[0] in ("flwr", "ray")]
    assert not flwr, flwr


def test_no_import_circle() -> None:
    """Lazy imports count too: a circle through a function-level import is still two modules that need each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in GRAPH[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            part = []
            while True:
                t = stack.pop()
                part.append(t)
                if t == m:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    # A package's __init__ that re-exports from its own modules is no circle of the kind that bites; none here.
    assert not circles, circles


def test_commands_are_thin_fronts() -> None:
    """cli/*_cmd.py parse arguments and call into the wings; nothing imports a command (cli.main finds them by name),
    and the command line's entry point is imported by nobody."""
    commands = {m for m in MODULES if m.startswith("cli.") and m.endswith("_cmd")}
    assert len(commands) >= 10
    importers = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts if t in commands or t == "cli.main")
    assert not importers, importers
    long = {m: n for m in commands if (n := len(MODULES[m].read_text(encoding="utf-8").splitlines())) > 110}
    assert not long, f"command modules that hold more than argument parsing and output: {long}"
    flat = sorted(p.name for p in (REPO / "cli").glob("*.py") if not p.name.endswith("_cmd.py"))
    assert flat == ["__init__.py", "arguments.py", "common.py", "errors.py", "main.py", "progress.py"], flat
