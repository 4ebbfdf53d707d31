"""gift_loop's meeting point: the legs of both directions of a pair of accounts,
kept at the smaller account's key in the creator ledger's partition for it.

A leg (agents/fraud/sender.py) is the fewest latest gifts one way that reach the
threshold; the pair loops when a leg each way fits in one window. Processed in event
time order that is exact: the latest legs are the most compact ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.fraud.alerts import Alert, alert
from agents.fraud.sender import Leg
from agents.fraud.thresholds import GiftLoop
from pipeline.invariants import require

# Partners kept per account, the least recent leg going first: a popular creator has
# many heavy fans, and a loop with one of them is missed only if 256 others sent a leg
# since (documented in docs/design.md).
MAX_PARTNERS = 256


def parse_leg(op: dict[str, Any]) -> Leg:
    return Leg(op["a"], op["b"], op["s"], op["t"], op["c"], tuple(op["ids"]))


@dataclass(slots=True)
class Pairs:
    """Of one account (the smaller of each pair): partner -> [leg from the account or
    None, leg to it or None, quiet until (event time)], legs as ops."""

    partners: dict[str, list[Any]] = field(default_factory=dict)
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"p": self.partners, "q": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pairs:
        return cls(data["p"], data["q"])

    def check(self) -> None:
        require(len(self.partners) <= MAX_PARTNERS, 'len(self.partners) <= MAX_PARTNERS')


def meet(pairs: Pairs, leg: Leg, rules: GiftLoop) -> list[Alert]:
    """Record a leg; the alerts (one per account) if the other way has a leg within one
    window of it. One alert per pair and window: the legs are then cleared and legs
    that start inside the alerted window are ignored."""
    me = leg.meeting_key
    partner = leg.recipient if leg.sender == me else leg.sender
    require(partner != me, "a self gift is rejected and never a leg")
    way = 0 if leg.sender == me else 1
    _prune(pairs, leg.end, rules, room_for=partner)
    entry = pairs.partners.setdefault(partner, [None, None, 0])
    if leg.start < entry[2]:
        return []
    entry[way] = leg.to_op()
    other = entry[1 - way]
    if other is None:
        return []
    back = parse_leg(other)
    start, end = min(leg.start, back.start), max(leg.end, back.end)
    if end - start >= rules.window_ms:
        return []
    entry[:] = [None, None, start + rules.window_ms]
    ids = list(back.event_ids + leg.event_ids)
    figures = {"accounts": sorted([leg.sender, leg.recipient]), "window_end": end,
               "legs": [{"from": x.sender, "to": x.recipient, "coins": x.coins, "start": x.start, "end": x.end}
                        for x in (back, leg)]}
    trigger = leg.event_ids[-1] if leg.end >= back.end else back.event_ids[-1]
    return [alert("gift_loop", rules.severity, "user", who, start, ids, trigger, end, **figures)
            for who in sorted((leg.sender, leg.recipient))]


def _prune(pairs: Pairs, now: int, rules: GiftLoop, room_for: str) -> None:
    """Forget legs older than the window, and make room for `room_for`."""
    def newest(entry: list[Any]) -> int:
        times: list[int] = [-1] + [leg["t"] for leg in entry[:2] if leg is not None] + [entry[2] - rules.window_ms]
        return max(times)

    for partner, entry in list(pairs.partners.items()):
        for way in (0, 1):
            if entry[way] is not None and entry[way]["t"] <= now - rules.window_ms:
                entry[way] = None
        if entry[0] is None and entry[1] is None and entry[2] <= now:
            del pairs.partners[partner]
    while len(pairs.partners) >= MAX_PARTNERS and room_for not in pairs.partners:
        del pairs.partners[min(pairs.partners, key=lambda k: (newest(pairs.partners[k]), k))]
