"""The creator-side rules: payouts (min 2,000 diamonds, 0.5 cent each), credits, ops."""

from __future__ import annotations

import pytest

from agents.credit.ops import credit_op, parse_op, payout_op
from agents.credit.rules import CreditBatch, apply_credit, apply_payout, duplicate_payout
from agents.credit.state import MAX_DAYS, CreatorState
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


def batch(by_day: dict[int, int], coins: int | None = None, ts: int = T0) -> CreditBatch:
    diamonds = sum(by_day.values())
    return CreditBatch("c1", diamonds, 2 * diamonds if coins is None else coins, len(by_day), ts, by_day)


def test_reason_list_is_the_contract_order() -> None:
    assert PAYOUT_REASONS == ("below_min_payout", "insufficient_diamonds")


def test_below_min_payout(econ: Economics) -> None:
    state = creator(10_000)
    before = state.copy()
    outcome = apply_payout(state, payout(1999, ts=T0 + 3), econ)
    assert outcome == Outcome("p-1", "payout", "rejected", "below_min_payout", "c1", None, 1999, None, 10_000, T0 + 3)
    assert state == before


def test_below_min_wins_over_insufficient(econ: Economics) -> None:
    assert apply_payout(creator(0), payout(1999), econ).reason == "below_min_payout"


def test_min_payout_exactly_is_accepted(econ: Economics) -> None:
    state = creator(2000)
    outcome = apply_payout(state, payout(2000), econ)
    assert outcome == Outcome("p-1", "payout", "accepted", None, "c1", None, 2000, 1000, 0, T0)
    assert state == CreatorState(0, 2000, 2000, {}, seq=3)


def test_insufficient_diamonds_by_one(econ: Economics) -> None:
    state = creator(4_999, paid_out=100)
    before = state.copy()
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
    before = state.copy()
    assert duplicate_payout(state, payout(2_500, eid="p-7", ts=5)) == Outcome(
        "p-7", "payout", "duplicate", None, "c1", None, 2_500, None, 3_000, 5)
    assert state == before


def test_credit_application_keeps_lifetime_equal_to_available_plus_paid_out(econ: Economics) -> None:
    state = CreatorState()
    apply_credit(state, batch({100: 3_000, 101: 500}))
    apply_payout(state, payout(2_400), econ)
    apply_credit(state, batch({101: 7}))
    assert state == CreatorState(1_107, 3_507, 2_400, {100: 3_000, 101: 507}, seq=3)
    assert state.lifetime == state.available + state.paid_out


def test_zero_diamond_credit_still_counts_as_a_change() -> None:
    """A batch of single roses credits 0 diamonds; the state is still (trivially) written."""
    state = CreatorState()
    apply_credit(state, CreditBatch("c1", 0, 1, 1, T0, {T0 // DAY: 0}))
    assert (state.available, state.lifetime, state.seq) == (0, 0, 1)


def test_day_totals_are_bounded() -> None:
    assert MAX_DAYS == 40
    state = CreatorState()
    for day in range(50):
        apply_credit(state, batch({day: day + 1}))
    assert sorted(state.day_diamonds) == list(range(10, 50))
    assert state.lifetime == state.available == sum(range(1, 51))  # totals keep every diamond


def test_one_batch_spanning_more_days_than_kept() -> None:
    state = CreatorState()
    apply_credit(state, batch({d: 1 for d in range(45)}))
    assert sorted(state.day_diamonds) == list(range(5, 45))
    assert state.available == 45


def test_creator_state_json_round_trip() -> None:
    state = CreatorState(5, 9, 4, {7: 9}, 3)
    assert state.to_json() == {"a": 5, "l": 9, "p": 4, "d": [[7, 9]], "q": 3}
    assert CreatorState.from_json(state.to_json()) == state


@pytest.mark.parametrize(("args", "why"), [
    (("c1", 5, 10, 1, 0, {0: 4}), "by_day sums to 4, not 5"),
    (("c1", 11, 10, 1, 0, {0: 11}), "more diamonds than coins"),
    (("c1", 0, 0, 0, 0, {}), "no gift"),
    (("c1", -1, 10, 1, 0, {0: -1}), "negative diamonds"),
])
def test_credit_batch_refuses_inconsistent_totals(args: tuple, why: str) -> None:
    with pytest.raises(AssertionError):
        CreditBatch(*args)


def test_credit_op_round_trip() -> None:
    credits = [
        Credit("c1", "s1", "u1", 44_999, 22_499, T0 + 10),
        Credit("c1", "s2", "u2", 1, 0, T0 + DAY),
        Credit("c1", "s1", "u3", 100, 50, T0 + 5),
    ]
    op = credit_op("c1", credits)
    assert op == {
        "op": "c", "creator_id": "c1", "diamonds": 22_549, "coins": 45_100, "gifts": 3, "ts": T0 + DAY,
        "days": [[20_000, 22_549], [20_001, 0]],
    }
    assert parse_op(loads(dumps(op))) == CreditBatch("c1", 22_549, 45_100, 3, T0 + DAY, {20_000: 22_549, 20_001: 0})


def test_credit_op_refuses_another_creator() -> None:
    with pytest.raises(AssertionError):
        credit_op("c1", [Credit("c2", "s1", "u1", 2, 1, 0)])


def test_payout_op_round_trip() -> None:
    ev = Payout("p-3", "c9", 10**12, T0 + 1)
    assert payout_op(ev) == {"op": "p", "event_id": "p-3", "creator_id": "c9", "diamonds": 10**12, "ts": T0 + 1}
    assert parse_op(loads(dumps(payout_op(ev)))) == ev


def test_big_totals_survive_the_codec() -> None:
    """Sums of many credits can pass 2**64; the internal records must keep them exact."""
    big = 2**64 + 3
    op = credit_op("c1", [Credit("c1", "s", "u", 2 * big + 1, big, 0)])
    assert parse_op(loads(dumps(op))) == CreditBatch("c1", big, 2 * big + 1, 1, 0, {0: big})
