"""The creator-side rules: payouts (min 2,000 diamonds, 0.5 cent each), credits, ops."""

from __future__ import annotations

import copy

import pytest

from agents.credit.ops import batch_op, credit_op, parse_op, payout_op
from agents.credit.rules import CreditBatch, apply_credit, apply_payout, duplicate_payout, payout_rejection
from agents.credit.state import MAX_DAYS, MAX_RECENT, CreatorState
from agents.ingest.records import Payout
from agents.ledger.rules import Credit
from agents.outcomes import PAYOUT_REASONS, Outcome
from pipeline import economics
from pipeline.economics import Economics
from pipeline.engine.codec import dumps, loads

DAY = 86_400_000
T0 = 20_000 * DAY


@pytest.fixture(scope="module")
def econ() -> Economics:
    return economics.load()


def creator(available: int, paid_out: int = 0) -> CreatorState:
    return CreatorState(available, available + paid_out, paid_out, {}, seq=2)


def payout(diamonds: int, eid: str = "p-1", ts: int = T0) -> Payout:
    return Payout(eid, "c1", diamonds, ts)


def batch(items: list[tuple[int, int]], coins: int | None = None) -> CreditBatch:
    """A credit of one gift per (event time, diamonds) item; coins twice the diamonds."""
    diamonds = sum(d for _, d in items)
    return CreditBatch("c1", 2 * diamonds if coins is None else coins, len(items), tuple(items))


def test_reason_list_is_the_contract_order() -> None:
    assert PAYOUT_REASONS == ("below_min_payout", "insufficient_diamonds")


def test_below_min_payout(econ: Economics) -> None:
    state = creator(10_000)
    before = copy.deepcopy(state)
    outcome = apply_payout(state, payout(1999, ts=T0 + 3), econ)
    assert outcome == Outcome(
        event_id="p-1", type="payout", status="rejected", reason="below_min_payout", subject_id="c1", coins=None,
        diamonds=1999, usd_cents=None, balance_after=10_000, ts=T0 + 3,
    )
    assert state == before


def test_below_min_wins_over_insufficient(econ: Economics) -> None:
    assert apply_payout(creator(0), payout(1999), econ).reason == "below_min_payout"


def test_min_payout_exactly_is_accepted(econ: Economics) -> None:
    state = creator(2000)
    outcome = apply_payout(state, payout(2000), econ)
    assert outcome == Outcome(
        event_id="p-1", type="payout", status="accepted", reason=None, subject_id="c1", coins=None, diamonds=2000,
        usd_cents=1000, balance_after=0, ts=T0,
    )
    assert state == CreatorState(0, 2000, 2000, {}, seq=2)  # seq is the store's


def test_insufficient_diamonds_by_one(econ: Economics) -> None:
    state = creator(4_999, paid_out=100)
    before = copy.deepcopy(state)
    outcome = apply_payout(state, payout(5_000), econ)
    assert (outcome.status, outcome.reason, outcome.balance_after, outcome.usd_cents) == (
        "rejected", "insufficient_diamonds", 4_999, None)
    assert state == before


def test_available_exactly_equal_is_accepted(econ: Economics) -> None:
    state = creator(5_000, paid_out=100)
    outcome = apply_payout(state, payout(5_000), econ)
    assert (outcome.status, outcome.balance_after) == ("accepted", 0)
    assert (state.available, state.lifetime, state.paid_out) == (0, 5_100, 5_100)


@pytest.mark.parametrize(("diamonds", "cents"), [
    (2000, 1000), (2001, 1000), (2003, 1001), (999_999, 499_999), (10**12, 5 * 10**11),
])
def test_usd_cents_rounds_down(econ: Economics, diamonds: int, cents: int) -> None:
    state = creator(10**12)
    outcome = apply_payout(state, payout(diamonds), econ)
    assert outcome.usd_cents == cents
    assert state.available == 10**12 - diamonds  # exactly the diamonds requested


def test_duplicate_payout_outcome() -> None:
    state = creator(3_000, paid_out=2_000)
    before = copy.deepcopy(state)
    assert duplicate_payout(state, payout(2_500, eid="p-7", ts=5)) == Outcome(
        event_id="p-7", type="payout", status="duplicate", reason=None, subject_id="c1", coins=None, diamonds=2_500,
        usd_cents=None, balance_after=3_000, ts=5,
    )
    assert state == before


def test_credit_application_keeps_lifetime_equal_to_available_plus_paid_out(econ: Economics) -> None:
    state = CreatorState()
    apply_credit(state, batch([(100 * DAY, 3_000), (101 * DAY + 5, 500)]), 1, 0)
    apply_payout(state, payout(2_400), econ)  # at T0, after every credit
    apply_credit(state, batch([(101 * DAY + 9, 7)]), 2, 0)
    # No cycle covered yet: every credit is remembered as recent, with the cycle it came in.
    assert state == CreatorState(
        1_107, 3_507, 2_400, {100: 3_000, 101: 507}, seq=0,
        recent=[[100 * DAY, 3_000, 1], [101 * DAY + 5, 500, 1], [101 * DAY + 9, 7, 2]],
        windows={"1m": {100 * DAY: 3_000, 101 * DAY: 507}, "1h": {100 * DAY: 3_000, 101 * DAY: 507}},
    )
    assert state.lifetime == state.available + state.paid_out


def test_windows_are_tumbling_and_bounded() -> None:
    state = CreatorState()
    apply_credit(state, batch([(59_999, 1), (60_000, 2), (3_600_000 + 5, 4)]), 1, 0)
    assert state.windows == {"1m": {0: 1, 60_000: 2, 3_600_000: 4}, "1h": {0: 3, 3_600_000: 4}}
    for minute in range(200):
        apply_credit(state, batch([(10 * 3_600_000 + minute * 60_000, 1)]), 1, 0)
    assert len(state.windows["1m"]) == 120 and min(state.windows["1m"]) == 10 * 3_600_000 + 80 * 60_000
    assert state.windows["1h"][10 * 3_600_000] == 60 and len(state.windows["1h"]) <= 48


def test_credit_batch_derived_fields() -> None:
    b = CreditBatch("c1", 100, 3, ((T0 - 1, 7), (T0 + 5, 0), (T0 + DAY, 40)))
    assert (b.diamonds, b.ts) == (47, T0 + DAY)
    assert b.by_day() == {T0 // DAY - 1: 7, T0 // DAY: 0, T0 // DAY + 1: 40}


def test_zero_diamond_credit_still_counts_as_a_change() -> None:
    """A batch of single roses credits 0 diamonds; the state still changes (the day's
    entry), so the store writes it."""
    state = CreatorState()
    apply_credit(state, CreditBatch("c1", 1, 1, ((T0, 0),)), 1, 1)
    assert (state.available, state.lifetime) == (0, 0)
    assert state.to_json() != CreatorState().to_json()
    assert state.day_diamonds == {T0 // DAY: 0} and state.recent == []


def test_day_totals_are_bounded() -> None:
    assert MAX_DAYS == 40
    state = CreatorState()
    for day in range(50):
        apply_credit(state, batch([(day * DAY + 1, day + 1)]), day + 1, day + 1)
    assert sorted(state.day_diamonds) == list(range(10, 50))
    assert state.day_diamonds[49] == 50
    assert state.lifetime == state.available == sum(range(1, 51))  # totals keep every diamond
    assert state.recent == []  # each credit's cycle was covered and no payout waits: none is kept


def test_one_batch_spanning_more_days_than_kept() -> None:
    state = CreatorState()
    apply_credit(state, batch([(d * DAY + d, 1) for d in range(45)]), 1, 0)
    assert sorted(state.day_diamonds) == list(range(5, 45))
    assert state.available == 45
    assert len(state.recent) == 45  # the per-time record is not cut by days


def test_creator_state_json_round_trip() -> None:
    state = CreatorState(5, 9, 4, {7: 9}, 3)
    assert state.to_json() == {"a": 5, "lt": 9, "p": 4, "d": [[7, 9]], "q": 3}
    assert CreatorState.from_json(state.to_json()) == state


def test_creator_state_json_round_trip_with_held_and_recent() -> None:
    held = [{"op": "p", "event_id": "p-1", "creator_id": "c1", "diamonds": 2_000, "ts": T0, "since": {"0": 3},
             "at": 1.5}]
    state = CreatorState(5, 9, 4, {7: 9}, 3, held, [[T0 + 1, 2, 7], [T0 + 2, 3, 8]])
    data = loads(dumps(state.to_json()))
    assert data == {"a": 5, "lt": 9, "p": 4, "d": [[7, 9]], "q": 3, "h": held, "r": [[T0 + 1, 2, 7], [T0 + 2, 3, 8]]}
    restored = CreatorState.from_json(data)
    assert restored == state


def test_creator_state_refuses_a_credit_among_held_records() -> None:
    with pytest.raises(AssertionError):
        CreatorState.from_json({"a": 0, "l": 0, "p": 0, "d": [], "q": 0, "h": [{"op": "c"}]})


@pytest.mark.parametrize(("args", "why"), [
    (("c1", 10, 1, ((0, 11),)), "more diamonds than coins"),
    (("c1", 10, 1, ((0, 6), (1, 5))), "more diamonds than coins, over two items"),
    (("c1", 0, 0, ((0, 0),)), "no gift"),
    (("c1", 10, 1, ((0, -1),)), "negative diamonds"),
    (("c1", 10, 1, ()), "no item"),
    (("c1", 10, 2, ((5, 1), (4, 1))), "items not sorted by event time"),
    (("c1", 10, 2, ((5, 1), (5, 1))), "two items of one event time"),
    (("c1", 10, 3, ((1, 1), (5, 1), (5, 1))), "a repeated event time after the first item"),
])
def test_credit_batch_refuses_inconsistent_items(args: tuple, why: str) -> None:
    with pytest.raises(AssertionError):
        CreditBatch(*args)


def test_credit_op_round_trip() -> None:
    credits = [
        Credit("c1", "s1", "u1", 44_999, 22_499, T0 + 10),
        Credit("c1", "s2", "u2", 1, 0, T0 + DAY),
        Credit("c1", "s1", "u3", 100, 50, T0 + 5),
    ]
    op = credit_op("c1", credits, DAY)
    assert op == {
        "op": "c", "creator_id": "c1", "coins": 45_100, "gifts": 3,
        "items": [[T0 + 5, 50], [T0 + 10, 22_499], [T0 + DAY, 0]],  # sorted by event time
        "n": [],  # no sender's first event is known: none counts as new
    }
    parsed = parse_op(loads(dumps(op)))
    assert parsed == CreditBatch("c1", 45_100, 3, ((T0 + 5, 50), (T0 + 10, 22_499), (T0 + DAY, 0)))
    assert isinstance(parsed, CreditBatch)
    assert (parsed.diamonds, parsed.ts, parsed.by_day()) == (22_549, T0 + DAY, {20_000: 22_549, 20_001: 0})
    assert batch_op(parsed) == op


def test_credit_op_coalesces_gifts_of_one_event_time() -> None:
    credits = [
        Credit("c1", "s1", "u1", 1_000, 500, T0 + 7),
        Credit("c1", "s1", "u2", 20, 10, T0 + 3),
        Credit("c1", "s2", "u3", 1, 0, T0 + 7),
        Credit("c1", "s1", "u1", 100, 50, T0 + 3),
        Credit("c1", "s1", "u4", 29_999, 14_999, T0 - DAY),
    ]
    op = credit_op("c1", credits, DAY)
    assert op == {
        "op": "c", "creator_id": "c1", "coins": 31_120, "gifts": 5,  # every gift still counts
        "items": [[T0 - DAY, 14_999], [T0 + 3, 60], [T0 + 7, 500]], "n": [],
    }
    parsed = parse_op(loads(dumps(op)))
    assert isinstance(parsed, CreditBatch)
    assert (parsed.diamonds, parsed.gifts, parsed.ts) == (15_559, 5, T0 + 7)


def test_credit_op_refuses_another_creator() -> None:
    with pytest.raises(AssertionError):
        credit_op("c1", [Credit("c2", "s1", "u1", 2, 1, 0)], DAY)


def test_payout_op_round_trip() -> None:
    ev = Payout("p-3", "c9", 10**12, T0 + 1)
    assert payout_op(ev) == {"op": "p", "event_id": "p-3", "creator_id": "c9", "diamonds": 10**12, "ts": T0 + 1}
    assert parse_op(loads(dumps(payout_op(ev)))) == ev


def test_big_totals_survive_the_codec() -> None:
    """Sums of many credits can pass 2**64; the internal records must keep them exact."""
    big = 2**64 + 3
    op = credit_op("c1", [Credit("c1", "s", "u", 2 * big + 1, big, 0), Credit("c1", "s", "v", 2 * big + 1, big, 0)],
                   DAY)
    assert op["items"] == [[0, 2 * big]]
    assert parse_op(loads(dumps(op))) == CreditBatch("c1", 4 * big + 2, 2, ((0, 2 * big),))
    state = CreatorState()
    apply_credit(state, CreditBatch("c1", 4 * big + 2, 2, ((0, 2 * big),)), 1, 0)
    state = CreatorState.from_json(loads(dumps(state.to_json())))
    assert (state.available, state.recent) == (2 * big, [[0, 2 * big, 1]])


# --- payouts decided at their event time (credits of later gifts do not count) ------


def test_payout_rejection_takes_the_available_amount(econ: Economics) -> None:
    assert payout_rejection(1_999, payout(1_999), econ) == "below_min_payout"
    assert payout_rejection(10**12, payout(1_999), econ) == "below_min_payout"
    assert payout_rejection(4_999, payout(5_000), econ) == "insufficient_diamonds"
    assert payout_rejection(5_000, payout(5_000), econ) is None


def test_available_at_leaves_out_recent_credits_later_than_the_time() -> None:
    state = CreatorState(10_000, 10_000, 0, {}, 3, recent=[[T0 + 10, 1_000], [T0 + 20, 2_000], [T0 + 30, 4_000]])
    assert state.available_at(T0 + 30) == 10_000
    assert state.available_at(T0 + 29) == 6_000
    assert state.available_at(T0 + 20) == 6_000  # a credit at the payout's own time counts
    assert state.available_at(T0 + 19) == 4_000
    assert state.available_at(T0 + 10) == 4_000
    assert state.available_at(T0) == 3_000
    assert state.available == 10_000  # a question, not a change


def test_a_credit_later_than_the_payout_is_not_counted(econ: Economics) -> None:
    state = CreatorState()
    apply_credit(state, batch([(T0 - 10, 3_000)]), 1, 0)
    apply_credit(state, batch([(T0 + 10, 5_000)]), 2, 0)  # a gift after the payout, already in
    assert state.available == 8_000
    before = copy.deepcopy(state)
    outcome = apply_payout(state, payout(4_000, ts=T0), econ)
    assert outcome == Outcome(
        event_id="p-1", type="payout", status="rejected", reason="insufficient_diamonds", subject_id="c1",
        coins=None, diamonds=4_000, usd_cents=None, balance_after=3_000, ts=T0,
    )
    assert state == before


def test_balance_after_of_an_accepted_payout_leaves_out_later_credits(econ: Economics) -> None:
    state = CreatorState()
    apply_credit(state, batch([(T0 - 10, 3_000), (T0 + 10, 5_000)]), 1, 0)
    outcome = apply_payout(state, payout(2_500, ts=T0), econ)
    # 3,000 available at T0, 500 of them left; the 5,000 of the later gift stay credited.
    assert outcome == Outcome(
        event_id="p-1", type="payout", status="accepted", reason=None, subject_id="c1", coins=None, diamonds=2_500,
        usd_cents=1_250, balance_after=500, ts=T0,
    )
    assert (state.available, state.lifetime, state.paid_out) == (5_500, 8_000, 2_500)
    assert state.recent == [[T0 - 10, 3_000, 1], [T0 + 10, 5_000, 1]]  # their cycle is not covered yet
    # A payout dated after the later gift counts it.
    later = apply_payout(state, payout(5_500, "p-2", ts=T0 + 10), econ)
    assert (later.status, later.balance_after) == ("accepted", 0)
    assert (state.available, state.paid_out) == (0, 8_000)


def test_duplicate_payout_reports_the_balance_at_its_time() -> None:
    state = CreatorState(3_000, 5_000, 2_000, {}, 4, recent=[[T0 + 1, 1_000, 1]])
    assert duplicate_payout(state, payout(2_500, ts=T0)).balance_after == 2_000
    assert duplicate_payout(state, payout(2_500, ts=T0 + 1)).balance_after == 3_000


def test_recent_forgets_covered_credits_unless_a_held_payout_is_dated_before_them() -> None:
    state = CreatorState()
    apply_credit(state, batch([(T0 + 1, 1), (T0 + 5, 2)]), 1, 0)
    apply_credit(state, batch([(T0 + 9, 3)]), 2, 1)  # cycle 1 covered: its credits are forgotten
    assert state.recent == [[T0 + 9, 3, 2]]
    state.held = [{"op": "p", "event_id": "p", "creator_id": "c1", "diamonds": 2_000, "ts": T0 + 6, "cycle": 3}]
    apply_credit(state, batch([(T0 + 4, 4), (T0 + 20, 5)]), 3, 3)
    # All covered, but the held payout (dated T0 + 6) must leave out what is dated after it.
    assert state.recent == [[T0 + 9, 3, 2], [T0 + 20, 5, 3]]
    state.held = []
    apply_credit(state, batch([(T0 + 30, 6)]), 4, 4)
    assert state.recent == []
    assert (state.available, state.lifetime) == (21, 21)


def test_recent_is_bounded_by_max_recent() -> None:
    assert MAX_RECENT == 100_000
    state = CreatorState()
    n = MAX_RECENT + 5
    # Given in two batches, the newer batch first: the bound keeps the newest entries.
    apply_credit(state, batch([(T0 + 10 + i, 1) for i in range(n - 10)]), 1, 0)
    apply_credit(state, batch([(T0 + i, 1) for i in range(10)]), 1, 0)
    assert len(state.recent) == MAX_RECENT
    assert sorted(state.recent) == [[T0 + i, 1, 1] for i in range(5, n)]
    assert (state.available, state.lifetime) == (n, n)  # the bound drops the record, not diamonds
    state.check()


def test_a_creator_value_written_before_the_lifetime_key_was_renamed_still_reads() -> None:
    """"l" was lifetime diamonds for a creator and a user's own limit; now "lt". A
    changelog written before still restores."""
    assert CreatorState.from_json({"a": 5, "l": 9, "p": 4, "d": [[7, 9]], "q": 3}).lifetime == 9
    assert CreatorState.from_json({"a": 5, "lt": 9, "p": 4, "d": [[7, 9]], "q": 3}).lifetime == 9
