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


OPTIMIZED_ERROR = ("python -O (or PYTHONOPTIMIZE) strips the assert statements this code keeps for "
                   "type narrowing; the ledger refuses to run so: start it without -O and unset PYTHONOPTIMIZE")


def refuse_optimized() -> None:
    """Called before anything runs: every invariant is a `require`, but the few `assert
    x is not None` left for type narrowing must not silently vanish either."""
    if not __debug__:
        raise SystemExit(f"error: {OPTIMIZED_ERROR}")
