"""Labelled fraud patterns, and near-misses that must not alert, for the simulator.

Each instance is a short script of contract events of its own accounts (ids under
`{prefix}f{n}-`), placed at an event time within the run; `inject` merges the scripts
into the normal traffic by event time, and each instance is described by a label:
{"label": "fraud"|"near_miss", "pattern", "subject_type", "subject_id", "event_ids",
"first_ts", "last_ts"}. The thresholds are the fraud issue's defaults; a fraud instance
is clearly over them and a near-miss clearly under, so a correct detector tells them
apart without tuning.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import topics
from tools.simulate import Message

MINUTE = 60_000
HOUR = 60 * MINUTE
PATTERNS = ("gift_velocity", "recharge_burn", "gift_loop", "payout_concentration", "rejection_probe")


@dataclass
class Script:
    """One instance's events, (ts, message), and its label."""

    label: dict[str, Any]
    events: list[tuple[int, Message]] = field(default_factory=list)


class _Builder:
    def __init__(self, prefix: str, rng: random.Random, start: int) -> None:
        self.p, self.rng, self.n, self.ts = prefix, rng, 0, start
        self.events: list[tuple[int, Message]] = []

    def _emit(self, topic: str, key_field: str, value: dict[str, Any], at: int) -> str:
        self.n += 1
        value = {"event_id": f"{self.p}x{self.n}", **value, "ts": at}
        msg = (topic, value[key_field].encode(), json.dumps(value, separators=(",", ":")).encode())
        self.events.append((at, msg))
        return str(value["event_id"])

    def recharge(self, user: str, coins: int, at: int) -> str:
        return self._emit(topics.RECHARGES, "user_id", {"user_id": user, "coins": coins, "amount_cents": coins,
                                                         "currency": "USD"}, at)

    def gift(self, sender: str, creator: str, gift_id: str, quantity: int, at: int) -> str:
        return self._emit(topics.GIFTS, "sender_id", {"sender_id": sender, "creator_id": creator,
                                                       "stream_id": f"{creator}-live", "gift_id": gift_id,
                                                       "quantity": quantity}, at)

    def payout(self, creator: str, diamonds: int, at: int) -> str:
        return self._emit(topics.PAYOUTS, "creator_id", {"creator_id": creator, "diamonds": diamonds}, at)


def _velocity(b: _Builder, fraud: bool) -> tuple[str, str]:
    """60 gifts (fraud) or 30 (near-miss: a keen fan) of 100 coins within 50 s."""
    user = f"{b.p}u"
    b.recharge(user, 10_000, b.ts)
    for i in range(60 if fraud else 30):
        b.gift(user, f"{b.p}c{i % 3}", "confetti", 1, b.ts + 1_000 + i * (800 if fraud else 1_600))
    return "user", user


def _burn(b: _Builder, fraud: bool) -> tuple[str, str]:
    """A new account recharges 10,000 coins and spends 98 % on one creator within 5
    minutes; the near-miss recharges 1,000 once and gifts slowly over an hour."""
    user = f"{b.p}u"
    if fraud:
        b.recharge(user, 10_000, b.ts)
        for i in range(49):
            b.gift(user, f"{b.p}c", "perfume", 10, b.ts + 5_000 + i * 5_000)
    else:
        b.recharge(user, 1_000, b.ts)
        for i in range(10):
            b.gift(user, f"{b.p}c{i % 4}", "confetti", 1, b.ts + (i + 1) * 6 * MINUTE)
    return "user", user


def _loop(b: _Builder, fraud: bool) -> tuple[str, str]:
    """Two accounts gift each other 2,000 coins each way within 3 hours; the near-miss
    friends exchange 100 coins each way."""
    a, c = f"{b.p}a", f"{b.p}b"
    for who in (a, c):
        b.recharge(who, 5_000, b.ts)
    qty = 2 if fraud else 1
    gift = "galaxy" if fraud else "confetti"
    b.gift(a, c, gift, qty, b.ts + HOUR)
    b.gift(c, a, gift, qty, b.ts + 3 * HOUR)
    return "user", a


def _concentration(b: _Builder, fraud: bool) -> tuple[str, str]:
    """Two new accounts give a creator 40,000 coins (20,000 diamonds) within an hour,
    then it asks for 15,000 diamonds two hours in; the near-miss creator's diamonds come from ten
    senders."""
    creator = f"{b.p}c"
    senders = [f"{b.p}s{i}" for i in range(2 if fraud else 10)]
    coins = 40_000 // len(senders)
    for i, s in enumerate(senders):
        b.recharge(s, 10_000 if coins > 5_000 else 5_000, b.ts + i)
        if coins > 10_000:
            b.recharge(s, 10_000, b.ts + i + 1)
        for j in range(coins // 1_000):  # after their first 10 minutes, 1,000 coins a minute at most
            b.gift(s, creator, "galaxy", 1, b.ts + 20 * MINUTE + i * 1_000 + j * 2 * MINUTE)
    b.payout(creator, 15_000, b.ts + 2 * HOUR)
    return "creator", creator


def _probe(b: _Builder, fraud: bool) -> tuple[str, str]:
    """A sender with 100 coins tries 30 (fraud) or 8 (near-miss) gifts it cannot afford
    within 30 s: card testing, or a confused viewer."""
    user = f"{b.p}u"
    b.recharge(user, 100, b.ts)
    for i in range(30 if fraud else 8):
        b.gift(user, f"{b.p}c", "lion", 1, b.ts + 1_000 + i * 1_000)
    return "user", user


_SCRIPTS: dict[str, Callable[[_Builder, bool], tuple[str, str]]] = {
    "gift_velocity": _velocity, "recharge_burn": _burn, "gift_loop": _loop,
    "payout_concentration": _concentration, "rejection_probe": _probe,
}


def scripts(
    per_pattern: int, near_misses: int, start_ts: int, span_ms: int, seed: int, prefix: str = ""
) -> list[Script]:
    """`per_pattern` fraud instances and `near_misses` near-misses of each pattern, each
    starting at a seeded time within [start_ts, start_ts + span_ms)."""
    assert per_pattern >= 0 and near_misses >= 0 and span_ms > 0
    rng = random.Random(seed)
    out = []
    n = 0
    for pattern in PATTERNS:
        for fraud in [True] * per_pattern + [False] * near_misses:
            b = _Builder(f"{prefix}f{n}-", rng, start_ts + rng.randrange(span_ms))
            n += 1
            subject_type, subject_id = _SCRIPTS[pattern](b, fraud)
            ids = [json.loads(m[2])["event_id"] for _, m in b.events]
            out.append(Script({"label": "fraud" if fraud else "near_miss", "pattern": pattern,
                               "subject_type": subject_type, "subject_id": subject_id, "event_ids": ids,
                               "first_ts": b.events[0][0], "last_ts": max(t for t, _ in b.events)}, b.events))
    return out


def inject(normal: Iterator[Message], extra: list[Script]) -> Iterator[Message]:
    """The normal messages with every script's events merged in by event time (a
    script's events that fall after the last normal event come at the end)."""
    pending = [(ts, i, j, msg) for i, s in enumerate(extra) for j, (ts, msg) in enumerate(s.events)]
    heapq.heapify(pending)
    for msg in normal:
        ts = _ts(msg[2])
        while pending and ts is not None and pending[0][0] <= ts:
            yield heapq.heappop(pending)[3]
        yield msg
    while pending:
        yield heapq.heappop(pending)[3]


def _ts(value: bytes) -> int | None:
    """A normal message's event time (None for a malformed one)."""
    try:
        ts = json.loads(value).get("ts")
    except (ValueError, AttributeError):
        return None
    return ts if isinstance(ts, int) else None


def write_labels(path: Path, extra: list[Script]) -> None:
    with open(path, "w") as f:
        for script in extra:
            f.write(json.dumps(script.label) + "\n")
