"""Per-creator diamond state and its invariants.

Invariants (checked by `check()` after every change):
- available >= 0 and lifetime == available + paid_out (diamonds are conserved);
- credited diamonds are kept per UTC day for at most MAX_DAYS days (bounded state);
- `held` (payouts waiting for every earlier credit, see agents/credit/agent.py) holds
  at most MAX_HELD payouts, and `recent` (credits of gifts some user partition may not
  have passed yet) at most MAX_RECENT entries.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from agents.fraud.concentration import NewSenders
from agents.fraud.farming import Farmers
from pipeline.invariants import require

MAX_DAYS = 40
# Tumbling windows of credited diamonds: size name -> (size in ms, windows kept).
WINDOWS = {"1m": (60_000, 120), "1h": (3_600_000, 48)}
MAX_HELD = 10_000
MAX_RECENT = 100_000
_ANY = float("inf")  # sorts after every diamonds value: [ts, _ANY] follows all [ts, d]


@dataclass(slots=True)
class CreatorState:
    available: int = 0
    lifetime: int = 0
    paid_out: int = 0
    day_diamonds: dict[int, int] = field(default_factory=dict)
    seq: int = 0
    # payouts (as creator-ops records) waiting until no earlier credit can still come
    held: list[dict[str, Any]] = field(default_factory=list)
    # [event time, diamonds, cycle read in] of credits that a payout dated before them
    # must not count, while such a payout may still come (agents/credit/progress.py)
    recent: list[list[int]] = field(default_factory=list)
    # window size name -> window start (ms) -> diamonds credited by gifts in the window
    windows: dict[str, dict[int, int]] = field(default_factory=dict)
    # diamonds from new senders by hour (payout_concentration, agents/fraud/concentration.py)
    senders: NewSenders = field(default_factory=NewSenders)
    # new senders drained of a bonus, in the last window (bonus_farming, agents/fraud/farming.py)
    farmers: Farmers = field(default_factory=Farmers)
    # ("day", day) and (size, start) credited since the read model was last given this value
    # (not persisted).
    touched: set[tuple[str, int]] = field(default_factory=set, compare=False, repr=False)

    def available_at(self, ts: int) -> int:
        """Available diamonds without the credits of gifts later than `ts`; never below
        zero (later payouts may already have spent those credits)."""
        later = bisect.bisect_right(self.recent, [ts, _ANY])
        return max(0, self.available - sum(e[1] for e in self.recent[later:]))

    def remember(self, ts: int, diamonds: int, cycle: int) -> None:
        """`recent` is kept in event-time order (credits mostly arrive in it)."""
        bisect.insort(self.recent, [ts, diamonds, cycle])

    def forget_recent(self, covered: int) -> None:
        """Forget the credits read in a covered cycle (every payout acknowledged before
        their gifts is in) that no held payout is dated before."""
        oldest_held = min((op["ts"] for op in self.held), default=None)
        if self.recent:
            self.recent = [e for e in self.recent
                           if e[2] > covered or (oldest_held is not None and e[0] > oldest_held)]
        if len(self.recent) > MAX_RECENT:
            del self.recent[: len(self.recent) - MAX_RECENT]

    def check(self) -> None:
        require(self.available >= 0, "available diamonds >= 0")
        require(self.paid_out >= 0, "paid-out diamonds >= 0")
        require(self.lifetime == self.available + self.paid_out, "lifetime == available + paid out")
        require(len(self.day_diamonds) <= MAX_DAYS, "credited days <= MAX_DAYS")
        require(len(self.held) <= MAX_HELD, "held payouts <= MAX_HELD")
        require(all(op["op"] == "p" for op in self.held), "held records are payouts")
        require(len(self.recent) <= MAX_RECENT, "recent credits <= MAX_RECENT")
        require(all(a <= b for a, b in zip(self.recent, self.recent[1:])), "recent credits by event time")
        require(all(len(e) == 3 for e in self.recent), "recent credits are [ts, diamonds, cycle]")
        require(all(len(self.windows.get(name, ())) <= kept for name, (_, kept) in WINDOWS.items()),
                "windows within their bounds")
        self.senders.check()
        self.farmers.check()

    def add_to_windows(self, ts: int, diamonds: int) -> None:
        for name, (size, kept) in WINDOWS.items():
            windows = self.windows.setdefault(name, {})
            start = ts - ts % size
            windows[start] = windows.get(start, 0) + diamonds
            self.touched.add((name, start))
            while len(windows) > kept:
                del windows[min(windows)]

    def to_json(self) -> dict[str, Any]:
        data = {
            # "lt": a user's "l" is its own daily limit; one letter, one meaning in the changelogs
            "a": self.available, "lt": self.lifetime, "p": self.paid_out,
            "d": [[day, n] for day, n in self.day_diamonds.items()], "q": self.seq,
        }
        if self.held:
            data["h"] = self.held
        if self.recent:
            data["r"] = self.recent
        if self.windows:
            data["w"] = {name: [[start, n] for start, n in w.items()] for name, w in self.windows.items()}
        if self.senders:
            data["n"] = self.senders.to_json()
        if self.farmers:
            data["bf"] = self.farmers.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CreatorState:
        lifetime = data["lt"] if "lt" in data else data["l"]  # "l": written before the rename
        state = cls(data["a"], lifetime, data["p"], {d: n for d, n in data["d"]}, data["q"], data.get("h", []),
            sorted([*e, 0][:3] for e in data.get("r", [])),
            {name: {start: n for start, n in w} for name, w in data.get("w", {}).items()},
            NewSenders.from_json(data.get("n")), farmers=Farmers.from_json(data.get("bf")),
        )
        state.check()
        return state
