"""The creator-side rules: crediting gift diamonds and paying out.

Like the user rules, each function applies its decision to the given state in place
and asserts the invariants; the engine supplies the value as decoded for this batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.credit.state import MAX_DAYS, CreatorState
from agents.ingest.records import Payout
from agents.ledger.state import utc_day
from agents.outcomes import Outcome
from pipeline.economics import Economics
from pipeline.invariants import require


@dataclass(frozen=True, slots=True)
class CreditBatch:
    """The diamonds of one or more accepted gifts to one creator, combined before the
    repartition so a hot creator costs one record per batch, not one per gift; the
    diamonds are kept per event time so a payout can tell which came before it."""

    creator_id: str
    coins: int
    gifts: int
    items: tuple[tuple[int, int], ...]  # (event time, diamonds), by event time
    # (sender, first event ts, gift ts, diamonds, event id) of new senders, by sender and hour
    new_senders: tuple[tuple[Any, ...], ...] = ()
    farmed: tuple[tuple[str, int, str], ...] = ()  # (sender, gift ts, event id): bonus_farming

    def __post_init__(self) -> None:
        require(self.gifts > 0, 'self.gifts > 0')
        require(self.diamonds >= 0, 'self.diamonds >= 0')
        require(self.diamonds <= self.coins, 'self.diamonds <= self.coins')
        require(bool(self.items), "a credit batch has items")
        require(all(a[0] < b[0] for a, b in zip(self.items, self.items[1:])), "items in increasing order")
        require(all(d >= 0 for _, d in self.items), 'all(d >= 0 for _, d in self.items)')

    @property
    def diamonds(self) -> int:
        return sum(d for _, d in self.items)

    @property
    def ts(self) -> int:
        return self.items[-1][0]

    def by_day(self) -> dict[int, int]:
        days: dict[int, int] = {}
        for ts, diamonds in self.items:
            days[utc_day(ts)] = days.get(utc_day(ts), 0) + diamonds
        return days


def apply_credit(state: CreatorState, credit: CreditBatch, cycle: int, covered: int) -> None:
    """`cycle`: when the credit was read; `covered`: the latest covered cycle
    (agents/credit/progress.py). Each credit is remembered with its event time until a
    payout acknowledged before its gift can no longer come or wait, so that a payout
    dated before it does not count it."""
    state.available += credit.diamonds
    state.lifetime += credit.diamonds
    for day, diamonds in credit.by_day().items():
        state.day_diamonds[day] = state.day_diamonds.get(day, 0) + diamonds
        state.touched.add(("day", day))
    for ts, diamonds in credit.items:
        state.add_to_windows(ts, diamonds)
    while len(state.day_diamonds) > MAX_DAYS:
        del state.day_diamonds[min(state.day_diamonds)]
    for ts, d in credit.items:
        state.remember(ts, d, cycle)
    state.forget_recent(covered)
    state.check()


def payout_rejection(available: int, ev: Payout, econ: Economics) -> str | None:
    if ev.diamonds < econ.min_payout_diamonds:
        return "below_min_payout"
    if ev.diamonds > available:
        return "insufficient_diamonds"
    return None


# Not a contract reason: a payout the fraud rules hold (PIPELINE_HOLD_SUSPICIOUS_PAYOUTS),
# checked after the contract's reasons.
HELD = "held_for_review"


def apply_payout(state: CreatorState, ev: Payout, econ: Economics, hold: bool = False) -> Outcome:
    """Decided on the diamonds available at the payout's event time: credits of later
    gifts that are already in do not count. `hold`: the payout is suspicious; it is
    refused (its diamonds stay with the creator) unless a contract reason refuses it."""
    available = state.available_at(ev.ts)
    reason = payout_rejection(available, ev, econ) or (HELD if hold else None)
    if reason is not None:
        return Outcome(
            event_id=ev.event_id, type="payout", status="rejected", reason=reason, subject_id=ev.creator_id,
            coins=None, diamonds=ev.diamonds, usd_cents=None, balance_after=available, ts=ev.ts,
        )
    before = state.available
    state.available -= ev.diamonds
    state.paid_out += ev.diamonds
    state.check()
    require(state.available == before - ev.diamonds, 'state.available == before - ev.diamonds')
    cents = econ.payout_cents(ev.diamonds)
    return Outcome(
        event_id=ev.event_id, type="payout", status="accepted", reason=None, subject_id=ev.creator_id, coins=None,
        diamonds=ev.diamonds, usd_cents=cents, balance_after=available - ev.diamonds, ts=ev.ts,
    )


def refused_payout(state: CreatorState, ev: Payout, reason: str) -> Outcome:
    """Rejected before every other check (invalid_ts): nothing changes."""
    return Outcome(
        event_id=ev.event_id, type="payout", status="rejected", reason=reason, subject_id=ev.creator_id, coins=None,
        diamonds=ev.diamonds, usd_cents=None, balance_after=state.available, ts=ev.ts,
    )


def duplicate_payout(state: CreatorState, ev: Payout) -> Outcome:
    available = state.available_at(ev.ts)
    return Outcome(
        event_id=ev.event_id, type="payout", status="duplicate", reason=None, subject_id=ev.creator_id, coins=None,
        diamonds=ev.diamonds, usd_cents=None, balance_after=available, ts=ev.ts,
    )
