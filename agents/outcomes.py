"""The `ledger-outcomes` record: one per well-formed input message (see CONTRACT.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["accepted", "rejected", "duplicate"]

# Rejection reasons of the contract, in the order the checks run.
GIFT_REASONS = ("unknown_gift", "self_gift", "insufficient_coins", "spend_limit_exceeded")
PAYOUT_REASONS = ("below_min_payout", "insufficient_diamonds")


@dataclass(frozen=True, slots=True)
class Outcome:
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
