"""The user-side rules of CONTRACT.md ("Processing rules", "Economics"), as pure functions.

Expected values are written from the contract (prices, 50 % share, 200,000 coins per UTC
day), never computed with the functions under test.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ingest.records import Gift, Recharge, SpendLimit
from agents.ledger.promotions import PromotionBook
from agents.ledger.rules import (
    Credit,
    Decided,
    apply_gift,
    apply_recharge,
    apply_spend_limit,
    apply_user_event,
    duplicate_outcome,
    gift_coins,
)
from agents.ledger.state import MAX_SPEND_DAYS, MAX_SPEND_MONTHS, UserState, utc_month
from agents.outcomes import GIFT_REASONS, Outcome
from pipeline import economics
from pipeline.economics import Economics

DAY = 86_400_000
T0 = 20_000 * DAY + 12 * 3_600_000  # noon of some UTC day
PLATFORM_LIMIT = 200_000
CATALOG = {
    "rose": 1, "finger_heart": 5, "perfume": 20, "confetti": 100,
    "money_gun": 500, "galaxy": 1000, "lion": 29999, "universe": 44999,
}
_ids = itertools.count()
BOOK = PromotionBook(7 * DAY)  # no promotion


def pair(decided: Decided) -> tuple[Outcome, Credit | None]:
    return decided.outcome, decided.credit


@pytest.fixture(scope="module")
def econ() -> Economics:
    return economics.load()


def _eid() -> str:
    return f"e{next(_ids)}"


def recharge(coins: int, user: str = "u1", ts: int = T0, eid: str | None = None) -> Recharge:
    return Recharge(eid or _eid(), user, coins, coins, "USD", ts)


def gift(
    gift_id: str = "rose", quantity: int = 1, sender: str = "u1", creator: str = "c1",
    ts: int = T0, eid: str | None = None,
) -> Gift:
    return Gift(eid or _eid(), sender, creator, "s1", gift_id, quantity, ts)


def limit(value: int | None, user: str = "u1", ts: int = T0) -> SpendLimit:
    return SpendLimit(_eid(), user, value, ts)


def user(balance: int = 0, own_limit: int | None = None, day_spend: dict[int, int] | None = None) -> UserState:
    """A consistent state: `balance` left after spending what `day_spend` says."""
    days = dict(day_spend or {})
    spent = sum(days.values())
    return UserState(balance, balance + spent, spent, own_limit, days, seq=3)


def assert_rejected(state: UserState, ev: Gift, econ: Economics, reason: str) -> Outcome:
    """The gift is rejected for `reason` and leaves the state exactly as it was."""
    before = copy.deepcopy(state)
    outcome, credit = pair(apply_gift(state, ev, econ))
    assert (outcome.status, outcome.reason, credit) == ("rejected", reason, None)
    assert state == before
    return outcome


def assert_accepted(state: UserState, ev: Gift, econ: Economics) -> Outcome:
    outcome, credit = pair(apply_gift(state, ev, econ))
    assert (outcome.status, outcome.reason) == ("accepted", None), outcome
    assert credit is not None
    return outcome


# --- gift reasons and their order ---------------------------------------------------


def test_reason_list_is_the_contract_order() -> None:
    assert GIFT_REASONS == ("unknown_gift", "self_gift", "insufficient_coins", "spend_limit_exceeded",
                            "monthly_limit_exceeded")


def test_unknown_gift_wins_over_self_gift_and_no_coins(econ: Economics) -> None:
    out = assert_rejected(user(0), gift("unicorn", sender="u1", creator="u1"), econ, "unknown_gift")
    assert out.coins is None  # an unknown gift has no price


def test_gift_ids_are_case_sensitive(econ: Economics) -> None:
    assert_rejected(user(1000), gift("Rose"), econ, "unknown_gift")


def test_self_gift_wins_over_no_coins(econ: Economics) -> None:
    assert_rejected(user(0), gift("rose", sender="u1", creator="u1"), econ, "self_gift")


def test_self_gift_with_coins(econ: Economics) -> None:
    assert_rejected(user(10_000), gift("rose", sender="u1", creator="u1"), econ, "self_gift")


def test_insufficient_coins_wins_over_spend_limit(econ: Economics) -> None:
    state = user(10, own_limit=0)
    assert_rejected(state, gift("perfume"), econ, "insufficient_coins")


def test_insufficient_by_one_coin(econ: Economics) -> None:
    assert_rejected(user(99), gift("confetti"), econ, "insufficient_coins")
    assert_accepted(user(100), gift("confetti"), econ)


def test_rejected_outcome_fields(econ: Economics) -> None:
    state = user(99)
    out = assert_rejected(state, gift("confetti", eid="g-1", ts=T0 + 5), econ, "insufficient_coins")
    assert out == Outcome(
        event_id="g-1", type="gift", status="rejected", reason="insufficient_coins", subject_id="u1", coins=100,
        diamonds=None, usd_cents=None, balance_after=99, ts=T0 + 5,
    )


# --- coins and diamonds -------------------------------------------------------------


@pytest.mark.parametrize(("gift_id", "quantity", "coins"), [
    ("rose", 1, 1), ("rose", 10_000, 10_000), ("finger_heart", 3, 15), ("perfume", 7, 140),
    ("confetti", 2, 200), ("money_gun", 9, 4_500), ("galaxy", 11, 11_000), ("lion", 3, 89_997),
    ("universe", 1, 44_999),
])
def test_gift_cost_is_price_times_quantity(econ: Economics, gift_id: str, quantity: int, coins: int) -> None:
    assert gift_coins(gift(gift_id, quantity), econ) == coins
    state = user(coins)
    out = assert_accepted(state, gift(gift_id, quantity), econ)
    assert (out.coins, out.balance_after, state.balance, state.spent) == (coins, 0, 0, coins)


@pytest.mark.parametrize(("gift_id", "quantity", "diamonds", "fee"), [
    ("rose", 1, 0, 1),            # 1 coin: floor(0.5) = 0 diamonds, the whole coin is the fee
    ("rose", 3, 1, 2),
    ("finger_heart", 1, 2, 3),
    ("lion", 1, 14_999, 15_000),
    ("universe", 1, 22_499, 22_500),
    ("universe", 3, 67_498, 67_499),  # 134,997 coins
    ("galaxy", 1, 500, 500),
])
def test_creator_share_rounds_down_and_fee_is_the_rest(
    econ: Economics, gift_id: str, quantity: int, diamonds: int, fee: int
) -> None:
    coins = CATALOG[gift_id] * quantity
    assert diamonds + fee == coins
    state = user(coins)
    ev = gift(gift_id, quantity, ts=T0 + 1)
    outcome, credit = pair(apply_gift(state, ev, econ))
    assert outcome.diamonds == diamonds
    assert credit == Credit("c1", "s1", "u1", coins, diamonds, T0 + 1, ev.event_id, state.first_ts)


def test_accepted_gift_outcome_and_state(econ: Economics) -> None:
    state = user(1_000, day_spend={20_000: 50})
    outcome, _ = pair(apply_gift(state, gift("money_gun", eid="g-9"), econ))
    assert outcome == Outcome(
        event_id="g-9", type="gift", status="accepted", reason=None, subject_id="u1", coins=500, diamonds=250,
        usd_cents=None, balance_after=500, ts=T0,
    )
    assert state == UserState(500, 1_050, 550, None, {20_000: 550}, seq=3, streams={"s1": [500, T0 // DAY]},
                              month_spend={utc_month(T0): 500})
    assert state.touched == {("day", T0 // DAY), ("stream", "s1")}


# --- daily spend limit --------------------------------------------------------------


def test_platform_limit_exactly_reached_is_accepted(econ: Economics) -> None:
    state = user(10**6, day_spend={T0 // DAY: PLATFORM_LIMIT - 1000})
    assert_accepted(state, gift("galaxy"), econ)
    assert state.day_spend[T0 // DAY] == PLATFORM_LIMIT
    assert_rejected(state, gift("rose"), econ, "spend_limit_exceeded")


def test_platform_limit_plus_one_is_rejected(econ: Economics) -> None:
    state = user(10**6, day_spend={T0 // DAY: PLATFORM_LIMIT - 999})
    assert_rejected(state, gift("galaxy"), econ, "spend_limit_exceeded")


def test_single_gift_over_the_platform_limit(econ: Economics) -> None:
    # 5 universes = 224,995 coins > 200,000 with nothing spent yet.
    assert_rejected(user(10**6), gift("universe", 5), econ, "spend_limit_exceeded")


def test_utc_day_boundary(econ: Economics) -> None:
    """ts 86_399_999 is the last millisecond of day 0, 86_400_000 the first of day 1."""
    state = user(10**6, day_spend={0: PLATFORM_LIMIT})
    assert_rejected(state, gift("rose", ts=86_399_999), econ, "spend_limit_exceeded")
    assert_accepted(state, gift("rose", ts=86_400_000), econ)
    assert state.day_spend == {0: PLATFORM_LIMIT, 1: 1}


def test_spend_of_one_day_does_not_count_the_next(econ: Economics) -> None:
    state = user(10**6)
    day = T0 // DAY
    for _ in range(4):
        assert_accepted(state, gift("universe", ts=T0), econ)  # 179,996 coins on day N
    assert_rejected(state, gift("universe", ts=T0), econ, "spend_limit_exceeded")
    for _ in range(4):
        assert_accepted(state, gift("universe", ts=T0 + DAY), econ)
    assert state.day_spend == {day: 179_996, day + 1: 179_996}


def test_own_limit_lower_than_platform(econ: Economics) -> None:
    state = user(10**6)
    apply_spend_limit(state, limit(150))
    assert_accepted(state, gift("confetti"), econ)
    assert_accepted(state, gift("perfume", 2), econ)  # 140
    assert_accepted(state, gift("finger_heart", 2), econ)  # 150: equal is accepted
    assert_rejected(state, gift("rose"), econ, "spend_limit_exceeded")


def test_own_limit_higher_than_platform_platform_wins(econ: Economics) -> None:
    state = user(10**6, own_limit=10**9, day_spend={T0 // DAY: PLATFORM_LIMIT})
    assert_rejected(state, gift("rose"), econ, "spend_limit_exceeded")


def test_limit_zero_rejects_every_gift(econ: Economics) -> None:
    state = user(10**6)
    apply_spend_limit(state, limit(0))
    for gift_id in CATALOG:
        assert_rejected(state, gift(gift_id), econ, "spend_limit_exceeded")


def test_limit_cleared_with_null(econ: Economics) -> None:
    state = user(10**6, day_spend={T0 // DAY: 100})
    apply_spend_limit(state, limit(100))
    assert_rejected(state, gift("rose"), econ, "spend_limit_exceeded")
    outcome = apply_spend_limit(state, limit(None))
    assert state.own_limit is None
    assert outcome.status == "accepted"
    assert_accepted(state, gift("galaxy"), econ)


def test_limit_applies_to_spend_made_before_it_was_set(econ: Economics) -> None:
    state = user(10**6, day_spend={T0 // DAY: 500})
    apply_spend_limit(state, limit(500))
    assert_rejected(state, gift("rose"), econ, "spend_limit_exceeded")


# --- recharge, spend limit, duplicate outcomes --------------------------------------


def test_recharge_outcome_and_state() -> None:
    state = user(40)
    outcome = apply_recharge(state, Recharge("r-1", "u1", 1_000_000, 999, "EUR", T0), BOOK)
    assert outcome == Outcome(
        event_id="r-1", type="recharge", status="accepted", reason=None, subject_id="u1", coins=1_000_000,
        diamonds=None, usd_cents=None, balance_after=1_000_040, ts=T0, bonus_coins=0,
    )
    assert (state.balance, state.recharged, state.spent, state.seq) == (1_000_040, 1_000_040, 0, 3)  # seq: the store's


def test_spend_limit_outcome() -> None:
    state = user(5)
    ev = SpendLimit("l-1", "u1", 7, T0)
    assert apply_spend_limit(state, ev) == Outcome(
        event_id="l-1", type="spend_limit", status="accepted", reason=None, subject_id="u1", coins=None,
        diamonds=None, usd_cents=None, balance_after=None, ts=T0,
    )
    assert (state.own_limit, state.balance) == (7, 5)


def test_rejected_gifts_leave_the_ledger_unchanged(econ: Economics) -> None:
    state = user(0)
    for ev in (gift("unicorn"), gift(creator="u1"), gift("rose")):
        apply_gift(state, ev, econ)
    assert state == user(0)


def test_duplicate_outcomes(econ: Economics) -> None:
    state = user(77)
    before = copy.deepcopy(state)
    assert duplicate_outcome(state, Recharge("r", "u1", 5, 0, "USD", 1), econ) == Outcome(
        event_id="r", type="recharge", status="duplicate", reason=None, subject_id="u1", coins=5, diamonds=None,
        usd_cents=None, balance_after=77, ts=1,
    )
    assert duplicate_outcome(state, Gift("g", "u1", "c1", "s1", "perfume", 3, 2), econ) == Outcome(
        event_id="g", type="gift", status="duplicate", reason=None, subject_id="u1", coins=60, diamonds=None,
        usd_cents=None, balance_after=77, ts=2,
    )
    assert duplicate_outcome(state, Gift("h", "u1", "c1", "s1", "nope", 3, 2), econ) == Outcome(
        event_id="h", type="gift", status="duplicate", reason=None, subject_id="u1", coins=None, diamonds=None,
        usd_cents=None, balance_after=77, ts=2,
    )
    assert duplicate_outcome(state, SpendLimit("l", "u1", None, 3), econ) == Outcome(
        event_id="l", type="spend_limit", status="duplicate", reason=None, subject_id="u1", coins=None,
        diamonds=None, usd_cents=None, balance_after=None, ts=3,
    )
    assert state == before


def test_apply_user_event_dispatch(econ: Economics) -> None:
    state = user(0)
    assert apply_user_event(state, recharge(10), econ, BOOK).credit is None
    assert apply_user_event(state, limit(3), econ, BOOK).credit is None
    outcome, credit = pair(apply_user_event(state, gift("rose", 2), econ, BOOK))
    assert (outcome.type, credit.coins if credit else None) == ("gift", 2)
    assert (state.balance, state.own_limit) == (8, 3)


# --- bounded state and invariants ---------------------------------------------------


def test_day_spend_keeps_the_newest_max_spend_days(econ: Economics) -> None:
    assert MAX_SPEND_DAYS == 40
    state = user(1_000)
    first = T0 // DAY
    for i in range(45):
        assert_accepted(state, gift("rose", ts=T0 + i * DAY), econ)
    assert sorted(state.day_spend) == list(range(first + 5, first + 45))
    assert (state.spent, state.balance) == (45, 955)  # dropping a day total loses no coin


def test_state_json_round_trip() -> None:
    state = UserState(5, 20, 15, None, {3: 10, 4: 5}, 9, {"s1": [15, 4]})
    assert state.to_json() == {"b": 5, "r": 20, "s": 15, "l": None, "d": [[3, 10], [4, 5]], "q": 9,
                               "st": {"s1": [15, 4]}, "f": None}
    assert UserState.from_json(state.to_json()) == state


def test_stream_totals_are_bounded_by_age_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.ledger.state as state_module

    state = UserState()
    state.add_stream_spend("old", 100, 5)
    state.add_stream_spend("new", 100 + state_module.STREAM_DAYS + 1, 7)  # "old" is now too old
    assert state.streams == {"new": [7, 131]}
    monkeypatch.setattr(state_module, "MAX_STREAMS", 2)
    state.add_stream_spend("a", 131, 1)
    state.add_stream_spend("b", 132, 1)  # the least recent ("a" and "new" on day 131: "a" first) goes
    assert set(state.streams) == {"new", "b"}


def test_from_json_refuses_broken_invariants() -> None:
    with pytest.raises(AssertionError):
        UserState.from_json({"b": 5, "r": 20, "s": 14, "l": None, "d": [], "q": 1})


_events = st.lists(st.one_of(
    st.builds(lambda c, d: recharge(c, ts=T0 + d * DAY), st.integers(1, 300_000), st.integers(0, 39)),
    st.builds(
        lambda g, q, c, d: gift(g, q, creator=c, ts=T0 + d * DAY),
        st.sampled_from([*CATALOG, "nope"]), st.integers(1, 20), st.sampled_from(["c1", "u1"]), st.integers(0, 39),
    ),
    st.builds(lambda v: limit(v), st.one_of(st.none(), st.integers(0, 300_000))),
), max_size=60)


@settings(max_examples=150, deadline=None, database=None)
@given(events=_events)
def test_invariants_hold_for_any_sequence(econ: Economics, events: list) -> None:
    """balance >= 0, recharged == balance + spent, and each outcome agrees with a model
    written here from the contract (40 days at most, so no day total is dropped)."""
    state = UserState()
    balance = recharged = 0
    day_spend: dict[int, int] = {}
    own: int | None = None
    for ev in events:
        outcome, credit = pair(apply_user_event(state, ev, econ, BOOK))
        if isinstance(ev, Recharge):
            balance += ev.coins
            recharged += ev.coins
        elif isinstance(ev, SpendLimit):
            own = ev.daily_coin_limit
        else:
            price = CATALOG.get(ev.gift_id)
            coins = None if price is None else price * ev.quantity
            day = ev.ts // DAY
            lim = PLATFORM_LIMIT if own is None else min(PLATFORM_LIMIT, own)
            if coins is None:
                reason = "unknown_gift"
            elif ev.creator_id == ev.sender_id:
                reason = "self_gift"
            elif coins > balance:
                reason = "insufficient_coins"
            elif day_spend.get(day, 0) + coins > lim:
                reason = "spend_limit_exceeded"
            else:
                reason = None
                balance -= coins
                day_spend[day] = day_spend.get(day, 0) + coins
            assert outcome.reason == reason
            assert (credit is None) == (reason is not None)
            if credit is not None:
                assert credit.diamonds == coins // 2
        assert state.balance == balance >= 0
        assert state.recharged == recharged == state.balance + state.spent
        assert state.day_spend == day_spend


def test_gift_on_a_forgotten_day_is_refused(econ: Economics) -> None:
    """Day totals are bounded to MAX_SPEND_DAYS per user: a gift dated before all of
    them has an unknown day total, so it fails safe (it cannot evade the limit)."""
    day = T0 // DAY
    later = {day + 1 + i: 1 for i in range(MAX_SPEND_DAYS)}
    state = user(10**6, day_spend=later)
    assert_rejected(state, gift("rose", ts=T0), econ, "spend_limit_exceeded")
    assert state.day_spend == later
    newest_day = user(10**6, day_spend=later)
    assert_accepted(newest_day, gift("rose", ts=(day + 1) * DAY), econ)  # a kept day: fine


# --- monthly budgets -------------------------------------------------------------------

OCT_31_LAST_MS = 1_730_419_199_999  # 2024-10-31T23:59:59.999Z
NOV_1 = OCT_31_LAST_MS + 1


def budget(value: int | None, ts: int = T0) -> SpendLimit:
    """A spend-limits record with only `monthly_coin_limit` (the daily limit absent)."""
    return SpendLimit(_eid(), "u1", None, ts, value, sets_daily=False, sets_monthly=True)


def test_a_monthly_budget_caps_the_month_and_is_checked_after_the_daily_limit(econ: Economics) -> None:
    state = user(10_000)
    apply_spend_limit(state, budget(1_000))
    assert apply_gift(state, gift("rose", 900), econ).outcome.status == "accepted"
    assert apply_gift(state, gift("rose", 100), econ).outcome.status == "accepted"  # exactly the budget
    assert_rejected(state, gift("rose", 1), econ, "monthly_limit_exceeded")
    apply_spend_limit(state, limit(500))  # both exceeded: the daily limit is checked first
    assert_rejected(state, gift("rose", 600), econ, "spend_limit_exceeded")
    assert state.month_spend == {utc_month(T0): 1_000} and state.own_limit == 500


def test_a_month_ends_at_its_last_millisecond_utc(econ: Economics) -> None:
    state = user(10_000)
    apply_spend_limit(state, budget(100, ts=OCT_31_LAST_MS - DAY))
    assert apply_gift(state, gift("rose", 100, ts=OCT_31_LAST_MS), econ).outcome.status == "accepted"
    assert_rejected(state, gift("rose", 1, ts=OCT_31_LAST_MS), econ, "monthly_limit_exceeded")
    assert apply_gift(state, gift("rose", 100, ts=NOV_1), econ).outcome.status == "accepted"  # a new month
    assert state.month_spend == {utc_month(OCT_31_LAST_MS): 100, utc_month(NOV_1): 100}
    assert utc_month(NOV_1) == utc_month(OCT_31_LAST_MS) + 1


def test_a_budget_set_mid_month_counts_what_the_month_already_spent(econ: Economics) -> None:
    state = user(10_000)
    assert apply_gift(state, gift("rose", 800), econ).outcome.status == "accepted"  # no budget yet
    apply_spend_limit(state, budget(1_000))
    assert_rejected(state, gift("rose", 300), econ, "monthly_limit_exceeded")
    assert apply_gift(state, gift("rose", 200), econ).outcome.status == "accepted"
    apply_spend_limit(state, budget(None))  # cleared
    assert apply_gift(state, gift("rose", 5_000), econ).outcome.status == "accepted"


def test_an_absent_field_leaves_its_limit_as_it_was() -> None:
    state = user(0, own_limit=300)
    apply_spend_limit(state, budget(2_000))
    assert (state.own_limit, state.own_monthly) == (300, 2_000)
    apply_spend_limit(state, limit(None))  # daily only: cleared, the monthly budget kept
    assert (state.own_limit, state.own_monthly) == (None, 2_000)


def test_the_platform_monthly_budget_and_the_smaller_one_applies(econ: Economics) -> None:
    capped = dataclasses.replace(econ, platform_monthly_coin_limit=700)
    state = user(10_000)
    assert_rejected(state, gift("rose", 701), capped, "monthly_limit_exceeded")
    apply_spend_limit(state, budget(5_000))  # the user's own is larger: the platform's stands
    assert_rejected(state, gift("rose", 701), capped, "monthly_limit_exceeded")
    apply_spend_limit(state, budget(300))
    assert_rejected(state, gift("rose", 301), capped, "monthly_limit_exceeded")
    assert apply_gift(state, gift("rose", 300), capped).outcome.status == "accepted"


def test_month_totals_are_bounded_and_a_forgotten_month_fails_safe(econ: Economics) -> None:
    state = user(10_000)
    months = [T0 + i * 31 * DAY for i in range(MAX_SPEND_MONTHS + 1)]
    for ts in months:
        assert apply_gift(state, gift("rose", 10, ts=ts), econ).outcome.status == "accepted"
    assert len(state.month_spend) == MAX_SPEND_MONTHS and utc_month(months[0]) not in state.month_spend
    apply_spend_limit(state, budget(1_000_000, ts=months[-1]))
    # A gift dated in the forgotten month: its month's spend is unknown, so it is refused.
    assert_rejected(state, gift("rose", 1, ts=months[0]), econ, "monthly_limit_exceeded")


def test_spend_limits_on_the_wire_set_what_they_carry() -> None:
    from agents.ingest.decode import decode
    from pipeline.engine.stage import Malformed

    def wire(**fields: object) -> object:
        value = {"event_id": "l1", "user_id": "u1", "ts": T0, **fields}
        return decode("spend-limits", b"u1", json.dumps(value).encode())

    assert wire(monthly_coin_limit=7) == SpendLimit("l1", "u1", None, T0, 7, sets_daily=False, sets_monthly=True)
    assert wire(daily_coin_limit=None) == SpendLimit("l1", "u1", None, T0, None, sets_daily=True, sets_monthly=False)
    both = wire(daily_coin_limit=5, monthly_coin_limit=None)
    assert both == SpendLimit("l1", "u1", 5, T0, None, sets_daily=True, sets_monthly=True)
    neither = wire()
    assert isinstance(neither, Malformed) and "at least one of" in neither.error
    assert isinstance(wire(monthly_coin_limit=10**9 + 1), Malformed)
