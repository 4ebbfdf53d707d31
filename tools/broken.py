"""Deliberately broken copies of the pipeline (`python -m pipeline soak --broken NAME`).

A soak that passes proves something only if it fails when the pipeline is wrong. Each
breakage here is one named edit of a copy's source text; the soak runs its workers
from the copy and everything else (producer, reference ledger, checks) from the real
tree, and must then exit 1 naming the checks that caught it.

An edit is an exact replacement that must match once: when the code it targets
changes, the breakage raises instead of silently breaking nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import PROJECT_ROOT

# What a worker imports: tools too, since `python -m pipeline` registers the tool
# commands when it finds them; the copy then holds every module a worker loads.
COPIED = ("pipeline", "agents", "tools", "schemas", "pyproject.toml")
PACKAGES = ("pipeline", "agents", "tools")
MARK = "# BROKEN (tools/broken.py)"


class BreakageError(Exception):
    """A breakage's target text is not in the tree exactly once."""


@dataclass(frozen=True)
class Breakage:
    path: str  # relative to the tree's root
    old: str
    new: str
    caught_by: str  # what the soak should report


BREAKAGES: dict[str, Breakage] = {
    # The gift rule: every gift refused as if the sender could not pay for it.
    "rejects-gifts": Breakage(
        "agents/ledger/rules.py",
        "    if coins > state.balance:\n        return \"insufficient_coins\"\n",
        f"    if coins > 0:  {MARK}: every gift rejected\n        return \"insufficient_coins\"\n",
        "outcomes differ from the reference; boards and balances too",
    ),
    # The read-model sink: the Lua call is not made for creators whose id ends in 7,
    # and they are dropped from pending as if written (silently: no error, no retry).
    "drops-redis-write": Breakage(
        "agents/readmodel/redis_sink.py",
        "                        keys = [hash_key(self.settings, kind, id_) for (kind, id_), _ in chunk]\n"
        "                        entries = [self._entry(u) for _, u in chunk]\n",
        "                        kept = [(k, u) for k, u in chunk"
        f" if not (k[0] == \"creator\" and k[1].endswith(\"7\"))]  {MARK}\n"
        "                        if not kept:\n"
        "                            continue\n"
        "                        keys = [hash_key(self.settings, kind, id_) for (kind, id_), _ in kept]\n"
        "                        entries = [self._entry(u) for _, u in kept]\n",
        "creator hashes and creator boards differ from the reference",
    ),
}


def copy_tree(dst: Path, src: Path = PROJECT_ROOT) -> Path:
    """The packages a worker runs from, without bytecode caches (only source, which
    the breakage edits)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src / name, dst / name)
    return dst


def apply(root: Path, name: str) -> Breakage:
    """Edit the tree at `root`; raises BreakageError unless the target matches once."""
    if name not in BREAKAGES:
        raise BreakageError(f"unknown breakage {name!r}; known: {', '.join(sorted(BREAKAGES))}")
    b = BREAKAGES[name]
    path = root / b.path
    text = path.read_text()
    found = text.count(b.old)
    if found != 1:
        raise BreakageError(f"{name}: the target text occurs {found} times in {b.path}, not once; "
                            "update tools/broken.py to the code as it is now")
    path.write_text(text.replace(b.old, b.new))
    return b


@contextmanager
def broken_tree(name: str, src: Path = PROJECT_ROOT) -> Iterator[Path]:
    """A temporary broken copy, removed afterwards (the workers' state under its
    var/ with it, unless PIPELINE_DATA_DIR points elsewhere)."""
    with tempfile.TemporaryDirectory(prefix=f"soak-broken-{name}-") as tmp:
        root = copy_tree(Path(tmp) / "tree", src)
        apply(root, name)
        yield root


def worker_env(root: Path, env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the copy first on the import path: the venv's editable install of
    the real tree is a meta-path finder, consulted only after sys.path."""
    rest = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": str(root) + (os.pathsep + rest if rest else "")}


def check_imports(root: Path, env: Mapping[str, str]) -> None:
    """Raise unless a process started like the workers imports every package from
    the copy: a broken run that ran the real tree would pass and prove nothing."""
    names = ", ".join(PACKAGES)
    code = f"import {names}; print(*(m.__file__ for m in ({names},)), sep='\\n')"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=dict(env), capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    outside = [f for f in out if not Path(f).resolve().is_relative_to(root.resolve())]
    if outside or len(out) != len(PACKAGES):
        raise BreakageError(f"a worker started in {root} would import {outside or out} from outside the copy")
