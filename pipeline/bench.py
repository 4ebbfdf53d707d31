"""`python -m pipeline bench SCENARIO`: benchmarks whose results are committed files.

Scenarios:
- `leaderboard-read`: a live stream's top-gifter board with 100,000 gifters (many tied
  scores), read over HTTP from a running worker: latency percentiles of
  `GET /leaderboards/streams/{id}/gifters?limit=N`, and of the Redis read alone.
- `uniform` / `mega-live`: simulated events (gifts spread over 10,000 creators; or half
  of all gifts to one creator and one stream) produced as fast as one producer can to a
  running worker: events per second from the first send to the last committed outcome.

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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from pipeline import economics, settings, topics
from pipeline.infra import dev
from pipeline.local_worker import running_worker
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.simulate import SimConfig, generate

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


def throughput(s: Settings, events: int, mega_live: float, seed: int) -> dict[str, Any]:
    econ = economics.load(s.economics_file)
    cfg = SimConfig(events=events, users=50_000, creators=10_000, seed=seed, zipf_s=0.0,
                    mega_live_share=mega_live, spend_limit_share=0.001, payout_share=0.001, id_prefix="b")
    messages = list(generate(cfg, econ))
    gifts = sum(1 for t, _, _ in messages if t == topics.GIFTS)

    async def go() -> dict[str, Any]:
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_list, linger_ms=20, max_batch_size=512 * 1024)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_list, isolation_level="read_committed")
        await producer.start()
        await consumer.start()
        try:
            tps = [TopicPartition(s.topic(topics.OUTCOMES), p) for p in range(s.partitions)]
            started = time.perf_counter()
            for topic, key, value in messages:
                await producer.send(s.topic(topic), value, key=key)
            await producer.flush()
            produced = time.perf_counter() - started
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            seen = 0
            while seen < len(messages):
                batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
                seen += sum(len(r) for r in batch.values())
                if time.perf_counter() - started > 600:
                    raise SystemExit(f"only {seen} of {len(messages)} outcomes after 600 s")
            elapsed = time.perf_counter() - started
        finally:
            await producer.stop()
            await consumer.stop()
        return {"events": len(messages), "gifts": gifts, "produce_s": round(produced, 2), "elapsed_s": round(elapsed, 2),
                "events_per_s": round(len(messages) / elapsed), "gifts_per_s": round(gifts / elapsed),
                "mega_live_share": mega_live}

    return asyncio.run(go())


def _write(scenario: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{dt.date.today().isoformat()}-{scenario}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    figures = result["figures"]
    head = [f"# {scenario} ({result['date']})", "",
            f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}; one worker, Kafka and "
            "Redis on the same machine.", ""]
    if "gifters" in figures:
        rows = [f"| {name} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | {v['max_ms']} | {v['n']} |"
                for name, v in figures.items() if isinstance(v, dict) and "p99_ms" in v]
        body = [f"{figures['gifters']:,} gifters on one stream board.", "",
                "| read | p50 ms | p95 ms | p99 ms | max ms | requests |", "|---|---|---|---|---|---|", *rows]
    else:
        body = ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in figures.items())]
    stem.with_suffix(".md").write_text("\n".join([*head, *body, ""]))
    return stem.with_suffix(".json")


def main(args: argparse.Namespace) -> int:
    s = settings.load()
    print("\n".join(dev.up(s)))
    prefix = f"bench-{os.getpid()}-"
    s = Settings(**{**s.__dict__, "topic_prefix": prefix, "redis_prefix": prefix})
    env = {"PIPELINE_TOPIC_PREFIX": prefix, "PIPELINE_REDIS_PREFIX": prefix}
    asyncio.run(topics.ensure_topics(s))
    try:
        with running_worker(s, s.data_dir / "bench-worker.log", env):
            if args.scenario == "leaderboard-read":
                figures = leaderboard_read(s, args.gifters, args.requests, args.seed)
            else:
                figures = throughput(s, args.events, 0.5 if args.scenario == "mega-live" else 0.0, args.seed)
    finally:
        asyncio.run(topics.delete_topics(s))  # a broker full of old runs' partitions is slower
    result = {"scenario": args.scenario, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": _machine(), "figures": figures}
    path = _write(args.scenario, result)
    print(json.dumps(figures, indent=2))
    print(f"written {path} and {path.with_suffix('.md')}")
    return 0
