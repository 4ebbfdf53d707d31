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


@dataclass(frozen=True, slots=True)
class Promotion:
    """A version of a promotion, in force for recharges dated from `ts` on (until a later
    record of its promo_id is in force). Decoded: ends_ts > starts_ts, packages distinct."""

    promo_id: str
    starts_ts: int
    ends_ts: int
    bonus_percent: int
    packages: frozenset[int]
    max_per_user: int
    ts: int

    @property
    def key(self) -> str:
        return self.promo_id

    def to_json(self) -> dict[str, object]:
        return {"promo_id": self.promo_id, "starts_ts": self.starts_ts, "ends_ts": self.ends_ts,
                "bonus_percent": self.bonus_percent, "packages": sorted(self.packages),
                "max_per_user": self.max_per_user, "ts": self.ts}


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A promotion's tombstone: no promotion of that id for recharges from `ts` on, the
    record's Kafka timestamp (a tombstone has no value to carry one)."""

    promo_id: str
    ts: int

    @property
    def key(self) -> str:
        return self.promo_id


Event = Recharge | Gift | Payout | SpendLimit
UserEvent = Recharge | Gift | SpendLimit
