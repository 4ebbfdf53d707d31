"""Leaderboard reads on the real Redis: score descending, ties by id ascending, also
where a tie straddles the limit."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from agents.readmodel import leaderboards
from tests.conftest import Cluster

pytestmark = pytest.mark.integration


def test_top_orders_ties_by_id_ascending_across_the_cut(cluster: Cluster) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(cluster.redis_url)
        key = f"t{uuid.uuid4().hex[:8]}:board"
        try:
            await client.zadd(key, {"d": 5, "b": 3, "a": 3, "c": 3, "e": 1, "z": 9})
            assert await leaderboards.top(client, key, 1) == [("z", 9)]
            assert await leaderboards.top(client, key, 3) == [("z", 9), ("d", 5), ("a", 3)]
            assert await leaderboards.top(client, key, 4) == [("z", 9), ("d", 5), ("a", 3), ("b", 3)]
            assert await leaderboards.top(client, key, 10) == [
                ("z", 9), ("d", 5), ("a", 3), ("b", 3), ("c", 3), ("e", 1)]
            assert await leaderboards.top(client, f"{key}:missing", 10) == []
        finally:
            await client.delete(key)
            await client.aclose()

    asyncio.run(scenario())


def test_day_names_round_trip() -> None:
    assert leaderboards.day_name(0) == "1970-01-01"
    assert leaderboards.parse_day("2026-11-26") == 20_783  # 1_795_651_200_000 ms // 86_400_000
    assert leaderboards.day_name(20_783) == "2026-11-26"
    for bad in ("2026-13-01", "26-11-2026", "2026-11-26T00", ""):
        with pytest.raises(ValueError):
            leaderboards.parse_day(bad)
