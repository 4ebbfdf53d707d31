"""Labelled fraud instances, and honest near-misses that must not alert, for the simulator
and the fraud evaluation.

Each instance is a short script of contract events of its own accounts (ids under
`{prefix}f{n}-`), placed at an event time within the run; `inject` merges the scripts
into the normal traffic by event time, and each instance is described by a label:
{"label": "fraud"|"near_miss", "pattern", "shape", "margin", "subject_type",
"subject_id", "event_ids", "first_ts", "last_ts"}.

A set only measures a detector if its honest side is hard: so the near-misses are the
heavy honest traffic that sits next to each threshold (hype-moment gifters, app retries,
friends swapping gifts, creators with big loyal fans, new viewers), and every condition
of a multi-condition rule has its own near-miss that meets all the others and misses that
one narrowly. Fraud instances vary their shape. Parameters are drawn from ranges that
decide the outcome by construction (nothing is redrawn until it fits), against the
fraud issue's default thresholds and the default catalog. `margin` is the measured
quantity over its threshold: of the condition a near-miss misses (0.90-0.99, or N+1 over
N for an "at most N", N-1 over N for an "at least N", 1.01-1.10 for a time window or an
age, 0 for a bonus not taken; the honest new viewers and loyal fans sit further off), or
of the condition a fraud instance crosses.
tests/unit/test_fraud_set.py measures every script independently.

bonus_farming needs promotions to farm: `promotions` are the set's (a first-recharge
bonus and a bigger-package one), to be produced before the scripts and the traffic, so
that ordinary viewers take them too.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from agents.fraud.thresholds import DAY_MS, HOUR_MS, MINUTE_MS, FraudRules
from pipeline import economics, topics
from pipeline.economics import Economics
from pipeline.invariants import require
from tools.simulate import Message

PATTERNS = ("gift_velocity", "recharge_burn", "gift_loop", "payout_concentration", "rejection_probe", "bonus_farming")
RULES = FraudRules()  # the defaults the set is built against
MAX_QUANTITY = 10_000  # the contract's largest gift quantity
# Cheap gifts, (gift, largest quantity): at most 200 coins each, so bursts of them cross
# gift_velocity by count, never by coins.
CHEAP = (("rose", 10), ("finger_heart", 5), ("perfume", 5), ("confetti", 2))
UNKNOWN_GIFTS = ("diamond_ring", "rocket", "castle", "sports_car")
REASONS = ("insufficient_coins", "unknown_gift", "self_gift", "spend_limit_exceeded")
# A new account's first gift comes this long after its recharges: a gift that overtook
# its recharge on the way in would be refused and look like a probe.
SETTLE_MS = 20_000
# Spending that is not a gift_velocity pattern keeps within 75 % / 80 % of its limits.
PACE_COINS = RULES.gift_velocity.coins * 3 // 4
PACE_GIFTS = RULES.gift_velocity.gifts * 4 // 5

Gift = tuple[str, int]  # (gift_id, quantity)


@dataclass
class Script:
    """One instance's events, (ts, message), in event-time order, and its label."""

    label: dict[str, Any]
    events: list[tuple[int, Message]] = field(default_factory=list)


class Made(NamedTuple):
    subject_type: Literal["user", "creator"]
    subject_id: str
    margin: float


class _Builder:
    """A script's events at times relative to its decisive moment (0), placed in the run
    afterwards: a shape is written once, whatever its place."""

    def __init__(self, prefix: str, rng: random.Random, econ: Economics) -> None:
        self.p, self.rng, self.econ = prefix, rng, econ
        self.raw: list[tuple[int, str, str, dict[str, Any]]] = []

    def id(self, name: str) -> str:
        return f"{self.p}{name}"

    def ids(self, name: str, n: int) -> list[str]:
        return [self.id(f"{name}{i}") for i in range(n)]

    def cost(self, gift: Gift) -> int:
        return self.econ.gifts.get(gift[0], 0) * gift[1]

    def _emit(self, topic: str, key_field: str, value: dict[str, Any], at: int) -> None:
        self.raw.append((at, topic, key_field, {"event_id": f"{self.p}x{len(self.raw) + 1}", **value}))

    def recharge(self, user: str, coins: int, at: int) -> None:
        self._emit(topics.RECHARGES, "user_id", {"user_id": user, "coins": coins, "amount_cents": coins,
                                                  "currency": "USD"}, at)

    def gift(self, sender: str, creator: str, gift: Gift, at: int) -> None:
        self._emit(topics.GIFTS, "sender_id", {"sender_id": sender, "creator_id": creator,
                                                "stream_id": f"{creator}-live", "gift_id": gift[0],
                                                "quantity": gift[1]}, at)

    def gifts(self, sender: str, creators: Sequence[str], gifts: Sequence[Gift], times: Sequence[int]) -> None:
        """Every creator gets at least one of them (when there are enough)."""
        targets = list(creators) + [self.rng.choice(creators) for _ in range(len(gifts) - len(creators))]
        self.rng.shuffle(targets)
        for creator, gift, at in zip(targets, gifts, times):
            self.gift(sender, creator, gift, at)

    def payout(self, creator: str, diamonds: int, at: int) -> None:
        self._emit(topics.PAYOUTS, "creator_id", {"creator_id": creator, "diamonds": diamonds}, at)

    def spend_limit(self, user: str, daily: int, at: int) -> None:
        self._emit(topics.SPEND_LIMITS, "user_id", {"user_id": user, "daily_coin_limit": daily}, at)


# -- amounts and times --------------------------------------------------------------------


def _split(rng: random.Random, total: int, k: int) -> list[int]:
    """`total` in `k` positive parts of varied size."""
    require(total >= k >= 1, "total >= k >= 1")
    weights = [rng.uniform(0.3, 1.0) for _ in range(k)]
    parts = [1 + int((total - k) * w / sum(weights)) for w in weights]
    parts[0] += total - sum(parts)
    return parts


def _quantity(room: int, price: int, even: bool) -> int:
    q = min(room // price, MAX_QUANTITY)
    return q - q % 2 if even and price % 2 else q


def _compose(b: _Builder, total: int, top: int, parts: int, even: bool = False) -> list[Gift]:
    """Gifts of at most `top` coins each, of varied sizes, summing to `total` exactly (a
    threshold is met or missed by the sum). `even`: every gift's cost is even, so its
    diamonds are exactly half of it."""
    require(total > 0 and top >= 2 and (total % 2 == 0 or not even), "a total the gifts can sum to")
    menu = sorted((price, gift) for gift, price in b.econ.gifts.items() if price <= top)
    amounts = _split(b.rng, total, min(total, max(parts, -(-2 * total // top))))
    out: list[Gift] = []
    carry = 0
    for amount in amounts:
        carry += amount
        eligible = [m for m in menu if m[0] <= carry]
        price, gift = b.rng.choice(eligible[-3:])
        q = _quantity(min(carry, top), price, even)
        if q:
            out.append((gift, q))
            carry -= price * q
    for price, gift in reversed(menu):  # what is left, largest gifts first
        while (q := _quantity(min(carry, top), price, even)) > 0:
            out.append((gift, q))
            carry -= price * q
    require(carry == 0 and sum(map(b.cost, out)) == total, "the gifts sum to the total")
    return out


def _burst(rng: random.Random, n: int, span: int) -> list[int]:
    """n times in [0, span], the first at 0: with `span` under a window, all in one."""
    return [0] + sorted(rng.randint(0, span) for _ in range(n - 1))


def _sparse(rng: random.Random, edge: int, sign: int) -> list[int]:
    """A few times before (sign -1) or after (+1) a burst, each over a velocity window
    from the burst and from each other: they never share a window with it."""
    out, at = [], edge
    for _ in range(rng.randint(0, 6)):
        at += sign * rng.randint(RULES.gift_velocity.window_ms + 1_000, 10 * MINUTE_MS)
        out.append(at)
    return out


def _schedule(b: _Builder, costs: Sequence[int], start: int, end: int) -> list[int]:
    """Increasing times in [start, end), spread evenly but never more than PACE_COINS or
    PACE_GIFTS within a velocity window: spending that is not a gift_velocity pattern
    stays clear of it."""
    require(max(costs) <= PACE_COINS, "each gift fits a window's pace")
    window = RULES.gift_velocity.window_ms
    slot = (end - start) / len(costs)
    times: list[int] = []
    for i, cost in enumerate(costs):
        at = max(start + int((i + b.rng.uniform(0.1, 0.9)) * slot), times[-1] + 1 if times else start)
        while True:
            inside = [k for k, t in enumerate(times) if t > at - window]
            if len(inside) < PACE_GIFTS and sum(costs[k] for k in inside) + cost <= PACE_COINS:
                break
            at = times[inside[0]] + window
        times.append(at)
    require(times[-1] < end, "the gifts fit their time")
    return times


def _spend(b: _Builder, sender: str, creators: Sequence[str], coins: int, start: int, end: int,
           top: int | None = None, even: bool = False) -> None:
    """`coins` in gifts of a drawn size to `creators`, paced within [start, end)."""
    top = top or b.rng.choice((500, 1_000, 2_000, 5_000))
    gifts = _compose(b, coins, top, b.rng.randint(2, 10), even)
    b.gifts(sender, creators, gifts, _schedule(b, [b.cost(g) for g in gifts], start, end))


def _established(b: _Builder, user: str, coins: int) -> None:
    """An old account: recharged hours before, so no burn window is open and no topic
    order turns its gifts into refusals."""
    b.recharge(user, coins, -b.rng.randint(2 * HOUR_MS, 20 * HOUR_MS))


def _cheap(b: _Builder) -> Gift:
    gift, most = b.rng.choice(CHEAP)
    return gift, b.rng.randint(1, most)


# -- gift_velocity -------------------------------------------------------------------------


def _velocity_count(b: _Builder) -> Made:
    """A bot showers 50-90 cheap gifts within a minute over 3-6 creators."""
    user, creators = b.id("u"), b.ids("c", b.rng.randint(3, 6))
    n = b.rng.randint(RULES.gift_velocity.gifts, 90)
    gifts = [_cheap(b) for _ in range(n)]
    _established(b, user, sum(map(b.cost, gifts)) + b.rng.randint(0, 5_000))
    b.gifts(user, creators, gifts, _burst(b.rng, n, b.rng.randint(20_000, 58_000)))
    return Made("user", user, n / RULES.gift_velocity.gifts)


def _velocity_coins(b: _Builder) -> Made:
    """A few expensive gifts within a minute over 2-4 creators: one lion or universe, or
    2-8 galaxies and money guns summing to 20,000-60,000 coins."""
    user, creators = b.id("u"), b.ids("c", b.rng.randint(2, 4))
    k = b.rng.randint(1, 8)
    gifts = [(b.rng.choice(("lion", "universe")), 1)] if k == 1 else _big_gifts(b, k)
    coins = sum(map(b.cost, gifts))
    _established(b, user, coins + b.rng.randint(0, 20_000))
    b.gifts(user, creators[: len(gifts)], gifts, _burst(b.rng, len(gifts), b.rng.randint(3_000, 55_000)))
    return Made("user", user, coins / RULES.gift_velocity.coins)


def _big_gifts(b: _Builder, k: int) -> list[Gift]:
    """At least k gifts of 500-10,000 coins, in all 20,000-60,000 (units of 500 coins)."""
    units = b.rng.randint(RULES.gift_velocity.coins // 500, 120)
    parts = [1] * max(k, -(-units // 20))
    for _ in range(units - len(parts)):
        parts[b.rng.choice([i for i, p in enumerate(parts) if p < 20])] += 1
    return [("galaxy", u // 2) if u % 2 == 0 else ("money_gun", u) for u in parts]


def _heavy_gifter(b: _Builder, burst: list[Gift], span: int) -> str:
    """An established fan in a hype moment on one or two streams: the burst, with a few
    sparse gifts around it."""
    user, creators = b.id("u"), b.ids("c", b.rng.randint(1, 2))
    times = _burst(b.rng, len(burst), span)
    around = _sparse(b.rng, times[0], -1) + _sparse(b.rng, times[-1], 1)
    gifts = burst + [_cheap(b) for _ in around]
    _established(b, user, sum(map(b.cost, gifts)) + b.rng.randint(0, 3_000))
    b.gifts(user, creators, gifts, times + around)
    return user


def _hype_count(b: _Builder) -> Made:
    """45-49 cheap gifts within a minute: 90-98 % of the count limit."""
    n = b.rng.randint(45, 49)
    user = _heavy_gifter(b, [_cheap(b) for _ in range(n)], b.rng.randint(20_000, 58_000))
    return Made("user", user, n / RULES.gift_velocity.gifts)


def _hype_coins(b: _Builder) -> Made:
    """18,000-19,800 coins within a minute: 90-99 % of the coin limit."""
    coins = b.rng.randint(18_000, 19_800)
    user = _heavy_gifter(b, _compose(b, coins, 5_000, b.rng.randint(3, 20)), b.rng.randint(5_000, 58_000))
    return Made("user", user, coins / RULES.gift_velocity.coins)


# -- recharge_burn -------------------------------------------------------------------------


def _new_account(b: _Builder, coins: int) -> str:
    """A new account: first recharge at 0, topped up within seconds (1-3 recharges)."""
    user = b.id("u")
    for i, part in enumerate(_split(b.rng, coins, b.rng.randint(1, 3))):
        b.recharge(user, part, 0 if i == 0 else b.rng.randint(1_000, SETTLE_MS // 2))
    return user


def _share(spent: int, recharged: int) -> float:
    """Spent / recharged over the rule's spent_percent."""
    return spent * 100 / recharged / RULES.recharge_burn.spent_percent


def _burn(b: _Builder, creators: int) -> Made:
    """A stolen card: 90-100 % of 6,000-40,000 coins spent within minutes of the first
    recharge on one or two creators, in gifts of a drawn size."""
    recharged = b.rng.randint(6_000, 40_000)
    spent = min(recharged, math.ceil(b.rng.uniform(0.90, 1.0) * recharged))
    user = _new_account(b, recharged)
    _spend(b, user, b.ids("c", creators), spent, SETTLE_MS, RULES.recharge_burn.window_ms - 30_000)
    return Made("user", user, _share(spent, recharged))


def _burn_percent(b: _Builder) -> Made:
    """A new viewer who spends 81-89 % of a big first recharge at once."""
    recharged = b.rng.randint(6_500, 30_000)
    spent = math.ceil(b.rng.uniform(0.90, 0.985) * RULES.recharge_burn.spent_percent / 100 * recharged)
    user = _new_account(b, recharged)
    _spend(b, user, b.ids("c", b.rng.randint(1, 2)), spent, SETTLE_MS, RULES.recharge_burn.window_ms - 30_000)
    return Made("user", user, _share(spent, recharged))


def _burn_min_coins(b: _Builder) -> Made:
    """All of a first recharge spent at once, but 90-99 % of the rule's minimum."""
    spent = b.rng.randint(RULES.recharge_burn.min_coins * 9 // 10, RULES.recharge_burn.min_coins * 99 // 100)
    user = _new_account(b, b.rng.randint(spent, int(spent / 0.92)))
    _spend(b, user, b.ids("c", b.rng.randint(1, 2)), spent, SETTLE_MS, RULES.recharge_burn.window_ms - 30_000)
    return Made("user", user, spent / RULES.recharge_burn.min_coins)


def _burn_creators(b: _Builder) -> Made:
    """A burn onto one creator more than the rule counts; gifts of at most 2,000 coins, so
    two of them cannot reach min_coins before the last creator appears."""
    r = RULES.recharge_burn
    recharged = b.rng.randint(6_000, 30_000)
    spent = min(recharged, math.ceil(b.rng.uniform(0.92, 1.0) * recharged))
    user = _new_account(b, recharged)
    gifts = _compose(b, spent, b.rng.choice((500, 1_000, 2_000)), b.rng.randint(3, 10))
    creators = b.ids("c", r.max_creators + 1)
    targets = creators + [b.rng.choice(creators) for _ in gifts[len(creators):]]
    for creator, gift, at in zip(targets, gifts, _schedule(b, [b.cost(g) for g in gifts], SETTLE_MS,
                                                           r.window_ms - 30_000)):
        b.gift(user, creator, gift, at)
    return Made("user", user, len(creators) / r.max_creators)


def _burn_window(b: _Builder) -> Made:
    """40-75 % spent within the window, the rest (to 92-100 %) just after it: the last
    gift, which crosses, comes at 102-109 % of the window."""
    r = RULES.recharge_burn
    recharged = b.rng.randint(6_000, 20_000)
    early, middle = int(b.rng.uniform(0.4, 0.75) * recharged), int(b.rng.uniform(0.0, 0.08) * recharged)
    low = max(1, math.ceil((0.92 * recharged - early - middle) / 100))
    last = 100 * b.rng.randint(low, (recharged - early - middle) // 100)
    creators = b.ids("c", b.rng.randint(1, 2))
    user = _new_account(b, recharged)
    crossing = int(b.rng.uniform(1.02, 1.09) * r.window_ms)
    _spend(b, user, creators, early, SETTLE_MS, r.window_ms - 2 * RULES.gift_velocity.window_ms, top=2_000)
    if middle:
        _spend(b, user, creators, middle, r.window_ms + 1_000, crossing - 1_000, top=500)
    b.gift(user, b.rng.choice(creators), ("confetti", last // 100), crossing)
    return Made("user", user, crossing / r.window_ms)


def _new_viewer(b: _Builder) -> Made:
    """A new account recharging a package and gifting at an ordinary pace: 5-60 % in the
    first minutes, more over the next hours."""
    recharged = b.rng.choice((500, 1_000, 5_000, 10_000))
    early = max(1, int(b.rng.uniform(0.05, 0.6) * recharged))
    later = max(1, int(b.rng.uniform(0.2, 0.9) * (recharged - early)))
    user, creators = b.id("u"), b.ids("c", b.rng.randint(1, 5))
    b.recharge(user, recharged, 0)
    _spend(b, user, creators[:2], early, 30_000, RULES.recharge_burn.window_ms - 30_000, top=500)
    _spend(b, user, creators, later, 15 * MINUTE_MS, 3 * HOUR_MS, top=500)
    return Made("user", user, _share(early, recharged))


# -- gift_loop -----------------------------------------------------------------------------


def _legs(b: _Builder, legs: Sequence[tuple[str, str, int]], start: int, end: int) -> None:
    """Each (sender, recipient, coins) in paced gifts within [start, end); each sender
    recharged 15 minutes to 3 hours before its first gift (no burn window open)."""
    first: dict[str, int] = {}
    total: dict[str, int] = {}
    for sender, recipient, coins in legs:
        gifts = _compose(b, coins, 5_000, b.rng.randint(1, 4))
        times = _schedule(b, [b.cost(g) for g in gifts], start, end)
        b.gifts(sender, [recipient], gifts, times)
        first[sender] = min(first.get(sender, times[0]), times[0])
        total[sender] = total.get(sender, 0) + coins
    for sender, at in first.items():
        b.recharge(sender, total[sender] + b.rng.randint(0, 2_000), at - b.rng.randint(15 * MINUTE_MS, 3 * HOUR_MS))


def _loop_coins(b: _Builder) -> int:
    return b.rng.randint(RULES.gift_loop.min_coins, 12 * RULES.gift_loop.min_coins)


def _under_loop(b: _Builder) -> int:
    return b.rng.randint(RULES.gift_loop.min_coins * 9 // 10, RULES.gift_loop.min_coins * 99 // 100)


def _within_day(b: _Builder) -> int:
    """How long before 0 an exchange starts: 20 minutes to 23 hours, inside the window."""
    return -b.rng.randint(20 * MINUTE_MS, RULES.gift_loop.window_ms - HOUR_MS)


def _pair(b: _Builder, there: int, back: int) -> Made:
    a, c = b.ids("a", 2)
    _legs(b, [(a, c, there), (c, a, back)], _within_day(b), 0)
    return Made("user", a, min(there, back) / RULES.gift_loop.min_coins)


def _loop_pair(b: _Builder) -> Made:
    """Two accounts wash 1,000-12,000 coins each way within a day."""
    return _pair(b, _loop_coins(b), _loop_coins(b))


def _loop_triangle(b: _Builder) -> Made:
    """A -> B -> C -> A, each leg 1,000-12,000 coins within a day: no pair gifts both
    ways, so a pairwise rule may not see it."""
    ring = b.ids("a", 3)
    coins = [_loop_coins(b) for _ in ring]
    _legs(b, [(ring[i], ring[(i + 1) % 3], coins[i]) for i in range(3)], _within_day(b), 0)
    return Made("user", ring[0], min(coins) / RULES.gift_loop.min_coins)


def _friends(b: _Builder) -> Made:
    """Friends swapping gifts: 900-990 coins each way within a day."""
    return _pair(b, _under_loop(b), _under_loop(b))


def _co_streamers(b: _Builder) -> Made:
    """Co-streamers: one supports the other with 1,500-10,000 coins and gets 900-990 back."""
    return _pair(b, b.rng.randint(1_500, 10_000), _under_loop(b))


def _slow_exchange(b: _Builder) -> Made:
    """A gift over min_coins each way, but 101-110 % of the window apart."""
    a, c = b.ids("a", 2)
    apart = int(b.rng.uniform(1.01, 1.10) * RULES.gift_loop.window_ms)
    there, back = ("galaxy", b.rng.randint(1, 5)), ("confetti", b.rng.randint(10, 50))
    for sender, at in ((a, -apart), (c, 0)):
        b.recharge(sender, 5_000, at - b.rng.randint(15 * MINUTE_MS, 3 * HOUR_MS))
    b.gift(a, c, there, -apart)
    b.gift(c, a, back, 0)
    return Made("user", a, apart / RULES.gift_loop.window_ms)


# -- payout_concentration ------------------------------------------------------------------


def _new_age(b: _Builder) -> int:
    return b.rng.randint(2 * HOUR_MS, 20 * HOUR_MS)


def _old_age(b: _Builder) -> int:
    """Well over new_sender_ms, within the two days of history the evaluation has."""
    return b.rng.randint(int(1.3 * DAY_MS), int(1.9 * DAY_MS))


def _creator(b: _Builder, senders: Sequence[tuple[int, int]], payout: int) -> str:
    """A creator credited by senders (diamonds, age of the sender's first event at the
    payout), in even-cost gifts within the last 22 hours, then paying out at 0. The
    rule counts the window in whole hours: 22 keeps the count exact."""
    creator = b.id("c")
    for i, (diamonds, age) in enumerate(senders):
        sender = b.id(f"s{i}")
        b.recharge(sender, 2 * diamonds + b.rng.randint(0, 5_000), -age)
        start = max(-age + 15 * MINUTE_MS, -22 * HOUR_MS)  # after the sender's burn window
        _spend(b, sender, [creator], 2 * diamonds, start, -10 * MINUTE_MS, top=5_000, even=True)
    b.payout(creator, payout, 0)
    return creator


def _mix(b: _Builder, total: int, share: float, new: int, new_ages: Callable[[], int]) -> list[tuple[int, int]]:
    """`share` of `total` diamonds from `new` senders of the given ages, the rest (if any)
    from 1-3 old senders."""
    main = total if share >= 1.0 else round(share * total)
    out = [(d, new_ages()) for d in _split(b.rng, main, new)]
    if total > main:
        out += [(d, _old_age(b)) for d in _split(b.rng, total - main, min(total - main, b.rng.randint(1, 3)))]
    return out


def _percent(new: int, total: int) -> float:
    return new * 100 / total / RULES.payout_concentration.percent


def _concentration(b: _Builder, senders: int) -> Made:
    """1-3 new accounts give a creator 82-100 % of its diamonds, then it asks for a payout."""
    total = b.rng.randint(12_000, 60_000)
    mix = _mix(b, total, b.rng.choice((1.0, b.rng.uniform(0.82, 1.0))), senders, lambda: _new_age(b))
    creator = _creator(b, mix, b.rng.randint(RULES.payout_concentration.min_diamonds, total))
    return Made("creator", creator, _percent(sum(d for d, _ in mix[:senders]), total))


def _under_min_diamonds(b: _Builder) -> Made:
    r = RULES.payout_concentration
    total = b.rng.randint(10_000, 40_000)
    payout = b.rng.randint(r.min_diamonds * 9 // 10, r.min_diamonds * 99 // 100)
    _creator(b, _mix(b, total, b.rng.uniform(0.85, 1.0), b.rng.randint(1, 3), lambda: _new_age(b)), payout)
    return Made("creator", b.id("c"), payout / r.min_diamonds)


def _under_percent(b: _Builder) -> Made:
    """New senders give 72.5-78.5 % (90.6-98.1 % of the rule's 80 %); loyal fans the rest."""
    r = RULES.payout_concentration
    total, new = b.rng.randint(12_000, 60_000), b.rng.randint(1, r.max_senders)
    mix = _mix(b, total, b.rng.uniform(0.725, 0.785), new, lambda: _new_age(b))
    _creator(b, mix, b.rng.randint(r.min_diamonds, total))
    return Made("creator", b.id("c"), _percent(sum(d for d, _ in mix[:new]), total))


def _too_many_senders(b: _Builder) -> Made:
    """max_senders + 1 new senders give 90-100 %, so evenly that no max_senders of them
    reach 80 %: the smallest gives more than (all of them - 78.5 %)."""
    r = RULES.payout_concentration
    total = b.rng.randint(14_000, 60_000)
    together = b.rng.uniform(0.9, 1.0)
    main = round(together * total)
    least = int(b.rng.uniform(together - 0.785, together / (r.max_senders + 1)) * total)
    rest = main - least * (r.max_senders + 1)  # >= 0: least <= main / (max_senders + 1)
    extra = [e - 1 for e in _split(b.rng, rest + r.max_senders, r.max_senders)]
    senders = [(least + e, _new_age(b)) for e in extra] + [(least, _new_age(b))]
    if total > main:
        senders.append((total - main, _old_age(b)))
    _creator(b, senders, b.rng.randint(r.min_diamonds, total))
    return Made("creator", b.id("c"), (r.max_senders + 1) / r.max_senders)


def _just_old_senders(b: _Builder) -> Made:
    """1-3 senders whose first event is 101-110 % of new_sender_ms before the payout."""
    r = RULES.payout_concentration
    total = b.rng.randint(12_000, 60_000)
    ages: list[int] = []

    def just_old() -> int:
        ages.append(int(b.rng.uniform(1.01, 1.10) * r.new_sender_ms))
        return ages[-1]

    mix = _mix(b, total, b.rng.uniform(0.85, 1.0), b.rng.randint(1, 3), just_old)
    _creator(b, mix, b.rng.randint(r.min_diamonds, total))
    return Made("creator", b.id("c"), _age_needed(mix, total) / r.new_sender_ms)


def _loyal_fans(b: _Builder) -> Made:
    """A creator with 1-3 big fans of long standing asks for most of it."""
    total = b.rng.randint(15_000, 60_000)
    mix = _mix(b, total, 1.0, b.rng.randint(1, 3), lambda: _old_age(b))
    _creator(b, mix, b.rng.randint(max(RULES.payout_concentration.min_diamonds, total // 2), total))
    return Made("creator", b.id("c"), _age_needed(mix, total) / RULES.payout_concentration.new_sender_ms)


def _age_needed(senders: Sequence[tuple[int, int]], total: int) -> int:
    """The least sender age that new_sender_ms would have to exceed for the payout to
    match: how far over it these senders are."""
    r = RULES.payout_concentration

    def matches(age: int) -> bool:
        young = sorted((d for d, a in senders if a <= age), reverse=True)[: r.max_senders]
        return sum(young) * 100 >= r.percent * total

    ages = [a for a in sorted(a for _, a in senders) if matches(a)]
    require(bool(ages), "the senders reach the share together")
    return ages[0]


# -- rejection_probe -----------------------------------------------------------------------


def _refused(b: _Builder, reason: str, balance: int) -> Gift:
    """A gift refused for `reason` once the recharge is applied, and refused anyway (for
    insufficient_coins) if it overtakes the recharge."""
    if reason == "unknown_gift":
        return b.rng.choice(UNKNOWN_GIFTS), b.rng.randint(1, 3)
    if reason == "self_gift":
        return _cheap(b)
    if reason == "insufficient_coins":
        return "universe", balance // b.econ.gifts["universe"] + b.rng.randint(1, 3)
    # affordable, but over the platform's daily limit
    return "galaxy", b.rng.randint(b.econ.platform_daily_coin_limit // 1_000 + 1, balance // 1_000)


def _probe(b: _Builder) -> Made:
    """A card tester or API prober: 20-40 refused gifts within a minute, for 2-4 reasons."""
    user, creator = b.id("u"), b.id("c")
    reasons = b.rng.sample(REASONS, b.rng.randint(2, 4))
    n = b.rng.randint(RULES.rejection_probe.rejections, 40)
    drawn = reasons + [b.rng.choice(reasons) for _ in range(n - len(reasons))]
    b.rng.shuffle(drawn)
    big = "spend_limit_exceeded" in reasons
    balance = b.rng.randint(210_000, 300_000) if big else b.rng.randint(100, 2_000)
    b.recharge(user, balance, -b.rng.randint(3_000, 30_000))
    for reason, at in zip(drawn, _burst(b.rng, n, b.rng.randint(10_000, 58_000))):
        b.gift(user, user if reason == "self_gift" else creator, _refused(b, reason, balance), at)
    return Made("user", user, n / RULES.rejection_probe.rejections)


def _retries(b: _Builder, user: str, gift: Gift) -> Made:
    """The app retries one gift 18-19 times within a minute; then the viewer sends a rose."""
    creator, n = b.id("c"), b.rng.randint(18, 19)
    times = _burst(b.rng, n, b.rng.randint(10_000, 58_000))
    for at in times:
        b.gift(user, creator, gift, at)
    b.gift(user, creator, ("rose", b.rng.randint(1, 10)), times[-1] + b.rng.randint(5_000, 60_000))
    return Made("user", user, n / RULES.rejection_probe.rejections)


def _retry_insufficient(b: _Builder) -> Made:
    user, balance = b.id("u"), b.rng.randint(100, 3_000)
    _established(b, user, balance)
    gift = b.rng.choice((("lion", 1), ("galaxy", balance // 1_000 + b.rng.randint(1, 3)),
                         ("money_gun", balance // 500 + 1)))
    return _retries(b, user, gift)


def _retry_limit(b: _Builder) -> Made:
    """Over the viewer's own daily limit (set hours before), whatever it spent that day."""
    user, limit = b.id("u"), b.rng.randint(500, 5_000)
    gift = b.rng.choice((("galaxy", limit // 1_000 + 1), ("money_gun", limit // 500 + 1)))
    _established(b, user, b.cost(gift) + b.rng.randint(100, 10_000))
    b.spend_limit(user, limit, -b.rng.randint(30 * MINUTE_MS, 2 * HOUR_MS))
    return _retries(b, user, gift)


# -- bonus_farming -------------------------------------------------------------------------

# The set's promotions, (promo_id, bonus_percent, packages, max_per_user): published before
# its traffic and in force over all of it (`promotions`), so ordinary viewers take them
# too. A first-recharge bonus doubling the smallest package, once per account, and a
# smaller one on a bigger package. Of the other patterns' accounts only recharge_burn's
# ordinary new viewers recharge one of these packages (500): recharge_burn counts coins
# recharged, not bonus coins, and their gifts are affordable either way.
PROMOTIONS = (("welcome", 100, (100,), 1), ("starter", 20, (500,), 1))
WELCOME, STARTER = 100, 500  # the packages they pay a bonus on
UNLISTED = 1_000  # a package no promotion lists
FARMED = RULES.bonus_farming


def promotions(start_ts: int, end_ts: int, prefix: str = "") -> list[Message]:
    """The records of PROMOTIONS, published at `start_ts` and in force from then until
    `end_ts`: to be produced before any recharge that is to get their bonus."""
    out: list[Message] = []
    for promo_id, percent, packages, most in PROMOTIONS:
        key = f"{prefix}{promo_id}"
        value = {"promo_id": key, "starts_ts": start_ts, "ends_ts": end_ts, "bonus_percent": percent,
                 "packages": list(packages), "max_per_user": most, "ts": start_ts}
        out.append((topics.PROMOTIONS, key.encode(), json.dumps(value, separators=(",", ":")).encode()))
    return out


def _held(packages: Sequence[int]) -> int:
    """What a new account holds after recharging `packages` in order under PROMOTIONS:
    each recharge gets the best promotion listing it that it has not used up."""
    used: Counter[str] = Counter()
    held = 0
    for coins in packages:
        offers = sorted((-percent, promo_id) for promo_id, percent, listed, most in PROMOTIONS
                        if coins in listed and used[promo_id] < most)  # the highest, ties by promo_id
        held += coins
        if offers:
            held += coins * -offers[0][0] // 100
            used[offers[0][1]] += 1
    return held


def _need(held: int) -> int:
    """The least spend of `held` coins that leaves at most 100 - spent_percent % of them."""
    return held - held * (100 - FARMED.spent_percent) // 100


def _one_gift(b: _Builder, coins: int) -> Gift:
    """One gift of exactly `coins` (a rose always divides it; a dearer one where it can)."""
    fits = sorted((price, gift) for gift, price in b.econ.gifts.items()
                  if price <= coins and coins % price == 0 and coins // price <= MAX_QUANTITY)
    price, gift = b.rng.choice(fits[-2:])
    return gift, coins // price


def _drain_gifts(b: _Builder, spend: int, below: int, parts: int) -> list[Gift]:
    """`parts` gifts summing to `spend`, all but the last summing to under `below`: only
    the last can leave the account drained (when `spend` reaches `below`)."""
    most = min(below, spend) - 1  # what the gifts before the last may spend
    parts = max(1, min(parts, most + 1))
    if parts == 1:
        return [_one_gift(b, spend)]
    before = b.rng.randint(min(most, max(parts - 1, spend // 3)), most)
    return [_one_gift(b, c) for c in _split(b.rng, before, parts - 1)] + [_one_gift(b, spend - before)]


def _full(b: _Builder, held: int) -> int:
    """A farmer's spend: everything (half the time), else 90-100 %."""
    return held if b.rng.random() < 0.5 else b.rng.randint(_need(held), held)


def _fresh(b: _Builder) -> int:
    """A fresh account's age at its last gift: minutes."""
    return b.rng.randint(SETTLE_MS + 15_000, 40 * MINUTE_MS)


def _account(b: _Builder, user: str, packages: Sequence[int], age: int, gifts: Sequence[Gift],
             targets: Sequence[str], last: int) -> None:
    """A new account: `packages` recharged `age` before its `last` gift (the others within
    seconds), then `gifts` to `targets` in turn, the last at `last`, the others within the
    minutes before it (after the recharges have settled)."""
    first = last - age
    b.recharge(user, packages[0], first)
    for coins in packages[1:]:
        b.recharge(user, coins, first + b.rng.randint(1_000, 10_000))
    lo = max(first + SETTLE_MS, last - 8 * MINUTE_MS)
    times = sorted(b.rng.randint(lo, last - 1) for _ in gifts[1:]) + [last]
    for gift, creator, at in zip(gifts, targets, times):
        b.gift(user, creator, gift, at)


def _farm(b: _Builder, drains: Sequence[int], age: Callable[[], int] | None = None,
          packages: Sequence[int] = (WELCOME,), spend: Callable[[int], int] | None = None,
          cover: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """Accounts that each recharge `packages` and give `spend(held)` coins to one creator,
    the last gift of account i at drains[i]; `cover`: some first send a gift of their
    prefix to another creator. The creator may then cash out (under payout_concentration's
    minimum). Returns the creator and each account's (spend, held)."""
    creator, other = b.id("c"), b.id("o")
    spent: list[tuple[int, int]] = []
    diamonds = 0
    for i, last in enumerate(drains):
        held = _held(packages)
        coins = (spend or functools.partial(_full, b))(held)
        gifts = _drain_gifts(b, coins, _need(held), b.rng.randint(1, 4))
        targets = [creator] * len(gifts)
        if cover and len(gifts) > 1 and b.rng.random() < 0.5:
            targets[0] = other
        _account(b, b.id(f"u{i}"), packages, (age or functools.partial(_fresh, b))(), gifts, targets, last)
        diamonds += sum(b.econ.creator_diamonds(b.cost(g)) for g, t in zip(gifts, targets) if t == creator)
        spent.append((coins, held))
    if diamonds >= b.econ.min_payout_diamonds and b.rng.random() < 0.6:
        top = min(diamonds, RULES.payout_concentration.min_diamonds * 9 // 10)
        b.payout(creator, b.rng.randint(b.econ.min_payout_diamonds, top),
                 max(drains) + b.rng.randint(10 * MINUTE_MS, 2 * HOUR_MS))
    return creator, spent


def _spread(rng: random.Random, n: int, span: int) -> list[int]:
    """n times in [0, span], the first at 0 and the last at span."""
    return [0] + sorted(rng.randint(0, span) for _ in range(n - 2)) + [span]


def _farmers(b: _Builder) -> int:
    return b.rng.randint(FARMED.accounts, 4 * FARMED.accounts)


def _crowd(b: _Builder) -> int:
    return b.rng.randint(FARMED.accounts, 3 * FARMED.accounts)


def _farm_burst(b: _Builder) -> Made:
    """10-40 fresh accounts each recharge the welcome package and drain it (90-100 %)
    into one creator within 2-15 minutes."""
    n = _farmers(b)
    creator, _ = _farm(b, _burst(b.rng, n, b.rng.randint(2 * MINUTE_MS, 15 * MINUTE_MS)))
    return Made("creator", creator, n / FARMED.accounts)


def _farm_spread(b: _Builder) -> Made:
    """The same, spread over 40-58 minutes, some accounts first sending a gift elsewhere."""
    n = _farmers(b)
    creator, _ = _farm(b, _spread(b.rng, n, b.rng.randint(40 * MINUTE_MS, 58 * MINUTE_MS)), cover=True)
    return Made("creator", creator, n / FARMED.accounts)


def _farm_two_promotions(b: _Builder) -> Made:
    """Each account takes both promotions (the welcome and the starter package) and
    drains 90-100 % of the 800 coins within 5-50 minutes."""
    n = _farmers(b)
    creator, _ = _farm(b, _spread(b.rng, n, b.rng.randint(5 * MINUTE_MS, 50 * MINUTE_MS)),
                       packages=(WELCOME, STARTER))
    return Made("creator", creator, n / FARMED.accounts)


def _farm_aged(b: _Builder) -> Made:
    """Accounts made 1-20 hours before, drained together within 5-50 minutes."""
    n = _farmers(b)
    creator, _ = _farm(b, _spread(b.rng, n, b.rng.randint(5 * MINUTE_MS, 50 * MINUTE_MS)),
                       age=lambda: b.rng.randint(HOUR_MS, 20 * HOUR_MS))
    return Made("creator", creator, n / FARMED.accounts)


def _within_hour(b: _Builder, n: int) -> list[int]:
    return _spread(b.rng, n, b.rng.randint(5 * MINUTE_MS, FARMED.window_ms - 5 * MINUTE_MS))


def _one_short(b: _Builder) -> Made:
    """A farm of accounts - 1 accounts, with 0-4 long-standing fans gifting the creator
    too (recharged a package no promotion lists, days before)."""
    n = FARMED.accounts - 1
    drains = _within_hour(b, n)
    creator, _ = _farm(b, drains)
    for i in range(b.rng.randint(0, 4)):
        fan = b.id(f"f{i}")
        b.recharge(fan, b.rng.randint(2_000, 5_000), -_old_age(b))
        for _ in range(b.rng.randint(1, 3)):
            b.gift(fan, creator, _cheap(b), b.rng.randint(0, max(drains)))
    return Made("creator", creator, n / FARMED.accounts)


def _under_drain(b: _Builder) -> Made:
    """10-30 new accounts with the welcome bonus give one creator 85-89 % of it (the most
    drained of them 86-89 %)."""
    top = b.rng.uniform(0.86, 0.89)
    creator, spent = _farm(b, _within_hour(b, _crowd(b)),
                           spend=lambda held: b.rng.randint(math.ceil(0.85 * held), int(top * held)))
    return Made("creator", creator, max(s / h for s, h in spent) * 100 / FARMED.spent_percent)


def _just_old_farm(b: _Builder) -> Made:
    """Accounts that took the bonus 101-110 % of new_sender_ms before draining it."""
    ages: list[int] = []
    youngest = b.rng.uniform(1.01, 1.08)

    def age() -> int:
        ages.append(int(b.rng.uniform(youngest, 1.10) * FARMED.new_sender_ms))
        return ages[-1]

    creator, _ = _farm(b, _within_hour(b, _crowd(b)), age=age)
    return Made("creator", creator, min(ages) / FARMED.new_sender_ms)


def _no_bonus_farm(b: _Builder) -> Made:
    """New accounts that drain a package no promotion lists into one creator (a new
    creator's friends): no bonus to farm. Under recharge_burn's min_coins."""
    creator, _ = _farm(b, _within_hour(b, _crowd(b)), packages=(UNLISTED,))
    return Made("creator", creator, 0.0)


def _slow_farm(b: _Builder) -> Made:
    """10-14 drained accounts, evenly spread: any 10 of them span 101-110 % of the window."""
    w = FARMED.window_ms
    n, k = b.rng.randint(FARMED.accounts, FARMED.accounts + 4), FARMED.accounts - 1
    step = b.rng.uniform(1.012, 1.099) * w / k  # jitter of a second keeps it in 1.01-1.10
    drains = [int(i * step) + (b.rng.randint(-1_000, 1_000) if i else 0) for i in range(n)]
    creator, _ = _farm(b, drains)
    return Made("creator", creator, min(drains[i + k] - drains[i] for i in range(n - k)) / w)


def _new_viewers(b: _Builder) -> Made:
    """A creator's stream draws 10-30 new viewers within the hour: each takes the welcome
    bonus (a few the starter too) and spends 20-75 % of it, on this creator and others."""
    creator, others = b.id("c"), b.ids("o", b.rng.randint(0, 2))
    shares: list[float] = []
    for i, last in enumerate(_within_hour(b, _crowd(b))):
        packages = (WELCOME, STARTER) if b.rng.random() < 0.2 else (WELCOME,)
        held = _held(packages)
        coins = b.rng.randint(math.ceil(0.2 * held), int(0.75 * held))
        gifts = _drain_gifts(b, coins, coins, b.rng.randint(1, 4))
        targets = [creator] + [b.rng.choice([creator, *others]) for _ in gifts[1:]]
        _account(b, b.id(f"u{i}"), packages, _fresh(b), gifts, targets, last)
        shares.append(coins / held)
    return Made("creator", creator, max(shares) * 100 / FARMED.spent_percent)


# -- the set -------------------------------------------------------------------------------

Shape = Callable[[_Builder], Made]
# pattern -> label -> (shape name, builder); instances take the shapes in turn.
SHAPES: dict[str, dict[str, tuple[tuple[str, Shape], ...]]] = {
    "gift_velocity": {
        "fraud": (("by_count", _velocity_count), ("by_coins", _velocity_coins)),
        "near_miss": (("hype_count", _hype_count), ("hype_coins", _hype_coins)),
    },
    "recharge_burn": {
        "fraud": (("one_creator", lambda b: _burn(b, 1)), ("two_creators", lambda b: _burn(b, 2))),
        "near_miss": (("spent_percent", _burn_percent), ("min_coins", _burn_min_coins),
                      ("max_creators", _burn_creators), ("window", _burn_window), ("ordinary_new", _new_viewer)),
    },
    "gift_loop": {
        "fraud": (("pair", _loop_pair), ("triangle", _loop_triangle)),
        "near_miss": (("friends", _friends), ("co_streamers", _co_streamers), ("slow_exchange", _slow_exchange)),
    },
    "payout_concentration": {
        "fraud": tuple((f"new_senders_{k}", functools.partial(_concentration, senders=k)) for k in (1, 2, 3)),
        "near_miss": (("min_diamonds", _under_min_diamonds), ("percent", _under_percent),
                      ("max_senders", _too_many_senders), ("new_sender_ms", _just_old_senders),
                      ("loyal_fans", _loyal_fans)),
    },
    "rejection_probe": {
        "fraud": (("mixed_reasons", _probe),),
        "near_miss": (("retry_insufficient", _retry_insufficient), ("retry_limit", _retry_limit)),
    },
    "bonus_farming": {
        "fraud": (("burst", _farm_burst), ("spread", _farm_spread), ("two_promotions", _farm_two_promotions),
                  ("aged_accounts", _farm_aged)),
        "near_miss": (("accounts", _one_short), ("drain_percent", _under_drain), ("sender_age", _just_old_farm),
                      ("no_bonus", _no_bonus_farm), ("farm_window", _slow_farm), ("new_viewers", _new_viewers)),
    },
}


def scripts(
    per_pattern: int, near_misses: int, start_ts: int, span_ms: int, seed: int, prefix: str = "",
    lead_ms: int | None = None,
) -> list[Script]:
    """`per_pattern` fraud instances and `near_misses` near-misses of each pattern, each
    shape in turn. A script's decisive moment falls in [start_ts, start_ts + span_ms),
    and its later events too where the span allows; its earlier ones (old accounts'
    first recharges, up to two days) at most `lead_ms` before start_ts (None: no bound)."""
    require(per_pattern >= 0 and near_misses >= 0 and span_ms > 0, "counts >= 0 and span_ms > 0")
    econ = economics.load()
    require(not set(UNKNOWN_GIFTS) & set(econ.gifts), "the unknown gifts are not in the catalog")
    out: list[Script] = []
    for pattern in PATTERNS:
        for label, count in (("fraud", per_pattern), ("near_miss", near_misses)):
            shapes = SHAPES[pattern][label]
            for k in range(count):
                name, make = shapes[k % len(shapes)]
                rng = random.Random(f"{seed}:{len(out)}")  # a script's draws do not depend on the others'
                b = _Builder(f"{prefix}f{len(out)}-", rng, econ)
                made = make(b)
                out.append(_place(b, made, {"label": label, "pattern": pattern, "shape": name},
                                  start_ts, span_ms, lead_ms))
    return out


def _place(b: _Builder, made: Made, label: dict[str, Any], start: int, span: int, lead: int | None) -> Script:
    first, last = min(r[0] for r in b.raw), max(r[0] for r in b.raw)
    lo = start if lead is None else max(start, start - lead - first)
    hi = start + span - 1 - max(0, last)
    at = b.rng.randint(lo, hi) if hi >= lo else lo
    events: list[tuple[int, Message]] = []
    for rel, topic, key_field, value in sorted(b.raw, key=lambda r: r[0]):
        value = {**value, "ts": at + rel}
        events.append((at + rel, (topic, value[key_field].encode(), json.dumps(value, separators=(",", ":")).encode())))
    return Script({**label, "margin": round(made.margin, 4), "subject_type": made.subject_type,
                   "subject_id": made.subject_id, "event_ids": [r[3]["event_id"] for r in b.raw],
                   "first_ts": at + first, "last_ts": at + last}, events)


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
