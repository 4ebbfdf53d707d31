"""Typed, validated input events: once decoded, every field is known to be in range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EventType = Literal["recharge", "gift", "payout", "spend_limit"]


@dataclass(frozen=True, slots=True)
class Recharge:
    event_id: str
    user_id: str
    coins: int
    amount_cents: int
    currency: str
    ts: int

    type = "recharge"

    @property
    def key(self) -> str:
        return self.user_id


@dataclass(frozen=True, slots=True)
class Gift:
    event_id: str
    sender_id: str
    creator_id: str
    stream_id: str
    gift_id: str
    quantity: int
    ts: int

    type = "gift"

    @property
    def key(self) -> str:
        return self.sender_id


@dataclass(frozen=True, slots=True)
class Payout:
    event_id: str
    creator_id: str
    diamonds: int
    ts: int

    type = "payout"

    @property
    def key(self) -> str:
        return self.creator_id


@dataclass(frozen=True, slots=True)
class SpendLimit:
    """Sets or clears (None) the user's own daily and monthly limits; a limit whose
    field was absent on the wire is left as it was (`sets_daily`, `sets_monthly`)."""

    event_id: str
    user_id: str
    daily_coin_limit: int | None
    ts: int
    monthly_coin_limit: int | None = None
    sets_daily: bool = True
    sets_monthly: bool = False

    type = "spend_limit"

    @property
    def key(self) -> str:
        return self.user_id


Event = Recharge | Gift | Payout | SpendLimit
UserEvent = Recharge | Gift | SpendLimit
