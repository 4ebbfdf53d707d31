"""`python -m pipeline simulate`: produce a simulated live event to Kafka.

Seeded and reproducible (same options, same messages); `--rate` paces production in
events per second (0: as fast as one producer goes), `--events` or `--duration`
bound it, and a one-line progress report shows the achieved rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from aiokafka import AIOKafkaProducer

from pipeline import economics, settings, topics
from tools import simulate_fraud
from tools.simulate import Message, SimConfig, generate, start_of

PROGRESS_EVERY_S = 1.0
MAX_EVENTS = 1_000_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=None, help="events to produce (default 100000 unless --duration)")
    p.add_argument("--duration", type=float, default=None, help="seconds to produce for (with --rate)")
    p.add_argument("--rate", type=float, default=0.0, help="events per second; 0 = unthrottled (default)")
    p.add_argument("--users", type=int, default=10_000, help="distinct viewers, Zipf-active (default 10000)")
    p.add_argument("--creators", type=int, default=1_000, help="distinct creators, Zipf-popular (default 1000)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of activity (default 1.1; 0 = uniform)")
    p.add_argument("--mega-live", type=float, default=0.0, metavar="SHARE",
                   help="share of gifts to one creator and one stream, e.g. 0.5 (default 0)")
    p.add_argument("--malformed", type=float, default=0.0, metavar="SHARE",
                   help="share of malformed messages (default 0)")
    p.add_argument("--duplicates", type=float, default=0.0, metavar="SHARE",
                   help="share of producer-retry duplicates (default 0)")
    p.add_argument("--fraud", type=int, default=0, metavar="N",
                   help="inject N labelled instances of each fraud pattern (tools/simulate_fraud.py) (default 0)")
    p.add_argument("--near-misses", type=int, default=0, metavar="N",
                   help="inject N near-misses of each pattern, labelled, that must not alert (default 0)")
    p.add_argument("--labels", type=Path, default=None,
                   help="where to write the labels, one JSON object per line (default var/sim-labels-<seed>.jsonl)")
    p.add_argument("--promotions", type=float, default=0.0005, metavar="SHARE",
                   help="new promotion versions per event, after two at the start (default 0.0005; 0 = none)")
    p.add_argument("--no-monthly-budgets", action="store_true",
                   help="spend limits set daily limits only (the benchmark's peers know no monthly budgets)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--id-prefix", default="sim-", help="prefix of every generated id (default sim-)")


def main(args: argparse.Namespace) -> int:
    s = settings.load()
    if args.rate < 0 or (args.duration is not None and (args.duration <= 0 or args.rate <= 0)):
        print("error: --duration needs a positive --rate (events = rate x duration)", file=sys.stderr)
        return 2
    events = args.events if args.events is not None else (
        int(args.rate * args.duration) if args.duration is not None else 100_000)
    if not 0 < events <= MAX_EVENTS:
        print(f"error: --events must be from 1 to {MAX_EVENTS}", file=sys.stderr)
        return 2
    cfg = SimConfig(
        events=events, users=args.users, creators=args.creators, seed=args.seed, zipf_s=args.zipf,
        mega_live_share=args.mega_live, malformed_share=args.malformed, duplicate_share=args.duplicates,
        id_prefix=args.id_prefix, promotion_share=args.promotions, monthly_budgets=not args.no_monthly_budgets,
        # Paced: event time keeps to the wall clock, so windows and charts look live.
        tick_ms=1000 / args.rate if args.rate else 1,
    )
    # Paced, event time starts now; unpaced (a backlog), it ends now (simulate.start_of).
    start_ts = int(time.time() * 1000) if args.rate else start_of(cfg)
    fraud = bool(args.fraud or args.near_misses)
    # With labelled fraud, the fraud set's promotions (what its bonus_farming labels
    # assume), in force over the whole run, instead of the simulator's own.
    cfg = dataclasses.replace(cfg, start_ts=start_ts, promotion_share=0.0 if fraud else cfg.promotion_share)
    messages = generate(cfg, economics.load(s.economics_file))
    if fraud:
        span = max(1, int(events * cfg.tick_ms))
        messages = itertools.chain(simulate_fraud.promotions(start_ts, start_ts + span + 3_600_000, args.id_prefix),
                                   messages)
        extra = simulate_fraud.scripts(args.fraud, args.near_misses, start_ts, max(1, int(events * cfg.tick_ms)),
                                       args.seed, args.id_prefix)
        labels = args.labels or s.data_dir / f"sim-labels-{args.seed}.jsonl"
        labels.parent.mkdir(parents=True, exist_ok=True)
        simulate_fraud.write_labels(labels, extra)
        messages = simulate_fraud.inject(messages, extra)
        events += sum(len(x.events) for x in extra) + len(simulate_fraud.PROMOTIONS)
        print(f"{len(extra)} labelled instances ({sum(len(x.events) for x in extra)} events) injected; "
              f"labels in {labels}")
    asyncio.run(topics.ensure_topics(s))
    sent, elapsed = asyncio.run(_produce(s, messages, events, args.rate))
    print(f"\nproduced {sent} events in {elapsed:.1f}s ({sent / max(elapsed, 1e-9):.0f} events/s)")
    return 0


async def _produce(s: settings.Settings, messages: Iterator[Message], total: int, rate: float) -> tuple[int, float]:
    producer = AIOKafkaProducer(**s.kafka_options(), linger_ms=10, acks="all", enable_idempotence=True)
    await producer.start()
    started = last_report = time.monotonic()
    sent = 0
    try:
        for topic, key, value in messages:
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await producer.send(s.topic(topic), value, key=key)
            sent += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                done = sent / total
                bar = "#" * int(30 * done)
                print(f"\r[{bar:<30}] {sent}/{total} {sent / (now - started):.0f} events/s", end="", flush=True)
        await producer.flush()
    finally:
        await producer.stop()
    return sent, time.monotonic() - started
