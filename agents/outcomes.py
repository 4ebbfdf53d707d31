"""The `ledger-outcomes` record: one per well-formed input message (see CONTRACT.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipeline.engine.stage import Output
from pipeline.topics import BADGES, OUTCOMES

Status = Literal["accepted", "rejected", "duplicate"]

# Rejection reasons of the contract, in the order the checks run.
GIFT_REASONS = ("unknown_gift", "self_gift", "insufficient_coins", "spend_limit_exceeded", "monthly_limit_exceeded")
PAYOUT_REASONS = ("below_min_payout", "insufficient_diamonds")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """Built by name: ten fields, several of them optional ints, are too easy to shift."""

    event_id: str
    type: str
    status: Status
    reason: str | None
    subject_id: str
    coins: int | None
    diamonds: int | None
    usd_cents: int | None
    balance_after: int | None
    ts: int
    # An accepted recharge's bonus (0 without a promotion) and its promotion.
    bonus_coins: int | None = None
    promo_id: str | None = None


@dataclass(frozen=True, slots=True)
class LevelUp:
    """A gift raised its sender's gifter level: one `badges` record (CONTRACT.md)."""

    user_id: str
    level: int
    previous_level: int
    event_id: str
    ts: int

    def to_json(self) -> dict[str, Any]:
        return {"badge_id": f"gifter_level:{self.user_id}:{self.level}", "user_id": self.user_id,
                "badge": "gifter_level", "level": self.level, "previous_level": self.previous_level,
                "event_id": self.event_id, "ts": self.ts}


def publish_level_up(out: Output, level_up: LevelUp) -> None:
    out.effects.append(level_up)
    out.send(BADGES, level_up.user_id, level_up.to_json())


@dataclass(frozen=True, slots=True)
class Credited:
    """Diamonds credited to a creator by one batch (counted in metrics once committed)."""

    diamonds: int


def publish(out: Output, outcome: Outcome) -> None:
    """The outcome on `ledger-outcomes`, and counted in metrics once the batch commits."""
    out.effects.append(outcome)
    out.send(OUTCOMES, outcome.event_id, outcome)


def outcomes_of(effects: list[Any]) -> list[Outcome]:
    """The outcomes among a batch's effects (Output.effects), in order."""
    return [e for e in effects if type(e) is Outcome]


def credited_of(effects: list[Any]) -> int:
    """The diamonds a batch's effects credited."""
    return sum(e.diamonds for e in effects if type(e) is Credited)
