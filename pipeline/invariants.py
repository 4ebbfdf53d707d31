"""Checks that hold whatever the interpreter's flags: `python -O` strips `assert`, and
money code must never run on without its invariants (TigerStyle: assertions are
documentation that is executed). One condition per call, so a failure names it."""

from __future__ import annotations


class InvariantError(AssertionError):
    """A condition the code relies on is false: a bug, or input that breaks an invariant
    (then the record that caused it is dead-lettered, see pipeline/engine/task.py)."""


def require(condition: bool, what: str) -> None:
    """Raise InvariantError naming `what` (the condition that should hold) if false."""
    if not condition:
        raise InvariantError(what)
