"""`python -m pipeline bench SCENARIO`: benchmarks whose results are committed files.

Scenarios:
- `leaderboard-read`: a live stream's top-gifter board with 100,000 gifters (many tied
  scores), read over HTTP from a running worker: latency percentiles of
  `GET /leaderboards/streams/{id}/gifters?limit=N`, and of the Redis read alone.

Each run writes `bench/results/<date>-<scenario>.json` and `.md` with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from agents.readmodel import leaderboards
from pipeline import settings, topics
from pipeline.infra import dev
from pipeline.local_worker import running_worker
from pipeline.settings import PROJECT_ROOT, Settings

RESULTS = PROJECT_ROOT / "bench" / "results"
STREAM = "bench-stream"


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 3), "p95_ms": round(q[94], 3), "p99_ms": round(q[98], 3),
            "max_ms": round(max(samples_ms), 3), "n": len(samples_ms)}


def _machine() -> dict[str, Any]:
    mem_kb = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {"cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "platform": platform.platform(), "redis": redis.__version__}


def leaderboard_read(s: Settings, gifters: int, requests: int, seed: int) -> dict[str, Any]:
    key = s.redis_key(leaderboards.stream_key(STREAM))
    client = redis.Redis.from_url(s.redis_url)
    rng = random.Random(seed)
    client.delete(key)
    for start in range(0, gifters, 10_000):  # Zipf-like coins: a few whales, many ties
        client.zadd(key, {f"u{i}": int(1 + 1_000_000 / (1 + i) ** 1.1 * rng.random()) for i in range(start, min(start + 10_000, gifters))})
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
            samples.append((time.perf_counter() - started) * 1000)
            assert resp.status == 200 and len(json.loads(body)["entries"]) == limit
        results[f"http_limit_{limit}"] = _percentiles(samples)

    async def redis_only() -> dict[str, float]:
        a = aioredis.Redis.from_url(s.redis_url)
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            await leaderboards.top(a, key, 10)
            samples.append((time.perf_counter() - started) * 1000)
        await a.aclose()
        return _percentiles(samples)

    results["redis_only_limit_10"] = asyncio.run(redis_only())
    client.delete(key)
    return results


def _write(scenario: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{dt.date.today().isoformat()}-{scenario}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| {name} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | {v['max_ms']} | {v['n']} |"
            for name, v in result["figures"].items() if isinstance(v, dict) and "p99_ms" in v]
    m = result["machine"]
    stem.with_suffix(".md").write_text("\n".join([
        f"# {scenario} ({result['date']})", "",
        f"{result['figures']['gifters']:,} gifters on one stream board; machine: {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Python {m['python']}; worker, Kafka and Redis on the same machine.", "",
        "| read | p50 ms | p95 ms | p99 ms | max ms | requests |", "|---|---|---|---|---|---|", *rows, "",
    ]))
    return stem.with_suffix(".json")


def main(args: argparse.Namespace) -> int:
    s = settings.load()
    print("\n".join(dev.up(s)))
    prefix = f"bench-{os.getpid()}-"
    s = Settings(**{**s.__dict__, "topic_prefix": prefix, "redis_prefix": prefix})
    env = {"PIPELINE_TOPIC_PREFIX": prefix, "PIPELINE_REDIS_PREFIX": prefix}
    asyncio.run(topics.ensure_topics(s))
    with running_worker(s, s.data_dir / "bench-worker.log", env):
        figures = leaderboard_read(s, args.gifters, args.requests, args.seed)
    result = {"scenario": args.scenario, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": _machine(), "figures": figures}
    path = _write(args.scenario, result)
    print(json.dumps(figures, indent=2))
    print(f"written {path} and {path.with_suffix('.md')}")
    return 0
