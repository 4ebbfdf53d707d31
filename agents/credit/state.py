"""Per-creator diamond state and its invariants.

Invariants (checked by `check()` after every change):
- available >= 0 and lifetime == available + paid_out (diamonds are conserved);
- credited diamonds are kept per UTC day for at most MAX_DAYS days (bounded state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_DAYS = 40


@dataclass(slots=True)
class CreatorState:
    available: int = 0
    lifetime: int = 0
    paid_out: int = 0
    day_diamonds: dict[int, int] = field(default_factory=dict)
    seq: int = 0

    def check(self) -> None:
        assert self.available >= 0, self
        assert self.lifetime == self.available + self.paid_out, self
        assert len(self.day_diamonds) <= MAX_DAYS, self

    def copy(self) -> "CreatorState":
        return CreatorState(self.available, self.lifetime, self.paid_out, dict(self.day_diamonds), self.seq)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.available, "l": self.lifetime, "p": self.paid_out,
            "d": [[day, n] for day, n in self.day_diamonds.items()], "q": self.seq,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CreatorState":
        state = cls(data["a"], data["l"], data["p"], {d: n for d, n in data["d"]}, data["q"])
        state.check()
        return state
