"""The sender-side rules, run in the user ledger on each event it decides:
gift_velocity, rejection_probe, recharge_burn, and the outgoing half of gift_loop.

`SenderWatch` is part of a user's state (persisted with it, restored from the same
changelog); every list in it is bounded by a window and a count, and pruned when the
user's next event comes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from agents.fraud.alerts import Alert, alert
from agents.fraud.thresholds import MAX_COUNT, FraudRules, GiftLoop, RechargeBurn
from agents.fraud.window import Burst
from agents.ingest.records import Gift, Recharge, UserEvent
from agents.outcomes import Outcome
from pipeline.invariants import require

# gift_loop: recipients of one sender tracked at once, and gifts kept per recipient
# (the oldest two are merged beyond that, keeping the older time: the span a merged
# leg claims can only grow, so merging never makes a loop out of gifts that are not),
# with the ids of the latest few as evidence. Every user carries this state: small.
MAX_RECIPIENTS = 8
MAX_LEG_GIFTS = 8
LEG_EVIDENCE = 4
# recharge_burn: ids kept as evidence (the latest recharges and gifts)
BURN_EVIDENCE = 20
# A leg still over the threshold is sent again at most this often (event time), so the
# meeting point keeps a recent one without a record per gift of a heavy pair.
LEG_REFRESH_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Leg:
    """`sender` gave `recipient` `coins` in [start, end], the fewest latest gifts that
    reach the gift_loop threshold."""

    sender: str
    recipient: str
    start: int
    end: int
    coins: int
    event_ids: tuple[str, ...]

    @property
    def ts(self) -> int:
        return self.end

    def to_op(self) -> dict[str, Any]:
        return {"op": "l", "a": self.sender, "b": self.recipient, "s": self.start, "t": self.end,
                "c": self.coins, "ids": list(self.event_ids)}

    @property
    def meeting_key(self) -> str:
        """Both directions of a pair meet at the smaller account's partition."""
        return min(self.sender, self.recipient)


@dataclass(slots=True)
class Burn:
    """recharge_burn's tally while the account's first recharge is under the window old."""

    recharged: int = 0
    spent: int = 0
    creators: list[str] = field(default_factory=list)  # at most max_creators
    event_ids: list[str] = field(default_factory=list)  # at most BURN_EVIDENCE, the latest


@dataclass(slots=True)
class LegTally:
    """gift_loop's count of one sender's gifts to one recipient."""

    gifts: list[list[int]] = field(default_factory=list)  # [ts, coins], the latest that reach the threshold
    sent_at: int | None = None  # when a leg was last sent (None: not over the threshold)
    event_ids: list[str] = field(default_factory=list)  # the latest LEG_EVIDENCE

    def to_json(self) -> list[Any]:
        return [self.gifts, self.sent_at, self.event_ids]

    @classmethod
    def from_json(cls, data: list[Any]) -> LegTally:
        return cls(data[0], data[1], data[2])


@dataclass(slots=True)
class SenderWatch:
    first_recharge_ts: int | None = None
    burn: Burn | None = None  # None once the first recharge is older than the window
    gifts: Burst = field(default_factory=Burst)  # accepted gifts: gift_velocity
    rejections: Burst = field(default_factory=Burst)  # rejected gifts: rejection_probe
    sent: dict[str, LegTally] = field(default_factory=dict)  # gift_loop: recipient -> tally

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.first_recharge_ts is not None:
            data["r"] = self.first_recharge_ts
        if self.burn is not None:
            b = self.burn
            data["b"] = [b.recharged, b.spent, b.creators, b.event_ids]
        if self.gifts:
            data["g"] = self.gifts.to_json()
        if self.rejections:
            data["x"] = self.rejections.to_json()
        if self.sent:
            data["s"] = {k: t.to_json() for k, t in self.sent.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SenderWatch:
        if data is None:
            return cls()
        b = data.get("b")
        return cls(data.get("r"), None if b is None else Burn(*b), Burst.from_json(data.get("g")),
                   Burst.from_json(data.get("x")), {k: LegTally.from_json(t) for k, t in data.get("s", {}).items()})

    def check(self) -> None:
        require(len(self.sent) <= MAX_RECIPIENTS, 'len(self.sent) <= MAX_RECIPIENTS')
        if self.burn is not None:
            assert self.first_recharge_ts is not None  # narrowing; python -O is refused
            require(self.burn.spent >= 0, 'self.burn.spent >= 0')
            require(len(self.burn.event_ids) <= BURN_EVIDENCE, 'len(self.burn.event_ids) <= BURN_EVIDENCE')
        # a window holds fewer events than its count threshold (at most MAX_COUNT)
        require(len(self.gifts.entries) < MAX_COUNT, 'len(self.gifts.entries) < MAX_COUNT')
        require(len(self.rejections.entries) < MAX_COUNT, 'len(self.rejections.entries) < MAX_COUNT')


def observe(watch: SenderWatch, ev: UserEvent, outcome: Outcome, rules: FraudRules) -> tuple[list[Alert], Leg | None]:
    """What one decided event (not a duplicate) raises: alerts, and a gift_loop leg to
    send to the pair's meeting point."""
    alerts: list[Alert] = []
    leg = None
    if isinstance(ev, Recharge):
        _recharged(watch, ev, rules.recharge_burn)
    elif isinstance(ev, Gift) and outcome.status == "rejected":
        r = rules.rejection_probe
        hit = watch.rejections.observe(ev.ts, 1, ev.event_id, r.window_ms, r.rejections)
        if hit is not None:
            alerts.append(alert("rejection_probe", r.severity, "user", ev.sender_id, hit.start, hit.event_ids,
                                ev.event_id, ev.ts, rejected_gifts=hit.count, window_end=hit.end))
    elif isinstance(ev, Gift) and outcome.status == "accepted":
        coins = outcome.coins
        assert coins is not None  # narrowing; python -O is refused
        require(coins > 0, 'coins > 0')
        v = rules.gift_velocity
        hit = watch.gifts.observe(ev.ts, coins, ev.event_id, v.window_ms, v.gifts, v.coins)
        if hit is not None:
            alerts.append(alert("gift_velocity", v.severity, "user", ev.sender_id, hit.start, hit.event_ids,
                                ev.event_id, ev.ts, gifts=hit.count, coins=hit.amount, window_end=hit.end))
        burned = _spent(watch, ev, coins, rules.recharge_burn)
        if burned is not None:
            alerts.append(burned)
        leg = _sent(watch, ev, coins, rules.gift_loop)
    watch.check()
    require(len(watch.gifts.entries) < rules.gift_velocity.gifts, "gift_velocity keeps fewer gifts than its threshold")
    require(len(watch.rejections.entries) < rules.rejection_probe.rejections,
            "rejection_probe keeps fewer rejections than its threshold")
    return alerts, leg


def _recharged(watch: SenderWatch, ev: Recharge, r: RechargeBurn) -> None:
    if watch.first_recharge_ts is None:
        watch.first_recharge_ts = ev.ts
        watch.burn = Burn()
    _expire_burn(watch, ev.ts, r)
    if watch.burn is not None:
        watch.burn.recharged += ev.coins
        _evidence(watch.burn.event_ids, ev.event_id)


def _spent(watch: SenderWatch, ev: Gift, coins: int, r: RechargeBurn) -> Alert | None:
    _expire_burn(watch, ev.ts, r)
    burn = watch.burn
    if burn is None:
        return None
    assert watch.first_recharge_ts is not None
    burn.spent += coins
    if ev.creator_id not in burn.creators:
        burn.creators.append(ev.creator_id)
        if len(burn.creators) > r.max_creators:
            watch.burn = None  # spent on too many creators: it cannot fire any more
            return None
    _evidence(burn.event_ids, ev.event_id)
    if burn.spent < r.min_coins or burn.spent * 100 < r.spent_percent * burn.recharged:
        return None
    watch.burn = None  # one alert: an account has one first recharge
    start = watch.first_recharge_ts
    return alert("recharge_burn", r.severity, "user", ev.sender_id, start, burn.event_ids, ev.event_id, ev.ts,
                 recharged_coins=burn.recharged, spent_coins=burn.spent, creators=burn.creators,
                 seconds_after_first_recharge=(ev.ts - start) / 1000)


def _expire_burn(watch: SenderWatch, ts: int, r: RechargeBurn) -> None:
    if watch.burn is not None and watch.first_recharge_ts is not None and ts >= watch.first_recharge_ts + r.window_ms:
        watch.burn = None


def _evidence(ids: list[str], event_id: str) -> None:
    ids.append(event_id)
    if len(ids) > BURN_EVIDENCE:
        del ids[0]


def _sent(watch: SenderWatch, ev: Gift, coins: int, r: GiftLoop) -> Leg | None:
    """Keep the latest gifts to this recipient that reach the threshold within the
    window; a leg when they do (at most every LEG_REFRESH_MS while they stay over)."""
    tally = watch.sent.get(ev.creator_id)
    if tally is None:
        _make_room(watch, ev.ts, r)
        tally = watch.sent[ev.creator_id] = LegTally()
    gifts = tally.gifts
    bisect.insort(gifts, [ev.ts, coins])
    ids = tally.event_ids
    ids.append(ev.event_id)
    if len(ids) > LEG_EVIDENCE:
        del ids[0]
    newest = gifts[-1][0]
    while gifts and gifts[0][0] <= newest - r.window_ms:
        del gifts[0]
    total = sum(g[1] for g in gifts)
    while gifts and total - gifts[0][1] >= r.min_coins:
        total -= gifts.pop(0)[1]
    while len(gifts) > MAX_LEG_GIFTS:
        first = gifts.pop(0)
        gifts[0] = [first[0], first[1] + gifts[0][1]]
    if not gifts:
        return None
    if total < r.min_coins:
        tally.sent_at = None
        return None
    if tally.sent_at is not None and ev.ts - tally.sent_at < LEG_REFRESH_MS:
        return None
    tally.sent_at = ev.ts
    return Leg(ev.sender_id, ev.creator_id, gifts[0][0], newest, total, tuple(ids))


def _make_room(watch: SenderWatch, now: int, r: GiftLoop) -> None:
    """Before a new recipient, if MAX_RECIPIENTS are kept: forget those last given to
    a window ago, then the least recent."""
    if len(watch.sent) < MAX_RECIPIENTS:
        return

    def newest(recipient: str) -> int:
        gifts = watch.sent[recipient].gifts
        return gifts[-1][0] if gifts else -1

    for recipient in [k for k in watch.sent if newest(k) <= now - r.window_ms]:
        del watch.sent[recipient]
    while len(watch.sent) >= MAX_RECIPIENTS:
        del watch.sent[min(watch.sent, key=lambda k: (newest(k), k))]
