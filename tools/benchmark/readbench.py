"""The `leaderboard-read` scenario: a live stream's top-gifter board with 100,000
gifters (many tied scores), read over HTTP from a running worker: latency percentiles of
`GET /leaderboards/streams/{id}/gifters?limit=N`, and of the Redis read alone."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import time
from typing import Any

from agents.readmodel import leaderboards
from pipeline import redis_client
from pipeline.settings import Settings
from tools.benchmark.runs import percentiles

STREAM = "bench-stream"


def leaderboard_read(s: Settings, gifters: int, requests: int, seed: int) -> dict[str, Any]:
    key = s.redis_key(leaderboards.stream_key(STREAM))
    client = redis_client.connect_sync(s)
    rng = random.Random(seed)
    client.delete(key)
    for start in range(0, gifters, 10_000):  # Zipf-like coins: a few whales, many ties
        client.zadd(key, {f"u{i}": int(1 + 1_000_000 / (1 + i) ** 1.1 * rng.random())
                          for i in range(start, min(start + 10_000, gifters))})
    assert client.zcard(key) == gifters
    results: dict[str, Any] = {"gifters": gifters, "requests_per_limit": requests}
    conn = http.client.HTTPConnection("127.0.0.1", s.web_port, timeout=5)
    for limit in (10, 100):
        path = f"/leaderboards/streams/{STREAM}/gifters?limit={limit}"
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            samples.append(time.perf_counter() - started)
            assert resp.status == 200 and len(json.loads(body)["entries"]) == limit
        results[f"http_limit_{limit}"] = percentiles(samples, digits=3)

    async def redis_only() -> dict[str, float]:
        a = redis_client.connect(s)
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            await leaderboards.top(a, key, 10)
            samples.append(time.perf_counter() - started)
        await a.aclose()
        return percentiles(samples, digits=3)

    results["redis_only_limit_10"] = asyncio.run(redis_only())
    client.delete(key)
    return results


