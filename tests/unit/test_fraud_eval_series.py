"""tools/fraud_eval.py: a seeded series is judged by its worst run, not its best; a
promotion expects no outcome."""

from __future__ import annotations

from typing import Any

from agents.fraud.thresholds import RULES
from tools.fraud_eval import expected_outcomes, markdown, summarize
from tools.simulate import message
from tools.simulate_fraud import promotions


def run(precision: float | None, recall: float | None, p99: float | None, fp: int = 0) -> dict[str, Any]:
    rule = {"precision": precision, "recall": recall, "delay_ms": None if p99 is None else {"p99_ms": p99},
            "fp": fp, "fn": 0, "fraud_instances": 1, "near_misses": 1, "alerts": 1, "tp": 1, "shapes": {}}
    return {"set_name": "s", "set": "a set", "alerts_on_unlabelled": 0, "rules": {r: dict(rule) for r in RULES}}


def test_the_worst_run_decides_the_target() -> None:
    series = [run(1.0, 1.0, 300), run(0.94, 1.0, 400, fp=3), run(1.0, 1.0, 350)]
    summary = summarize(series)["gift_velocity"]
    assert summary["precision"] == {"values": [1.0, 0.94, 1.0], "median": 1.0, "worst": 0.94}
    assert summary["delay_p99_ms"]["worst"] == 400
    assert summary["fp"] == [0, 3, 0]
    assert not summary["targets_met"]  # the median meets 0.95; one run of three does not


def test_a_run_without_a_figure_is_the_worst() -> None:
    summary = summarize([run(1.0, 1.0, 300), run(None, 0.0, None)])["gift_loop"]
    assert summary["precision"]["worst"] is None and summary["delay_p99_ms"]["worst"] is None
    assert not summary["targets_met"]


def test_a_series_that_meets_every_target_in_every_run() -> None:
    summary = summarize([run(1.0, 0.975, 300), run(0.96, 1.0, 1_900)])
    assert all(f["targets_met"] for f in summary.values())
    text = markdown({"date": "d", "series": "2 runs", "summary": summary, "command": "c",
                     "runs": [run(1.0, 0.975, 300), run(0.96, 1.0, 1_900)]})
    assert "| gift_velocity | 0.98 | 0.96 |" in text and "**no**" not in text


def test_only_well_formed_events_expect_an_outcome_and_promotions_none() -> None:
    gift = message("gifts", {"event_id": "g1", "sender_id": "u1", "creator_id": "c1", "stream_id": "s1",
                             "gift_id": "rose", "quantity": 1, "ts": 1_780_000_000_000}, "sender_id")
    recharge = message("recharges", {"event_id": "r1", "user_id": "u1", "coins": 100, "amount_cents": 100,
                                     "currency": "USD", "ts": 1_780_000_000_000}, "user_id")
    malformed = ("gifts", b"u1", b"{oops")
    promos = promotions(1_780_000_000_000, 1_780_086_400_000)
    assert expected_outcomes([*promos, recharge, gift, malformed]) == 2
