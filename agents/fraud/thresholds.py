"""Thresholds of the fraud rules, with the fraud issue's defaults.

Read from the `[fraud.<rule>]` tables of the economics file (PIPELINE_ECONOMICS_FILE);
a missing table or key keeps its default, an unknown or out-of-range one stops start-up
with the key named. Windows are event time, in milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.settings import ConfigError

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
SEVERITIES = ("low", "medium", "high")
# Largest count threshold: a window keeps at most that many events per subject.
MAX_COUNT = 1_000


@dataclass(frozen=True)
class GiftVelocity:
    """A sender's accepted gifts reach `gifts` gifts or `coins` coins within any window."""

    window_ms: int = MINUTE_MS
    gifts: int = 50
    coins: int = 20_000
    severity: str = "medium"


@dataclass(frozen=True)
class RechargeBurn:
    """Within `window_ms` of its first recharge an account spends at least
    `spent_percent` % of what it recharged, and at least `min_coins`, on at most
    `max_creators` creators (the stolen-card pattern)."""

    window_ms: int = 10 * MINUTE_MS
    spent_percent: int = 90
    min_coins: int = 5_000
    max_creators: int = 2
    severity: str = "high"


@dataclass(frozen=True)
class GiftLoop:
    """Two accounts gift each other at least `min_coins` each way within `window_ms`."""

    window_ms: int = DAY_MS
    min_coins: int = 1_000
    severity: str = "medium"


@dataclass(frozen=True)
class PayoutConcentration:
    """A payout of at least `min_diamonds` where at least `percent` % of the creator's
    diamonds of the last `window_ms` came from at most `max_senders` senders whose first
    event is under `new_sender_ms` old."""

    min_diamonds: int = 10_000
    window_ms: int = DAY_MS  # whole hours: counted in the creator's hourly windows
    percent: int = 80
    max_senders: int = 3
    new_sender_ms: int = DAY_MS
    severity: str = "high"


@dataclass(frozen=True)
class RejectionProbe:
    """`rejections` or more rejected gifts from one sender within `window_ms`."""

    window_ms: int = MINUTE_MS
    rejections: int = 20
    severity: str = "low"


@dataclass(frozen=True)
class BonusFarming:
    """At least `accounts` distinct senders, each new (first event under
    `new_sender_ms` old) and drained of a promotion's bonus (a gift leaving it at most
    100 - `spent_percent` % of its coins recharged plus bonus), gave one creator within
    `window_ms` (agents/fraud/farming.py)."""

    window_ms: int = HOUR_MS
    accounts: int = 10
    spent_percent: int = 90
    new_sender_ms: int = DAY_MS
    severity: str = "high"


@dataclass(frozen=True)
class FraudRules:
    gift_velocity: GiftVelocity = GiftVelocity()
    recharge_burn: RechargeBurn = RechargeBurn()
    gift_loop: GiftLoop = GiftLoop()
    payout_concentration: PayoutConcentration = PayoutConcentration()
    rejection_probe: RejectionProbe = RejectionProbe()
    bonus_farming: BonusFarming = BonusFarming()


RULES = tuple(f.name for f in dataclasses.fields(FraudRules))
# (low, high) of every integer key; counts are bounded so a window's state is bounded.
_RANGES: dict[str, tuple[int, int]] = {
    "window_ms": (1_000, 2 * DAY_MS), "gifts": (1, MAX_COUNT), "rejections": (1, MAX_COUNT),
    "coins": (1, 10**12), "min_coins": (1, 10**12), "min_diamonds": (1, 10**12),
    "spent_percent": (1, 100), "percent": (1, 100), "max_creators": (1, 100), "max_senders": (1, 20),
    "accounts": (1, MAX_COUNT),
    "new_sender_ms": (1_000, 30 * DAY_MS),
}
# The creator's hourly windows (agents/credit/state.py) keep 48 hours.
_CONCENTRATION_MAX_WINDOW_MS = 47 * HOUR_MS


def parse(data: Mapping[str, Any] | None, source: str) -> FraudRules:
    """`data`: the `[fraud]` table (None: every default)."""
    if data is None:
        return FraudRules()
    if not isinstance(data, dict) or set(data) - set(RULES):
        raise ConfigError(f"{source}: [fraud] may hold only the tables {list(RULES)}")
    defaults = FraudRules()
    rules: dict[str, Any] = {}
    for name in RULES:
        default = getattr(defaults, name)
        table = data.get(name, {})
        known = {f.name for f in dataclasses.fields(default)}
        if not isinstance(table, dict) or set(table) - known:
            raise ConfigError(f"{source}: [fraud.{name}] may hold only {sorted(known)}")
        for key, value in table.items():
            where = f"{source}: `fraud.{name}.{key}` = {value!r}"
            if key == "severity":
                if value not in SEVERITIES:
                    raise ConfigError(f"{where}; it must be one of {list(SEVERITIES)}")
                continue
            lo, hi = _RANGES[key]
            if type(value) is not int or not lo <= value <= hi:
                raise ConfigError(f"{where}; it must be an integer from {lo} to {hi}")
        rules[name] = dataclasses.replace(default, **table)
    concentration = rules["payout_concentration"]
    if concentration.window_ms % HOUR_MS or concentration.window_ms > _CONCENTRATION_MAX_WINDOW_MS:
        raise ConfigError(f"{source}: `fraud.payout_concentration.window_ms` must be whole hours, at most 47 "
                          f"(3600000 to {_CONCENTRATION_MAX_WINDOW_MS})")
    return FraudRules(**rules)
