"""Payouts are decided after every credit of a gift acknowledged before them, whichever
user partition that credit comes from (agents/credit/progress.py): by causal cuts of
offsets, never by event time.

Each cycle the engine gives the creator ledger the end offsets of `gifts` and
`payouts` on every partition (`watch`: the cycle's cut; empty when unknown). A payout is
stamped with the cycle it was read in and waits in its creator's `held` list until that
cycle is covered (every source's progress mark has reached its cut, gifts and payouts
offsets both), or the longest hold has passed. It is then decided on the diamonds
available at its event time: credits of gifts dated after it do not count.

The tests drive CreatorLedger batch by batch as the engine does: watch, tick, handle*,
end_batch, changelog, commit. Offsets model the topics: `cut(g0, p0, g1, p1)` are the
ends of gifts/payouts on partitions 0 and 1, `Mark(q, g, p)` says user-ledger partition q
applied everything below gifts offset g and payouts offset p.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from agents.credit.agent import CreatorLedger
from agents.credit.ops import MAX_TS, Mark, mark_op
from agents.credit.progress import Progress
from agents.credit.rules import CreditBatch
from agents.credit.state import CreatorState
from agents.ingest.records import Payout
from agents.outcomes import credited_of, outcomes_of
from pipeline import economics, topics
from pipeline.engine.codec import dumps, loads
from pipeline.engine.stage import Output
from pipeline.engine.testing import start
from pipeline.invariants import InvariantError

OPS = topics.CREATOR_OPS
HOLD_MS = 10_000
UNKNOWN: dict[tuple[str, int], int] = {}  # a cycle whose ends could not be asked

Changelog = list[tuple[str, bytes | None]]
Ends = dict[tuple[str, int], int]


@pytest.fixture
def ledger() -> CreatorLedger:
    return CreatorLedger(economics.load(), sources=2, max_hold_ms=HOLD_MS)


def cut(gifts0: int, payouts0: int, gifts1: int, payouts1: int) -> Ends:
    """A cycle's end offsets of gifts and payouts on partitions 0 and 1."""
    return {(topics.GIFTS, 0): gifts0, (topics.PAYOUTS, 0): payouts0,
            (topics.GIFTS, 1): gifts1, (topics.PAYOUTS, 1): payouts1}


def credit(diamonds: int, ts: int, creator: str = "c1") -> CreditBatch:
    return CreditBatch(creator, 2 * diamonds, 1, ((ts, diamonds),))


def payout(event_id: str, diamonds: int, ts: int, creator: str = "c1") -> Payout:
    return Payout(event_id, creator, diamonds, ts)


def batch(ledger: CreatorLedger, *items: Any, ends: Ends, now_ms: float = 0) -> tuple[Output, Changelog]:
    """One committed batch as the engine runs it (watch, tick, handle*, end_batch,
    changelog, commit); the changelog is encoded as it goes to Kafka."""
    out = Output()
    ledger.watch(ends)
    start(ledger, out, now_ms)
    for item in items:
        ledger.handle(OPS, item, out)
    ledger.end_batch(out, True, now_ms)
    records = ledger.changelog()
    ledger.commit()
    return out, records


def step(ledger: CreatorLedger, *items: Any, ends: Ends, now_ms: float = 0) -> list[tuple[str, str | None, int | None]]:
    """One committed batch; returns its payout outcomes as (event_id, status/reason, balance)."""
    out, _ = batch(ledger, *items, ends=ends, now_ms=now_ms)
    return [(o.event_id, o.reason or o.status, o.balance_after) for o in outcomes_of(out.effects)]


def restored(records: Changelog, skip: tuple[str, ...] = ()) -> CreatorLedger:
    """A fresh instance restored from a changelog (the keys in `skip` left out)."""
    fresh = CreatorLedger(economics.load(), sources=2, max_hold_ms=HOLD_MS)
    for key, value in records:
        if key not in skip:
            fresh.restore(key, value)
    fresh.end_restore()
    return fresh


def c1(ledger: CreatorLedger, creator: str = "c1") -> CreatorState:
    state = ledger.table.get(creator)
    assert state is not None
    return state


def held(ledger: CreatorLedger, creator: str = "c1") -> list[str]:
    return [op["event_id"] for op in c1(ledger, creator).held]


def progress(ledger: CreatorLedger) -> Progress:
    """The ledger's live view: the stored value with the cuts and counters it keeps in
    memory across batches."""
    return ledger._progress()


# Gifts 0 of both partitions were applied (the credit of 1,000 at 90); the payout "p"
# is payouts offset 0 of partition 0.
START = cut(1, 0, 1, 0)
WITH_P = cut(1, 1, 1, 0)


def started(ledger: CreatorLedger, diamonds: int = 1_000) -> None:
    """Both sources at START, a credit in: cycle covered, nothing held."""
    step(ledger, credit(diamonds, 90), Mark(0, 1, 0), Mark(1, 1, 0), ends=START)
    assert progress(ledger).covered == progress(ledger).cycle


# --- the cut -------------------------------------------------------------------------


def test_payout_waits_until_every_source_reaches_its_cycles_cut(ledger: CreatorLedger) -> None:
    started(ledger)
    ends = cut(1, 1, 2, 0)  # "p" on payouts 0 of partition 0, a gift on gifts 1 of partition 1
    assert step(ledger, payout("p", 3_000, 200), ends=ends) == []
    read_in = progress(ledger).cycle
    assert held(ledger) == ["p"] and ledger.holding == {"c1"}
    assert c1(ledger).held[0]["cycle"] == read_in and progress(ledger).covered < read_in
    assert step(ledger, Mark(0, 1, 1), ends=ends) == []  # source 1 is behind on gifts
    # The gift's credit from source 1 is applied at once; the payout still waits.
    out, _ = batch(ledger, credit(2_000, 150), ends=ends)
    assert outcomes_of(out.effects) == [] and credited_of(out.effects) == 2_000
    assert (c1(ledger).available, held(ledger)) == (3_000, ["p"])
    # Source 1's mark follows its credit: the cut is reached, the credit counted.
    assert step(ledger, Mark(1, 2, 0), ends=ends) == [("p", "accepted", 0)]
    assert progress(ledger).covered >= read_in
    assert (c1(ledger).available, c1(ledger).paid_out, held(ledger), ledger.holding) == (0, 3_000, [], set())


def test_a_source_behind_on_payouts_holds_it(ledger: CreatorLedger) -> None:
    started(ledger, 5_000)
    ends = cut(1, 2, 1, 1)  # "p" on partition 0; another payout on partition 1 not yet applied
    assert step(ledger, payout("p", 2_000, 200), Mark(0, 1, 2), Mark(1, 1, 0), ends=ends) == []
    assert step(ledger, Mark(1, 5, 0), ends=cut(1, 2, 5, 1)) == []  # far on gifts, still behind on payouts
    assert step(ledger, Mark(1, 1, 1), ends=ends) == [("p", "accepted", 3_000)]


def test_a_mark_reaching_the_cut_in_the_same_batch_decides_it(ledger: CreatorLedger) -> None:
    """Source 1 is idle (at the cut already): it needs no new mark. Source 0's mark
    follows the payout it applied, in the same batch."""
    started(ledger, 5_000)
    assert step(ledger, payout("p", 2_000, 200), Mark(0, 1, 1), ends=WITH_P) == [("p", "accepted", 3_000)]


def test_an_idle_source_covers_the_next_cycle_without_a_new_mark(ledger: CreatorLedger) -> None:
    """Source 1 is idle since START; "p"'s cycle has no cut (unknown ends), so source 0's
    mark after it decides nothing. The next cycle's cut is reached by the marks already
    in: it is covered at its start (decided in tick, before any record), though neither
    source wrote a mark since."""
    started(ledger, 5_000)
    assert step(ledger, payout("p", 2_000, 200), Mark(0, 1, 1), ends=UNKNOWN) == []
    assert held(ledger) == ["p"]
    out = Output()
    ledger.watch(WITH_P)
    start(ledger, out, 0)
    assert [(o.event_id, o.status, o.balance_after) for o in outcomes_of(out.effects)] == [("p", "accepted", 3_000)]
    ledger.end_batch(out, True, 0)
    ledger.changelog()
    ledger.commit()
    assert ledger.holding == set() and c1(ledger).available == 3_000


def test_a_cycle_with_unknown_ends_is_covered_by_a_later_cut(ledger: CreatorLedger) -> None:
    started(ledger, 5_000)
    # The ends could not be asked this cycle: no cut, though every mark is at the last one.
    assert step(ledger, payout("p", 2_000, 200), ends=UNKNOWN) == []
    assert step(ledger, Mark(0, 1, 1), ends=UNKNOWN) == []
    assert step(ledger, ends=UNKNOWN) == []
    later = cut(1, 1, 3, 0)  # later cuts only grow
    assert step(ledger, ends=later) == []
    assert step(ledger, Mark(1, 3, 0), ends=later) == [("p", "accepted", 3_000)]


def test_a_later_credit_is_applied_at_once_but_not_counted(ledger: CreatorLedger) -> None:
    started(ledger)
    ends = cut(2, 1, 1, 0)
    out, _ = batch(ledger, payout("p", 3_000, 200), credit(5_000, 300), ends=ends)
    assert outcomes_of(out.effects) == [] and credited_of(out.effects) == 5_000
    assert (c1(ledger).available, c1(ledger).lifetime) == (6_000, 6_000)  # applied, not held
    assert held(ledger) == ["p"]
    assert c1(ledger).recent == [[300, 5_000, progress(ledger).cycle]]  # its cycle is not covered
    # 6,000 are available now, but only 1,000 at the payout's time.
    assert step(ledger, Mark(0, 2, 1), ends=ends) == [("p", "insufficient_diamonds", 1_000)]
    assert (c1(ledger).available, c1(ledger).paid_out) == (6_000, 0)


def test_a_credit_later_than_an_accepted_payout_is_left_in_balance_after(ledger: CreatorLedger) -> None:
    started(ledger, 5_000)
    ends = cut(3, 1, 2, 0)
    step(ledger, payout("p", 2_000, 200), credit(4_000, 300), credit(1, 150), ends=ends)
    assert step(ledger, Mark(0, 3, 1), Mark(1, 2, 0), ends=ends) == [("p", "accepted", 3_001)]
    # balance_after is what was available at the payout's time, less the payout; the
    # creator's balance also holds the later gift's 4,000.
    assert (c1(ledger).available, c1(ledger).lifetime, c1(ledger).paid_out) == (7_001, 9_001, 2_000)
    # A payout dated after that gift counts it (decided at once: its cycle's cut is
    # reached by the marks in; its own source applied it before the mark after it).
    assert step(ledger, payout("q", 7_001, 300), Mark(1, 2, 1), ends=cut(3, 1, 2, 1)) == [("q", "accepted", 0)]


# --- order ---------------------------------------------------------------------------


def test_payouts_of_one_creator_keep_their_order(ledger: CreatorLedger) -> None:
    started(ledger, 4_000)
    ends = cut(1, 3, 1, 0)
    step(ledger, payout("a", 3_000, 220), payout("b", 2_000, 210), payout("a", 3_000, 200), ends=ends)
    assert held(ledger) == ["a", "b", "a"]
    got = step(ledger, Mark(0, 1, 3), ends=ends)
    assert got == [("a", "accepted", 1_000), ("b", "insufficient_diamonds", 1_000), ("a", "duplicate", 1_000)]
    assert held(ledger) == [] and c1(ledger).available == 1_000


def test_a_payout_read_after_the_cut_was_reached_is_decided_after_the_earlier_one(ledger: CreatorLedger) -> None:
    """In one batch: "a" waits, the mark covers its cycle and decides it, then "b" (dated
    earlier) is decided: arrival order, not event-time order."""
    started(ledger, 4_000)
    got = step(ledger, payout("a", 3_000, 500), Mark(0, 1, 1), payout("b", 2_000, 200), ends=WITH_P)
    assert got == [("a", "accepted", 1_000), ("b", "insufficient_diamonds", 1_000)]


def lost_progress(ledger: CreatorLedger) -> CreatorLedger:
    """c1 holds "a" read in a cycle this partition's progress no longer knows: the
    "#progress" changelog record was refused at restore (the engine dead-letters it), so
    cycles count again from the start and "a" waits until they pass its cycle. The only
    way a later payout can be decidable while an earlier one is held (cycles only grow)."""
    records: Changelog = []
    for _ in range(3):
        records += batch(ledger, ends=START)[1]  # quiet cycles
    records += batch(ledger, credit(4_000, 90), credit(8_000, 90, "c2"), ends=START)[1]
    records += batch(ledger, payout("a", 3_000, 500), ends=WITH_P)[1]
    assert held(ledger) == ["a"]
    fresh = restored(records, skip=("#progress",))
    assert fresh.progress_table.get("") is None and fresh.holding == {"c1"}
    return fresh


def test_a_decidable_payout_waits_behind_an_earlier_held_one(ledger: CreatorLedger) -> None:
    fresh = lost_progress(ledger)
    assert c1(fresh).held[0]["cycle"] > 2
    # The next cycle is covered at once (every source at its cut); "b" is read in it.
    assert step(fresh, Mark(0, 1, 1), Mark(1, 1, 0), payout("b", 2_000, 200), ends=WITH_P) == []
    assert progress(fresh).covered == progress(fresh).cycle  # "b" alone would be decided
    assert held(fresh) == ["a", "b"]
    while progress(fresh).cycle < c1(fresh).held[0]["cycle"] - 1:
        assert step(fresh, ends=WITH_P) == []
    assert step(fresh, ends=WITH_P) == [("a", "accepted", 1_000), ("b", "insufficient_diamonds", 1_000)]


def test_other_creators_are_not_held_up(ledger: CreatorLedger) -> None:
    fresh = lost_progress(ledger)
    assert step(fresh, Mark(0, 1, 1), Mark(1, 1, 0), payout("x", 3_000, 250, "c2"), ends=WITH_P) == [
        ("x", "accepted", 5_000)]
    assert held(fresh) == ["a"] and fresh.holding == {"c1"}


def test_held_payouts_are_bounded(monkeypatch: pytest.MonkeyPatch, ledger: CreatorLedger) -> None:
    import agents.credit.agent as agent

    monkeypatch.setattr(agent, "MAX_HELD", 3)
    started(ledger, 10_000)
    ends = cut(1, 4, 1, 0)
    assert step(ledger, *(payout(f"p{i}", 2_000, 200 + i) for i in range(3)), ends=ends) == []
    assert step(ledger, payout("p3", 2_000, 203), ends=ends) == [("p0", "accepted", 8_000)]  # the oldest goes
    assert held(ledger) == ["p1", "p2", "p3"]


# --- event time plays no part --------------------------------------------------------


def test_marks_have_no_event_time(ledger: CreatorLedger) -> None:
    assert Mark(0, 5, 7).ts == 0
    item, ts = ledger.decode(OPS, None, orjson.dumps(mark_op(1, 5, 7)))
    assert item == Mark(1, 5, 7) and ts == 0


def test_unrelated_events_dated_far_ahead_do_not_let_a_payout_pass_a_credit_acknowledged_before_it(
        ledger: CreatorLedger) -> None:
    """The old design took a source's progress as the event time it had passed: a source
    that had applied an event dated far ahead (a producer's clock) seemed past every
    payout, and a payout passed before the credit of a gift acknowledged before it.
    Here: the gift to c1 (dated 150, gifts 1 of partition 1) is acknowledged, then the
    payout "p" (dated 200, payouts 0 of partition 0) is made; both sources meanwhile
    applied events dated in year 9999 (gifts and a payout of c2; the latest valid time)."""
    far = MAX_TS - 1
    started(ledger)  # c1 has 1,000
    ends = cut(2, 2, 2, 0)
    got = step(ledger, credit(8_000, far, "c2"), payout("x", 2_000, far, "c2"), payout("p", 3_000, 200),
               Mark(0, 2, 2), credit(4_000, far + 1, "c2"), ends=ends)
    # Every record and mark came after events dated far ahead of "p": it still waits,
    # as does c2's payout dated far ahead: source 1 has not applied gifts 1 yet.
    assert got == [] and held(ledger) == ["p"] and held(ledger, "c2") == ["x"]
    assert step(ledger, Mark(1, 1, 0), ends=ends) == []  # source 1's old progress: still behind
    # The gift acknowledged before "p": its credit, then source 1's mark.
    assert step(ledger, credit(2_000, 150), Mark(1, 2, 0), ends=ends) == [
        ("p", "accepted", 0), ("x", "accepted", 6_000)]  # by creator; c2's later credit left out
    assert (c1(ledger).available, c1(ledger).paid_out) == (0, 3_000)


def test_a_payout_dated_far_ahead_waits_like_any_other(ledger: CreatorLedger) -> None:
    started(ledger, 5_000)
    assert step(ledger, payout("p", 2_000, MAX_TS), ends=WITH_P) == []
    assert step(ledger, Mark(0, 1, 1), ends=WITH_P) == [("p", "accepted", 3_000)]


# --- the longest hold ----------------------------------------------------------------


def test_a_payout_is_decided_after_the_longest_hold_anyway(ledger: CreatorLedger) -> None:
    step(ledger, credit(5_000, 90), ends=UNKNOWN, now_ms=1_000)
    assert step(ledger, payout("p", 2_000, 200), ends=UNKNOWN, now_ms=1_000) == []  # no source has reported
    assert step(ledger, ends=UNKNOWN, now_ms=1_000 + HOLD_MS - 1) == []
    assert step(ledger, ends=UNKNOWN, now_ms=1_000 + HOLD_MS) == [("p", "accepted", 3_000)]


def test_a_source_that_never_reports_holds_it_at_most_the_longest_hold(ledger: CreatorLedger) -> None:
    step(ledger, credit(5_000, 90), Mark(0, 1, 0), ends=START, now_ms=1_000)  # source 1 has no worker
    assert step(ledger, payout("p", 2_000, 200), Mark(0, 1, 1), ends=WITH_P, now_ms=1_000) == []
    assert step(ledger, ends=WITH_P, now_ms=1_000 + HOLD_MS - 1) == []
    assert step(ledger, ends=WITH_P, now_ms=1_000 + HOLD_MS) == [("p", "accepted", 3_000)]


def test_the_longest_hold_counts_from_arrival(ledger: CreatorLedger) -> None:
    step(ledger, credit(5_000, 90), ends=UNKNOWN, now_ms=1_000)
    assert step(ledger, payout("p", 2_000, 200), ends=UNKNOWN, now_ms=4_000) == []
    assert c1(ledger).held[0]["at"] == 4_000
    assert step(ledger, ends=UNKNOWN, now_ms=4_000 + HOLD_MS - 1) == []
    assert step(ledger, ends=UNKNOWN, now_ms=4_000 + HOLD_MS) == [("p", "accepted", 3_000)]


def test_the_longest_hold_restarts_with_the_stage(ledger: CreatorLedger) -> None:
    """A restart is not a reason to give up: a restored held payout waits the longest
    hold from the new instance's first tick."""
    _, records = batch(ledger, credit(5_000, 90), ends=UNKNOWN, now_ms=1_000)
    records += batch(ledger, payout("p", 2_000, 200), ends=UNKNOWN, now_ms=1_000)[1]
    fresh = restored(records)
    assert step(fresh, ends=UNKNOWN, now_ms=500_000) == []  # long after its arrival, but just started
    assert step(fresh, ends=UNKNOWN, now_ms=500_000 + HOLD_MS - 1) == []
    assert step(fresh, ends=UNKNOWN, now_ms=500_000 + HOLD_MS) == [("p", "accepted", 3_000)]


def test_the_longest_hold_decides_on_the_balance_at_the_payout_time(ledger: CreatorLedger) -> None:
    step(ledger, credit(1_000, 90), ends=UNKNOWN, now_ms=1_000)
    first = progress(ledger).cycle
    step(ledger, payout("p", 3_000, 200), credit(5_000, 300), ends=UNKNOWN, now_ms=1_000)
    # No cycle is covered: every credit is remembered.
    assert progress(ledger).covered < first
    assert c1(ledger).recent == [[90, 1_000, first], [300, 5_000, first + 1]]
    assert step(ledger, ends=UNKNOWN, now_ms=1_000 + HOLD_MS) == [("p", "insufficient_diamonds", 1_000)]


def test_hold_counts_from_a_first_tick_at_time_zero() -> None:
    fresh = CreatorLedger(economics.load(), sources=2, max_hold_ms=1_000)
    step(fresh, credit(5_000, 90), ends=UNKNOWN, now_ms=0)
    assert step(fresh, payout("p", 2_000, 200), ends=UNKNOWN, now_ms=0) == []
    assert step(fresh, ends=UNKNOWN, now_ms=1_000) == [("p", "accepted", 3_000)]


# --- recent credits ------------------------------------------------------------------


def test_recent_credits_are_forgotten_once_their_cycle_is_covered(ledger: CreatorLedger) -> None:
    ends = cut(1, 0, 1, 0)
    step(ledger, credit(10, 50), Mark(0, 1, 0), ends=ends)  # source 1 never reported: not covered
    k1 = progress(ledger).cycle
    assert c1(ledger).recent == [[50, 10, k1]]
    step(ledger, credit(20, 110), ends=ends)
    assert c1(ledger).recent == [[50, 10, k1], [110, 20, k1 + 1]]
    step(ledger, Mark(1, 1, 0), ends=ends)
    assert progress(ledger).covered == k1 + 2  # both covered; forgotten with the next change
    more = cut(2, 0, 1, 0)  # a new gift on partition 0, not applied yet: this cycle is not covered
    step(ledger, credit(30, 150), ends=more)
    assert c1(ledger).recent == [[150, 30, k1 + 3]]
    # Source 0's mark covers it; a credit read after that in the same cycle is not kept.
    step(ledger, Mark(0, 2, 0), credit(40, 160), ends=more)
    assert c1(ledger).recent == [] and c1(ledger).available == 100
    # A payout read now was acknowledged after those gifts: dated before them, it counts them.
    assert step(ledger, payout("p", 2_000, 40), Mark(0, 2, 1), ends=cut(2, 1, 1, 0)) == [
        ("p", "insufficient_diamonds", 100)]


def test_recent_credits_are_kept_while_a_held_payout_dated_before_them_waits(ledger: CreatorLedger) -> None:
    started(ledger)
    covered_ends = cut(2, 0, 1, 0)
    step(ledger, credit(5_000, 300), Mark(0, 2, 0), ends=covered_ends)  # its cycle covered at once
    k = progress(ledger).cycle
    assert progress(ledger).covered == k and c1(ledger).recent == [[300, 5_000, k]]
    ends = cut(3, 1, 1, 0)
    assert step(ledger, payout("early", 2_000, 200), ends=ends) == []
    step(ledger, credit(1, 100), credit(1, 400), Mark(0, 3, 0), ends=ends)  # covered k, not "early"'s cycle
    # The credit at 100 (read in an uncovered cycle) and those dated after "early" are kept.
    assert [e[:2] for e in c1(ledger).recent] == [[100, 1], [300, 5_000], [400, 1]]
    assert step(ledger, Mark(0, 3, 1), ends=ends) == [("early", "insufficient_diamonds", 1_001)]
    assert c1(ledger).recent == []  # every cycle covered, nothing held


def test_credits_a_held_payout_must_not_count_are_kept_past_their_cover(ledger: CreatorLedger) -> None:
    started(ledger)
    ends = cut(2, 2, 1, 0)
    step(ledger, payout("late", 2_000, 500), payout("early", 2_000, 200), ends=ends)
    step(ledger, credit(5_000, 300), Mark(0, 2, 1), ends=ends)  # later than "early", earlier than "late"
    got = step(ledger, Mark(0, 2, 2), ends=ends)
    assert got == [("late", "accepted", 4_000), ("early", "insufficient_diamonds", 0)]


def test_balance_after_is_never_negative_when_a_later_payout_spent_the_later_credits() -> None:
    one = CreatorLedger(economics.load(), sources=1, max_hold_ms=HOLD_MS)
    ends = {(topics.GIFTS, 0): 1, (topics.PAYOUTS, 0): 0}
    step(one, credit(5_000, 300), ends=ends)  # not covered: remembered
    assert one.table.get("c1").recent != []
    ends = {(topics.GIFTS, 0): 1, (topics.PAYOUTS, 0): 2}
    assert step(one, payout("a", 5_000, 400), payout("b", 2_000, 200), Mark(0, 1, 2), ends=ends) == [
        ("a", "accepted", 0), ("b", "insufficient_diamonds", 0)]


# --- restart and abort ---------------------------------------------------------------


def test_held_records_and_progress_survive_a_restart(ledger: CreatorLedger) -> None:
    _, records = batch(ledger, credit(1_000, 90), Mark(0, 1, 0), Mark(1, 1, 0), ends=START)
    ends = cut(1, 1, 2, 0)
    records += batch(ledger, payout("p", 3_000, 200), credit(5_000, 300), Mark(0, 1, 1), ends=ends)[1]
    assert "#progress" in dict(records)
    read_in = progress(ledger).cycle
    fresh = restored(records)
    assert fresh.holding == {"c1"}
    assert fresh.table.as_dict() == ledger.table.as_dict()
    assert fresh.progress_table.as_dict() == ledger.progress_table.as_dict()
    restored_progress = progress(fresh)
    assert (restored_progress.applied, restored_progress.cycle) == ({0: (1, 1), 1: (1, 0)}, read_in)
    assert restored_progress.covered == read_in - 1 and not restored_progress.cuts
    state = c1(fresh)
    assert (state.available, held(fresh), state.recent) == (6_000, ["p"], [[300, 5_000, read_in]])
    assert state.held[0]["cycle"] == read_in
    # The cut of "p"'s cycle is gone with the old instance: source 1's mark reaching it
    # decides nothing in a cycle without a cut...
    assert step(fresh, credit(2_000, 150), Mark(1, 2, 0), ends=UNKNOWN) == []
    assert progress(fresh).cycle > read_in  # cycles count on across the restart
    # ...the next cut is reached by the marks in: it covers what waited. It counts the
    # credits at 90 and 150, not the one at 300.
    assert step(fresh, ends=ends) == [("p", "accepted", 0)]
    assert c1(fresh).available == 5_000 and fresh.holding == set()


def test_an_aborted_batch_leaves_the_held_payout_and_progress(ledger: CreatorLedger) -> None:
    started(ledger, 5_000)
    step(ledger, payout("p", 2_000, 200), ends=WITH_P)
    committed = copy.deepcopy(progress(ledger))
    out = Output()
    ledger.watch(WITH_P)
    start(ledger, out, 0)
    ledger.handle(OPS, Mark(0, 1, 1), out)
    assert [o.event_id for o in outcomes_of(out.effects)] == ["p"]
    ledger.abort()
    assert held(ledger) == ["p"] and ledger.holding == {"c1"}
    after = progress(ledger)
    assert (after.applied, after.covered) == ({0: (1, 0), 1: (1, 0)}, committed.covered)
    assert after.cycle > committed.cycle  # cycle numbers are never reused, even after an abort
    assert step(ledger, Mark(0, 1, 1), ends=WITH_P) == [("p", "accepted", 3_000)]


# --- cuts live across batches -------------------------------------------------------


def test_a_cycles_cut_is_kept_until_it_is_covered(ledger: CreatorLedger) -> None:
    """The store decodes a fresh value per batch; the cuts are the stage's, in memory."""
    started(ledger, 5_000)
    assert step(ledger, payout("p", 2_000, 200), Mark(0, 1, 1), ends=cut(1, 1, 2, 0)) == []  # source 1 behind
    # Source 1 reaches the cut of "p"'s cycle; meanwhile new gifts were made on partition 1.
    assert step(ledger, Mark(1, 2, 0), ends=cut(1, 1, 5, 0)) == [("p", "accepted", 3_000)]


# --- Progress ------------------------------------------------------------------------


def test_progress_record_keeps_offsets_monotone() -> None:
    p = Progress()
    p.record(0, (5, 3))
    p.record(0, (4, 7))  # an older mark (a restarted source) moves nothing back
    p.record(1, (2, 0))
    p.record(1, (1, 0))
    assert p.applied == {0: (5, 7), 1: (2, 0)}


def test_progress_cut_stamp_and_covered() -> None:
    p = Progress()
    first = p.cycle
    assert p.covered < first  # the first cycle is not covered
    blank = p.to_json()
    p.cut({0: (2, 1), 1: (3, 0)})
    assert (p.cycle, p.covered) == (first + 1, 0)
    assert p.to_json() == blank  # a quiet cycle changes nothing stored
    assert p.stamp() == first + 1 and p.to_json()["c"] == first + 1  # stamped: the cycle number must persist
    assert p.stamp() == first + 1
    p.record(0, (2, 1))
    assert p.covered == 0  # source 1 never reported
    p.record(1, (3, 0))
    assert p.covered == first + 1 and not p.cuts
    p.cut(None)  # unknown ends: no cut
    assert (p.cycle, p.covered) == (first + 2, first + 1)
    assert p.stamp() == first + 2
    p.cut({0: (2, 1), 1: (3, 0)})  # already reached: covered at once, the unknown one too
    assert (p.cycle, p.covered) == (first + 3, first + 3)
    stored = p.to_json()
    assert (stored["c"], stored["v"]) == (first + 2, first + 2)  # covered beyond the last stamp: not stored


def test_progress_cuts_are_covered_in_order() -> None:
    p = Progress()
    p.cut({0: (5, 5)})
    p.cut({0: (7, 5)})
    c = p.cycle
    p.record(0, (6, 5))
    assert p.covered == c - 1 and len(p.cuts) == 1
    p.record(0, (6, 9))  # payouts far, gifts still behind
    assert p.covered == c - 1
    p.record(0, (7, 0))
    assert p.covered == c and not p.cuts


def test_progress_cuts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.credit.progress as progress_module

    monkeypatch.setattr(progress_module, "MAX_CUTS", 2)
    p = Progress()
    p.cut({0: (1, 0)})
    p.cut({0: (2, 0)})
    p.cut({0: (3, 0)})  # a source far behind: no cut for this cycle
    beyond = p.cycle
    assert [c for c, _ in p.cuts] == [beyond - 2, beyond - 1]
    p.check()
    p.record(0, (3, 0))
    assert p.covered == beyond - 1  # not the one without a cut
    p.cut({0: (4, 0)})
    assert p.covered == beyond - 1
    p.record(0, (4, 0))
    assert p.covered == beyond + 1  # a later cut covers it


def test_progress_json_round_trip() -> None:
    p = Progress()
    p.record(0, (10, 3))
    p.record(3, (20, 0))
    p.cut({0: (10, 3), 3: (20, 0)})
    p.stamp()
    p.cut({0: (11, 3), 3: (20, 0)})  # waiting
    data = loads(dumps(p.to_json()))
    back = Progress.from_json(data)
    assert back.to_json() == p.to_json()
    assert (back.applied, back.newest) == (p.applied, p.newest)
    # A restart resumes above every stamp: what it stamps next is newer.
    back.cut(None)
    assert back.stamp() > data["c"]
    assert (back.applied, back.cycle, back.covered, back.seq) == (p.applied, p.cycle, p.covered, p.seq)
    assert not back.cuts  # not persisted: the next cuts are later


@pytest.mark.parametrize("data, what", [
    ({"a": [], "c": 2, "v": 3, "q": 0}, "covered cycles <= cycles"),
    ({"a": [], "c": 2, "v": -1, "q": 0}, "covered cycles >= 0"),
    ({"a": [[0, -1, 0]], "c": 2, "v": 1, "q": 0}, "applied gift offsets >= 0"),
    ({"a": [[0, 0, -5]], "c": 2, "v": 1, "q": 0}, "applied payout offsets >= 0"),
])
def test_progress_check_refuses_broken_values(data: dict[str, Any], what: str) -> None:
    with pytest.raises(InvariantError, match=what):
        Progress.from_json(data)


def test_progress_check_bounds_the_waiting_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.credit.progress as progress_module

    p = Progress()
    for g in range(3):
        p.cut({0: (g + 1, 0)})
    p.check()
    monkeypatch.setattr(progress_module, "MAX_CUTS", 2)
    with pytest.raises(InvariantError, match="waiting cuts <= MAX_CUTS"):
        p.check()


def test_a_restored_progress_record_that_breaks_an_invariant_is_refused(ledger: CreatorLedger) -> None:
    with pytest.raises(InvariantError):
        ledger.restore("#progress", dumps({"a": [], "c": 1, "v": 2, "q": 0}))


def test_a_credit_item_cannot_be_negative() -> None:
    with pytest.raises(AssertionError):
        CreditBatch("c1", 10, 2, ((1, -3), (2, 5)))


def test_a_mark_beyond_the_topics_ends_is_refused(ledger: CreatorLedger) -> None:
    """A source applies what it fetched, below the ends asked after its mark was
    fetched: a mark claiming more was not written by a source (a forgery that would let
    payouts pass credits); it raises, and the engine dead-letters it (task.py)."""
    from pipeline.invariants import InvariantError

    out = Output()
    ledger.watch(cut(1, 1, 1, 0))
    start(ledger, out, 0)
    with pytest.raises(InvariantError, match="a progress mark within the gifts' end"):
        ledger.handle(OPS, Mark(1, 10**15, 0), out)
    ledger.handle(OPS, Mark(1, 1, 0), out)  # at the ends: fine
    ledger.watch({})  # ends unknown this cycle: nothing to hold a mark against
    ledger.handle(OPS, Mark(0, 7, 7), out)


# --- cuts at the broker time a payout was written (backlogs) ---------------------------


def forwarded(event_id: str, diamonds: int, ts: int, written: int) -> Any:
    from agents.credit.ops import Forwarded

    return Forwarded(payout(event_id, diamonds, ts), written)


def test_a_cut_at_the_payouts_broker_time_decides_it_without_the_rest_of_the_backlog(ledger: CreatorLedger) -> None:
    """Far more was written after the payout (ends 100): reaching the offsets at its
    broker time, with every source past its event time, is enough."""
    started(ledger, 5_000)
    backlog = cut(100, 100, 100, 100)
    assert step(ledger, forwarded("p", 2_000, 200, 7_000), Mark(0, 1, 1, 150), Mark(1, 1, 0, 150), ends=backlog) == []
    assert ledger.wanted_time() == 7_001  # asked for once, in the next cycle
    ledger.watch_time(7_001, cut(3, 1, 2, 0))  # what was written by then
    assert step(ledger, Mark(0, 3, 1, 250), ends=backlog) == []  # source 1 below the cut
    # Source 1 at the cut but not past the payout's time: it may still hold an earlier gift.
    assert step(ledger, Mark(1, 2, 0, 190), ends=backlog) == []
    assert step(ledger, credit(40, 195), Mark(1, 3, 0, 210), ends=backlog) == [("p", "accepted", 3_040)]


def test_without_a_broker_time_a_payout_waits_for_its_cycles_cut(ledger: CreatorLedger) -> None:
    started(ledger, 5_000)
    backlog = cut(100, 100, 100, 100)
    assert step(ledger, payout("p", 2_000, 200), Mark(0, 50, 50, 900), Mark(1, 50, 50, 900), ends=backlog) == []
    assert ledger.wanted_time() is None
    assert step(ledger, Mark(0, 100, 100, 900), Mark(1, 100, 100, 900), ends=backlog) == [("p", "accepted", 3_000)]


def test_the_longest_hold_waits_for_a_source_that_keeps_progressing(ledger: CreatorLedger) -> None:
    """A source far behind (a backlog) keeps marking: its credits will come, so the
    payout waits past the longest hold; once it stops marking, the hold decides."""
    started(ledger, 5_000)
    backlog = cut(1, 1, 100, 0)
    assert step(ledger, payout("p", 2_000, 200), Mark(0, 1, 1), ends=backlog, now_ms=0) == []
    for i in range(1, 7):  # three holds long, a mark every half hold
        assert step(ledger, Mark(1, 1 + i, 0), ends=backlog, now_ms=i * HOLD_MS // 2) == []  # still moving
    last = 6 * HOLD_MS // 2
    assert step(ledger, ends=backlog, now_ms=last + HOLD_MS - 1) == []
    assert step(ledger, ends=backlog, now_ms=last + HOLD_MS) == [("p", "accepted", 3_000)]  # stalled a whole hold
