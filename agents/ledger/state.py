"""Per-user ledger state and its invariants.

Invariants (checked by `check()` after every change):
- balance >= 0, and recharged == balance + spent (coins are conserved per user);
- spend is kept for at most MAX_SPEND_DAYS UTC days (bounded state per user).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DAY_MS = 86_400_000
# Spend is kept for the user's newest MAX_SPEND_DAYS spend days; a gift dated before
# all of them once that many are kept is refused (its day's total is unknown).
MAX_SPEND_DAYS = 40


def utc_day(ts: int) -> int:
    return ts // DAY_MS


@dataclass(slots=True)
class UserState:
    balance: int = 0
    recharged: int = 0
    spent: int = 0
    own_limit: int | None = None
    day_spend: dict[int, int] = field(default_factory=dict)
    # Incremented on every change; lets read models refuse stale writes.
    seq: int = 0

    def check(self) -> None:
        assert self.balance >= 0, self
        assert self.recharged == self.balance + self.spent, self
        assert self.own_limit is None or self.own_limit >= 0, self
        assert len(self.day_spend) <= MAX_SPEND_DAYS, self
        assert all(v > 0 for v in self.day_spend.values()), self

    def copy(self) -> "UserState":
        return UserState(self.balance, self.recharged, self.spent, self.own_limit, dict(self.day_spend), self.seq)

    def day_total_forgotten(self, day: int) -> bool:
        return len(self.day_spend) >= MAX_SPEND_DAYS and day < min(self.day_spend)

    def add_day_spend(self, day: int, coins: int) -> None:
        assert not self.day_total_forgotten(day)
        self.day_spend[day] = self.day_spend.get(day, 0) + coins
        if len(self.day_spend) > MAX_SPEND_DAYS:
            del self.day_spend[min(self.day_spend)]

    def to_json(self) -> dict[str, Any]:
        return {
            "b": self.balance, "r": self.recharged, "s": self.spent, "l": self.own_limit,
            "d": [[day, coins] for day, coins in self.day_spend.items()], "q": self.seq,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "UserState":
        state = cls(data["b"], data["r"], data["s"], data["l"], {d: c for d, c in data["d"]}, data["q"])
        state.check()
        return state
