"""Causal order under live production (CONTRACT.md, Processing rules): a producer that
waits for each round's acknowledgements (tools/causal.py) fixes every outcome, so
the committed outcomes, `balance_after` included, must equal the reference ledger's
applying the rounds in order, run after run, and across SIGKILLs of the worker."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pipeline import economics, topics
from tests.support.harness import Deployment, Worker, run
from tests.support.reference import ReferenceLedger
from tools import causal

pytestmark = pytest.mark.integration

ECON = economics.load()
PER_ROUND = 300
RATE = 3_500.0  # messages per second offered (acknowledgements permitting)


def expected(rounds: list[list[causal.Event]], earlier: list[list[causal.Event]] = ()) -> dict[str, dict[str, Any]]:
    """The reference's outcomes of `rounds`, after the promotions of `earlier` runs on
    the same deployment (promotions apply to every user, whatever run named them)."""
    reference = ReferenceLedger()
    for events in earlier:
        for topic, ev in events:
            if topic == topics.PROMOTIONS:
                reference.feed(topic, ev)
    outcomes = (reference.feed(topic, ev) for events in rounds for topic, ev in events)
    return {o["event_id"]: o for o in outcomes if o is not None}


def committed(d: Deployment, ids: set[str], timeout_s: float = 120) -> dict[str, set[str]]:
    """Every committed outcome of `ids`, as the distinct records each event got."""
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, set[str]] = {}
        for o in run(topics.read_values(d.settings(), topics.OUTCOMES)):
            if o["event_id"] in ids:
                found.setdefault(o["event_id"], set()).add(json.dumps(o, sort_keys=True))
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


def differences(want: dict[str, dict[str, Any]], got: dict[str, set[str]]) -> list[str]:
    out = []
    for eid, record in want.items():
        if got.get(eid) != {json.dumps(record, sort_keys=True)}:
            out.append(f"{eid}: expected {record}, got {sorted(got.get(eid, set()))}")
    return out


def stream(seed: int, rounds: int, prefix: str, skew_ms: int = 0) -> causal.CausalStream:
    cfg = causal.CausalConfig(rounds=rounds, per_round=PER_ROUND, users=2_000, creators=200, rate=RATE, seed=seed,
                              id_prefix=prefix, skew_ms=skew_ms)
    return causal.CausalStream(cfg, ECON)


@pytest.fixture
def deployment(deployment: Deployment) -> Deployment:
    """Payouts the fraud rules flag are paid (and alerted), not held: the reference has
    no fraud rules, and with bonus coins some creators' earnings come from a few new
    senders (tests/integration/test_fraud_pipeline.py tests the holds)."""
    deployment.extra_env["PIPELINE_HOLD_SUSPICIOUS_PAYOUTS"] = "0"
    return deployment


def test_a_causal_live_stream_gets_the_reference_outcomes_run_after_run(
    deployment: Deployment, workers: list[Worker]
) -> None:
    deployment.create_topics()
    workers.append(Worker(deployment, "causal").start())
    # The first run's producers' clocks are a minute ahead: the next runs' events are dated
    # before events already applied, which must not let their payouts pass their credits.
    earlier: list[list[causal.Event]] = []
    for n, skew_ms in enumerate((60_000, 0, 0)):
        rounds, elapsed = run(causal.produce(deployment.settings(), stream(100 + n, 67, f"k{n}-", skew_ms)))
        want = expected(rounds, earlier)
        earlier += rounds
        got = committed(deployment, set(want))
        rate = len(want) / elapsed
        wrong = differences(want, got)
        if wrong:
            (deployment.workdir / "differences.txt").write_text("\n".join(wrong))
            print("DIFFERENCES IN", deployment.workdir, workers[0].log_path)
        assert not wrong, f"run {n} ({len(want)} messages at {rate:.0f}/s): {len(wrong)} differ: {wrong[:5]}"
        reasons = {r["reason"] for r in want.values()}
        assert {"insufficient_coins", "spend_limit_exceeded", "insufficient_diamonds", None} <= reasons
        # Promotions changed and withdrawn all along: bonuses given and not given both.
        bonuses = {r["promo_id"] is not None for r in want.values() if r["type"] == "recharge"}
        assert bonuses == {True, False}
        # Withdrawals only with the broker's clock (tools/causal.py says why).
        assert any(ev.get("tombstone") for events in rounds for _, ev in events) == (skew_ms <= 0)


def test_a_causal_live_stream_gets_the_reference_outcomes_across_two_sigkills(
    deployment: Deployment, workers: list[Worker]
) -> None:
    deployment.create_topics()
    workers.append(Worker(deployment, "causal-0").start())
    kills = {33: 1, 66: 2}

    def kill_and_restart(i: int, _: list[causal.Event]) -> None:
        if i in kills:
            workers[-1].kill()
            workers.append(Worker(deployment, f"causal-{kills[i]}").start(wait=False))

    rounds, _ = run(causal.produce(deployment.settings(), stream(7, 100, "s-"), on_round=kill_and_restart))
    want = expected(rounds)
    wrong = differences(want, committed(deployment, set(want), timeout_s=180))
    assert not wrong, f"{len(wrong)} of {len(want)} differ: {wrong[:5]}"
