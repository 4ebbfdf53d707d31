"""The promotions in force, by event time (CONTRACT.md, "Recharge").

Every worker reads the `promotions` topic whole (pipeline/engine/broadcast.py) into one
book, shared by its user-ledger partitions. A recharge at `ts` sees, per promo_id, the
latest record published whose own `ts` is at most the recharge's: so a book is a list
of versions per promo_id, each in force from its `since`. A record published later
than another with an earlier or equal `since` hides it for every recharge, so it is
dropped at once; what is left is ordered by `since` and published in that order, and
the version in force at `ts` is the last one with since <= ts (a bisection).

Bounded: versions that no in-time recharge can reach (a later one is in force since
before the oldest in-time event) and promotions that ended before it are pruned; at
most MAX_VERSIONS versions per promotion (the oldest goes first) and MAX_PROMOTIONS
promotions (a new promotion beyond it is refused: a dead letter).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

from agents.ingest.decode import decode_promotion
from agents.ingest.records import Promotion, Withdrawal
from pipeline.engine.stage import Malformed
from pipeline.invariants import require

log = logging.getLogger(__name__)

MAX_PROMOTIONS = 1_000
MAX_VERSIONS = 100


@dataclass(frozen=True, slots=True)
class Version:
    since: int  # in force for recharges dated from here on
    promo: Promotion | None  # None: withdrawn


@dataclass(frozen=True, slots=True)
class Bonus:
    promo_id: str
    coins: int


class PromotionBook:
    def __init__(self, behind_ms: int) -> None:
        self.behind_ms = behind_ms  # how old an in-time event can be (TimeBounds.behind_ms)
        self.versions: dict[str, list[Version]] = {}
        self.by_package: dict[int, set[str]] = {}  # coins -> promotions that ever listed them

    def publish(self, item: Promotion | Withdrawal, now_ms: float) -> str | None:
        """Apply one record, in its partition's order; the reason if it is refused."""
        promo = item if isinstance(item, Promotion) else None
        versions = self.versions.get(item.promo_id)
        if versions is None:
            if promo is None:
                return None  # withdraws what was never seen (or was pruned): nothing to do
            self.prune(now_ms)
            if len(self.versions) >= MAX_PROMOTIONS:
                return (f"more than {MAX_PROMOTIONS} promotions would be in force or pending; withdraw ended ones "
                        "(a tombstone) before publishing more")
            versions = self.versions[item.promo_id] = []
        while versions and versions[-1].since >= item.ts:
            versions.pop()  # hidden for every recharge by this later record
        versions.append(Version(item.ts, promo))
        if len(versions) > MAX_VERSIONS:
            log.warning("promotion %s: more than %d versions in the duplicate window; the oldest is dropped",
                        item.promo_id, MAX_VERSIONS)
            del versions[0]
        if promo is not None:
            for coins in promo.packages:
                self.by_package.setdefault(coins, set()).add(item.promo_id)
        self.check(item.promo_id)
        return None

    def check(self, promo_id: str) -> None:
        versions = self.versions[promo_id]
        require(len(versions) > 0, "a promotion has a version")
        require(len(versions) <= MAX_VERSIONS, "a promotion has at most MAX_VERSIONS versions")
        require(all(a.since < b.since for a, b in zip(versions, versions[1:])), "versions ordered by since")
        require(len(self.versions) <= MAX_PROMOTIONS, "promotions <= MAX_PROMOTIONS")

    def in_force(self, promo_id: str, ts: int) -> Promotion | None:
        versions = self.versions.get(promo_id)
        if not versions:
            return None
        i = bisect.bisect_right(versions, ts, key=lambda v: v.since)
        return versions[i - 1].promo if i else None

    def best(self, coins: int, ts: int, received: dict[str, int]) -> Bonus | None:
        """The qualifying promotion with the highest bonus_percent (ties: the smallest
        promo_id) for a recharge of `coins` at `ts` by a user who has `received` this
        many bonuses per promotion, and its bonus; None if none qualifies."""
        best: Promotion | None = None
        for promo_id in self.by_package.get(coins, ()):
            p = self.in_force(promo_id, ts)
            if (p is None or coins not in p.packages or not p.starts_ts <= ts < p.ends_ts
                    or received.get(promo_id, 0) >= p.max_per_user):
                continue
            if best is None or (p.bonus_percent, best.promo_id) > (best.bonus_percent, p.promo_id):
                best = p
        if best is None:
            return None
        return Bonus(best.promo_id, coins * best.bonus_percent // 100)

    def known(self, promo_id: str) -> bool:
        """False once no in-time recharge can qualify for it (pruned, or never seen)."""
        return promo_id in self.versions

    def prune(self, now_ms: float) -> None:
        """Forget what no in-time recharge (ts >= now - behind) can be given."""
        horizon = now_ms - self.behind_ms
        for promo_id in list(self.versions):
            versions = self.versions[promo_id]
            i = bisect.bisect_right(versions, horizon, key=lambda v: v.since)
            if i > 1:
                del versions[:i - 1]  # the last in force at the horizon stays
            if all(v.promo is None or v.promo.ends_ts <= horizon for v in versions):
                self._forget(promo_id)

    def _forget(self, promo_id: str) -> None:
        del self.versions[promo_id]
        for coins in list(self.by_package):  # pruned versions may have listed other packages
            ids = self.by_package[coins]
            ids.discard(promo_id)
            if not ids:
                del self.by_package[coins]

    def in_force_now(self, now_ms: float) -> list[Promotion]:
        """The promotions in force for a recharge at `now_ms` (the dashboard's list)."""
        now = int(now_ms)
        found = [self.in_force(pid, now) for pid in self.versions]
        return sorted((p for p in found if p is not None and p.starts_ts <= now < p.ends_ts),
                      key=lambda p: (-p.bonus_percent, p.promo_id))


class PromotionsInput:
    """The `promotions` topic into a book (pipeline/engine/broadcast.py's sink)."""

    def __init__(self, book: PromotionBook) -> None:
        self.book = book

    def apply(self, key: bytes | None, value: bytes | None, timestamp: int, now_ms: float) -> str | None:
        item = decode_promotion(key, value, timestamp)
        if isinstance(item, Malformed):
            return item.error
        return self.book.publish(item, now_ms)
