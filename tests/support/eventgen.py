"""A seeded stream of contract events covering every outcome, for integration tests.

Event times strictly increase in production order (no ties), and the stream crosses a
UTC midnight, so the reference ledger's global event-time order is the order the
pipeline applies each key's events in.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.reference import CATALOG, KEY_FIELD, ReferenceLedger
from tools.simulate import spend_limit

DAY = 86_400_000
# 20 s of event time before the latest UTC midnight: in time (CONTRACT.md: at most 7
# days old, at most 5 minutes ahead) for the minutes a test runs.
START_TS = int(time.time() * 1000) // DAY * DAY - 20_000


@dataclass
class Stream:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # well-formed, in order
    malformed: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    messages: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)  # all, as produced
    # (events before it, promo_id, value or None for a tombstone, its time for the model)
    promotions: list[tuple[int, str, dict[str, Any] | None, int]] = field(default_factory=list)

    def apply_to(self, model: ReferenceLedger) -> None:
        """Every event and promotion into `model`, in the order produced."""
        promos = iter(self.promotions)
        nxt = next(promos, None)
        for i, (topic, ev) in enumerate([*self.events, ("", {})]):
            while nxt is not None and nxt[0] <= i:
                model.publish_promotion(nxt[1], nxt[2], nxt[3])
                nxt = next(promos, None)
            if topic:
                model.apply(topic, ev)


def _encode(topic: str, ev: dict[str, Any]) -> tuple[str, bytes | None, bytes | None]:
    return topic, ev[KEY_FIELD[topic]].encode(), json.dumps(ev).encode()


def _malformed(rng: random.Random, ts: int) -> tuple[str, bytes | None, bytes]:
    good = {"event_id": f"bad{ts}", "user_id": "u1", "coins": 100, "amount_cents": 99, "currency": "USD", "ts": ts}
    kind = rng.randrange(6)
    if kind == 0:
        return "recharges", b"u1", b"{not json"
    if kind == 1:
        return "recharges", b"u1", json.dumps({k: v for k, v in good.items() if k != "coins"}).encode()
    if kind == 2:
        return "recharges", b"u2", json.dumps(good).encode()  # key != user_id
    if kind == 3:
        return "recharges", b"u1", json.dumps(dict(good, coins=100.0)).encode()
    if kind == 4:
        gift = {"event_id": f"bad{ts}", "sender_id": "u1", "creator_id": "c1", "stream_id": "s1",
                "gift_id": "rose", "quantity": 0, "ts": ts}
        return "gifts", b"u1", json.dumps(gift).encode()
    return "spend-limits", b"u1", json.dumps(
        {"event_id": f"bad{ts}", "user_id": "u1", "daily_coin_limit": "10", "ts": ts}).encode()


def _promotions(stream: Stream, model: ReferenceLedger, i: int, n: int, ts: int) -> None:
    """The promotions of a stream of `n` events, published when `at` events are in:
    overlapping ones, a tie on bonus_percent, max_per_user 1 and 2, a change of
    version, and a tombstone of one that ended before the stream (its broker time is
    after every event of the stream, and had better not matter)."""
    hour = 3_600_000
    at = len(stream.events)

    def publish(promo_id: str, value: dict[str, Any] | None, since: int) -> None:
        stream.promotions.append((at, promo_id, value, since))
        model.publish_promotion(promo_id, value, since)
        stream.messages.append(("promotions", promo_id.encode(), None if value is None else json.dumps(value).encode()))

    def promo(promo_id: str, percent: int, packages: list[int], max_per_user: int, starts: int, ends: int,
              since: int) -> dict[str, Any]:
        return {"promo_id": promo_id, "starts_ts": starts, "ends_ts": ends, "bonus_percent": percent,
                "packages": packages, "max_per_user": max_per_user, "ts": since}

    if i == 0:
        publish("welcome", promo("welcome", 20, [100, 500], 1, START_TS, START_TS + hour, ts - 1), ts - 1)
        publish("big", promo("big", 10, [5000, 10000], 2, START_TS - hour, START_TS + hour, ts - 1), ts - 1)
        publish("tie", promo("tie", 10, [5000], 1, START_TS - hour, START_TS + hour, ts - 1), ts - 1)
        publish("gone", promo("gone", 100, [100], 5, START_TS - 2 * hour, START_TS - hour, ts - 1), ts - 1)
    elif i == n // 3:  # a new version: from now on 50 %, and for 1,000 coins too
        publish("welcome", promo("welcome", 50, [100, 500, 1000], 2, START_TS, START_TS + hour, ts), ts)
        publish("gone", None, 2**62)  # ended anyway: its tombstone withdraws nothing


def user_stream(seed: int, n: int, users: int = 60, creators: int = 12) -> Stream:
    """Recharges, gifts and spend limits, plus duplicates, malformed messages and
    payouts asking for exactly what the creator has earned by then (or one more), so a
    payout decided before a credit of an earlier gift shows."""
    rng = random.Random(seed)
    model = ReferenceLedger()
    user_ids = [f"u{i}" for i in range(users)] + [f"c{i}" for i in range(3)]  # some creators also gift
    creator_ids = [f"c{i}" for i in range(creators)]
    gifts = list(CATALOG) + ["dragon"]  # "dragon" is not in the catalog
    weights = [30, 20, 15, 10, 8, 6, 1, 1, 2]
    stream = Stream()
    ts = START_TS
    for i in range(n):
        ts += rng.randint(1, 20)
        if i in (0, n // 3):
            _promotions(stream, model, i, n, ts)
        roll = rng.random()
        if roll < 0.01:
            msg = _malformed(rng, ts)
            stream.malformed.append(msg)
            stream.messages.append(msg)
            continue
        if roll < 0.03 and stream.events:
            topic, creator = "payouts", rng.choice(creator_ids)
            available = model.diamonds[creator]
            amount = rng.choice([available, available + 1, max(2_000, available // 3), 1_999])
            ev = {"event_id": f"p{i}", "creator_id": creator, "diamonds": max(1, amount), "ts": ts}
        elif roll < 0.06 and stream.events:
            # A resend of an earlier event id (same key, new event time): a duplicate.
            topic, old = rng.choice(stream.events)
            ev = dict(old, ts=ts)
        elif roll < 0.22:
            topic, user = "recharges", rng.choice(user_ids)
            coins = rng.choice([100, 500, 1000, 5000, 10000, 10000, 250_000 if rng.random() < 0.05 else 5000])
            ev = {"event_id": f"r{i}", "user_id": user, "coins": coins, "amount_cents": coins, "currency": "USD",
                  "ts": ts}
        elif roll < 0.25:
            topic, user = "spend-limits", rng.choice(user_ids)
            limit = rng.choice([None, 0, 500, 5000, 50_000, 1_000_000])
            ev = spend_limit(f"l{i}", user, limit, ts, i)
        else:
            topic, sender = "gifts", rng.choice(user_ids)
            creator = sender if rng.random() < 0.03 else rng.choice(creator_ids)
            gift = rng.choices(gifts, weights)[0]
            qty = rng.choice([1, 1, 1, 2, 3, 5, 10, 99])
            ev = {"event_id": f"g{i}", "sender_id": sender, "creator_id": creator, "stream_id": f"s{creator}",
                  "gift_id": gift, "quantity": qty, "ts": ts}
        stream.events.append((topic, ev))
        stream.messages.append(_encode(topic, ev))
        model.apply(topic, ev)
    return stream


def payout_stream(seed: int, diamonds: dict[str, int], start_ts: int) -> Stream:
    """Payouts against known balances: accepted, below minimum, insufficient, duplicates."""
    rng = random.Random(seed)
    stream = Stream()
    ts = start_ts
    for creator, available in sorted(diamonds.items()):
        requests = [1_999, available + 1, max(2_000, available // 2), 2_000]
        for j, amount in enumerate(requests):
            ts += rng.randint(1, 20)
            ev = {"event_id": f"p-{creator}-{j}", "creator_id": creator, "diamonds": amount, "ts": ts}
            stream.events.append(("payouts", ev))
            stream.messages.append(_encode("payouts", ev))
        ts += 1
        dup = dict(stream.events[-2][1], ts=ts)
        stream.events.append(("payouts", dup))
        stream.messages.append(_encode("payouts", dup))
    return stream
