"""Records of the internal creator-ops topic (key: creator_id).

`c`: the combined credit of a batch's accepted gifts to one creator; `p`: a validated
payout request. Written and read only by this pipeline, so they are compact and trusted.
"""

from __future__ import annotations

from typing import Any

from agents.credit.rules import CreditBatch
from agents.ingest.records import Payout
from agents.ledger.rules import Credit
from agents.ledger.state import utc_day


def credit_op(creator_id: str, credits: list[Credit]) -> dict[str, Any]:
    by_day: dict[int, int] = {}
    for c in credits:
        assert c.creator_id == creator_id
        day = utc_day(c.ts)
        by_day[day] = by_day.get(day, 0) + c.diamonds
    return {
        "op": "c", "creator_id": creator_id,
        "diamonds": sum(c.diamonds for c in credits), "coins": sum(c.coins for c in credits),
        "gifts": len(credits), "ts": max(c.ts for c in credits), "days": [[d, n] for d, n in by_day.items()],
    }


def payout_op(ev: Payout) -> dict[str, Any]:
    return {"op": "p", "event_id": ev.event_id, "creator_id": ev.creator_id, "diamonds": ev.diamonds, "ts": ev.ts}


def parse_op(data: dict[str, Any]) -> CreditBatch | Payout:
    if data["op"] == "c":
        return CreditBatch(
            data["creator_id"], data["diamonds"], data["coins"], data["gifts"], data["ts"],
            {d: n for d, n in data["days"]},
        )
    assert data["op"] == "p", data
    return Payout(data["event_id"], data["creator_id"], data["diamonds"], data["ts"])
