"""A subject's recent events within one sliding event-time window: does any window of
that length reach a count or an amount?

Kept entries span less than the window (older ones are dropped as newer arrive), so
the kept entries are the heaviest window holding the newest event: checked on every
event, in event-time order, that finds every window that crosses a threshold.
`quiet_until` makes it one alert per window: after an alert, no window starting
before the end of the alerted one counts.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pipeline.invariants import require


class Entry(NamedTuple):
    """One event of the window; ordered by time first (bisect keeps `entries` sorted)."""

    ts: int
    amount: int
    event_id: str


@dataclass(frozen=True, slots=True)
class Crossing:
    start: int
    end: int
    count: int
    amount: int
    event_ids: list[str]


@dataclass(slots=True)
class Burst:
    entries: list[Entry] = field(default_factory=list)  # by event time
    quiet_until: int = 0

    def __bool__(self) -> bool:
        return bool(self.entries) or self.quiet_until > 0

    def observe(self, ts: int, amount: int, event_id: str, window_ms: int, max_count: int,
                max_amount: int | None = None) -> Crossing | None:
        """Add an event; the window it completes if that reaches `max_count` events or
        `max_amount` (None: no amount threshold)."""
        require(window_ms > 0, 'window_ms > 0')
        require(max_count > 0, 'max_count > 0')
        require(amount >= 0, 'amount >= 0')
        if ts < self.quiet_until:
            return None  # inside a window that already alerted
        bisect.insort(self.entries, Entry(ts, amount, event_id))
        newest = self.entries[-1].ts
        self._drop_before(newest - window_ms + 1)
        if not self.entries or self.entries[0].ts > ts:
            return None  # too late: older than the window of the newest event
        # A window reaching max_count alerts and is emptied, so only a threshold lowered
        # since the state was written leaves more: the newest are the window that counts.
        del self.entries[:-max_count]
        count, total = len(self.entries), sum(e.amount for e in self.entries)
        if count < max_count and (max_amount is None or total < max_amount):
            return None
        crossing = Crossing(self.entries[0].ts, newest, count, total, [e.event_id for e in self.entries])
        self.quiet_until = crossing.start + window_ms
        self._drop_before(self.quiet_until)
        return crossing

    def _drop_before(self, ts: int) -> None:
        cut = bisect.bisect_left(self.entries, (ts,))
        if cut:
            del self.entries[:cut]

    def to_json(self) -> list[Any]:
        return [[list(e) for e in self.entries], self.quiet_until]

    @classmethod
    def from_json(cls, data: list[Any] | None) -> Burst:
        return cls() if data is None else cls([Entry(*e) for e in data[0]], data[1])
