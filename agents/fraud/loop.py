"""gift_loop's meeting point: the legs of both directions of a pair of accounts,
kept at the smaller account's key in the creator ledger's partition for it.

A leg (agents/fraud/sender.py) is the fewest latest gifts one way that reach the
threshold; the pair loops when a leg each way fits in one window. Processed in event
time order that is exact: the latest legs are the most compact ones.

A loop of three (A -> B -> C -> A, no pair gifting both ways) is found in two hops:
its smallest account holds two of its legs, the path through it, and sends that path
(a `Closing`) to where the third leg meets; there the loop closes, whichever of the
path and the leg comes first.
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
# Loops of three: closings waiting at one meeting point for their third leg, and the
# triangles it alerted (quiet for a window); the oldest go first.
MAX_CLOSINGS = 64
# Paths one leg makes at the smallest account of a triangle, the most recent other legs
# first: a creator with many heavy fans who gifts one of them sends at most this many.
MAX_CLOSINGS_PER_LEG = 16


def parse_leg(op: dict[str, Any]) -> Leg:
    return Leg(op["a"], op["b"], op["s"], op["t"], op["c"], tuple(op["ids"]))


@dataclass(frozen=True, slots=True)
class Closing:
    """Two legs X -> A -> Y that met at A, the smallest of three accounts (a pair's legs
    meet at its smaller account, so A holds both). No single meeting point sees all three
    legs of a loop of three, so A sends this to the meeting point of {X, Y}: a leg
    Y -> X there, the three within one window, closes the loop."""

    into: Leg  # X -> A
    out: Leg  # A -> Y

    @property
    def needed(self) -> tuple[str, str]:
        """(sender, recipient) of the leg that closes the loop."""
        return self.out.recipient, self.into.sender

    @property
    def meeting_key(self) -> str:
        return min(self.needed)

    @property
    def ts(self) -> int:
        return max(self.into.end, self.out.end)

    def to_op(self) -> dict[str, Any]:
        return {"op": "t", "i": self.into.to_op(), "o": self.out.to_op()}


def parse_closing(op: dict[str, Any]) -> Closing:
    return Closing(parse_leg(op["i"]), parse_leg(op["o"]))


@dataclass(slots=True)
class Pairs:
    """Of one account (the smaller of each pair): partner -> [leg from the account or
    None, leg to it or None, quiet until (event time)], legs as ops; closings waiting for
    a leg of a pair met here ("sender>recipient" -> closing op), and the triangles
    alerted ("a|b|c" -> quiet until)."""

    partners: dict[str, list[Any]] = field(default_factory=dict)
    closings: dict[str, dict[str, Any]] = field(default_factory=dict)
    quiet: dict[str, int] = field(default_factory=dict)
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"p": self.partners, "c": self.closings, "z": self.quiet, "q": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pairs:
        pairs = cls(data["p"], data.get("c", {}), data.get("z", {}), data["q"])
        pairs.check()
        return pairs

    def check(self) -> None:
        require(len(self.partners) <= MAX_PARTNERS, "partners <= MAX_PARTNERS")
        require(len(self.closings) <= MAX_CLOSINGS, "waiting closings <= MAX_CLOSINGS")
        require(len(self.quiet) <= MAX_CLOSINGS, "quiet triangles <= MAX_CLOSINGS")


def meet(pairs: Pairs, leg: Leg, rules: GiftLoop) -> tuple[list[Alert], list[Closing]]:
    """Record a leg. Alerts (one per account) if the other way has a leg within one
    window of it, or if it closes a loop of three waiting here; and the closings to send
    where the leg is one side of a path through this account. One alert per pair and
    window: the legs are then cleared and legs that start inside the alerted window are
    ignored."""
    me = leg.meeting_key
    partner = leg.recipient if leg.sender == me else leg.sender
    require(partner != me, "a self gift is rejected and never a leg")
    way = 0 if leg.sender == me else 1
    _prune(pairs, leg.end, rules, room_for=partner)
    entry = pairs.partners.setdefault(partner, [None, None, 0])
    if leg.start < entry[2]:
        return [], []
    entry[way] = leg.to_op()
    alerts = _pair(entry, leg, way, rules)
    waiting = pairs.closings.pop(f"{leg.sender}>{leg.recipient}", None)
    if waiting is not None:
        closing = parse_closing(waiting)
        alerts += _triangle(pairs, (closing.into, closing.out, leg), rules)
    return alerts, _paths(pairs, leg, partner, way, rules)


def _pair(entry: list[Any], leg: Leg, way: int, rules: GiftLoop) -> list[Alert]:
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
               "legs": [_figure(x) for x in (back, leg)]}
    trigger = leg.event_ids[-1] if leg.end >= back.end else back.event_ids[-1]
    return [alert("gift_loop", rules.severity, "user", who, start, ids, trigger, end, **figures)
            for who in sorted((leg.sender, leg.recipient))]


def _figure(leg: Leg) -> dict[str, Any]:
    return {"from": leg.sender, "to": leg.recipient, "coins": leg.coins, "start": leg.start, "end": leg.end}


def _paths(pairs: Pairs, leg: Leg, partner: str, way: int, rules: GiftLoop) -> list[Closing]:
    """The paths X -> me -> Y this leg makes with the legs of other partners (each of
    whom is larger than me: their pairs meet here), within one window."""
    found = []
    for other, entry in pairs.partners.items():
        op = entry[1 - way]
        if other == partner or op is None:
            continue
        second = parse_leg(op)
        closing = Closing(leg, second) if way == 1 else Closing(second, leg)
        if max(leg.end, second.end) - min(leg.start, second.start) < rules.window_ms:
            found.append((second.end, other, closing))
    found.sort(key=lambda x: (-x[0], x[1]))
    return [closing for _, _, closing in found[:MAX_CLOSINGS_PER_LEG]]


def close(pairs: Pairs, closing: Closing, rules: GiftLoop) -> list[Alert]:
    """A path from the smallest account of a possible loop of three, at the meeting
    point of its two other accounts: alerts if the leg that closes it is here, else it
    waits here for that leg (until it falls out of the window)."""
    sender, recipient = closing.needed
    me = closing.meeting_key
    partner, way = (recipient, 0) if sender == me else (sender, 1)
    _prune(pairs, closing.ts, rules, room_for=None)
    entry = pairs.partners.get(partner)
    if entry is not None and entry[way] is not None:
        return _triangle(pairs, (closing.into, closing.out, parse_leg(entry[way])), rules)
    pairs.closings[f"{sender}>{recipient}"] = closing.to_op()
    while len(pairs.closings) > MAX_CLOSINGS:
        del pairs.closings[min(pairs.closings, key=lambda k: (parse_closing(pairs.closings[k]).ts, k))]
    return []


def _triangle(pairs: Pairs, legs: tuple[Leg, Leg, Leg], rules: GiftLoop) -> list[Alert]:
    start, end = min(x.start for x in legs), max(x.end for x in legs)
    if end - start >= rules.window_ms:
        return []
    accounts = sorted({x.sender for x in legs})
    require(len(accounts) == 3, "a loop of three has three accounts")
    key = "|".join(accounts)
    if pairs.quiet.get(key, 0) > start:
        return []
    pairs.quiet[key] = start + rules.window_ms
    while len(pairs.quiet) > MAX_CLOSINGS:
        del pairs.quiet[min(pairs.quiet, key=lambda k: (pairs.quiet[k], k))]
    ids = [i for x in sorted(legs, key=lambda x: x.end) for i in x.event_ids]
    trigger = max(legs, key=lambda x: x.end).event_ids[-1]
    figures = {"accounts": accounts, "window_end": end, "shape": "triangle",
               "legs": [_figure(x) for x in legs]}
    return [alert("gift_loop", rules.severity, "user", who, start, ids, trigger, end, **figures)
            for who in accounts]


def _prune(pairs: Pairs, now: int, rules: GiftLoop, room_for: str | None) -> None:
    """Forget legs, closings and quiet triangles older than the window, and make room
    for `room_for`."""
    def newest(entry: list[Any]) -> int:
        times: list[int] = [-1] + [leg["t"] for leg in entry[:2] if leg is not None] + [entry[2] - rules.window_ms]
        return max(times)

    for partner, entry in list(pairs.partners.items()):
        for way in (0, 1):
            if entry[way] is not None and entry[way]["t"] <= now - rules.window_ms:
                entry[way] = None
        if entry[0] is None and entry[1] is None and entry[2] <= now:
            del pairs.partners[partner]
    for key, op in list(pairs.closings.items()):
        if min(op["i"]["s"], op["o"]["s"]) <= now - rules.window_ms:
            del pairs.closings[key]
    for key, until in list(pairs.quiet.items()):
        if until <= now:
            del pairs.quiet[key]
    while room_for is not None and len(pairs.partners) >= MAX_PARTNERS and room_for not in pairs.partners:
        del pairs.partners[min(pairs.partners, key=lambda k: (newest(pairs.partners[k]), k))]
