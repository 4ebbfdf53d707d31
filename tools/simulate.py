"""A seeded live-event load generator producing contract events.

Viewers and creators have Zipf-distributed activity (a few whales, a long tail); a
viewer recharges a package when its coins run low, then sends gifts drawn from the
catalog with a realistic mix (many roses, few lions). Optional shares of spend-limit
changes (with monthly budgets, `monthly_budgets`), payouts, malformed messages and
producer-retry duplicates, promotions (`promotion_share`: two at the start, a first-
recharge bonus and a bigger-package one, then new versions of them), and a "mega live"
mode in which one creator and one stream receive a given share of all gifts. Level-ups
come with the gifts. The benchmark's peers know neither promotions nor monthly budgets:
both are off by default.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline import topics
from pipeline.economics import Economics

# Relative popularity of catalog gifts (by price rank): cheap gifts dominate.
GIFT_POPULARITY = (400, 200, 120, 60, 25, 10, 2, 1)
QUANTITIES = ((1, 70), (2, 10), (5, 8), (10, 6), (99, 5), (999, 1))
MAX_GIFT_COINS = 50_000
MONTHLY_BUDGETS = (None, 2_000, 20_000, 300_000, 7_000)  # spend-limits records that set one (spend_limit)

Message = tuple[str, bytes, bytes]  # topic (no prefix), key, value
InputMessage = tuple[str, bytes | None, bytes]  # the same, key possibly absent (an external set's record)


@dataclass(frozen=True)
class SimConfig:
    events: int = 10_000
    users: int = 1_000
    creators: int = 100
    streams_per_creator: int = 1
    seed: int = 7
    zipf_s: float = 1.1
    spend_limit_share: float = 0.01
    payout_share: float = 0.005
    malformed_share: float = 0.0
    duplicate_share: float = 0.0
    mega_live_share: float = 0.0  # share of gifts to creator 0 on its stream 0
    start_ts: int | None = None  # event time of the first event (default: the last one is dated now)
    tick_ms: float = 1  # event time advance per event (fractions add up: 1000 / rate keeps to the clock)
    max_gift_coins: int = MAX_GIFT_COINS  # a larger gift is sent with quantity 1
    id_prefix: str = ""
    promotion_share: float = 0.0  # new versions of the promotions, per event (0: none at all)
    monthly_budgets: bool = False  # spend limits also set monthly budgets (tools/causal.py's mix)

    def __post_init__(self) -> None:
        assert self.events >= 0 and self.users >= 1 and self.creators >= 1
        for share in (self.spend_limit_share, self.payout_share, self.malformed_share,
                      self.duplicate_share, self.mega_live_share, self.promotion_share):
            assert 0.0 <= share <= 1.0


# Event times stay inside the pipeline's bounds (CONTRACT.md: at most 7 days behind the
# clock, at most 5 minutes ahead): a backlog is dated up to now, at most this far back.
MAX_BACKLOG_SPAN_MS = 6 * 86_400_000


def start_of(cfg: SimConfig) -> int:
    """The first event's time: as configured, or such that the last event is dated now
    (a backlog that just happened), never more than MAX_BACKLOG_SPAN_MS ago."""
    if cfg.start_ts is not None:
        return cfg.start_ts
    now = int(time.time() * 1000)
    return now - min(int(cfg.events * cfg.tick_ms), MAX_BACKLOG_SPAN_MS)


class _Zipf:
    """Draws ranks 0..n-1 with P(k) proportional to 1 / (k+1)^s."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        self.cum = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))
        self.rng = rng

    def draw(self) -> int:
        return bisect.bisect_left(self.cum, self.rng.random() * self.cum[-1])


def generate(cfg: SimConfig, econ: Economics) -> Iterator[Message]:
    rng = random.Random(cfg.seed)
    users, creators = _Zipf(cfg.users, cfg.zipf_s, rng), _Zipf(cfg.creators, cfg.zipf_s, rng)
    others = _Zipf(max(1, cfg.creators - 1), cfg.zipf_s, rng)
    catalog = sorted(econ.gifts.items(), key=lambda kv: kv[1])
    gift_weights = list(itertools.accumulate(
        GIFT_POPULARITY[i] if i < len(GIFT_POPULARITY) else 1 for i in range(len(catalog))))
    qty_values = [q for q, _ in QUANTITIES]
    qty_weights = list(itertools.accumulate(w for _, w in QUANTITIES))
    packages = econ.recharge_packages
    coins: dict[int, int] = {}  # the simulator's own idea of each viewer's balance
    recent: list[Message] = []
    start = start_of(cfg)
    p = cfg.id_prefix
    promo_rng = random.Random(cfg.seed + 3)  # its own: the rest of the stream stays as it was
    if cfg.promotion_share:
        yield from _promotions(promo_rng, p, start, start + int(cfg.events * cfg.tick_ms), packages, first=True)
    for n in range(cfg.events):
        ts = start + int((n + 1) * cfg.tick_ms)
        eid = f"{p}e{n}"
        if cfg.promotion_share and promo_rng.random() < cfg.promotion_share:
            yield from _promotions(promo_rng, p, ts, start + int(cfg.events * cfg.tick_ms), packages, first=False)
        roll = rng.random()
        if roll < cfg.malformed_share:
            yield _malformed(rng, eid, ts)
            continue
        roll -= cfg.malformed_share
        if roll < cfg.duplicate_share and recent:
            yield rng.choice(recent)  # a producer retry: the same message again
            continue
        roll -= cfg.duplicate_share
        if roll < cfg.payout_share:
            c = creators.draw()
            msg = message(topics.PAYOUTS, {"event_id": eid, "creator_id": f"{p}c{c}",
                                           "diamonds": rng.choice((2_000, 5_000, 20_000, 100_000)), "ts": ts},
                          "creator_id")
        elif roll < cfg.payout_share + cfg.spend_limit_share:
            u = users.draw()
            limit = rng.choice((None, 5_000, 20_000, 100_000))
            value: dict[str, Any] = {"event_id": eid, "user_id": f"{p}u{u}", "daily_coin_limit": limit, "ts": ts}
            if cfg.monthly_budgets:
                value = spend_limit(eid, f"{p}u{u}", limit, ts, n)
            msg = message(topics.SPEND_LIMITS, value, "user_id")
        else:
            u = users.draw()
            if rng.random() < cfg.mega_live_share:
                c, stream = 0, 0
            elif cfg.mega_live_share and cfg.creators > 1:
                c, stream = 1 + others.draw(), rng.randrange(cfg.streams_per_creator)  # c0 gets its share only
            else:
                c, stream = creators.draw(), rng.randrange(cfg.streams_per_creator)
            gift_id, price = catalog[bisect.bisect_left(gift_weights, rng.random() * gift_weights[-1])]
            qty = qty_values[bisect.bisect_left(qty_weights, rng.random() * qty_weights[-1])]
            if price > cfg.max_gift_coins:  # the dearest gift within the cap instead
                gift_id, price = max((g for g in catalog if g[1] <= cfg.max_gift_coins), key=lambda g: g[1],
                                     default=catalog[0])
            if price * qty > cfg.max_gift_coins:
                qty = 1  # big quantities come with cheap gifts
            cost = price * qty
            if coins.get(u, 0) < cost:
                package = next((x for x in packages if x >= cost), packages[-1])
                coins[u] = coins.get(u, 0) + package
                msg = message(topics.RECHARGES, {"event_id": eid, "user_id": f"{p}u{u}", "coins": package,
                                              "amount_cents": package, "currency": "USD", "ts": ts}, "user_id")
            else:
                coins[u] -= cost
                msg = message(topics.GIFTS, {"event_id": eid, "sender_id": f"{p}u{u}", "creator_id": f"{p}c{c}",
                                          "stream_id": f"{p}c{c}-s{stream}", "gift_id": gift_id, "quantity": qty,
                                          "ts": ts}, "sender_id")
        if cfg.duplicate_share:
            recent.append(msg)
            if len(recent) > 100:
                recent.pop(0)
        yield msg


def spend_limit(event_id: str, user: str, daily: int | None, ts: int, n: int) -> dict[str, Any]:
    """A spend-limits record, the `n`th of its stream: a third set both limits, a third
    the monthly budget alone, drawn from `n` and not from a random stream (seeded
    streams stay as they were before monthly budgets)."""
    ev: dict[str, Any] = {"event_id": event_id, "user_id": user, "daily_coin_limit": daily, "ts": ts}
    if n % 3:
        ev["monthly_coin_limit"] = MONTHLY_BUDGETS[n % len(MONTHLY_BUDGETS)]
    if n % 3 == 2:
        del ev["daily_coin_limit"]
    return ev


def _promotions(rng: random.Random, p: str, ts: int, end_ts: int, packages: tuple[int, ...],
                first: bool) -> list[Message]:
    """At the start both promotions, later a new version of one: a first-recharge bonus
    (the smallest package, once per viewer) and one on the bigger packages; each in force
    from `ts` until an hour after the last event."""
    def promo(promo_id: str, percent: int, on: list[int], max_per_user: int) -> Message:
        return message(topics.PROMOTIONS, {
            "promo_id": f"{p}{promo_id}", "starts_ts": ts, "ends_ts": end_ts + 3_600_000, "bonus_percent": percent,
            "packages": on, "max_per_user": max_per_user, "ts": ts}, "promo_id")

    welcome = promo("welcome", rng.choice((50, 100)), [min(packages)], 1)
    bigger = promo("bigger", rng.choice((5, 10, 15, 20)), sorted(packages)[len(packages) // 2:], rng.choice((2, 5)))
    return [welcome, bigger] if first else [rng.choice((welcome, bigger))]


def message(topic: str, value: dict[str, Any], key_field: str) -> Message:
    return topic, value[key_field].encode(), json.dumps(value, separators=(",", ":")).encode()


def _malformed(rng: random.Random, eid: str, ts: int) -> Message:
    kind = rng.randrange(4)
    if kind == 0:
        return topics.GIFTS, b"u0", b"{oops"
    if kind == 1:
        return topics.RECHARGES, b"u0", json.dumps({"event_id": eid, "user_id": "u0", "coins": -5,
                                                     "amount_cents": 0, "currency": "USD", "ts": ts}).encode()
    if kind == 2:
        return topics.GIFTS, b"someone-else", json.dumps({"event_id": eid, "sender_id": "u0", "creator_id": "c0",
                                                           "stream_id": "s0", "gift_id": "rose", "quantity": 1,
                                                           "ts": ts}).encode()
    return topics.PAYOUTS, b"c0", json.dumps({"event_id": eid, "creator_id": "c0", "ts": ts}).encode()
