"""Payouts are decided after every credit of a gift made before them, whichever user
partition that credit comes from (agents/credit/progress.py).

Credits are applied as they arrive; a payout waits in its creator's `held` list until
every source (user-ledger partition) has passed its event time, has reported itself idle
after the payout arrived, or the longest hold has passed. It is then decided on the
diamonds available at its event time: credits of gifts made after it do not count.
"""

from __future__ import annotations

from typing import Any

import pytest

from agents.credit.agent import CreatorLedger
from agents.credit.ops import Mark
from agents.credit.progress import Progress
from agents.credit.rules import CreditBatch
from agents.credit.state import CreatorState
from agents.ingest.records import Payout
from pipeline import economics, topics
from pipeline.engine.codec import dumps, loads
from pipeline.engine.stage import Output

OPS = topics.CREATOR_OPS
HOLD_MS = 10_000

Changelog = list[tuple[str, dict[str, Any] | None]]


@pytest.fixture
def ledger() -> CreatorLedger:
    return CreatorLedger(economics.load(), sources=2, max_hold_ms=HOLD_MS)


def credit(diamonds: int, ts: int) -> CreditBatch:
    return CreditBatch("c1", 2 * diamonds, 1, ((ts, diamonds),))


def payout(event_id: str, diamonds: int, ts: int) -> Payout:
    return Payout(event_id, "c1", diamonds, ts)


def batch(ledger: CreatorLedger, *items: Any, now_ms: float = 0) -> tuple[Output, Changelog]:
    """One committed batch as the engine runs it (tick, handle*, end_batch, changelog,
    commit); the changelog goes through the codec as it would through Kafka."""
    out = Output()
    ledger.tick(out, now_ms)
    for item in items:
        ledger.handle(OPS, item, out)
    ledger.end_batch(out, True, now_ms)
    records = ledger.changelog()
    ledger.commit()
    return out, records


def step(ledger: CreatorLedger, *items: Any, now_ms: float = 0) -> list[tuple[str, str | None, int | None]]:
    """One committed batch; returns its payout outcomes as (event_id, status/reason, balance)."""
    out, _ = batch(ledger, *items, now_ms=now_ms)
    return [(o.event_id, o.reason or o.status, o.balance_after) for o in out.outcomes]


def c1(ledger: CreatorLedger) -> CreatorState:
    state = ledger.table.get("c1")
    assert state is not None
    return state


def held(ledger: CreatorLedger) -> list[str]:
    return [op["event_id"] for op in c1(ledger).held]


def test_payout_waits_for_every_source_to_pass_its_time(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(1_000, 90))
    assert step(ledger, payout("p", 3_000, 200)) == []  # neither source is past 200 yet
    assert held(ledger) == ["p"] and ledger.holding == {"c1"}
    assert step(ledger, Mark(0, 250, False)) == []  # source 1 may still hold a credit
    # The earlier gift's credit from source 1 is applied at once; the payout still waits.
    out, _ = batch(ledger, credit(2_000, 150))
    assert out.outcomes == [] and out.diamonds_credited == 2_000
    assert (c1(ledger).available, held(ledger)) == (3_000, ["p"])
    assert step(ledger, Mark(1, 260, False)) == [("p", "accepted", 0)]
    assert (c1(ledger).available, c1(ledger).paid_out, held(ledger), ledger.holding) == (0, 3_000, [], set())


def test_a_source_exactly_at_the_payout_time_has_passed_it(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(5_000, 90))
    assert step(ledger, payout("p", 2_000, 200), Mark(0, 200, False), Mark(1, 199, False)) == []
    assert step(ledger, Mark(1, 200, False)) == [("p", "accepted", 3_000)]


def test_a_later_credit_is_applied_at_once_but_not_counted(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(1_000, 90))
    out, _ = batch(ledger, payout("p", 3_000, 200), credit(5_000, 300))
    assert out.outcomes == [] and out.diamonds_credited == 5_000
    assert (c1(ledger).available, c1(ledger).lifetime) == (6_000, 6_000)  # applied, not held
    assert held(ledger) == ["p"]
    assert c1(ledger).recent == [[300, 5_000]]  # later than the horizon (100): remembered
    # 6,000 are available now, but only 1,000 at the payout's time.
    assert step(ledger, Mark(0, 400, False), Mark(1, 400, False)) == [("p", "insufficient_diamonds", 1_000)]
    assert (c1(ledger).available, c1(ledger).paid_out) == (6_000, 0)


def test_a_credit_later_than_an_accepted_payout_is_left_in_balance_after(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(5_000, 90))
    step(ledger, payout("p", 2_000, 200), credit(4_000, 300), credit(1, 150))
    assert step(ledger, Mark(0, 300, False), Mark(1, 300, False)) == [("p", "accepted", 3_001)]
    # balance_after is what was available at the payout's time, less the payout; the
    # creator's balance also holds the later gift's 4,000.
    assert (c1(ledger).available, c1(ledger).lifetime, c1(ledger).paid_out) == (7_001, 9_001, 2_000)
    # A payout dated after that gift counts it (and is decided at once: both passed 300).
    assert step(ledger, payout("q", 7_001, 300)) == [("q", "accepted", 0)]


def test_idle_source_counts_only_if_idle_after_the_payout_arrived(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, True), Mark(1, 100, True), credit(5_000, 90))
    assert step(ledger, payout("p", 2_000, 200)) == []
    assert step(ledger, Mark(0, 100, True)) == []
    assert step(ledger, Mark(1, 100, True)) == [("p", "accepted", 3_000)]


def test_a_busy_mark_after_the_payout_does_not_count_as_idle(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, True), Mark(1, 100, True), credit(5_000, 90))
    assert step(ledger, payout("p", 2_000, 200)) == []
    assert step(ledger, Mark(0, 150, False), Mark(1, 150, False)) == []  # busy and not past 200
    assert step(ledger, Mark(0, 150, True)) == []
    assert step(ledger, Mark(1, 150, True)) == [("p", "accepted", 3_000)]


def test_payouts_of_one_creator_keep_their_order(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(4_000, 90))
    step(ledger, payout("a", 3_000, 200), payout("b", 2_000, 210), payout("a", 3_000, 220))
    assert held(ledger) == ["a", "b", "a"]
    got = step(ledger, Mark(0, 300, False), Mark(1, 300, False))
    assert got == [("a", "accepted", 1_000), ("b", "insufficient_diamonds", 1_000), ("a", "duplicate", 1_000)]
    assert held(ledger) == [] and c1(ledger).available == 1_000


def test_a_decidable_payout_waits_behind_an_earlier_held_one(ledger: CreatorLedger) -> None:
    """Arrival order, not event-time order: the second payout (dated earlier) is not
    decided before the first, even though every source has passed its time."""
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(4_000, 90))
    step(ledger, payout("a", 3_000, 500), payout("b", 2_000, 200))
    assert step(ledger, Mark(0, 300, False), Mark(1, 300, False)) == []
    assert held(ledger) == ["a", "b"]
    assert step(ledger, Mark(0, 600, False), Mark(1, 600, False)) == [
        ("a", "accepted", 1_000), ("b", "insufficient_diamonds", 1_000)]


def test_a_new_payout_joins_the_queue_of_held_ones(ledger: CreatorLedger) -> None:
    """A payout that could be decided at once still waits if an earlier one is held."""
    step(ledger, Mark(0, 300, False), Mark(1, 100, False), credit(4_000, 90))
    assert step(ledger, payout("a", 3_000, 200)) == []
    step(ledger, Mark(1, 150, False))
    assert step(ledger, payout("b", 2_000, 120)) == []  # both sources passed 120, but "a" is first
    assert held(ledger) == ["a", "b"]
    assert step(ledger, Mark(1, 200, False)) == [("a", "accepted", 1_000), ("b", "insufficient_diamonds", 1_000)]


def test_other_creators_are_not_held_up(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 300, False), Mark(1, 300, False), credit(4_000, 90),
         CreditBatch("c2", 8_000, 1, ((90, 4_000),)))
    assert step(ledger, payout("a", 3_000, 400)) == []
    assert step(ledger, Payout("x", "c2", 3_000, 250)) == [("x", "accepted", 1_000)]
    assert ledger.holding == {"c1"}


def test_a_payout_is_decided_after_the_longest_hold_anyway(ledger: CreatorLedger) -> None:
    step(ledger, credit(5_000, 90), now_ms=1_000)
    assert step(ledger, payout("p", 2_000, 200), now_ms=1_000) == []  # no source has reported
    assert step(ledger, now_ms=1_000 + HOLD_MS - 1) == []
    assert step(ledger, now_ms=1_000 + HOLD_MS) == [("p", "accepted", 3_000)]


def test_the_longest_hold_counts_from_arrival(ledger: CreatorLedger) -> None:
    step(ledger, credit(5_000, 90), now_ms=1_000)
    assert step(ledger, payout("p", 2_000, 200), now_ms=4_000) == []
    assert step(ledger, now_ms=4_000 + HOLD_MS - 1) == []
    assert step(ledger, now_ms=4_000 + HOLD_MS) == [("p", "accepted", 3_000)]


def test_the_longest_hold_restarts_with_the_stage(ledger: CreatorLedger) -> None:
    """A restart is not a reason to give up: a restored held payout waits the longest
    hold from the new instance's first tick."""
    step(ledger, credit(5_000, 90), now_ms=1_000)
    _, records = batch(ledger, payout("p", 2_000, 200), now_ms=1_000)
    fresh = CreatorLedger(economics.load(), sources=2, max_hold_ms=HOLD_MS)
    for key, value in records:
        fresh.restore(key, value)
    fresh.end_restore()
    assert step(fresh, now_ms=500_000) == []  # long after its arrival, but just started
    assert step(fresh, now_ms=500_000 + HOLD_MS - 1) == []
    assert step(fresh, now_ms=500_000 + HOLD_MS) == [("p", "accepted", 3_000)]


def test_the_longest_hold_decides_on_the_balance_at_the_payout_time(ledger: CreatorLedger) -> None:
    step(ledger, credit(1_000, 90), now_ms=1_000)
    step(ledger, payout("p", 3_000, 200), credit(5_000, 300), now_ms=1_000)
    # No source has reported: the horizon is unknown and every credit is remembered.
    assert c1(ledger).recent == [[90, 1_000], [300, 5_000]]
    assert step(ledger, now_ms=1_000 + HOLD_MS) == [("p", "insufficient_diamonds", 1_000)]


def test_recent_credits_are_forgotten_once_every_source_passed_them(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, False), credit(10, 50))  # source 1 unknown: no horizon
    assert c1(ledger).recent == [[50, 10]]
    step(ledger, Mark(1, 120, False), credit(20, 110), credit(30, 150))
    assert c1(ledger).recent == [[110, 20], [150, 30]]  # horizon 100 (source 0)
    step(ledger, Mark(0, 200, False), Mark(1, 140, False), credit(40, 160))
    assert c1(ledger).recent == [[150, 30], [160, 40]]  # horizon 140
    step(ledger, Mark(0, 500, False), Mark(1, 500, False), credit(1, 450))
    assert c1(ledger).recent == []
    assert c1(ledger).available == 101
    # A payout held while credits were remembered is decided as before.
    assert step(ledger, payout("p", 2_000, 400)) == [("p", "insufficient_diamonds", 101)]


def test_held_records_survive_a_restart(ledger: CreatorLedger) -> None:
    _, records = batch(
        ledger, Mark(0, 100, False), Mark(1, 100, False), credit(1_000, 90), payout("p", 3_000, 200), credit(5_000, 300)
    )
    assert "#progress" in dict(records)
    fresh = CreatorLedger(economics.load(), sources=2, max_hold_ms=HOLD_MS)
    for key, value in records:
        fresh.restore(key, value)
    fresh.end_restore()
    assert fresh.holding == {"c1"}
    assert fresh.table.as_dict() == ledger.table.as_dict()
    assert fresh.progress_table.as_dict() == ledger.progress_table.as_dict()
    restored = c1(fresh)
    assert (restored.available, held(fresh), restored.recent) == (6_000, ["p"], [[300, 5_000]])
    assert held(fresh) == ["p"] and restored.held[0]["since"] == {"0": 1, "1": 1}
    # An earlier gift's credit arrives; then both sources pass the payout: it counts the
    # credits at 90 and 150, not the one at 300.
    assert step(fresh, credit(2_000, 150), Mark(0, 400, False), Mark(1, 400, False)) == [("p", "accepted", 0)]
    assert c1(fresh).available == 5_000 and fresh.holding == set()


def test_an_aborted_batch_leaves_the_held_payout_and_progress(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(5_000, 90))
    step(ledger, payout("p", 2_000, 200))
    out = Output()
    ledger.tick(out, 0)
    for item in (Mark(0, 300, False), Mark(1, 300, False)):
        ledger.handle(OPS, item, out)
    assert [o.event_id for o in out.outcomes] == ["p"]
    ledger.abort()
    assert held(ledger) == ["p"] and ledger.holding == {"c1"}
    assert ledger.progress_table.get("") == Progress({0: (100, False, 1), 1: (100, False, 1)}, 2)
    assert step(ledger, Mark(0, 300, False), Mark(1, 300, False)) == [("p", "accepted", 3_000)]


# --- Progress --------------------------------------------------------------------------


def test_progress_horizon_is_unknown_until_every_source_reported() -> None:
    progress = Progress()
    assert progress.horizon(2) is None
    progress.record(1, 50, False)
    assert progress.horizon(2) is None
    progress.record(0, 70, True)
    assert progress.horizon(2) == 50
    assert progress.horizon(1) == 70  # only source 0 counts


def test_progress_horizon_is_the_slowest_source_and_never_goes_back() -> None:
    progress = Progress()
    progress.record(0, 300, False)
    progress.record(1, 200, False)
    progress.record(2, 250, True)
    assert progress.horizon(3) == 200
    progress.record(1, 100, False)  # an older mark (e.g. a restarted source) does not move it back
    assert progress.horizon(3) == 200
    progress.record(1, 400, False)
    assert progress.horizon(3) == 250
    assert progress.marks == {0: (300, False, 1), 1: (400, False, 3), 2: (250, True, 1)}
    assert progress.seq == 5


def test_progress_passed_and_snapshot() -> None:
    progress = Progress()
    progress.record(0, 100, True)
    progress.record(1, 300, False)
    since = progress.snapshot()
    assert since == {"0": 1, "1": 1}
    assert not progress.passed(200, since, 2)  # source 0 is behind, idle only before
    assert progress.passed(100, since, 2)
    assert not progress.passed(100, since, 3)  # source 2 never reported
    progress.record(0, 100, True)
    assert progress.passed(200, since, 2)  # idle after the snapshot
    assert not progress.passed(400, since, 2)  # source 1 is busy and behind


def test_progress_json_round_trip() -> None:
    progress = Progress()
    progress.record(0, 10, True)
    progress.record(3, 20, False)
    progress.record(3, 25, True)
    data = loads(dumps(progress.to_json()))
    assert Progress.from_json(data) == progress


# --- regressions found in review ------------------------------------------------------


def test_balance_after_is_never_negative_when_a_later_payout_spent_the_later_credits() -> None:
    one = CreatorLedger(economics.load(), sources=1, max_hold_ms=HOLD_MS)
    step(one, Mark(0, 100, False), credit(5_000, 300), Mark(0, 400, False))
    assert step(one, payout("a", 5_000, 400)) == [("a", "accepted", 0)]
    assert step(one, payout("b", 2_000, 200)) == [("b", "insufficient_diamonds", 0)]


def test_credits_a_held_payout_must_not_count_are_kept_past_the_horizon(ledger: CreatorLedger) -> None:
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(1_000, 90))
    step(ledger, payout("late", 2_000, 500), payout("early", 2_000, 200))
    assert step(ledger, Mark(0, 400, False), Mark(1, 400, False)) == []
    step(ledger, credit(5_000, 300))  # past the horizon (400), yet later than "early"
    got = step(ledger, Mark(0, 600, False), Mark(1, 600, False))
    assert got == [("late", "accepted", 4_000), ("early", "insufficient_diamonds", 0)]


def test_held_payouts_are_bounded(monkeypatch: pytest.MonkeyPatch, ledger: CreatorLedger) -> None:
    import agents.credit.agent as agent

    monkeypatch.setattr(agent, "MAX_HELD", 3)
    step(ledger, Mark(0, 100, False), Mark(1, 100, False), credit(10_000, 90))
    assert step(ledger, *(payout(f"p{i}", 2_000, 200 + i) for i in range(3))) == []
    assert step(ledger, payout("p3", 2_000, 203)) == [("p0", "accepted", 8_000)]  # the oldest goes
    assert len(ledger.table.get("c1").held) == 3


def test_hold_counts_from_a_first_tick_at_time_zero() -> None:
    fresh = CreatorLedger(economics.load(), sources=2, max_hold_ms=1_000)
    step(fresh, credit(5_000, 90), now_ms=0)
    assert step(fresh, payout("p", 2_000, 200), now_ms=0) == []
    assert step(fresh, now_ms=1_000) == [("p", "accepted", 3_000)]


def test_a_credit_item_cannot_be_negative() -> None:
    with pytest.raises(AssertionError):
        CreditBatch("c1", 10, 2, ((1, -3), (2, 5)))
