"""Injected fraud patterns: well-formed, merged by event time, labelled, and over (fraud)
or under (near-miss) the fraud issue's default thresholds when the contract's rules
decide them (the independent reference ledger)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from agents.ingest.decode import Malformed, decode
from pipeline import economics
from tests.support.reference import ReferenceLedger
from tools.simulate import SimConfig, generate
from tools.simulate_fraud import PATTERNS, Script, inject, scripts

T0 = 1_780_000_000_000
MIN, DAY = 60_000, 86_400_000


def _outcomes(script: Script) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    ref = ReferenceLedger()
    out = []
    for _, (topic, _, value) in sorted(script.events, key=lambda e: e[0]):
        ev = json.loads(value)
        out.append((topic, ev, ref.apply(topic, ev)))
    return out


def _max_in_window(points: list[tuple[int, int]], window: int) -> int:
    """Largest sum of values whose times fit in one window."""
    points = sorted(points)
    best = 0
    for i, (t, _) in enumerate(points):
        best = max(best, sum(v for u, v in points[i:] if u - t < window))
    return best


def measure(script: Script) -> bool:
    """Whether the instance crosses its pattern's default threshold."""
    outs = _outcomes(script)
    gifts = [(ev, o) for topic, ev, o in outs if topic == "gifts"]
    accepted = [(ev, o) for ev, o in gifts if o["status"] == "accepted"]
    pattern = script.label["pattern"]
    if pattern == "gift_velocity":
        return (_max_in_window([(ev["ts"], 1) for ev, _ in accepted], MIN) >= 50
                or _max_in_window([(ev["ts"], o["coins"]) for ev, o in accepted], MIN) >= 20_000)
    if pattern == "recharge_burn":
        first = min(ev["ts"] for topic, ev, _ in outs if topic == "recharges")
        recharged = sum(ev["coins"] for topic, ev, _ in outs if topic == "recharges" and ev["ts"] < first + 10 * MIN)
        early = [(ev, o) for ev, o in accepted if ev["ts"] < first + 10 * MIN]
        spent = sum(o["coins"] for _, o in early)
        return spent >= max(5_000, 0.9 * recharged) and len({ev["creator_id"] for ev, _ in early}) <= 2
    if pattern == "gift_loop":
        ways = Counter()
        for ev, o in accepted:
            ways[(ev["sender_id"], ev["creator_id"])] += o["coins"]
        return any(c >= 1_000 and ways[(b, a)] >= 1_000 for (a, b), c in ways.items())
    if pattern == "payout_concentration":
        payouts = [ev for topic, ev, _ in outs if topic == "payouts"]
        if not payouts:
            return False
        payout = payouts[0]
        by_sender = Counter()
        for ev, o in accepted:
            if payout["ts"] - DAY < ev["ts"] <= payout["ts"]:
                by_sender[ev["sender_id"]] += o["diamonds"]
        top3 = sum(d for _, d in by_sender.most_common(3))
        return payout["diamonds"] >= 10_000 and top3 >= 0.8 * sum(by_sender.values())
    assert pattern == "rejection_probe"
    return _max_in_window([(ev["ts"], 1) for ev, o in gifts if o["status"] == "rejected"], MIN) >= 20


def test_each_pattern_has_fraud_over_and_near_misses_under_its_threshold() -> None:
    extra = scripts(per_pattern=2, near_misses=2, start_ts=T0, span_ms=DAY, seed=1)
    assert Counter((s.label["pattern"], s.label["label"]) for s in extra) == {
        (p, kind): 2 for p in PATTERNS for kind in ("fraud", "near_miss")}
    for script in extra:
        assert measure(script) == (script.label["label"] == "fraud"), script.label
        # Only its own pattern: a fraud instance of one kind is not another's.
        for other in PATTERNS:
            if other != script.label["pattern"]:
                relabelled = Script({**script.label, "pattern": other}, script.events)
                assert not measure(relabelled), (script.label, other)


def test_injected_events_are_well_formed_unique_and_merged_by_event_time() -> None:
    econ = economics.load()
    extra = scripts(per_pattern=1, near_misses=1, start_ts=T0, span_ms=20_000, seed=2, prefix="sim-")
    normal = list(generate(SimConfig(events=20_000, start_ts=T0, malformed_share=0.01), econ))
    merged = list(inject(iter(normal), extra))
    assert len(merged) == len(normal) + sum(len(s.events) for s in extra)
    injected = {e for s in extra for e in s.label["event_ids"]}
    seen = [json.loads(v)["event_id"] for t, k, v in merged
            if not isinstance(decode(t, k, v), Malformed) and json.loads(v)["event_id"] in injected]
    assert sorted(seen) == sorted(injected)  # every one, once
    times = [json.loads(v)["ts"] for t, k, v in merged if not isinstance(decode(t, k, v), Malformed)]
    inside = [t for t in times if t <= T0 + 20_000]
    assert inside == sorted(inside)  # within the normal traffic, in event-time order
    labels = {s.label["subject_id"] for s in extra}
    assert all(label.startswith("sim-f") for label in labels)


@pytest.mark.parametrize("seed", [3, 4])
def test_labels_are_reproducible(seed: int) -> None:
    a = scripts(1, 1, T0, DAY, seed)
    b = scripts(1, 1, T0, DAY, seed)
    assert [s.label for s in a] == [s.label for s in b] and [s.events for s in a] == [s.events for s in b]
