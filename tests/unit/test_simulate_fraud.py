"""Injected fraud patterns: well-formed, merged by event time and labelled reproducibly.
Whether each crosses or narrowly misses its rule is checked by test_fraud_set.py."""

from __future__ import annotations

import json

import pytest

from agents.ingest.decode import Malformed, decode
from pipeline import economics
from tools.simulate import SimConfig, generate
from tools.simulate_fraud import inject, scripts

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
