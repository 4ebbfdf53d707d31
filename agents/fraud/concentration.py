"""payout_concentration: who gave a creator its recent diamonds, and the payout check.

The creator ledger keeps, per creator, the diamonds of its *new* senders (first event
under `new_sender_ms` old when they gave) per hour; the creator's total per hour is
its hourly window (agents/credit/state.py). "The last 24 hours" is counted in those
hourly buckets: the buckets that overlap the window before the payout.

Bounded: at most MAX_NEW_SENDERS senders per creator, the one with the fewest diamonds
evicted first (its later diamonds count from zero again). Counts are therefore never
over the truth: a creator with more new senders than that can be missed near the
threshold, never flagged wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.fraud.alerts import Alert, alert
from agents.fraud.thresholds import HOUR_MS, PayoutConcentration
from agents.ingest.records import Payout
from pipeline.invariants import require

MAX_NEW_SENDERS = 64
IDS_PER_SENDER = 3  # evidence: a sender's first gift ids to this creator

# What a credit op carries per new sender: (sender, first event ts, gift ts, diamonds, event id).
NewCredit = Sequence[Any]


def hour(ts: int) -> int:
    return ts - ts % HOUR_MS


@dataclass(slots=True)
class NewSenders:
    # sender -> [first event ts, [[hour start, diamonds], ...], [event ids]]
    senders: dict[str, list[Any]] = field(default_factory=dict)
    newest: int = 0  # newest gift time recorded
    quiet_until: int = 0  # one alert per creator and window

    def __bool__(self) -> bool:
        return bool(self.senders) or self.quiet_until > 0

    def to_json(self) -> list[Any]:
        return [self.senders, self.newest, self.quiet_until]

    @classmethod
    def from_json(cls, data: list[Any] | None) -> NewSenders:
        return cls() if data is None else cls(data[0], data[1], data[2])

    def check(self) -> None:
        require(len(self.senders) <= MAX_NEW_SENDERS, 'len(self.senders) <= MAX_NEW_SENDERS')


def record(ns: NewSenders, credits: Iterable[NewCredit], rules: PayoutConcentration) -> None:
    """Add new senders' diamonds; forget what no payout can still count (when the hour
    moves on) and the smallest senders beyond MAX_NEW_SENDERS."""
    hour_before = hour(ns.newest)
    for sender, first_ts, ts, diamonds, event_id in credits:
        if diamonds <= 0:
            continue
        entry = ns.senders.setdefault(sender, [first_ts, [], []])
        entry[0] = min(entry[0], first_ts)
        h = hour(ts)
        buckets = entry[1]
        if buckets and buckets[-1][0] == h:
            buckets[-1][1] += diamonds
        else:
            buckets.append([h, diamonds])
            buckets.sort()
        if len(entry[2]) < IDS_PER_SENDER:
            entry[2].append(event_id)
        ns.newest = max(ns.newest, ts)
    if hour(ns.newest) != hour_before:
        # Kept an hour beyond the window, for a payout dated a little before the newest gift.
        oldest_hour = hour(ns.newest) - rules.window_ms - HOUR_MS
        for sender, entry in list(ns.senders.items()):
            entry[1] = [b for b in entry[1] if b[0] >= oldest_hour]
            if not entry[1] or entry[0] <= ns.newest - rules.new_sender_ms - HOUR_MS:
                del ns.senders[sender]
    if len(ns.senders) > MAX_NEW_SENDERS:
        ranked = sorted(ns.senders, key=lambda s: (-sum(d for _, d in ns.senders[s][1]), s))
        for sender in ranked[MAX_NEW_SENDERS:]:
            del ns.senders[sender]
    ns.check()
    for s in ns.senders.values():
        require(len(s[2]) <= IDS_PER_SENDER, "a sender keeps at most IDS_PER_SENDER ids")
        require(all(d > 0 for _, d in s[1]), "a sender's diamonds are positive")


@dataclass(frozen=True, slots=True)
class Finding:
    total: int  # the creator's diamonds in the window
    top: list[tuple[str, int, int, list[str]]]  # (sender, diamonds, first event ts, ids), largest first

    @property
    def top_diamonds(self) -> int:
        return sum(d for _, d, _, _ in self.top)


def check(ns: NewSenders, hourly: dict[int, int], payout: Payout, rules: PayoutConcentration) -> Finding | None:
    """Whether the payout matches the rule (whatever the ledger decides about it)."""
    if payout.diamonds < rules.min_diamonds:
        return None
    lo, hi = payout.ts - rules.window_ms, payout.ts

    def inside(h: int) -> bool:
        return h + HOUR_MS > lo and h <= hi

    total = sum(d for h, d in hourly.items() if inside(h))
    new = []
    for sender, (first_ts, buckets, ids) in ns.senders.items():
        if first_ts > payout.ts - rules.new_sender_ms:
            d = sum(d for h, d in buckets if inside(h))
            if d > 0:
                new.append((sender, d, first_ts, ids))
    top = sorted(new, key=lambda s: (-s[1], s[0]))[: rules.max_senders]
    finding = Finding(total, top)
    if total <= 0 or finding.top_diamonds * 100 < rules.percent * total:
        return None
    return finding


def raise_alert(ns: NewSenders, finding: Finding, payout: Payout, held: bool,
                rules: PayoutConcentration) -> Alert | None:
    """The alert for a matching payout, unless one was raised for this creator within
    the window."""
    if payout.ts < ns.quiet_until:
        return None
    ns.quiet_until = payout.ts + rules.window_ms
    ids = [i for _, _, _, sender_ids in finding.top for i in sender_ids] + [payout.event_id]
    return alert(
        "payout_concentration", rules.severity, "creator", payout.creator_id, payout.ts - rules.window_ms, ids,
        payout.event_id, payout.ts, payout_diamonds=payout.diamonds, diamonds_in_window=finding.total,
        top_senders=[{"sender_id": s, "diamonds": d, "first_event_ts": f} for s, d, f, _ in finding.top],
        top_share_percent=min(100.0, round(100 * finding.top_diamonds / finding.total, 2)), held=held,
    )
