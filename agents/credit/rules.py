"""The creator-side rules: crediting gift diamonds and paying out.

Like the user rules, each function applies its decision to the given state in place
and asserts the invariants; the engine supplies a per-batch copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.credit.state import MAX_DAYS, CreatorState
from agents.ingest.records import Payout
from agents.outcomes import Outcome
from pipeline.economics import Economics


@dataclass(frozen=True, slots=True)
class CreditBatch:
    """The diamonds of one or more accepted gifts to one creator, combined before the
    repartition so a hot creator costs one record per batch, not one per gift."""

    creator_id: str
    diamonds: int
    coins: int
    gifts: int
    ts: int  # newest gift's event time
    by_day: dict[int, int]  # UTC day -> diamonds

    def __post_init__(self) -> None:
        assert self.gifts > 0 and 0 <= self.diamonds <= self.coins
        assert sum(self.by_day.values()) == self.diamonds


def apply_credit(state: CreatorState, credit: CreditBatch) -> None:
    state.available += credit.diamonds
    state.lifetime += credit.diamonds
    for day, diamonds in credit.by_day.items():
        state.day_diamonds[day] = state.day_diamonds.get(day, 0) + diamonds
    while len(state.day_diamonds) > MAX_DAYS:
        del state.day_diamonds[min(state.day_diamonds)]
    state.seq += 1
    state.check()


def payout_rejection(state: CreatorState, ev: Payout, econ: Economics) -> str | None:
    if ev.diamonds < econ.min_payout_diamonds:
        return "below_min_payout"
    if ev.diamonds > state.available:
        return "insufficient_diamonds"
    return None


def apply_payout(state: CreatorState, ev: Payout, econ: Economics) -> Outcome:
    reason = payout_rejection(state, ev, econ)
    if reason is not None:
        return Outcome(ev.event_id, "payout", "rejected", reason, ev.creator_id, None, ev.diamonds, None, state.available, ev.ts)
    before = state.available
    state.available -= ev.diamonds
    state.paid_out += ev.diamonds
    state.seq += 1
    state.check()
    assert state.available == before - ev.diamonds
    cents = econ.payout_cents(ev.diamonds)
    return Outcome(ev.event_id, "payout", "accepted", None, ev.creator_id, None, ev.diamonds, cents, state.available, ev.ts)


def duplicate_payout(state: CreatorState, ev: Payout) -> Outcome:
    return Outcome(ev.event_id, "payout", "duplicate", None, ev.creator_id, None, ev.diamonds, None, state.available, ev.ts)
