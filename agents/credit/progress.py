"""How far each user-ledger partition has got, as seen by one creator-ledger partition.

A gift's credit reaches the creator ledger from the sender's partition while a payout
comes from the creator's: without care a payout could be decided before the credit of
a gift made just before it. Every user-ledger partition therefore writes a progress mark
to every creator-ops partition with each commit (and every MARK_INTERVAL_MS while idle):
the newest event time it has applied, and whether all its inputs are read. A payout at
event time T is decided once every source has passed T, or has reported itself idle
after the payout arrived; or after a bounded wait (a source may have no worker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MARK_INTERVAL_MS = 500


@dataclass(slots=True)
class Progress:
    marks: dict[int, tuple[int, bool, int]] = field(default_factory=dict)  # source -> (ts, idle, mark no.)
    seq: int = 0

    def record(self, source: int, ts: int, idle: bool) -> None:
        old_ts, _, n = self.marks.get(source, (ts, False, 0))
        self.marks[source] = (max(old_ts, ts), idle, n + 1)
        self.seq += 1

    def snapshot(self) -> dict[str, int]:
        """Mark numbers now: what "after the payout arrived" is measured against."""
        return {str(source): n for source, (_, _, n) in self.marks.items()}

    def passed(self, ts: int, since: dict[str, int], sources: int) -> bool:
        for source in range(sources):
            mark = self.marks.get(source)
            if mark is None:
                return False
            mark_ts, idle, n = mark
            if mark_ts < ts and not (idle and n > since.get(str(source), 0)):
                return False
        return True

    def horizon(self, sources: int) -> int | None:
        """Event time every source has passed (None until every source has reported)."""
        if any(s not in self.marks for s in range(sources)):
            return None
        return min(self.marks[s][0] for s in range(sources))

    def to_json(self) -> dict[str, Any]:
        return {"m": [[s, ts, idle, n] for s, (ts, idle, n) in self.marks.items()], "q": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Progress":
        return cls({s: (ts, idle, n) for s, ts, idle, n in data["m"]}, data["q"])
