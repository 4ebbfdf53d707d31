"""Pending read-model writes of one key are merged, never dropped: the newer value's
fields and every board entry of both (boards hold totals that only grow)."""

from __future__ import annotations

import asyncio

from agents.readmodel.redis_sink import RedisReadModel, merged
from pipeline import settings
from pipeline.engine.stage import ReadModelUpdate

FULL = ReadModelUpdate("user", "u5", {"coins": 7}, 12,
                       (("lb:stream:a:gifters", "u5", 30), ("lb:stream:b:gifters", "u5", 9)))
LIVE = ReadModelUpdate("user", "u5", {"coins": 7}, 12, (("lb:stream:a:gifters", "u5", 30),))
NEXT = ReadModelUpdate("user", "u5", {"coins": 2}, 13, (("lb:stream:a:gifters", "u5", 35),))


def boards(u: ReadModelUpdate) -> dict[str, int]:
    return {z: score for z, _, score in u.scores}


def test_an_equal_seq_refill_keeps_the_boards_a_live_update_did_not_touch() -> None:
    for a, b in ((LIVE, FULL), (FULL, LIVE)):
        m = merged(a, b)
        assert m.seq == 12 and boards(m) == {"lb:stream:a:gifters": 30, "lb:stream:b:gifters": 9}


def test_the_newer_value_wins_in_either_order_and_older_boards_stay() -> None:
    for a, b in ((FULL, NEXT), (NEXT, FULL)):
        m = merged(a, b)
        assert (m.seq, m.fields) == (13, {"coins": 2})
        assert boards(m) == {"lb:stream:a:gifters": 35, "lb:stream:b:gifters": 9}


def test_write_while_redis_fails_keeps_one_merged_update_per_key() -> None:
    sink = RedisReadModel(settings.load({}))
    sink.healthy = False  # as after a failed write: nothing is sent, updates wait
    asyncio.run(sink.write([LIVE]))
    asyncio.run(sink.write([FULL, NEXT]))
    (pending,) = sink.pending.values()
    assert pending.seq == 13 and boards(pending) == {"lb:stream:a:gifters": 35, "lb:stream:b:gifters": 9}
