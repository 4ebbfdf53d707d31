"""Records of the internal creator-ops topic (key: creator_id).

`c`: the combined credit of a batch's accepted gifts to one creator; `p`: a validated
payout request; `m`: a progress mark of a user-ledger partition (key none, sent to every
partition); `l`: a gift_loop leg (agents/fraud/loop.py; key: the pair's smaller account). Written and read only by this pipeline, so they are compact and trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.credit.rules import CreditBatch
from agents.fraud.concentration import hour
from agents.fraud.sender import Leg
from agents.fraud.loop import parse_leg
from agents.ingest.records import Payout
from agents.ledger.rules import Credit


def credit_op(creator_id: str, credits: list[Credit], new_sender_ms: int) -> dict[str, Any]:
    """Credits of gifts from senders whose first event is under `new_sender_ms` old also
    go by sender and hour (payout_concentration, agents/fraud/concentration.py)."""
    by_ts: dict[int, int] = {}
    new: dict[tuple[str, int], list[Any]] = {}
    for c in credits:
        assert c.creator_id == creator_id
        by_ts[c.ts] = by_ts.get(c.ts, 0) + c.diamonds
        if c.sender_first_ts is not None and c.ts - c.sender_first_ts < new_sender_ms:
            entry = new.setdefault((c.sender_id, hour(c.ts)), [c.sender_id, c.sender_first_ts, c.ts, 0, c.event_id])
            entry[3] += c.diamonds
    return batch_op(CreditBatch(
        creator_id, sum(c.coins for c in credits), len(credits), tuple(sorted(by_ts.items())),
        tuple(tuple(e) for e in new.values() if e[3] > 0),
    ))


def batch_op(batch: CreditBatch) -> dict[str, Any]:
    return {
        "op": "c", "creator_id": batch.creator_id, "coins": batch.coins, "gifts": batch.gifts,
        "items": [list(item) for item in batch.items], "n": [list(e) for e in batch.new_senders],
    }


def payout_op(ev: Payout) -> dict[str, Any]:
    return {"op": "p", "event_id": ev.event_id, "creator_id": ev.creator_id, "diamonds": ev.diamonds, "ts": ev.ts}


@dataclass(frozen=True, slots=True)
class Mark:
    """Progress of one user-ledger partition (see agents/credit/progress.py)."""

    source: int
    ts: int
    idle: bool


def mark_op(source: int, ts: int, idle: bool) -> dict[str, Any]:
    return {"op": "m", "source": source, "ts": ts, "idle": idle}


def parse_op(data: dict[str, Any]) -> CreditBatch | Payout | Mark | Leg:
    if data["op"] == "l":
        return parse_leg(data)
    if data["op"] == "m":
        return Mark(data["source"], data["ts"], data["idle"])
    if data["op"] == "c":
        return CreditBatch(data["creator_id"], data["coins"], data["gifts"], tuple((t, d) for t, d in data["items"]),
                           tuple(tuple(e) for e in data.get("n", ())))
    assert data["op"] == "p", data
    return Payout(data["event_id"], data["creator_id"], data["diamonds"], data["ts"])
