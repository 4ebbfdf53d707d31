"""Causal cuts: when a creator-ledger partition has every credit and payout it must.

A gift's credit reaches the creator ledger from the sender's partition, a payout from
the creator's; without care a payout could be decided before the credit of a gift
that was acknowledged before the payout was even produced (CONTRACT.md, causal
order), or count one that came after it.

How it holds, by offsets, never by event time (a producer's clock may run ahead):

- Each cycle, the engine gives this partition the end offsets of `gifts` and `payouts`
  on every partition, asked after the cycle's fetch returned (`cut`). Whatever was
  acknowledged before a record this cycle read is below them.
- Each user-ledger partition writes, with every commit that moves them, a progress mark
  to every creator-ops partition: the offsets of its `gifts` and `payouts` below which
  it has applied everything (`record`). The credits and payouts of what it applied
  precede the mark in each creator-ops partition.
- A cycle is *covered* once every source's mark has reached that cycle's cut. A payout
  read in cycle k is decided once k is covered: every gift acknowledged before it was
  produced is credited by then. A credit read in cycle j is remembered (with its event
  time, so an earlier-dated payout leaves it out) until j is covered and no held payout
  is dated before it: by then every payout acknowledged before its gift was produced
  has been read.

- Sooner, in a backlog: a payout whose topic keeps the broker's time (LogAppendTime,
  as the pipeline creates its inputs) carries when it was written; a cut at that time
  (per partition, the first record written then or later: Kafka's offsets for a time)
  holds every gift and payout acknowledged before it was produced, so reaching it is
  enough, without waiting for everything written after it (CreatorLedger._decidable).
  This trusts the brokers' clocks to agree within a millisecond or so.

Bounded: at most MAX_CUTS cuts wait (a source far behind); cycles past that get no cut
and wait for the next one, which is later, so still safe. A payout stops waiting once
it has waited MAX_HOLD_MS and every source it waits for has sent no progress for as
long (a source with no worker, or stuck); a source that is merely behind keeps marking,
and the payout waits for it (CreatorLedger._stalled).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pipeline.invariants import require

MAX_CUTS = 10_000
Offsets = tuple[int, int]  # (gifts, payouts) of one user-ledger partition


@dataclass(slots=True)
class Progress:
    applied: dict[int, Offsets] = field(default_factory=dict)  # source -> offsets applied below
    newest: dict[int, int] = field(default_factory=dict)  # source -> newest event time applied
    cycle: int = 1  # this partition's cycles, counted across restarts (the first is 1: none is covered)
    covered: int = 0  # every cycle up to this one is covered
    seq: int = 0
    # The latest cycle stamped on a payout or credit: persisted in place of `cycle`, so a
    # quiet cycle changes nothing stored, and a restart resumes above every stamp.
    stamped: int = 0
    # (cycle, cut per source) not yet covered; not persisted: after a restart the next
    # cuts are later than anything waiting, which is safe.
    cuts: deque[tuple[int, dict[int, Offsets]]] = field(default_factory=deque, compare=False, repr=False)

    def record(self, source: int, offsets: Offsets, newest: int = 0) -> None:
        old = self.applied.get(source, (0, 0))
        self.applied[source] = (max(old[0], offsets[0]), max(old[1], offsets[1]))
        self.newest[source] = max(self.newest.get(source, 0), newest)
        self._advance()

    def cut(self, ends: dict[int, Offsets] | None) -> None:
        """A new cycle, with the end offsets asked after its fetch (None: unknown)."""
        self.cycle += 1
        if ends is not None and len(self.cuts) < MAX_CUTS:
            self.cuts.append((self.cycle, ends))
        self._advance()

    def stamp(self) -> int:
        """The current cycle's number, for a payout or credit read in it."""
        self.stamped = self.cycle
        return self.cycle

    def _advance(self) -> None:
        while self.cuts and self.reached(self.cuts[0][1]):
            self.covered = max(self.covered, self.cuts.popleft()[0])

    def passed(self, ts: int, cut: dict[int, Offsets] | None, sources: int) -> bool:
        """Every source has applied an event dated `ts` or later, or everything below
        its part of `cut` (a source with nothing newer to apply)."""
        for source in range(sources):
            if self.newest.get(source, 0) >= ts:
                continue
            done = self.applied.get(source)
            if cut is None or source not in cut or done is None or done[0] < cut[source][0] or done[1] < cut[source][1]:
                return False
        return True

    def reached(self, cut: dict[int, Offsets]) -> bool:
        for source, (gifts, payouts) in cut.items():
            done = self.applied.get(source)
            if done is None or done[0] < gifts or done[1] < payouts:
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        # Covered beyond the latest stamp covers nothing stored: not worth a write.
        return {"a": [[s, g, p, self.newest.get(s, 0)] for s, (g, p) in self.applied.items()], "c": self.stamped,
                "v": min(self.covered, self.stamped), "q": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        progress = cls({a[0]: (a[1], a[2]) for a in data["a"]}, {a[0]: (a[3] if len(a) > 3 else 0) for a in data["a"]},
                       data["c"], data["v"], data["q"], data["c"])
        progress.check()
        return progress

    def check(self) -> None:
        require(self.covered >= 0, "covered cycles >= 0")
        require(self.stamped <= self.cycle, "stamped cycles <= cycles")
        require(self.covered <= self.cycle, "covered cycles <= cycles")
        require(len(self.cuts) <= MAX_CUTS, "waiting cuts <= MAX_CUTS")
        require(all(g >= 0 for g, _ in self.applied.values()), "applied gift offsets >= 0")
        require(all(p >= 0 for _, p in self.applied.values()), "applied payout offsets >= 0")
