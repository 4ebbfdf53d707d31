"""The simulator: reproducible, and it produces what its options say."""

from __future__ import annotations

import json
from collections import Counter

from agents.ingest.decode import Malformed, decode
from pipeline import economics
from tools.simulate import SimConfig, generate

ECON = economics.load()


def test_same_seed_same_messages_other_seed_others() -> None:
    cfg = SimConfig(events=2_000, seed=3, start_ts=1_700_000_000_000)
    assert list(generate(cfg, ECON)) == list(generate(cfg, ECON))
    assert list(generate(cfg, ECON)) != list(
        generate(SimConfig(events=2_000, seed=4, start_ts=1_700_000_000_000), ECON))


def test_every_message_is_well_formed_unless_asked_otherwise() -> None:
    messages = list(generate(SimConfig(events=3_000, start_ts=0, payout_share=0.05, spend_limit_share=0.05), ECON))
    assert not any(isinstance(decode(t, k, v), Malformed) for t, k, v in messages)
    assert {t for t, _, _ in messages} == {"recharges", "gifts", "payouts", "spend-limits"}


def test_shares_of_malformed_duplicates_and_mega_live() -> None:
    cfg = SimConfig(events=20_000, start_ts=0, malformed_share=0.02, duplicate_share=0.03, mega_live_share=0.5)
    messages = list(generate(cfg, ECON))
    malformed = sum(isinstance(decode(t, k, v), Malformed) for t, k, v in messages)
    assert 0.015 < malformed / len(messages) < 0.025
    ids = Counter((t, json.loads(v)["event_id"]) for t, k, v in messages if not isinstance(decode(t, k, v), Malformed))
    assert 0.02 < sum(n - 1 for n in ids.values()) / len(messages) < 0.04
    gifts = [json.loads(v) for t, _, v in messages if t == "gifts" and not isinstance(decode(t, _, v), Malformed)]
    hot = sum(g["creator_id"] == "c0" and g["stream_id"] == "c0-s0" for g in gifts)
    assert 0.47 < hot / len(gifts) < 0.53


def test_viewers_recharge_before_they_gift() -> None:
    """The simulator keeps its own balance per viewer: gifts are (mostly) affordable."""
    messages = list(generate(SimConfig(events=5_000, start_ts=0, spend_limit_share=0, payout_share=0), ECON))
    coins: Counter[str] = Counter()
    for topic, _, value in messages:
        ev = json.loads(value)
        if topic == "recharges":
            coins[ev["user_id"]] += ev["coins"]
        else:
            coins[ev["sender_id"]] -= ECON.gifts[ev["gift_id"]] * ev["quantity"]
            assert coins[ev["sender_id"]] >= 0


def test_paced_event_time_keeps_to_the_clock_at_any_rate() -> None:
    for rate in (3, 200, 5_000):
        n = 3 * rate  # three seconds of events
        cfg = SimConfig(events=n, start_ts=0, tick_ms=1000 / rate, payout_share=0, spend_limit_share=0)
        stamps = [json.loads(v)["ts"] for _, _, v in generate(cfg, ECON)]
        assert stamps == sorted(stamps) and stamps[-1] == 3_000, rate


def test_promotions_monthly_budgets_and_level_ups_when_asked() -> None:
    """Promotions (two at the start, new versions later), monthly budgets on spend
    limits, and, through the reference ledger, bonuses given and gifter levels raised."""
    from tests.support.reference import ReferenceLedger

    cfg = SimConfig(events=20_000, start_ts=1_700_000_000_000, spend_limit_share=0.05, promotion_share=0.001,
                    monthly_budgets=True)
    messages = list(generate(cfg, ECON))
    promos = [json.loads(v) for t, _, v in messages if t == "promotions"]
    assert len(promos) >= 5 and {p["promo_id"] for p in promos} == {"welcome", "bigger"}
    assert messages[0][0] == messages[1][0] == "promotions"  # in force before the first recharge
    limits = [json.loads(v) for t, _, v in messages if t == "spend-limits"]
    assert any("monthly_coin_limit" in x for x in limits) and any("daily_coin_limit" not in x for x in limits)
    reference = ReferenceLedger()
    for topic, _, value in messages:
        reference.feed(topic, json.loads(value))
    given = Counter(o["promo_id"] for o in reference.outcomes if o["type"] == "recharge" and o["promo_id"])
    assert given["welcome"] > 100 and given["bigger"] > 10
    assert len(reference.badges) > 500 and max(b["level"] for b in reference.badges) >= 6
    assert Counter(o["reason"] for o in reference.outcomes)["monthly_limit_exceeded"] > 0
    off = list(generate(SimConfig(events=2_000, start_ts=0), ECON))  # the benchmark's: neither
    assert not any(t == "promotions" or b"monthly" in v for t, _, v in off)
