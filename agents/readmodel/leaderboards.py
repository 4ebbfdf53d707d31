"""Leaderboard keys (contract, "Read model") and reading them in the contract's order.

Scores are absolute totals taken from the ledger's committed state (never increments),
so writing one twice, late or after a Redis restart cannot double count.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from redis.asyncio import Redis

from agents.credit.state import WINDOWS
from pipeline.invariants import require

CREATORS_ALL = "lb:creators:all"
MAX_LIMIT = 1_000
# Ranks of a stream's gifter board that carry "badge": "top_gifter" (CONTRACT.md, Read model).
TOP_GIFTER_RANKS = 3


def day_name(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def parse_day(name: str) -> int:
    """`YYYY-MM-DD` -> UTC day number; ValueError if it is not such a date."""
    if len(name) != 10:
        raise ValueError(name)
    return (dt.date.fromisoformat(name) - dt.date(1970, 1, 1)).days


def stream_key(stream_id: str) -> str:
    return f"lb:stream:{stream_id}:gifters"


def gifters_day_key(day: int) -> str:
    return f"lb:gifters:day:{day_name(day)}"


def creators_day_key(day: int) -> str:
    return f"lb:creators:day:{day_name(day)}"


def windows_key(creator_id: str, size: str) -> str:
    """A creator's tumbling windows of one size: a hash, window start (ms) -> diamonds."""
    return f"win:{size}:{creator_id}"


def is_windows(key: str) -> bool:
    return key.startswith("win:")


def window_span(key: str) -> int:
    """How far back (ms) from its newest window the ledger keeps a creator's windows."""
    size, kept = WINDOWS[key.split(":")[1]]
    return (kept - 1) * size


async def windows(redis: Redis, creator_id: str, size: str, prefix: str) -> list[tuple[int, int]]:
    """(window start ms, diamonds), oldest first."""
    raw = await redis.hgetall(prefix + windows_key(creator_id, size))
    return sorted((int(k), int(v)) for k, v in raw.items())


def expires(key: str) -> bool:
    """Day and stream boards and windows expire after the retention; the all-time board
    does not."""
    return key != CREATORS_ALL


async def top(redis: Redis, key: str, limit: int) -> list[tuple[str, int]]:
    """The `limit` best (member, score): score descending, ties by member ascending.
    Redis orders ties by member descending in a reversed range, so the members tied at
    the cut are read again in ascending order."""
    require(limit >= 1, "limit >= 1")
    require(limit <= MAX_LIMIT, "limit <= MAX_LIMIT")
    head = await redis.zrevrange(key, 0, limit - 1, withscores=True)
    if not head:
        return []
    pairs = cast(list[tuple[bytes | str, float]], head)  # withscores=True
    cut = pairs[-1][1]
    above = sorted(((as_text(m), int(s)) for m, s in pairs if s > cut), key=lambda e: (-e[1], e[0]))
    tied = await redis.zrangebyscore(key, cut, cut, start=0, num=limit - len(above))
    return above + [(as_text(m), int(cut)) for m in tied]


def as_text(value: Any) -> str:
    """A Redis reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)
