"""`python -m pipeline run`: the whole pipeline on a short simulated live event.

Starts local Kafka and Redis (`dev up`), one worker process, produces a seeded stream
of recharges and gifts, waits until every event has its outcome, then prints the
outcome counts, the richest viewers and the top creators as the read model serves them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections import Counter

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from pipeline import economics, settings, topics
from pipeline.settings import Settings
from tools.infra import dev
from tools.local_worker import get, running_worker
from tools.simulate import SimConfig, generate

OUTCOMES_TIMEOUT_S = 300.0


def main(args: argparse.Namespace) -> int:
    s = settings.load()
    econ = economics.load(s.economics_file)
    print("\n".join(dev.up(s)))
    asyncio.run(topics.ensure_topics(s))
    with running_worker(s, s.data_dir / "demo-worker.log"):
        tag = secrets.token_hex(2)
        cfg = SimConfig(events=args.events, users=args.users, creators=args.creators, seed=args.seed,
                        id_prefix=f"demo{tag}-", promotion_share=0.001, monthly_budgets=True)
        messages = list(generate(cfg, econ))
        print(f"producing {len(messages)} events of a simulated live event (ids demo{tag}-*)")
        counts, elapsed = asyncio.run(_produce_and_wait(s, messages))
        _report(s, cfg, counts, elapsed)
        dashboard = f"http://127.0.0.1:{s.web_port}/dashboard?stream={cfg.id_prefix}c0-s0"
        if args.watch:
            print(f"\nlive dashboard: {dashboard}\nfeed it from another shell (same ids, so the same stream):\n"
                  f"  python -m pipeline simulate --rate 200 --duration 300 --users {args.users} "
                  f"--creators {args.creators} --id-prefix {cfg.id_prefix}\nCtrl-C stops the worker")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        else:
            print("\n`python -m pipeline run --watch` keeps the worker running for the live dashboard")
    print("Kafka and Redis keep running: `python -m pipeline dev down` stops them.")
    return 0


async def _produce_and_wait(s: Settings, messages: list[tuple[str, bytes, bytes]]) -> tuple[Counter[str], float]:
    consumer = AIOKafkaConsumer(**s.kafka_options(), isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    producer = AIOKafkaProducer(**s.kafka_options(), linger_ms=10, acks="all")
    await producer.start()
    try:
        tps = [TopicPartition(s.topic(topics.OUTCOMES), p) for p in range(s.partitions)]
        consumer.assign(tps)
        for tp, end in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, end)  # only this run's outcomes
        started = time.monotonic()
        for topic, key, value in messages:
            await producer.send(s.topic(topic), value, key=key)
        await producer.flush()
        wanted = {json.loads(v)["event_id"] for t, _, v in messages if t != topics.PROMOTIONS}  # no outcome
        counts: Counter[str] = Counter()
        seen: set[str] = set()
        while seen != wanted and time.monotonic() - started < OUTCOMES_TIMEOUT_S:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    o = json.loads(r.value)
                    if o["event_id"] in wanted:
                        seen.add(o["event_id"])
                        counts[f"{o['type']} {o['status']}" + (f" ({o['reason']})" if o["reason"] else "")] += 1
        return counts, time.monotonic() - started
    finally:
        await producer.stop()
        await consumer.stop()


def _report(s: Settings, cfg: SimConfig, counts: Counter[str], elapsed: float) -> None:
    total = sum(counts.values())
    print(f"\n{total} outcomes in {elapsed:.1f}s ({total / max(elapsed, 1e-9):.0f} events/s end to end)")
    for line, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {n:7d}  {line}")
    users = [get(s, f"/users/{cfg.id_prefix}u{i}") for i in range(cfg.users)]
    creators = [get(s, f"/creators/{cfg.id_prefix}c{i}") for i in range(cfg.creators)]
    print("\nTop viewers by coins spent:")
    for u in sorted(users, key=lambda u: (-u["spent_coins"], u["user_id"]))[:5]:
        print(f"  {u['user_id']:>16}  spent {u['spent_coins']:>8}  balance {u['coins']:>8}")
    print("\nTop creators by diamonds earned (GET /leaderboards/creators?period=all):")
    board = [e for e in get(s, "/leaderboards/creators?period=all&limit=1000")["entries"]
             if e["creator_id"].startswith(cfg.id_prefix)][:5]
    by_id = {c["creator_id"]: c for c in creators}
    for e in board:
        print(f"  {e['creator_id']:>16}  diamonds {e['diamonds']:>8}  "
              f"available {by_id[e['creator_id']]['diamonds']:>8}")
    recharged, bonus = sum(u["recharged_coins"] for u in users), sum(u["bonus_coins"] for u in users)
    held, spent = sum(u["coins"] for u in users), sum(u["spent_coins"] for u in users)
    levels = Counter(u["gifter_level"] for u in users)
    print("\nViewers by gifter level: " + ", ".join(f"level {k}: {n}" for k, n in sorted(levels.items())))
    print(f"\ncoins recharged {recharged} + bonus {bonus} = held {held} + spent {spent}: "
          f"{'ok' if recharged + bonus == held + spent else 'MISMATCH'}")
    if recharged + bonus != held + spent:
        raise SystemExit("coin conservation failed")
