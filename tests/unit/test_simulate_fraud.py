"""Injected fraud patterns: well-formed, merged by event time and labelled reproducibly;
the set's promotions well-formed and in force over it. Whether each crosses or narrowly
misses its rule is checked by test_fraud_set.py."""

from __future__ import annotations

import json

import pytest

from agents.ingest.decode import Malformed, decode, decode_promotion
from agents.ingest.records import Promotion
from pipeline import economics
from tests.support.reference import ReferenceLedger
from tools.simulate import SimConfig, generate
from tools.simulate_fraud import PROMOTIONS, STARTER, UNLISTED, WELCOME, _held, inject, promotions, scripts

T0 = 1_780_000_000_000
MIN, DAY = 60_000, 86_400_000


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


def test_the_promotions_are_well_formed_and_in_force_over_the_set() -> None:
    records = promotions(T0, T0 + DAY, prefix="p-")
    decoded = [decode_promotion(key, value, T0) for _, key, value in records]
    assert all(isinstance(p, Promotion) for p in decoded), decoded
    assert [p.promo_id for p in decoded] == [f"p-{promo_id}" for promo_id, *_ in PROMOTIONS]  # type: ignore[union-attr]
    assert all(p.ts == p.starts_ts == T0 and p.ends_ts == T0 + DAY for p in decoded)  # type: ignore[union-attr]
    assert {t for t, _, _ in records} == {"promotions"}


@pytest.mark.parametrize("packages", [(WELCOME,), (WELCOME, STARTER), (UNLISTED,), (WELCOME, WELCOME)])
def test_what_an_account_holds_is_what_the_reference_ledger_gives(packages: tuple[int, ...]) -> None:
    ref = ReferenceLedger()
    for _, _, value in promotions(T0, T0 + DAY):
        ref.feed("promotions", json.loads(value))
    for i, coins in enumerate(packages):
        ref.apply("recharges", {"event_id": f"r{i}", "user_id": "u", "coins": coins, "amount_cents": coins,
                                "currency": "USD", "ts": T0 + i})
    assert ref.coins["u"] == _held(packages)
