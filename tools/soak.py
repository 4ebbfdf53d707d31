"""`python -m pipeline soak --minutes N`: a simulated live event against several
workers, one of them SIGKILLed and restarted, or removed and added back, every
`--kill-every` seconds (alternately), and the local
Redis stopped for `--redis-outage` seconds halfway (restarted empty), then the
invariants checked on everything the pipeline published.

Checked at the end (after the workers have read every input and Redis has caught up):
- one committed outcome per well-formed input message, one dead letter per malformed
  one; per event id exactly one accepted-or-rejected outcome, the copies `duplicate`;
- coins conserved: recharged (outcomes) = recharged (read model) = balances + spent,
  spent (outcomes) = spent (read model), and per gift diamonds = floor(coins x share);
- diamonds conserved: credited (outcomes) = creators' lifetime = available + paid out,
  and paid out (outcomes) = paid out (read model);
- memory: each worker's RSS at the start (after warm-up) and at the end;
- with --causal (a producer that waits for each round's acknowledgements): every
  outcome, balance_after included, equal to the independent reference ledger's
  (tests/support/reference.py) applying the rounds in order.
Results go to bench/results/<date>-soak.json and .md; exit 1 if an invariant fails.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agents.ingest.decode import decode
from pipeline import economics, redis_client, settings, topics
from pipeline.engine.stage import Malformed
from pipeline.settings import Settings
from tools import causal
from tools.benchmark import RESULTS, cleanup, deployment, machine, runs
from tools.benchmark.probes import Lag, ProcStats
from tools.infra import dev
from tools.local_worker import get
from tools.simulate import Message, SimConfig, generate

SAMPLE_S = 5.0
DRAIN_TIMEOUT_S = 600.0
CONVERGE_TIMEOUT_S = 180.0
CAUSAL_ROUND = 300  # messages per acknowledged round in --causal
HEALTH_TIMEOUT_S = 180.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=10.0, help="minutes of traffic (default 10)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--rate", type=float, default=2_000, help="events produced per second (default 2000)")
    p.add_argument("--kill-every", type=float, default=60.0, help="seconds between SIGKILLs (default 60)")
    p.add_argument("--redis-outage", type=float, default=30.0, metavar="SECONDS",
                   help="stop the local Redis this long halfway through, restart it empty (default 30; 0: none)")
    p.add_argument("--seed", type=int, default=5, help="random seed (default 5)")
    p.add_argument("--causal", action="store_true",
                   help="a causal stream (tools/causal.py): the producer waits for each round's acknowledgements, "
                        "so every outcome is fixed, and each is compared with the reference ledger's, exactly")


class Fleet:
    """Worker processes on ports PIPELINE_WEB_PORT + i, killed and restarted at will."""

    def __init__(self, s: Settings, n: int, log_dir: Path) -> None:
        self.s, self.n, self.log_dir = s, n, log_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def settings_of(self, i: int) -> Settings:
        return Settings(**{**self.s.__dict__, "web_port": self.s.web_port + i})

    def start(self, i: int) -> None:
        with open(self.log_dir / f"soak-worker-{i}.log", "ab") as log:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker"], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **runs.worker_env(self.s, self.s.web_port + i)})

    async def healthy(self, i: int) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.procs[i].poll() is not None:
                raise SystemExit(f"worker {i} exited with {self.procs[i].returncode}; see {self.log_dir}")
            try:
                if get(self.settings_of(i), "/health").get("status") == "ok":
                    return
            except (OSError, ValueError):
                pass
            await asyncio.sleep(0.5)
        raise SystemExit(f"worker {i} not healthy after {HEALTH_TIMEOUT_S:.0f}s; see {self.log_dir}")

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop_one(self, i: int) -> None:
        """A graceful scale-down: SIGTERM, the worker leaves the group."""
        self.procs[i].terminate()
        self.procs[i].wait(timeout=60)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def traffic(args: argparse.Namespace, econ: economics.Economics, expected: Counter[str]) -> Iterator[Message]:
    """The simulator's live event with 1 % producer-retry duplicates and 0.1 % malformed
    messages; counts what it yields (well-formed by decoding, as the worker will)."""
    cfg = SimConfig(events=int(args.rate * args.minutes * 60), users=50_000, creators=2_000, seed=args.seed,
                    duplicate_share=0.01, malformed_share=0.001, payout_share=0.002, id_prefix="s",
                    # Live: event time keeps to the clock from the first message on.
                    start_ts=int(time.time() * 1000), tick_ms=1000 / args.rate)
    for topic, key, value in generate(cfg, econ):
        expected["malformed" if isinstance(decode(topic, key, value), Malformed) else "well_formed"] += 1
        yield topic, key, value


async def redis_outage(base: Settings, after_s: float, seconds: float, log: list[dict[str, Any]]) -> None:
    """Stop the local Redis (`dev up`'s) halfway through, and start it again empty."""
    server = dev.local_redis(base)
    await asyncio.sleep(after_s)
    started = time.monotonic()
    await asyncio.to_thread(server.stop)
    log.append({"event": "redis stopped"})
    await asyncio.sleep(seconds)
    await asyncio.to_thread(server.start)
    log.append({"event": "redis started empty", "down_s": round(time.monotonic() - started, 1)})


async def run(s: Settings, args: argparse.Namespace, log_dir: Path, base: Settings) -> dict[str, Any]:
    econ = economics.load(s.economics_file)
    fleet = Fleet(s, args.workers, log_dir)
    rng = random.Random(args.seed)
    expected: Counter[str] = Counter()
    kills: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    for i in range(args.workers):
        fleet.start(i)
    try:
        await asyncio.gather(*(fleet.healthy(i) for i in range(args.workers)))
        lag = Lag(s, s.group_id, list(topics.INPUTS))
        await lag.start()
        started = time.monotonic()
        rounds: list[list[causal.Event]] = []
        producing: asyncio.Future[Any]  # the rounds and time (causal) or the count sent
        if args.causal:
            stream = causal.CausalStream(causal.CausalConfig(
                rounds=max(1, int(args.rate * args.minutes * 60 / CAUSAL_ROUND)), per_round=CAUSAL_ROUND,
                users=50_000, creators=2_000, rate=args.rate, seed=args.seed, id_prefix="k"), econ)
            producing = asyncio.ensure_future(causal.produce(s, stream))
        else:
            producing = asyncio.ensure_future(runs.produce(s, traffic(args, econ, expected), args.rate))
        outages: list[dict[str, Any]] = []
        if args.redis_outage > 0:
            outage = asyncio.ensure_future(redis_outage(base, args.minutes * 30, args.redis_outage, outages))
        next_kill = started + args.kill_every
        try:
            while True:
                await asyncio.sleep(SAMPLE_S)
                now = time.monotonic()
                ends, done = await lag.read()
                timeline.append({"t": round(now - started, 1), "lag": ends - done, "committed": done,
                                 "rss_mb": [round(ProcStats([pid]).rss_mb(), 1) for pid in fleet.pids()]})
                if producing.done() and done >= ends:
                    break
                if not producing.done() and now >= next_kill:
                    # Alternately a crash (SIGKILL, back at once) and a scale-down and up
                    # (SIGTERM, a third of the interval with one worker fewer, then added).
                    victim = rng.randrange(args.workers)
                    graceful = len(kills) % 2 == 1
                    if graceful:
                        fleet.stop_one(victim)
                    else:
                        fleet.kill(victim)
                    kills.append({"t": round(now - started, 1), "worker": victim,
                                  "how": "removed" if graceful else "SIGKILL"})
                    if graceful:
                        await asyncio.sleep(args.kill_every / 3)
                    fleet.start(victim)
                    await fleet.healthy(victim)
                    next_kill = time.monotonic() + args.kill_every
                if now - started > args.minutes * 60 + DRAIN_TIMEOUT_S:
                    raise SystemExit("the workers did not catch up within the drain timeout")
            produced = await producing
            if args.causal:
                rounds = produced[0]
                expected["well_formed"] = sum(len(r) for r in rounds)
            if args.redis_outage > 0:
                await outage
        finally:
            await lag.stop()
        elapsed = time.monotonic() - started
        checks = await check(s, expected, econ)
        if args.causal:
            checks["every_outcome_equals_the_reference"] = await exact(s, rounds)
    finally:
        fleet.stop()
    warm = next((row for row in timeline if row["t"] >= 30), timeline[0] if timeline else None)
    return {"minutes": args.minutes, "workers": args.workers, "offered_rate": args.rate, "elapsed_s": round(elapsed, 1),
            "produced": dict(expected), "kills": kills, "redis_outage": outages,
            "max_lag": max((r["lag"] for r in timeline), default=0),
            "rss_mb_start": warm["rss_mb"] if warm else None,
            "rss_mb_end": timeline[-1]["rss_mb"] if timeline else None,
            "rss_mb_peak": max((max(r["rss_mb"]) for r in timeline if r["rss_mb"]), default=None),
            "checks": checks, "ok": all(c["ok"] for c in checks.values()), "timeline": timeline}


async def _read_model_sums(s: Settings) -> dict[str, int]:
    client = redis_client.connect(s, decode_responses=True)
    sums: Counter[str] = Counter()
    try:
        for kind, fields in (("user", ("coins", "recharged_coins", "spent_coins")),
                             ("creator", ("diamonds", "lifetime_diamonds", "paid_out_diamonds"))):
            keys = [k async for k in client.scan_iter(match=s.redis_key(f"{kind}:*"), count=5_000)]
            async with client.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.hmget(k, *fields)
                rows = await pipe.execute()
            for row in rows:
                for name, value in zip(fields, row):
                    sums[f"{kind}.{name}"] += int(value or 0)
    finally:
        await client.aclose()
    return dict(sums)


async def check(s: Settings, expected: Counter[str], econ: economics.Economics) -> dict[str, dict[str, Any]]:
    outcomes = await topics.read_values(s, topics.OUTCOMES)
    dead = await topics.read_values(s, topics.DEAD_LETTERS)
    decided: Counter[str] = Counter(o["event_id"] for o in outcomes if o["status"] != "duplicate")
    seen: Counter[str] = Counter(o["event_id"] for o in outcomes)
    total: Counter[str] = Counter()
    share_ok = True
    for o in outcomes:
        if o["status"] == "accepted":
            total[o["type"]] += o["diamonds"] if o["type"] == "payout" else (o["coins"] or 0)
            if o["type"] == "gift":
                total["gift_diamonds"] += o["diamonds"]
                share_ok &= o["diamonds"] == econ.creator_diamonds(o["coins"])
    checks: dict[str, dict[str, Any]] = {
        "one_outcome_per_message": {"ok": len(outcomes) == expected["well_formed"],
                                    "outcomes": len(outcomes), "well_formed_messages": expected["well_formed"]},
        "one_dead_letter_per_malformed": {"ok": len(dead) == expected["malformed"], "dead_letters": len(dead),
                                          "malformed_messages": expected["malformed"]},
        "one_decision_per_event_id": {"ok": set(decided) == set(seen) and max(decided.values(), default=1) == 1,
                                      "event_ids": len(seen),
                                      "decided_twice": sum(1 for n in decided.values() if n > 1)},
        "creator_share_per_gift": {"ok": share_ok},
    }
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:  # the read model is written after each commit, and refilled after kills
        rm = await _read_model_sums(s)
        ledger = {
            "recharged_equals_read_model": total["recharge"] == rm.get("user.recharged_coins", 0),
            "coins_conserved": (rm.get("user.recharged_coins", 0)
                                == rm.get("user.coins", 0) + rm.get("user.spent_coins", 0)),
            "spent_equals_read_model": total["gift"] == rm.get("user.spent_coins", 0),
            "credited_equals_lifetime": total["gift_diamonds"] == rm.get("creator.lifetime_diamonds", 0),
            "diamonds_conserved": (rm.get("creator.lifetime_diamonds", 0)
                                   == rm.get("creator.diamonds", 0) + rm.get("creator.paid_out_diamonds", 0)),
            "paid_out_equals_read_model": total["payout"] == rm.get("creator.paid_out_diamonds", 0),
        }
        if all(ledger.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    figures = {"outcomes": dict(total), "read_model": rm, "fees": total["gift"] - total["gift_diamonds"]}
    checks.update({name: {"ok": ok} for name, ok in ledger.items()})
    checks["coins_conserved"].update(figures)
    return checks


async def exact(s: Settings, rounds: list[list[causal.Event]]) -> dict[str, Any]:
    """Causal mode: each event's committed outcomes (a crash may repeat one, identical)
    against the reference ledger applying the rounds in order."""
    from tests.support.reference import ReferenceLedger  # independent of the pipeline: written from CONTRACT.md

    reference = ReferenceLedger()
    want = {ev["event_id"]: json.dumps(reference.apply(topic, ev), sort_keys=True) for r in rounds for topic, ev in r}
    got: dict[str, set[str]] = {}
    for o in await topics.read_values(s, topics.OUTCOMES):
        got.setdefault(o["event_id"], set()).add(json.dumps(o, sort_keys=True))
    wrong = [eid for eid, record in want.items() if got.get(eid) != {record}]
    return {"ok": not wrong, "events": len(want), "differ": len(wrong),
            "examples": [{"expected": json.loads(want[e]), "got": sorted(got.get(e, ()))} for e in wrong[:5]]}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Soak, {result['date']}", "",
             f"{result['workers']} workers, {result['minutes']} min at {result['offered_rate']:.0f} events/s offered; "
             f"{sum(result['produced'].values()):,} messages ({result['produced'].get('malformed', 0)} malformed); "
             f"{sum(k['how'] == 'SIGKILL' for k in result['kills'])} SIGKILLs and "
             f"{sum(k['how'] == 'removed' for k in result['kills'])} workers removed and added back; Redis down "
             f"{next((e['down_s'] for e in result['redis_outage'] if 'down_s' in e), 0)} s "
             f"(restarted empty); max lag {result['max_lag']:,}; worker RSS MB start {result['rss_mb_start']}, "
             f"end {result['rss_mb_end']}, peak {result['rss_mb_peak']}; done in {result['elapsed_s']} s.", "",
             "| check | ok |", "|---|---|"]
    lines += [f"| {name} | {'yes' if c['ok'] else '**no**'} |" for name, c in result["checks"].items()]
    lines += ["", f"Command: `{result['command']}`."]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    base = settings.load()
    print("\n".join(dev.up(base)))
    log_dir = base.data_dir / "soak"
    log_dir.mkdir(parents=True, exist_ok=True)
    s = deployment(base, "soak")
    try:
        result = asyncio.run(run(s, args, log_dir, base))
    finally:
        cleanup(s)
    result = {"scenario": "soak", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": machine(),
              "command": (f"python -m pipeline soak --minutes {args.minutes} --workers {args.workers} "
                          f"--rate {args.rate:.0f} --kill-every {args.kill_every:.0f} "
                          f"--redis-outage {args.redis_outage:.0f} --seed {args.seed}"
                          + (" --causal" if args.causal else "")),
              **result}
    stem = RESULTS / f"{dt.date.today().isoformat()}-soak{'-causal' if args.causal else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    print(f"written {stem}.json and .md")
    return 0 if result["ok"] else 1
