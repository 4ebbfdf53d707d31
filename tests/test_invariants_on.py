"""Invariants cannot be switched off: every check of the runtime is a `require` (which
raises whatever the interpreter's flags), one condition each; the only `assert`s left
narrow a type (`x is not None`, `isinstance`), and the worker refuses to start under
`python -O`, which would strip them."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def narrowing(test: ast.expr) -> bool:
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot):
        return isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None
    return isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "isinstance"


def offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and not narrowing(node.test):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: assert (use require)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "require" and node.args:
            cond = node.args[0]
            if isinstance(cond, ast.BoolOp) and isinstance(cond.op, ast.And):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: require(a and b): one condition per call")
            if isinstance(cond, ast.Compare) and len(cond.ops) > 1:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: require(a <= b <= c): one condition per call")
    return found


def test_the_runtime_checks_with_require_one_condition_each() -> None:
    found = [o for pkg in ("pipeline", "agents") for p in sorted((ROOT / pkg).rglob("*.py")) for o in offences(p)]
    assert not found, "\n".join(found)


def test_the_check_finds_what_it_forbids(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("assert a > 0\nassert x is not None\nrequire(a and b, 'x')\nrequire(0 <= a <= b, 'y')\n")
    kinds = [o.split(": ", 1)[1] for o in offences(source.rename(ROOT / "tests" / f"_probe_{os.getpid()}.py"))]
    (ROOT / "tests" / f"_probe_{os.getpid()}.py").unlink()
    assert kinds == ["assert (use require)", "require(a and b): one condition per call",
                     "require(a <= b <= c): one condition per call"]


def test_python_dash_o_is_refused() -> None:
    for argv, env in ([sys.executable, "-O", "-m", "pipeline", "topics"], {}), \
                     ([sys.executable, "-m", "pipeline", "topics"], {"PYTHONOPTIMIZE": "1"}):
        done = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert "python -O (or PYTHONOPTIMIZE) strips the assert statements" in done.stderr
