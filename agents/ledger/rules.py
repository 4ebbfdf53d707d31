"""The user-side processing rules of the contract, as functions of (state, event).

Each function decides, applies the decision to the given state in place and returns
the outcome; the caller owns isolation (the engine works on values decoded from the
store for the batch, so an aborted transaction leaves committed state untouched). No I/O here: these are tested
without Kafka, and the invariants are asserted after every change.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.fraud import farming
from agents.ingest.records import Gift, Recharge, SpendLimit, UserEvent
from agents.ledger.promotions import PromotionBook
from agents.ledger.state import MAX_PROMOS, UserState, utc_day, utc_month
from agents.outcomes import LevelUp, Outcome
from pipeline.economics import DAY_MS, Economics
from pipeline.invariants import require


@dataclass(frozen=True, slots=True)
class Credit:
    """Diamonds an accepted gift owes its creator (applied after repartition)."""

    creator_id: str
    stream_id: str
    sender_id: str
    coins: int
    diamonds: int
    ts: int
    event_id: str = ""
    sender_first_ts: int | None = None  # the sender's first event (payout_concentration)
    farmed: bool = False  # a new sender drained of its bonus (bonus_farming)


INVALID_TS = "invalid_ts"


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """When an event is in time (CONTRACT.md, Economics): at most `ahead_ms` past the
    deciding worker's clock, so no one dates a gift into a fresh day's limit, and at
    most `behind_ms` before it, since its event id is remembered only that long."""

    ahead_ms: int
    behind_ms: int

    def __post_init__(self) -> None:
        require(self.ahead_ms >= 0, "clock skew allowance is not negative")
        require(self.ahead_ms <= DAY_MS, "clock skew allowance is within a day")
        require(self.behind_ms >= DAY_MS, "the past bound covers at least the duplicate window")

    def admits(self, ts: int, now_ms: float) -> bool:
        return now_ms - self.behind_ms <= ts <= now_ms + self.ahead_ms


def out_of_time(state: UserState, ev: UserEvent, econ: Economics) -> Outcome:
    """`invalid_ts`, checked before everything (duplicates included): nothing changes."""
    if isinstance(ev, Recharge):
        return Outcome(
            event_id=ev.event_id, type="recharge", status="rejected", reason=INVALID_TS, subject_id=ev.user_id,
            coins=ev.coins, diamonds=None, usd_cents=None, balance_after=state.balance, ts=ev.ts,
        )
    if isinstance(ev, Gift):
        return Outcome(
            event_id=ev.event_id, type="gift", status="rejected", reason=INVALID_TS, subject_id=ev.sender_id,
            coins=gift_coins(ev, econ), diamonds=None, usd_cents=None, balance_after=state.balance, ts=ev.ts,
        )
    return Outcome(
        event_id=ev.event_id, type="spend_limit", status="rejected", reason=INVALID_TS, subject_id=ev.user_id,
        coins=None, diamonds=None, usd_cents=None, balance_after=None, ts=ev.ts,
    )


def effective_limit(state: UserState, econ: Economics) -> int:
    limit = econ.platform_daily_coin_limit
    return limit if state.own_limit is None else min(limit, state.own_limit)


def monthly_budget(state: UserState, econ: Economics) -> int | None:
    """The smaller of the platform's and the user's own monthly budget (None: neither)."""
    budgets = [b for b in (econ.platform_monthly_coin_limit, state.own_monthly) if b is not None]
    return min(budgets) if budgets else None


def apply_recharge(state: UserState, ev: Recharge, book: PromotionBook) -> Outcome:
    """Coins plus the bonus of the best promotion in force at the recharge's ts."""
    if len(state.promos) >= MAX_PROMOS:  # make room: forget what can never qualify again
        state.promos = {p: n for p, n in state.promos.items() if book.known(p)}
    bonus = book.best(ev.coins, ev.ts, state.promos)
    if bonus is not None and bonus.promo_id not in state.promos and len(state.promos) >= MAX_PROMOS:
        bonus = None  # its count could not be kept: no bonus rather than an unbounded one
    before = state.balance
    state.balance += ev.coins
    state.recharged += ev.coins
    if bonus is not None:
        require(bonus.coins >= 0, "a bonus is not negative")
        require(bonus.coins <= ev.coins, "a bonus is at most 100 % of the coins")
        state.balance += bonus.coins
        state.bonus += bonus.coins
        state.promos[bonus.promo_id] = state.promos.get(bonus.promo_id, 0) + 1
    state.check()
    bonus_coins = 0 if bonus is None else bonus.coins
    require(state.balance == before + ev.coins + bonus_coins, "balance += coins + bonus")
    return Outcome(
        event_id=ev.event_id, type="recharge", status="accepted", reason=None, subject_id=ev.user_id, coins=ev.coins,
        diamonds=None, usd_cents=None, balance_after=state.balance, ts=ev.ts, bonus_coins=bonus_coins,
        promo_id=None if bonus is None else bonus.promo_id,
    )


def gift_coins(ev: Gift, econ: Economics) -> int | None:
    price = econ.gifts.get(ev.gift_id)
    return None if price is None else price * ev.quantity


def gift_rejection(state: UserState, ev: Gift, econ: Economics) -> str | None:
    """The first failing check, in the contract's order, or None to accept."""
    coins = gift_coins(ev, econ)
    if coins is None:
        return "unknown_gift"
    if ev.sender_id == ev.creator_id:
        return "self_gift"
    if coins > state.balance:
        return "insufficient_coins"
    day = utc_day(ev.ts)
    if state.day_total_forgotten(day):
        return "spend_limit_exceeded"  # that day's spend is no longer known: fail safe
    if state.day_spend.get(day, 0) + coins > effective_limit(state, econ):
        return "spend_limit_exceeded"
    budget = monthly_budget(state, econ)
    if budget is not None:
        month = utc_month(ev.ts)
        if state.month_total_forgotten(month):
            return "monthly_limit_exceeded"  # that month's spend is no longer known: fail safe
        if state.month_spend.get(month, 0) + coins > budget:
            return "monthly_limit_exceeded"
    return None


@dataclass(frozen=True, slots=True)
class Decided:
    """What applying one user event decided: its outcome, the credit an accepted gift
    owes its creator, and the level-up it gave its sender."""

    outcome: Outcome
    credit: Credit | None = None
    level_up: LevelUp | None = None


def apply_gift(state: UserState, ev: Gift, econ: Economics) -> Decided:
    coins = gift_coins(ev, econ)
    reason = gift_rejection(state, ev, econ)
    if reason is not None:
        outcome = Outcome(
            event_id=ev.event_id, type="gift", status="rejected", reason=reason, subject_id=ev.sender_id,
            coins=coins, diamonds=None, usd_cents=None, balance_after=state.balance, ts=ev.ts,
        )
        return Decided(outcome)
    assert coins is not None  # narrowing; python -O is refused
    require(coins > 0, 'coins > 0')
    diamonds = econ.creator_diamonds(coins)
    require(diamonds >= 0, 'diamonds >= 0')
    require(diamonds <= coins, 'diamonds <= coins')  # the fee, coins - diamonds, is never negative
    before = state.balance
    level = econ.gifter_level(state.spent)
    state.balance -= coins
    state.spent += coins
    state.add_day_spend(utc_day(ev.ts), coins)
    month = utc_month(ev.ts)
    if not state.month_total_forgotten(month):  # forgotten only while no budget applies
        state.add_month_spend(month, coins)
    state.add_stream_spend(ev.stream_id, utc_day(ev.ts), coins)
    state.check()
    require(state.balance == before - coins, 'state.balance == before - coins')
    outcome = Outcome(
        event_id=ev.event_id, type="gift", status="accepted", reason=None, subject_id=ev.sender_id, coins=coins,
        diamonds=diamonds, usd_cents=None, balance_after=state.balance, ts=ev.ts,
    )
    farmed = farming.drained(state.balance, state.recharged, state.bonus, state.first_ts, ev.ts,
                             econ.fraud.bonus_farming)
    credit = Credit(ev.creator_id, ev.stream_id, ev.sender_id, coins, diamonds, ev.ts, ev.event_id, state.first_ts,
                    farmed)
    new_level = econ.gifter_level(state.spent)
    require(new_level >= level, "a gifter level never goes down")
    level_up = LevelUp(ev.sender_id, new_level, level, ev.event_id, ev.ts) if new_level > level else None
    return Decided(outcome, credit, level_up)


def apply_spend_limit(state: UserState, ev: SpendLimit) -> Outcome:
    if ev.sets_daily:
        state.own_limit = ev.daily_coin_limit
    if ev.sets_monthly:
        state.own_monthly = ev.monthly_coin_limit
    state.check()
    return Outcome(
        event_id=ev.event_id, type="spend_limit", status="accepted", reason=None, subject_id=ev.user_id, coins=None,
        diamonds=None, usd_cents=None, balance_after=None, ts=ev.ts,
    )


def duplicate_outcome(state: UserState, ev: UserEvent, econ: Economics) -> Outcome:
    """A repeated event_id: no effect; the record still says what the event was."""
    if isinstance(ev, Recharge):
        return Outcome(
            event_id=ev.event_id, type="recharge", status="duplicate", reason=None, subject_id=ev.user_id,
            coins=ev.coins, diamonds=None, usd_cents=None, balance_after=state.balance, ts=ev.ts,
        )
    if isinstance(ev, Gift):
        coins = gift_coins(ev, econ)
        return Outcome(
            event_id=ev.event_id, type="gift", status="duplicate", reason=None, subject_id=ev.sender_id, coins=coins,
            diamonds=None, usd_cents=None, balance_after=state.balance, ts=ev.ts,
        )
    return Outcome(
        event_id=ev.event_id, type="spend_limit", status="duplicate", reason=None, subject_id=ev.user_id, coins=None,
        diamonds=None, usd_cents=None, balance_after=None, ts=ev.ts,
    )


def apply_user_event(state: UserState, ev: UserEvent, econ: Economics, book: PromotionBook) -> Decided:
    state.note_event(ev.ts)
    if isinstance(ev, Gift):
        return apply_gift(state, ev, econ)
    if isinstance(ev, Recharge):
        return Decided(apply_recharge(state, ev, book))
    return Decided(apply_spend_limit(state, ev))
