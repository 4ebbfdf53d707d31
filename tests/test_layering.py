"""The architecture, checked: the engine knows nothing of the ledger, and the runtime
nothing of the tools. Imports are read from the source (AST), transitively within
the repository, so an indirect import through a shared module fails too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "agents", "tools")


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Repository modules `path` imports, anywhere in it (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


SOURCES = {module_of(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def reached(start: str, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every repository module `start` imports, directly or not: module -> the module
    that imports it (for the failure message)."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        for name in imports(SOURCES[current]):
            # "from a.b import c": c is a module or a name in a.b
            target = name if name in SOURCES else name.rsplit(".", 1)[0]
            if target in SOURCES and target not in seen and target != start and target not in skip:
                seen[target] = current
                todo.append(target)
    return seen


def test_the_engine_imports_nothing_of_the_ledger() -> None:
    engine = [m for m in SOURCES if m.startswith("pipeline.engine")]
    assert engine
    for module in engine:
        bad = {m: by for m, by in reached(module).items() if m.split(".")[0] == "agents"}
        assert not bad, f"{module} reaches the ledger (agents) through {bad}"


def test_the_runtime_imports_no_tool() -> None:
    """The worker image holds pipeline/ and agents/ only. The command line (pipeline
    /__main__.py) registers the tool commands when the tools package is installed."""
    for module in [m for m in SOURCES if m.split(".")[0] in ("pipeline", "agents") and m != "pipeline.__main__"]:
        bad = {m: by for m, by in reached(module).items() if m.split(".")[0] == "tools"}
        assert not bad, f"{module} reaches the tools through {bad}"


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from agents.outcomes import Outcome\n")
    assert imports(source) == {"agents.outcomes", "agents.outcomes.Outcome"}


def test_the_check_follows_imports_transitively() -> None:
    """A positive control: the app wires the ledger into the engine, so it reaches both."""
    found = reached("pipeline.app")
    assert "agents.ledger.agent" in found and "pipeline.engine.engine" in found
    assert "agents.fraud.alerts" in found  # only through the agents' own imports
