"""bonus_farming: many new accounts, each draining a promotion's bonus into one creator.

A promotion pays coins that no payment is behind (a first-recharge bonus of 100 %
doubles the smallest package): one person with many fresh accounts recharges each
once, takes the bonus, and gifts everything to a creator they control, who cashes the
diamonds out. No single account looks like anything (a few hundred coins), and the
creator's gifts come from too many senders for payout_concentration.

The user ledger marks an accepted gift as *farmed* when its sender's first event is
under `new_sender_ms` old, the sender has received bonus coins, and the gift leaves it
at most (100 - spent_percent) % of all it ever had (recharged + bonus): a new account
that took a bonus and drained it. The creator ledger keeps, per creator, the latest
farmed gift of each sender in the last `window_ms` of event time, and alerts once per
window when `accounts` distinct senders are in it.

Bounded: at most MAX_COUNT senders per creator (the oldest go first), so a count is
never over the truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agents.fraud.alerts import Alert, alert
from agents.fraud.thresholds import MAX_COUNT, BonusFarming
from pipeline.invariants import require

Farmed = tuple[str, int, str]  # (sender, gift ts, event id)


def drained(balance: int, recharged: int, bonus: int, first_ts: int | None, ts: int, rule: BonusFarming) -> bool:
    """Whether an accepted gift at `ts` leaving the sender `balance` is a farmed one."""
    return (bonus > 0 and first_ts is not None and ts - first_ts < rule.new_sender_ms
            and balance * 100 <= (100 - rule.spent_percent) * (recharged + bonus))


@dataclass(slots=True)
class Farmers:
    senders: dict[str, list[Any]] = field(default_factory=dict)  # sender -> [gift ts, event id]
    quiet_until: int = 0  # one alert per creator and window

    def __bool__(self) -> bool:
        return bool(self.senders) or self.quiet_until > 0

    def to_json(self) -> list[Any]:
        return [self.senders, self.quiet_until]

    @classmethod
    def from_json(cls, data: list[Any] | None) -> Farmers:
        return cls() if data is None else cls(dict(data[0]), data[1])

    def check(self) -> None:
        require(len(self.senders) <= MAX_COUNT, "farming senders <= MAX_COUNT")


def observe(farmers: Farmers, creator_id: str, farmed: Iterable[Farmed], rule: BonusFarming) -> Alert | None:
    """Add a credit's farmed gifts; the alert if `accounts` senders are now within a
    window ending at the newest of them."""
    added = sorted(farmed, key=lambda f: (f[1], f[0]))
    if not added:
        return None
    for sender, ts, event_id in added:
        known = farmers.senders.get(sender)
        if known is None or known[0] < ts:
            farmers.senders[sender] = [ts, event_id]
    newest = max(ts for ts, _ in farmers.senders.values())
    for sender in [s for s, (ts, _) in farmers.senders.items() if ts <= newest - rule.window_ms]:
        del farmers.senders[sender]
    while len(farmers.senders) > MAX_COUNT:
        del farmers.senders[min(farmers.senders, key=lambda s: (farmers.senders[s][0], s))]
    farmers.check()
    if len(farmers.senders) < rule.accounts or newest < farmers.quiet_until:
        return None
    farmers.quiet_until = newest + rule.window_ms
    ordered = sorted(farmers.senders.items(), key=lambda kv: (kv[1][0], kv[0]))
    trigger = max(ordered, key=lambda kv: (kv[1][0], kv[0]))[1][1]
    return alert("bonus_farming", rule.severity, "creator", creator_id, newest - rule.window_ms,
                 [eid for _, (_, eid) in ordered], trigger, newest, accounts=len(ordered),
                 senders=[s for s, _ in ordered][:100], window_ms=rule.window_ms)
