"""The gift economy (catalog, creator share, payout rules, limits) as one validated value.

Loaded from `economics.toml` shipped beside this module, or from the file named by
PIPELINE_ECONOMICS_FILE. A bad value stops start-up with a message naming the key: a
mistyped price must never reach a ledger that moves money.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agents.fraud.thresholds import FraudRules
from agents.fraud.thresholds import parse as parse_fraud
from pipeline.settings import ConfigError

DEFAULT_FILE = Path(__file__).with_name("economics.toml")
MAX_GIFT_PRICE = 10_000_000
MAX_GIFTS = 1_000
DAY_MS = 86_400_000
# Lifetime coins spent on accepted gifts at which gifter levels 1, 2, ... begin.
DEFAULT_GIFTER_LEVELS = (1, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)
MAX_GIFTER_LEVELS = 100
_GIFT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class Economics:
    gifts: Mapping[str, int]
    recharge_packages: tuple[int, ...]
    creator_share_percent: int
    payout_millicents_per_diamond: int
    min_payout_diamonds: int
    platform_daily_coin_limit: int
    dedupe_window_days: int
    fraud: FraudRules = FraudRules()
    # Coins one user may spend on gifts per UTC calendar month, before the user's own
    # budget (None: no platform budget, the contract's default).
    platform_monthly_coin_limit: int | None = None
    gifter_levels: tuple[int, ...] = DEFAULT_GIFTER_LEVELS

    def gifter_level(self, spent: int) -> int:
        """The highest level whose threshold `spent` reaches (0 below the first)."""
        return bisect.bisect_right(self.gifter_levels, spent)

    def creator_diamonds(self, coins: int) -> int:
        """Diamonds credited for a gift of `coins`; the remainder is the platform fee."""
        return coins * self.creator_share_percent // 100

    def payout_cents(self, diamonds: int) -> int:
        return diamonds * self.payout_millicents_per_diamond // 1000

    @property
    def dedupe_keep_ms(self) -> int:
        """How long event ids are kept: the duplicate window plus a day of margin."""
        return (self.dedupe_window_days + 1) * DAY_MS


def _need_int(data: Mapping[str, Any], key: str, lo: int, hi: int, source: str) -> int:
    value = data.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise ConfigError(f"{source}: `{key}` = {value!r}; it must be an integer from {lo} to {hi}")
    return value


def parse(data: Mapping[str, Any], source: str = "economics") -> Economics:
    known = {
        "gifts", "recharge_packages", "creator_share_percent", "payout_millicents_per_diamond",
        "min_payout_diamonds", "platform_daily_coin_limit", "platform_monthly_coin_limit", "dedupe_window_days",
        "fraud", "gifter_levels",
    }
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; the keys are {sorted(known)}")
    gifts = data.get("gifts")
    if not isinstance(gifts, dict) or not 1 <= len(gifts) <= MAX_GIFTS:
        raise ConfigError(f"{source}: `gifts` must be a table of 1 to {MAX_GIFTS} gift_id = price entries")
    for gift_id, price in gifts.items():
        if not _GIFT_ID_RE.match(gift_id):
            raise ConfigError(f"{source}: gift id {gift_id!r} in `gifts` must match ^[A-Za-z0-9_.:-]{{1,64}}$")
        if type(price) is not int or not 1 <= price <= MAX_GIFT_PRICE:
            raise ConfigError(f"{source}: `gifts.{gift_id}` = {price!r}; "
                              f"a price is an integer from 1 to {MAX_GIFT_PRICE}")
    packages = data.get("recharge_packages")
    if (
        not isinstance(packages, list)
        or not packages
        or any(type(p) is not int or not 1 <= p <= 1_000_000 for p in packages)
    ):
        raise ConfigError(f"{source}: `recharge_packages` must be a non-empty list of integers from 1 to 1000000")
    levels = data.get("gifter_levels", list(DEFAULT_GIFTER_LEVELS))
    if (
        not isinstance(levels, list)
        or not 1 <= len(levels) <= MAX_GIFTER_LEVELS
        or any(type(t) is not int or not 1 <= t <= 10**15 for t in levels)
        or any(a >= b for a, b in zip(levels, levels[1:]))
    ):
        raise ConfigError(f"{source}: `gifter_levels` must be a list of 1 to {MAX_GIFTER_LEVELS} increasing integers "
                          "from 1 to 10^15 (the coins at which levels 1, 2, ... begin)")
    return Economics(
        gifts=MappingProxyType(dict(gifts)),
        recharge_packages=tuple(packages),
        creator_share_percent=_need_int(data, "creator_share_percent", 0, 100, source),
        payout_millicents_per_diamond=_need_int(data, "payout_millicents_per_diamond", 0, 1_000_000, source),
        min_payout_diamonds=_need_int(data, "min_payout_diamonds", 1, 10**12, source),
        platform_daily_coin_limit=_need_int(data, "platform_daily_coin_limit", 0, 10**12, source),
        dedupe_window_days=_need_int(data, "dedupe_window_days", 7, 365, source),
        fraud=parse_fraud(data.get("fraud"), source),
        platform_monthly_coin_limit=(None if "platform_monthly_coin_limit" not in data
                                     else _need_int(data, "platform_monthly_coin_limit", 0, 10**12, source)),
        gifter_levels=tuple(levels),
    )


def load(path: Path | None = None) -> Economics:
    path = path or DEFAULT_FILE
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"PIPELINE_ECONOMICS_FILE: cannot read {path} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"PIPELINE_ECONOMICS_FILE: {path} is not valid TOML ({exc})") from None
    return parse(data, str(path))
