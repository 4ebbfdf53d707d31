"""What the dashboard shows, read from Redis in one place.

Everything comes from the read model that every worker writes (leaderboards, windows,
alerts, fleet reports), so any worker's dashboard shows the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from agents.readmodel import alerts, leaderboards
from agents.readmodel.leaderboards import TOP_GIFTER_RANKS, as_text
from agents.readmodel.outcomes import LEVEL_UPS
from pipeline import fleet
from pipeline.invariants import require

TOP_N = 10
ALERTS_SHOWN = 20
LEVEL_UPS_SHOWN = 10
CHART_MINUTES = 30
MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Selection:
    """The stream and creator the viewer chose; an empty creator follows the day's top one."""

    stream_id: str
    creator_id: str


def per_minute(windows: list[tuple[int, int]], now_ms: int, minutes: int = CHART_MINUTES) -> list[dict[str, int]]:
    """The last `minutes` one-minute windows up to the newest of now and the newest
    window, quiet minutes as zero, oldest first: a chart with gaps would hide a pause."""
    require(minutes >= 1, 'minutes >= 1')
    newest = max([now_ms - now_ms % MINUTE_MS] + [start for start, _ in windows])
    by_start = dict(windows)
    starts = range(newest - (minutes - 1) * MINUTE_MS, newest + 1, MINUTE_MS)
    return [{"start": s, "diamonds": by_start.get(s, 0)} for s in starts]


async def snapshot(redis: Redis, prefix: str, chosen: Selection, now_ms: int,
                   promotions: Callable[[int], list[dict[str, Any]]] = lambda now: []) -> dict[str, Any]:
    """`promotions`: those in force at a time, from this worker's copy of the broadcast
    (the same on every worker)."""
    day = now_ms // DAY_MS
    creators = await leaderboards.top(redis, prefix + leaderboards.creators_day_key(day), TOP_N)
    gifters = (
        await leaderboards.top(redis, prefix + leaderboards.stream_key(chosen.stream_id), TOP_N)
        if chosen.stream_id else []
    )
    levels = await _levels(redis, prefix, [u for u, _ in gifters])
    ups = await redis.zrevrange(prefix + LEVEL_UPS, 0, LEVEL_UPS_SHOWN - 1)
    creator = chosen.creator_id or (creators[0][0] if creators else "")
    windows = await leaderboards.windows(redis, creator, "1m", prefix) if creator else []
    return {
        "day": leaderboards.day_name(day),
        "stream_id": chosen.stream_id,
        "gifters": [{"rank": i + 1, "user_id": u, "coins": c, "gifter_level": levels[u],
                     **({"badge": "top_gifter"} if i < TOP_GIFTER_RANKS else {})} for i, (u, c) in enumerate(gifters)],
        # newest first; one gift's several level-ups by level (Redis orders equal times by text)
        "level_ups": sorted((json.loads(as_text(x)) for x in ups), key=lambda b: (-b["ts"], -b["level"])),
        "promotions": promotions(now_ms),
        "creators": [{"rank": i + 1, "creator_id": c, "diamonds": d} for i, (c, d) in enumerate(creators)],
        "creator_id": creator,
        "diamonds_per_minute": per_minute(windows, now_ms) if creator else [],
        "alerts": await alerts.latest(redis, prefix, ALERTS_SHOWN),
        "fleet": await fleet.summary(redis, prefix),
    }


async def _levels(redis: Redis, prefix: str, users: list[str]) -> dict[str, int]:
    if not users:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for u in users:
            pipe.hget(f"{prefix}user:{u}", "gifter_level")
        found = await pipe.execute()
    return {u: int(as_text(x)) if x is not None else 0 for u, x in zip(users, found)}
