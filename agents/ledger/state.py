"""Per-user ledger state and its invariants.

Invariants (checked by `check()` after every change):
- balance >= 0, and recharged + bonus == balance + spent (coins are conserved per user:
  bonus coins, which have no payment behind them, are counted apart);
- bonuses are counted for at most MAX_PROMOS promotions per user;
- spend is kept for at most MAX_SPEND_DAYS UTC days and MAX_SPEND_MONTHS UTC calendar
  months (bounded state per user).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agents.fraud.sender import SenderWatch
from pipeline.economics import DAY_MS
from pipeline.invariants import require

# Spend is kept for the user's newest MAX_SPEND_DAYS spend days; a gift dated before
# all of them once that many are kept is refused (its day's total is unknown).
MAX_SPEND_DAYS = 40
# Month spend likewise, for the newest MAX_SPEND_MONTHS months: an event older than the
# duplicate window (7 days) is refused, so two months matter at most.
MAX_SPEND_MONTHS = 3
# Coins per live stream are kept (for the stream's top-gifter board) while the user gave
# to the stream within STREAM_DAYS days of their newest gift, for MAX_STREAMS streams.
STREAM_DAYS = 30
MAX_STREAMS = 1_000
# Bonuses received, per promotion (for its max_per_user), for this many promotions at
# most: those no in-time recharge can qualify for any more are forgotten first.
MAX_PROMOS = 64


def utc_day(ts: int) -> int:
    return ts // DAY_MS


def utc_month(ts: int) -> int:
    """The UTC calendar month of `ts`, as months since year 0 (year * 12 + month - 1)."""
    t = time.gmtime(ts // 1000)
    return t.tm_year * 12 + t.tm_mon - 1


def month_name(month: int) -> str:
    return f"{month // 12:04d}-{month % 12 + 1:02d}"


@dataclass(slots=True)
class UserState:
    balance: int = 0
    recharged: int = 0
    spent: int = 0
    own_limit: int | None = None
    day_spend: dict[int, int] = field(default_factory=dict)
    # Set by the store (pipeline/engine/store.py): lets read models refuse stale writes.
    seq: int = 0
    streams: dict[str, list[int]] = field(default_factory=dict)  # stream -> [coins, last day]
    # Days and streams changed since the read model was last given this value (not persisted):
    # what the leaderboards must be told.
    touched: set[tuple[str, Any]] = field(default_factory=set, compare=False, repr=False)
    first_ts: int | None = None  # event time of the user's first event (fraud rules)
    # What the fraud rules remember of the user (agents/fraud/sender.py).
    watch: SenderWatch = field(default_factory=SenderWatch)
    own_monthly: int | None = None  # the user's own monthly budget (spend-limits)
    month_spend: dict[int, int] = field(default_factory=dict)  # utc_month -> coins
    bonus: int = 0  # bonus coins received from promotions
    promos: dict[str, int] = field(default_factory=dict)  # promo_id -> bonuses received

    def check(self) -> None:
        require(self.balance >= 0, "balance >= 0")
        require(self.spent >= 0, "spent >= 0")
        require(self.bonus >= 0, "bonus >= 0")
        require(self.recharged + self.bonus == self.balance + self.spent, "recharged + bonus == balance + spent")
        require(len(self.promos) <= MAX_PROMOS, "promotions counted <= MAX_PROMOS")
        require(all(n > 0 for n in self.promos.values()), "each promotion counted was received")
        require(self.own_limit is None or self.own_limit >= 0, "own daily limit >= 0")
        require(len(self.day_spend) <= MAX_SPEND_DAYS, "spend days <= MAX_SPEND_DAYS")
        require(all(v > 0 for v in self.day_spend.values()), "each day's spend > 0")
        require(len(self.streams) <= MAX_STREAMS, "streams <= MAX_STREAMS")
        require(self.own_monthly is None or self.own_monthly >= 0, "own monthly budget >= 0")
        require(len(self.month_spend) <= MAX_SPEND_MONTHS, "spend months <= MAX_SPEND_MONTHS")
        require(all(v > 0 for v in self.month_spend.values()), "each month's spend > 0")
        require(sum(self.month_spend.values()) <= self.spent, "month spend <= lifetime spend")

    def add_stream_spend(self, stream_id: str, day: int, coins: int) -> None:
        entry = self.streams.setdefault(stream_id, [0, day])
        entry[0] += coins
        entry[1] = max(entry[1], day)
        self.touched.add(("stream", stream_id))
        newest = max(v[1] for v in self.streams.values())
        for old in [k for k, v in self.streams.items() if v[1] < newest - STREAM_DAYS]:
            del self.streams[old]
        while len(self.streams) > MAX_STREAMS:
            del self.streams[min(self.streams, key=lambda k: (self.streams[k][1], k))]

    def note_event(self, ts: int) -> None:
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)

    def day_total_forgotten(self, day: int) -> bool:
        return len(self.day_spend) >= MAX_SPEND_DAYS and day < min(self.day_spend)

    def add_day_spend(self, day: int, coins: int) -> None:
        require(not self.day_total_forgotten(day), 'not self.day_total_forgotten(day)')
        self.day_spend[day] = self.day_spend.get(day, 0) + coins
        self.touched.add(("day", day))
        if len(self.day_spend) > MAX_SPEND_DAYS:
            del self.day_spend[min(self.day_spend)]

    def month_total_forgotten(self, month: int) -> bool:
        return len(self.month_spend) >= MAX_SPEND_MONTHS and month < min(self.month_spend)

    def add_month_spend(self, month: int, coins: int) -> None:
        require(not self.month_total_forgotten(month), "not self.month_total_forgotten(month)")
        self.month_spend[month] = self.month_spend.get(month, 0) + coins
        if len(self.month_spend) > MAX_SPEND_MONTHS:
            del self.month_spend[min(self.month_spend)]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "b": self.balance, "r": self.recharged, "s": self.spent, "l": self.own_limit,
            "d": [[day, coins] for day, coins in self.day_spend.items()], "q": self.seq,
            "st": self.streams, "f": self.first_ts,
        }
        watch = self.watch.to_json()
        if watch:
            data["w"] = watch
        if self.own_monthly is not None or self.month_spend:
            data["ml"], data["m"] = self.own_monthly, [[m, coins] for m, coins in self.month_spend.items()]
        if self.bonus or self.promos:
            data["bo"], data["p"] = self.bonus, self.promos
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UserState:
        state = cls(
            data["b"], data["r"], data["s"], data["l"], {d: c for d, c in data["d"]}, data["q"], data.get("st", {}),
            first_ts=data.get("f"), watch=SenderWatch.from_json(data.get("w")),
            own_monthly=data.get("ml"), month_spend={m: c for m, c in data.get("m", [])},
            bonus=data.get("bo", 0), promos=dict(data.get("p", {})),
        )
        state.check()
        state.watch.check()  # the rules check it where it changes (agents/fraud/sender.py)
        return state
