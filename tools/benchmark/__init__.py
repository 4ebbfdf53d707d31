"""`python -m pipeline bench SCENARIO`: benchmarks whose results are committed files.

Every scenario starts what it needs (local Kafka and Redis if not running, workers on a
fresh topic and key prefix, deleted afterwards) and writes
`bench/results/<date>-<scenario>.json`, `.md` and `.png`:
- `uniform`: a backlog of gifts spread over 10,000 creators, read by one worker, by
  the peers (bench/peers/: Kafka Streams, Quix Streams) on the same topics, by the
  naive Faust reference (bench/naive.py) and a plain aiokafka reader (the ceiling),
  then by two workers (backlog.py). `--repeat N`: ours and the peers N times,
  interleaved; each reported by its median run, with median, min and max (spread.py).
- `mega-live`: the same with half of all gifts to one creator and one stream.
- `latency`: a fixed offered rate (default 5,000 gifts/s; `latency-<rate>` otherwise):
  send-to-outcome and send-to-leaderboard latency.
- `dedupe`: the duplicate index's memory over days of batches in compressed time.
- `state`: 1,000,000 users and 10,000,000 events: worker memory, then the recovery time
  of a worker started after a SIGKILL.
- `leaderboard-read`: HTTP reads of a 100,000-gifter board.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import platform
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import aiokafka
import faust
import redis

from pipeline import economics, redis_client, settings, topics
from pipeline.settings import PROJECT_ROOT, Settings
from tools import broken
from tools.benchmark import backlog, index, probes, readbench, report, runs, spread
from tools.infra import dev
from tools.infra.kafka import KAFKA_VERSION
from tools.simulate import SimConfig, generate

RESULTS = PROJECT_ROOT / "bench" / "results"
REFERENCE_BUDGET_S = 60.0  # the naive reference and the ceiling run at most this long


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    mem_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "platform": platform.platform(), "java": java[0] if java else "?",
            "kafka": KAFKA_VERSION, "aiokafka": aiokafka.__version__, "faust": faust.__version__,
            "redis_py": redis.__version__,
            "note": "one machine: workers, broker, Redis and the load generator share it"}


def _config(scenario: str, args: argparse.Namespace) -> SimConfig:
    base = dict(creators=10_000, seed=args.seed, zipf_s=0.0, spend_limit_share=0.001, payout_share=0.001, id_prefix="b")
    if scenario == "state":
        return SimConfig(events=args.events or 10_000_000, users=1_000_000, **base)
    events = args.events or 200_000
    if scenario == "latency":
        events = int(args.rate / GIFT_SHARE * args.duration)
    return SimConfig(events=events, users=50_000, mega_live_share=0.5 if scenario == "mega-live" else 0.0, **base)


# Gifts among the simulator's events in these scenarios (the rest are mostly recharges);
# measured by `_gift_share` on every run and reported.
GIFT_SHARE = 0.64


def _gift_share(messages: list[Any]) -> float:
    return sum(1 for t, _, _ in messages if t == topics.GIFTS) / max(1, len(messages))


def deployment(base: Settings, tag: str) -> Settings:
    prefix = f"bench-{os.getpid()}-{tag}-"
    s = Settings(**{**base.__dict__, "topic_prefix": prefix, "redis_prefix": prefix})
    asyncio.run(topics.ensure_topics(s))
    return s


def cleanup(s: Settings) -> None:
    """The deployment's topics (the peers' outputs and internal topics start with its
    prefix too: a broker full of old runs' partitions is slower) and Redis keys."""
    asyncio.run(topics.delete_topics(s))
    asyncio.run(backlog.delete_peer_topics(s))
    client = redis_client.connect_sync(s)
    for keys in _batched(client.scan_iter(match=f"{s.redis_prefix}*", count=10_000), 10_000):
        client.unlink(*keys)


def _batched(it: Any, n: int) -> Any:
    while batch := list(itertools.islice(it, n)):
        yield batch


def throughput(base: Settings, scenario: str, args: argparse.Namespace, log_dir: Path,
               root: Path | None = None) -> dict[str, Any]:
    """Every engine on the same backlog, produced before any starts: ours (one worker,
    every feature on), the peers on the same topics, the naive reference and the
    ceiling; then two of our workers on a copy of the backlog. With --repeat N, ours and
    the peers run N rounds, each on a fresh copy (ours, then each peer, then again), and
    each is reported by its median run with the spread of all."""
    econ = economics.load(base.economics_file)
    messages = list(generate(_config(scenario, args), econ))
    share = _gift_share(messages)
    expected = backlog.reference_outcomes(messages)
    figures: dict[str, Any] = {"events": len(messages), "gift_share": round(share, 3)}
    peers = [p for p in backlog.PEERS if p.name in args.peers]
    for peer in peers:
        backlog.prepare(peer, log_dir)
    rounds: dict[str, list[dict[str, Any]]] = {}
    bounds: dict[str, Any] = {}  # the reference and the ceiling, run once: they bound the picture
    for i in range(repeat_of(args)):
        s = deployment(base, f"{scenario}-w1" if i == 0 else f"{scenario}-w1-r{i + 1}")
        try:
            asyncio.run(runs.produce(s, messages))
            rounds.setdefault("ours", []).append(asyncio.run(backlog.run_ours(s, 1, expected, log_dir, root)))
            for peer in peers:
                rounds.setdefault(peer.name, []).append(asyncio.run(backlog.run_peer(s, peer, expected, log_dir)))
            if i == 0:
                naive = probes.Answered.of(runs.well_formed_ids(messages))
                bounds["naive"] = asyncio.run(runs.naive(s, naive, REFERENCE_BUDGET_S, log_dir))
                bounds["ceiling"] = asyncio.run(runs.ceiling(s, len(messages), REFERENCE_BUDGET_S))
        finally:
            cleanup(s)
    figures.update({name: spread.combine(done) for name, done in rounds.items()})
    figures.update(bounds)
    if repeat_of(args) > 1:
        figures["repeat"] = repeat_of(args)
    s = deployment(base, f"{scenario}-w2")
    try:
        asyncio.run(runs.produce(s, messages))
        figures["ours_two_workers"] = asyncio.run(backlog.run_ours(s, 2, expected, log_dir, root))
    finally:
        cleanup(s)
    figures["verdict"] = backlog.verdict(figures)
    return _compared(figures, share)


REPEATABLE = ("uniform", "mega-live")


def repeat_of(args: argparse.Namespace) -> int:
    """--repeat N (default 1: one run of each engine, the single-run result format)."""
    return max(1, int(getattr(args, "repeat", 1) or 1))


def latency(base: Settings, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    econ = economics.load(base.economics_file)
    cfg = _config("latency", args)
    messages = list(generate(SimConfig(**{**cfg.__dict__, "start_ts": None}), econ))
    share = _gift_share(messages)
    s = deployment(base, "latency")
    try:
        ours = asyncio.run(runs.latency(s, messages, args.rate / share, log_dir))
    finally:
        cleanup(s)
    return {"offered_gifts_per_s": args.rate, "gift_share": round(share, 3), "duration_s": args.duration, "ours": ours}


def state(base: Settings, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    econ = economics.load(base.economics_file)
    cfg = _config("state", args)
    s = deployment(base, "state")
    try:
        figures: dict[str, Any] = {"events": cfg.events, "users": cfg.users}
        counts: Counter[str] = Counter()
        figures["ours"] = asyncio.run(runs.state(s, runs.counting(generate(cfg, econ), counts), cfg.events, log_dir))
        figures["gift_share"] = share = round(counts[topics.GIFTS] / cfg.events, 3)
        # Neither malformed nor duplicate events in this config: each event id is one outcome.
        naive = probes.Answered(cfg.events)
        figures["naive"] = asyncio.run(runs.naive(s, naive, REFERENCE_BUDGET_S, log_dir))
        figures["ceiling"] = asyncio.run(runs.ceiling(s, cfg.events, REFERENCE_BUDGET_S))
    finally:
        cleanup(s)
    return _compared(figures, share)


def _compared(figures: dict[str, Any], share: float) -> dict[str, Any]:
    """Gifts per second of every run, and ours beside each of the others (rates and,
    where measured, events per CPU-second; of medians for repeated runs)."""
    runs_ = [name for name in report.RUNS if name in figures]
    for name in runs_:
        figures[name]["gifts_per_s"] = round(figures[name]["events_per_s"] * share)
    ours = figures["ours"]
    ratios: dict[str, float] = {}
    for name in runs_:
        if name in ("ours", "ours_two_workers"):
            continue
        other = figures[name]
        ratios[f"ours_vs_{name}"] = round(spread.rate(ours) / max(1.0, spread.rate(other)), 2)
        ours_cpu, other_cpu = spread.rate(ours, "events_per_cpu_s"), spread.rate(other, "events_per_cpu_s")
        if ours_cpu and other_cpu:
            ratios[f"ours_vs_{name}_per_cpu_s"] = round(ours_cpu / other_cpu, 2)
    if "ours_two_workers" in runs_:
        ratios["two_workers_vs_one"] = round(
            figures["ours_two_workers"]["events_per_s"] / max(1.0, spread.rate(ours)), 2)
    figures["ratios"] = ratios
    return figures


DOCUMENT = PROJECT_ROOT / "docs" / "benchmarks.md"


def free_stem(results: Path, name: str, today: str) -> Path:
    """`<today>-<name>`, or with -2, -3... if a run of the same day has that name: a
    second run never overwrites the first."""
    stem, n = results / f"{today}-{name}", 1
    while stem.with_suffix(".json").exists():
        n += 1
        stem = results / f"{today}-{name}-{n}"
    return stem


def main(args: argparse.Namespace) -> int:
    if args.scenario == "index":
        changed = index.write(DOCUMENT, RESULTS)
        print(f"{DOCUMENT.relative_to(PROJECT_ROOT)}: results index {'rewritten' if changed else 'up to date'}")
        return 0
    if getattr(args, "broken", None) and args.scenario not in REPEATABLE:
        raise SystemExit(f"--broken is for the backlog scenarios ({', '.join(REPEATABLE)}), not {args.scenario}")
    if repeat_of(args) > 1 and args.scenario not in REPEATABLE:
        raise SystemExit(f"--repeat is for the backlog scenarios ({', '.join(REPEATABLE)}), not {args.scenario}")
    base = settings.load()
    print("\n".join(dev.up(base)))
    log_dir = base.data_dir / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.scenario == "leaderboard-read":
        s = deployment(base, "read")
        try:
            from tools.local_worker import running_worker

            with running_worker(s, log_dir / "bench-worker.log", runs.worker_env(s, s.web_port)):
                figures = readbench.leaderboard_read(s, args.gifters, args.requests, args.seed)
        finally:
            cleanup(s)
    elif args.scenario == "dedupe":
        from tools.benchmark import dedupe

        figures = dedupe.run(args.seed, days=args.days)
    elif args.scenario == "latency":
        figures = latency(base, args, log_dir)
    elif args.scenario == "state":
        figures = state(base, args, log_dir)
    elif args.broken:
        with broken.broken_tree(args.broken) as root:
            broken.check_imports(root, broken.worker_env(root, dict(os.environ)))
            figures = throughput(base, args.scenario, args, log_dir, root)
        figures["broken"] = args.broken
    else:
        figures = throughput(base, args.scenario, args, log_dir)
    # Settings given to the run's workers beyond the defaults (secrets left out).
    given = {k: v for k, v in os.environ.items() if k.startswith("PIPELINE_") and "KEY" not in k
             and "TOKEN" not in k and "PASSWORD" not in k}
    result = {"scenario": args.scenario, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": machine(), "settings": given, "figures": figures}
    name = args.scenario if args.scenario != "latency" or args.rate == 5_000 else f"latency-{args.rate:.0f}"
    name += f"-broken-{args.broken}" if args.broken else ""
    stem = free_stem(RESULTS, name, dt.date.today().isoformat())
    paths = report.write(stem, result)
    index.write(DOCUMENT, RESULTS)
    print(report.markdown(result))
    print("written " + ", ".join(str(p.relative_to(PROJECT_ROOT)) for p in paths) + f"; index in {DOCUMENT.name}")
    judged = figures.get("verdict") if isinstance(figures, dict) else None
    if isinstance(judged, dict) and not judged["ok"]:
        print(f"FAILED: {', '.join(judged['failed'])}")
        return 1
    return 0
