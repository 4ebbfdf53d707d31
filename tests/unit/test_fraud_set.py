"""The labelled fraud set (tools/simulate_fraud.py), measured by a checker written from
the rules' meaning (the thresholds' docstrings and CONTRACT.md), not from the detectors:
the independent reference ledger decides which gifts are accepted, then each rule's
quantity is computed from a script's events alone (under the set's promotions, which
the reference ledger applies too). Every near-miss must miss, by the margin its shape
promises, and meet its rule's other conditions; every fraud instance must cross its own
rule, and no script any other rule."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agents.fraud.thresholds import RULES, FraudRules
from pipeline import economics
from tests.support.reference import ReferenceLedger
from tools import fraud_eval
from tools.simulate_fraud import PATTERNS, Script, promotions, scripts

R = FraudRules()  # the default thresholds: the set is built against them
V, B, L, C, P = R.gift_velocity, R.recharge_burn, R.gift_loop, R.payout_concentration, R.rejection_probe
F = R.bonus_farming
T0 = 1_780_000_000_000
LEAD, SPAN = fraud_eval.HISTORY_MS, fraud_eval.TRAFFIC_MS
HOUR, MINUTE = 3_600_000, 60_000
# The set's promotions as the evaluation publishes them: before everything, in force throughout.
PROMOTIONS = [(topic, value) for topic, _, value in promotions(T0 - LEAD, T0 + SPAN + HOUR, prefix="x")]
Row = tuple[str, dict[str, Any], dict[str, Any]]  # (topic, event, outcome), in event-time order


# -- the checker ---------------------------------------------------------------------------


def decide(events: Iterable[tuple[str, bytes]]) -> list[Row]:
    """The events' rows; a promotion is applied, and has no row (it has no outcome)."""
    ref = ReferenceLedger()
    rows = []
    for topic, value in events:
        ev = json.loads(value)
        out = ref.feed(topic, ev)
        if out is not None:
            rows.append((topic, ev, out))
    return rows


def subject(topic: str, ev: dict[str, Any]) -> str | None:
    """Whose event it is (a user's first event dates the account)."""
    return ev.get("sender_id") if topic == "gifts" else ev.get("user_id")


def peak(points: list[tuple[int, int]], window: int) -> int:
    """The largest sum of values at times spanning less than `window`."""
    points = sorted(points)
    best = total = lo = 0
    for t, v in points:
        total += v
        while points[lo][0] <= t - window:
            total -= points[lo][1]
            lo += 1
        best = max(best, total)
    return best


@dataclass
class Burn:
    recharged: int = 0
    spent: int = 0
    creators: set[str] = field(default_factory=set)
    best_share: float = 0.0  # spent / recharged after a gift, while within max_creators
    crossed_at: int | None = None  # since the first recharge


def burn(rows: list[Row], bounded: bool) -> Burn:
    """One account's rows; `bounded`: only within the window after its first recharge."""
    first = min(ev["ts"] for topic, ev, _ in rows if topic == "recharges")
    t = Burn()
    for topic, ev, out in rows:
        if bounded and ev["ts"] >= first + B.window_ms:
            continue
        if topic == "recharges":
            t.recharged += ev["coins"]
        elif topic == "gifts" and out["status"] == "accepted":
            t.spent += out["coins"]
            t.creators.add(ev["creator_id"])
            if len(t.creators) <= B.max_creators:
                t.best_share = max(t.best_share, t.spent / t.recharged)
                if t.crossed_at is None and t.spent >= B.min_coins and t.spent * 100 >= B.spent_percent * t.recharged:
                    t.crossed_at = ev["ts"] - first
    return t


@dataclass
class Loop:
    best: int  # the most the weaker way reaches within one window
    span: int | None  # the shortest time within which both ways reach min_coins


def loop(gifts: list[tuple[int, int, int]]) -> Loop:
    """One pair's accepted gifts as (ts, way 0 or 1, coins)."""
    gifts = sorted(gifts)
    best, span = 0, None
    for i, (start, _, _) in enumerate(gifts):
        ways = [0, 0]
        for ts, way, coins in gifts[i:]:
            ways[way] += coins
            if ts - start < L.window_ms:
                best = max(best, min(ways))
            if min(ways) >= L.min_coins and (span is None or ts - start < span):
                span = ts - start
    return Loop(best, span)


@dataclass
class Pay:
    diamonds: int
    total: int  # the creator's diamonds in the window before the payout
    top_new: int  # of the max_senders largest senders under new_sender_ms old
    new_senders: int
    needed: int | None  # fewest new senders that reach percent
    age_needed: int | None  # the least age limit under which the largest senders would reach it


def pay(payout: dict[str, Any], credited: list[tuple[int, str, int]], first: dict[str, int]) -> Pay:
    """`credited`: the creator's accepted gifts as (ts, sender, diamonds)."""
    by: Counter[str] = Counter()
    for ts, sender, diamonds in credited:
        if payout["ts"] - C.window_ms < ts <= payout["ts"]:
            by[sender] += diamonds
    total = sum(by.values())
    age = {s: payout["ts"] - first[s] for s in by}
    new = sorted((d for s, d in by.items() if age[s] < C.new_sender_ms), reverse=True)
    reach = C.percent * total
    needed = next((k for k in range(1, len(new) + 1) if sum(new[:k]) * 100 >= reach), None)
    limits = sorted(set(age.values()))
    age_needed = next((a for a in limits if sum(sorted((d for s, d in by.items() if age[s] <= a),
                                                       reverse=True)[: C.max_senders]) * 100 >= reach), None)
    return Pay(payout["diamonds"], total, sum(new[: C.max_senders]), len(new), needed, age_needed)


@dataclass(frozen=True)
class Gave:
    """An accepted gift with its sender's ledger after it, as the reference keeps it."""

    ts: int
    sender: str
    creator: str
    age: int  # since the sender's first event
    held: int  # coins recharged plus bonus coins received, so far
    balance: int
    bonus: int  # bonus coins received so far
    bonuses: int  # bonuses received so far

    @property
    def share(self) -> float:
        """What the sender has spent of all it ever had."""
        return 1 - self.balance / self.held


def drained(g: Gave, spent_percent: int = F.spent_percent, new_ms: float = F.new_sender_ms,
            bonus: bool = True) -> bool:
    """A farmed gift (the rule's defaults), or with one condition relaxed."""
    return (g.bonus > 0 or not bonus) and g.age < new_ms and g.balance * 100 <= (100 - spent_percent) * g.held


def most(gaves: Iterable[Gave], pred: Callable[[Gave], bool] = drained, window: int = F.window_ms) -> int:
    """The most distinct senders with a gift meeting `pred` at times spanning less than
    `window`."""
    points = sorted((g.ts, g.sender) for g in gaves if pred(g))
    inside: Counter[str] = Counter()
    best = lo = 0
    for t, sender in points:
        inside[sender] += 1
        while points[lo][0] <= t - window:
            inside[points[lo][1]] -= 1
            if not inside[points[lo][1]]:
                del inside[points[lo][1]]
            lo += 1
        best = max(best, len(inside))
    return best


def span_needed(gaves: Iterable[Gave], k: int = F.accounts, pred: Callable[[Gave], bool] = drained) -> int | None:
    """The shortest time spanned by gifts meeting `pred` of `k` distinct senders (None:
    there are not so many)."""
    points = sorted((g.ts, g.sender) for g in gaves if pred(g))
    inside: Counter[str] = Counter()
    best, lo = None, 0
    for t, sender in points:
        inside[sender] += 1
        while len(inside) >= k and (inside[points[lo][1]] > 1 or len(inside) > k):
            inside[points[lo][1]] -= 1
            if not inside[points[lo][1]]:
                del inside[points[lo][1]]
            lo += 1
        if len(inside) >= k and (best is None or t - points[lo][0] < best):
            best = t - points[lo][0]
    return best


@dataclass
class Figures:
    gifts: dict[str, int]  # sender -> most accepted gifts within a velocity window
    coins: dict[str, int]
    rejections: dict[str, int]
    reasons: dict[str, set[str]]
    burns: dict[str, Burn]  # within the window
    unbounded: dict[str, Burn]  # with no window
    legs: dict[tuple[str, str], int]  # accepted coins one way
    loops: dict[tuple[str, str], Loop]  # pairs with gifts both ways
    payouts: dict[str, Pay]  # by creator (the last payout)
    gave: list[Gave] = field(default_factory=list)  # every accepted gift
    farms: dict[str, list[Gave]] = field(default_factory=dict)  # by creator


def measure(rows: list[Row]) -> Figures:
    mine: dict[str, list[Row]] = defaultdict(list)
    first: dict[str, int] = {}
    for row in rows:
        who = subject(row[0], row[1])
        if who is not None:
            mine[who].append(row)
            first.setdefault(who, row[1]["ts"])
    accepted = [(ev, out) for topic, ev, out in rows if topic == "gifts" and out["status"] == "accepted"]
    refused = [(ev, out) for topic, ev, out in rows if topic == "gifts" and out["status"] == "rejected"]
    f = Figures({}, {}, {}, defaultdict(set), {}, {}, defaultdict(int), {}, {})
    points: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for ev, out in accepted:
        points[ev["sender_id"]].append((ev["ts"], out["coins"]))
        f.legs[(ev["sender_id"], ev["creator_id"])] += out["coins"]
    for s, pts in points.items():
        f.gifts[s], f.coins[s] = peak([(t, 1) for t, _ in pts], V.window_ms), peak(pts, V.window_ms)
    refusals: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for ev, out in refused:
        refusals[ev["sender_id"]].append((ev["ts"], 1))
        f.reasons[ev["sender_id"]].add(out["reason"])
    f.rejections = {s: peak(pts, P.window_ms) for s, pts in refusals.items()}
    for who, own in mine.items():
        if any(topic == "recharges" for topic, _, _ in own):
            f.burns[who], f.unbounded[who] = burn(own, True), burn(own, False)
    _pairs(f, accepted)
    _payouts(f, rows, accepted, first)
    _gave(f, rows, first)
    return f


def _gave(f: Figures, rows: list[Row], first: dict[str, int]) -> None:
    recharged: Counter[str] = Counter()
    bonus: Counter[str] = Counter()
    bonuses: Counter[str] = Counter()
    farms: dict[str, list[Gave]] = defaultdict(list)
    for topic, ev, out in rows:
        if topic == "recharges" and out["status"] == "accepted":
            recharged[ev["user_id"]] += ev["coins"]
            bonus[ev["user_id"]] += out["bonus_coins"] or 0
            bonuses[ev["user_id"]] += out["promo_id"] is not None
        elif topic == "gifts" and out["status"] == "accepted":
            s = ev["sender_id"]
            g = Gave(ev["ts"], s, ev["creator_id"], ev["ts"] - first[s], recharged[s] + bonus[s], out["balance_after"],
                     bonus[s], bonuses[s])
            f.gave.append(g)
            farms[g.creator].append(g)
    f.farms = dict(farms)


def _pairs(f: Figures, accepted: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    both = {(min(k), max(k)) for k in f.legs if (k[1], k[0]) in f.legs}
    gifts: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
    for ev, out in accepted:
        pair = (min(ev["sender_id"], ev["creator_id"]), max(ev["sender_id"], ev["creator_id"]))
        if pair in both:
            gifts[pair].append((ev["ts"], int(ev["sender_id"] != pair[0]), out["coins"]))
    f.loops = {pair: loop(g) for pair, g in gifts.items()}


def _payouts(f: Figures, rows: list[Row], accepted: list[tuple[dict[str, Any], dict[str, Any]]],
             first: dict[str, int]) -> None:
    credited: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for ev, out in accepted:
        credited[ev["creator_id"]].append((ev["ts"], ev["sender_id"], out["diamonds"]))
    for topic, ev, _ in rows:
        if topic == "payouts":
            f.payouts[ev["creator_id"]] = pay(ev, credited[ev["creator_id"]], first)


def crossed(f: Figures) -> dict[str, set[str]]:
    """Rule -> the subjects that cross it."""
    return {
        "gift_velocity": {s for s in f.gifts if f.gifts[s] >= V.gifts or f.coins[s] >= V.coins},
        "recharge_burn": {s for s, b in f.burns.items() if b.crossed_at is not None},
        "gift_loop": {s for pair, lp in f.loops.items() if lp.best >= L.min_coins for s in pair},
        "payout_concentration": {c for c, p in f.payouts.items() if p.diamonds >= C.min_diamonds
                                 and p.total > 0 and p.top_new * 100 >= C.percent * p.total},
        "rejection_probe": {s for s, n in f.rejections.items() if n >= P.rejections},
        "bonus_farming": {c for c, gaves in f.farms.items() if most(gaves) >= F.accounts},
    }


def script_rows(script: Script) -> list[Row]:
    return decide([*PROMOTIONS, *((m[0], m[2]) for _, m in sorted(script.events, key=lambda e: e[0]))])


def pair_of(f: Figures, who: str) -> Loop:
    (found,) = [lp for pair, lp in f.loops.items() if who in pair]
    return found


# -- what each shape promises --------------------------------------------------------------

Check = Callable[[Figures, str], tuple[float, bool]]  # (measured margin, the other conditions are met)


def _within(b: Burn) -> bool:
    return len(b.creators) <= B.max_creators


def _spends(b: Burn) -> bool:
    return b.spent >= B.min_coins and b.spent * 100 >= B.spent_percent * b.recharged


def _share(p: Pay) -> float:
    return p.top_new * 100 / p.total / C.percent


def _farmed(f: Figures, s: str) -> float:
    """Distinct farmed senders of creator `s` within a window, over the rule's count."""
    return most(f.farms[s]) / F.accounts


def _drain_span(f: Figures, s: str) -> int:
    times = [g.ts for g in f.farms[s] if drained(g)]
    return max(times) - min(times)


def _new_with_bonus(g: Gave) -> bool:
    return g.bonus > 0 and g.age < F.new_sender_ms


def _most_drained(f: Figures) -> float:
    """The largest share spent by a new sender with a bonus, over the rule's spent_percent."""
    return max(g.share for g in f.gave if _new_with_bonus(g)) * 100 / F.spent_percent


NEAR_MISS: dict[str, tuple[Check, tuple[float, float]]] = {
    "hype_count": (lambda f, s: (f.gifts[s] / V.gifts, True), (0.90, 0.99)),
    "hype_coins": (lambda f, s: (f.coins[s] / V.coins, True), (0.90, 0.99)),
    "spent_percent": (lambda f, s: (f.burns[s].best_share * 100 / B.spent_percent,
                                    f.burns[s].spent >= B.min_coins and _within(f.burns[s])), (0.90, 0.99)),
    "min_coins": (lambda f, s: (f.burns[s].spent / B.min_coins,
                                f.burns[s].spent * 100 >= B.spent_percent * f.burns[s].recharged
                                and _within(f.burns[s])), (0.90, 0.99)),
    "max_creators": (lambda f, s: (len(f.burns[s].creators) / B.max_creators, _spends(f.burns[s])),
                     ((B.max_creators + 1) / B.max_creators,) * 2),
    "window": (lambda f, s: ((f.unbounded[s].crossed_at or 0) / B.window_ms, f.unbounded[s].crossed_at is not None),
               (1.01, 1.10)),
    "ordinary_new": (lambda f, s: (f.burns[s].best_share * 100 / B.spent_percent, True), (0.0, 0.8)),
    "friends": (lambda f, s: (pair_of(f, s).best / L.min_coins, True), (0.90, 0.99)),
    "co_streamers": (lambda f, s: (pair_of(f, s).best / L.min_coins, True), (0.90, 0.99)),
    "slow_exchange": (lambda f, s: ((pair_of(f, s).span or 0) / L.window_ms, pair_of(f, s).span is not None),
                      (1.01, 1.10)),
    "min_diamonds": (lambda f, s: (f.payouts[s].diamonds / C.min_diamonds, _share(f.payouts[s]) >= 1), (0.90, 0.99)),
    "percent": (lambda f, s: (_share(f.payouts[s]), f.payouts[s].diamonds >= C.min_diamonds
                              and f.payouts[s].new_senders <= C.max_senders), (0.90, 0.99)),
    "max_senders": (lambda f, s: ((f.payouts[s].needed or 0) / C.max_senders, f.payouts[s].diamonds >= C.min_diamonds),
                    ((C.max_senders + 1) / C.max_senders,) * 2),
    "new_sender_ms": (lambda f, s: ((f.payouts[s].age_needed or 0) / C.new_sender_ms,
                                    f.payouts[s].diamonds >= C.min_diamonds and f.payouts[s].new_senders == 0),
                      (1.01, 1.10)),
    "loyal_fans": (lambda f, s: ((f.payouts[s].age_needed or 0) / C.new_sender_ms,
                                 f.payouts[s].diamonds >= C.min_diamonds and f.payouts[s].new_senders == 0),
                   (1.2, 2.0)),
    "retry_insufficient": (lambda f, s: (f.rejections[s] / P.rejections, f.reasons[s] == {"insufficient_coins"}),
                           (0.90, 0.99)),
    "retry_limit": (lambda f, s: (f.rejections[s] / P.rejections, f.reasons[s] == {"spend_limit_exceeded"}),
                    (0.90, 0.99)),
    # bonus_farming: the conditions are count, drain, age, bonus and window; each of
    # these misses one, and meets the others (that one relaxed, the farm would cross).
    "accounts": (lambda f, s: (_farmed(f, s), len({g.sender for g in f.farms[s] if drained(g)}) == F.accounts - 1),
                 ((F.accounts - 1) / F.accounts,) * 2),
    "drain_percent": (lambda f, s: (_most_drained(f), most(f.farms[s], lambda g: drained(g, spent_percent=85))
                                    >= F.accounts), (0.90, 0.99)),
    "sender_age": (lambda f, s: (min(g.age for g in f.farms[s] if drained(g, new_ms=math.inf)) / F.new_sender_ms,
                                 most(f.farms[s], lambda g: drained(g, new_ms=math.inf)) >= F.accounts), (1.01, 1.10)),
    "no_bonus": (lambda f, s: (max(g.bonus for g in f.farms[s]),
                               most(f.farms[s], lambda g: drained(g, bonus=False)) >= F.accounts), (0.0, 0.0)),
    "farm_window": (lambda f, s: ((span_needed(f.farms[s]) or 0) / F.window_ms,
                                  most(f.farms[s], lambda g: drained(g), 2 * F.window_ms) >= F.accounts),
                    (1.01, 1.10)),
    # honest: a creator's crowd of new viewers, each with the welcome bonus, spending part of it
    "new_viewers": (lambda f, s: (_most_drained(f), most(f.farms[s], _new_with_bonus) >= F.accounts), (0.2, 0.85)),
}
FRAUD: dict[str, Check] = {
    "by_count": lambda f, s: (f.gifts[s] / V.gifts, True),
    "by_coins": lambda f, s: (f.coins[s] / V.coins, f.gifts[s] < V.gifts),
    "one_creator": lambda f, s: (f.burns[s].best_share * 100 / B.spent_percent, len(f.burns[s].creators) == 1),
    "two_creators": lambda f, s: (f.burns[s].best_share * 100 / B.spent_percent, len(f.burns[s].creators) == 2),
    "pair": lambda f, s: (pair_of(f, s).best / L.min_coins, True),
    "new_senders_1": lambda f, s: (_share(f.payouts[s]), f.payouts[s].new_senders == 1),
    "new_senders_2": lambda f, s: (_share(f.payouts[s]), f.payouts[s].new_senders == 2),
    "new_senders_3": lambda f, s: (_share(f.payouts[s]), f.payouts[s].new_senders == 3),
    "mixed_reasons": lambda f, s: (f.rejections[s] / P.rejections, len(f.reasons[s]) >= 2),
    "burst": lambda f, s: (_farmed(f, s), _drain_span(f, s) <= 15 * MINUTE),
    "spread": lambda f, s: (_farmed(f, s), _drain_span(f, s) >= 40 * MINUTE),
    "two_promotions": lambda f, s: (_farmed(f, s), all(g.bonuses == 2 for g in f.farms[s] if drained(g))),
    "aged_accounts": lambda f, s: (_farmed(f, s), min(g.age for g in f.farms[s] if drained(g)) >= HOUR),
}


# -- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_set() -> list[tuple[Script, Figures]]:
    """The evaluation's default set (40 fraud instances and 40 near-misses per rule)."""
    made = scripts(40, 40, T0, SPAN, seed=11, prefix="x", lead_ms=LEAD)
    return [(s, measure(script_rows(s))) for s in made]


def test_every_rule_has_its_shapes_in_the_default_counts(default_set: list[tuple[Script, Figures]]) -> None:
    counts = Counter((s.label["pattern"], s.label["label"], s.label["shape"]) for s, _ in default_set)
    assert counts == {
        ("gift_velocity", "fraud", "by_count"): 20, ("gift_velocity", "fraud", "by_coins"): 20,
        ("gift_velocity", "near_miss", "hype_count"): 20, ("gift_velocity", "near_miss", "hype_coins"): 20,
        ("recharge_burn", "fraud", "one_creator"): 20, ("recharge_burn", "fraud", "two_creators"): 20,
        **{("recharge_burn", "near_miss", k): 8
           for k in ("spent_percent", "min_coins", "max_creators", "window", "ordinary_new")},
        ("gift_loop", "fraud", "pair"): 20, ("gift_loop", "fraud", "triangle"): 20,
        ("gift_loop", "near_miss", "friends"): 14, ("gift_loop", "near_miss", "co_streamers"): 13,
        ("gift_loop", "near_miss", "slow_exchange"): 13,
        ("payout_concentration", "fraud", "new_senders_1"): 14,
        ("payout_concentration", "fraud", "new_senders_2"): 13,
        ("payout_concentration", "fraud", "new_senders_3"): 13,
        **{("payout_concentration", "near_miss", k): 8
           for k in ("min_diamonds", "percent", "max_senders", "new_sender_ms", "loyal_fans")},
        ("rejection_probe", "fraud", "mixed_reasons"): 40,
        ("rejection_probe", "near_miss", "retry_insufficient"): 20,
        ("rejection_probe", "near_miss", "retry_limit"): 20,
        **{("bonus_farming", "fraud", k): 10 for k in ("burst", "spread", "two_promotions", "aged_accounts")},
        **{("bonus_farming", "near_miss", k): 7 for k in ("accounts", "drain_percent", "sender_age", "no_bonus")},
        ("bonus_farming", "near_miss", "farm_window"): 6, ("bonus_farming", "near_miss", "new_viewers"): 6,
    }
    keys = {"label", "pattern", "shape", "margin", "subject_type", "subject_id", "event_ids", "first_ts", "last_ts"}
    assert all(set(s.label) == keys for s, _ in default_set)


def test_every_near_miss_misses_by_its_margin_and_meets_the_other_conditions(
        default_set: list[tuple[Script, Figures]]) -> None:
    seen = 0
    for script, f in default_set:
        label = script.label
        if label["label"] != "near_miss":
            continue
        assert not any(crossed(f).values()), (label["shape"], crossed(f))
        check, (lo, hi) = NEAR_MISS[label["shape"]]
        margin, others = check(f, label["subject_id"])
        assert lo - 1e-9 <= margin <= hi + 1e-9, (label["shape"], margin)
        assert others, (label["shape"], label["subject_id"])
        assert label["margin"] == pytest.approx(margin, abs=1e-4), label["shape"]
        seen += 1
    assert seen == 240


def test_every_fraud_instance_crosses_its_own_rule_and_no_other(default_set: list[tuple[Script, Figures]]) -> None:
    seen = 0
    for script, f in default_set:
        label = script.label
        if label["label"] != "fraud" or label["shape"] == "triangle":
            continue
        found = crossed(f)
        assert {rule for rule, who in found.items() if who} == {label["pattern"]}, (label["shape"], found)
        assert label["subject_id"] in found[label["pattern"]]
        margin, shaped = FRAUD[label["shape"]](f, label["subject_id"])
        assert margin >= 1.0 and shaped, (label["shape"], margin)
        assert label["margin"] == pytest.approx(margin, abs=1e-4), label["shape"]
        seen += 1
    assert seen == 220


def test_triangles_are_rings_of_three_legs_over_min_coins_within_a_window(
        default_set: list[tuple[Script, Figures]]) -> None:
    triangles = [(s, f) for s, f in default_set if s.label["shape"] == "triangle"]
    assert len(triangles) == 20
    for script, f in triangles:
        assert not any(crossed(f).values())  # no pair gifts both ways: a pairwise reading sees nothing
        legs = {k: v for k, v in f.legs.items() if v}
        accounts = {a for leg in legs for a in leg}
        assert len(legs) == 3 and len(accounts) == 3 and all(v >= L.min_coins for v in legs.values())
        assert all(sum(1 for leg in legs if leg[0] == a) == 1 for a in accounts)  # A -> B -> C -> A
        gifts = [ts for ts, (topic, _, _) in script.events if topic == "gifts"]
        assert max(gifts) - min(gifts) < L.window_ms
        assert script.label["margin"] == pytest.approx(min(legs.values()) / L.min_coins, abs=1e-4)


def test_probes_mix_every_reason(default_set: list[tuple[Script, Figures]]) -> None:
    probes = [f.reasons[s.label["subject_id"]] for s, f in default_set if s.label["shape"] == "mixed_reasons"]
    assert set().union(*probes) == {"insufficient_coins", "unknown_gift", "self_gift", "spend_limit_exceeded"}
    counts = [f.rejections[s.label["subject_id"]] for s, f in default_set if s.label["shape"] == "mixed_reasons"]
    assert min(counts) >= P.rejections and max(counts) <= 40 and len(set(counts)) > 5


def test_scripts_stay_within_the_run_with_their_own_accounts(default_set: list[tuple[Script, Figures]]) -> None:
    ids: list[str] = []
    for n, (script, _) in enumerate(default_set):
        times = [ts for ts, _ in script.events]
        assert min(times) >= T0 - LEAD and max(times) < T0 + SPAN, script.label["shape"]
        assert times == sorted(times)
        assert (script.label["first_ts"], script.label["last_ts"]) == (min(times), max(times))
        for _, (_, key, value) in script.events:
            ev = json.loads(value)
            assert key.decode().startswith(f"xf{n}-") and ev["ts"] in times
            ids.append(ev["event_id"])
        assert sorted(script.label["event_ids"]) == sorted(json.loads(m[2])["event_id"] for _, m in script.events)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("seed", [3, 4])
def test_the_set_is_a_function_of_its_seed(seed: int) -> None:
    a, b = scripts(4, 6, T0, SPAN, seed, lead_ms=LEAD), scripts(4, 6, T0, SPAN, seed, lead_ms=LEAD)
    assert [s.label for s in a] == [s.label for s in b] and [s.events for s in a] == [s.events for s in b]
    other = scripts(4, 6, T0, SPAN, seed + 10, lead_ms=LEAD)
    assert [s.label["margin"] for s in a] != [s.label["margin"] for s in other]


def test_the_evaluation_set_is_dense_and_its_ordinary_traffic_crosses_nothing() -> None:
    parser = argparse.ArgumentParser()
    fraud_eval.add_arguments(parser)
    args = parser.parse_args([])
    messages, labels = fraud_eval.generated(args, economics.load())
    assert len(labels) == 480 and len(messages) > fraud_eval.USERS + args.normal
    assert [topic for topic, _, _ in messages[:2]] == ["promotions"] * 2  # before any recharge
    values = [(topic, json.loads(value)) for topic, _, value in messages]
    times = [ev["ts"] for _, ev in values]
    assert times == sorted(times)
    start = times[0] + fraud_eval.HISTORY_MS  # the history comes first
    ordinary = [ev["ts"] for _, ev in values if ev.get("event_id", "").startswith("ne")]
    assert len(ordinary) == args.normal and start < min(ordinary) and max(ordinary) <= start + SPAN
    assert SPAN <= 6 * 3_600_000  # an event every ~0.2 s, not every 1.7 s
    assert min(times) >= start - LEAD and max(times) <= start + SPAN
    rows = decide((topic, value) for topic, _, value in messages)
    # Ordinary viewers take the promotions too (a 100-coin package once each).
    assert sum(1 for topic, ev, out in rows if topic == "recharges" and ev["event_id"].startswith("ne")
               and out["bonus_coins"]) > 100
    found = crossed(measure(rows))
    crossing = {(rule, who.split("-")[0]) for rule, subjects in found.items() for who in subjects}
    frauds = {(lab["pattern"], lab["subject_id"].split("-")[0]) for lab in labels if lab["label"] == "fraud"}
    assert crossing <= frauds, crossing - frauds  # ordinary traffic and near-misses cross nothing
    assert len(crossing) == 220  # every fraud instance but the triangles, merged into the traffic


def test_the_patterns_are_the_rules() -> None:
    assert set(PATTERNS) == set(RULES)
