"""Engines side by side on one backlog: our worker(s) and the peers a user would pick
instead (bench/peers/), each started on the same input topics already produced, read
from the beginning, and timed from its processes' start until its last outcome is
visible.

Every engine is judged the same way: a read_committed consumer reads its outcome topic
until every expected event id is there (that read is the run's end); its outcomes are
compared by event id with the reference ledger (tests/support/reference.py, written
from the contract alone); its processes' CPU (whole, from their start) and memory are
sampled each second.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline import redis_client, topics
from pipeline.settings import PROJECT_ROOT, Settings
from tools.benchmark.probes import Answered, ProcStats, board_total, read_outcomes
from tools.benchmark.runs import start_workers
from tools.simulate import Message

PEERS_DIR = PROJECT_ROOT / "bench" / "peers"
MAX_RUN_S = 900  # an engine that has not answered every event by then failed the run
STALL_SHARE = 0.3  # a second below this share of the run's median rate is a stall
OUTCOME_FIELDS = ("event_id", "type", "status", "reason", "subject_id", "coins", "diamonds", "usd_cents",
                  "balance_after", "ts")


@dataclass(frozen=True)
class Peer:
    """A peer engine: `prepare` builds it (once, untimed), `command` runs it with the
    PEER_* environment (bench/peers/README.md); it writes outcomes to
    `{PEER_OUTPUT_PREFIX}ledger-outcomes`."""

    name: str
    prepare: list[str]
    command: list[str]

    @property
    def dir(self) -> Path:
        return PEERS_DIR / self.name


PEERS = (
    Peer("kstreams", ["bash", "run.sh", "build"], ["bash", "run.sh"]),
    Peer("quix", ["bash", "run.sh", "build"], ["bash", "run.sh"]),
)


def reference_outcomes(messages: list[Message]) -> dict[str, dict[str, Any]]:
    """The reference ledger's outcome of every event, by event id (the first one:
    a duplicate's own outcome says `duplicate`)."""
    from tests.support.reference import ReferenceLedger

    ledger = ReferenceLedger()
    out: dict[str, dict[str, Any]] = {}
    for topic, _, value in messages:
        ev = orjson.loads(value)
        o = ledger.apply(topic, ev)
        out.setdefault(o["event_id"], o)
    return out


def verdict(figures: dict[str, Any], runs: tuple[str, ...] = ("ours", "ours_two_workers")) -> dict[str, Any]:
    """A benchmark run is done only if it was right: each of our runs complete, every
    outcome the reference's (payouts held by a fraud rule counted apart) and the
    creators' board exact. A fast wrong run is a failed run."""
    checks: dict[str, bool] = {}
    for name in runs:
        run = figures.get(name)
        if not isinstance(run, dict):
            continue
        agreed = run.get("agreement", {})
        checks[f"{name}_complete"] = bool(run.get("complete"))
        checks[f"{name}_equals_the_reference"] = agreed.get("different") == 0 and agreed.get("missing") == 0
        checks[f"{name}_board_exact"] = bool(run.get("board_exact"))
    return {"ok": bool(checks) and all(checks.values()), "checks": checks,
            "failed": [name for name, ok in checks.items() if not ok]}


def agreement(records: list[bytes], expected: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Outcomes compared with the reference by event id (a repeat after a crash may
    repeat an identical record; a contradicting one is a difference). Payouts that our
    fraud rule held (`held_for_review`) are counted apart: the reference has no rules."""
    seen: dict[str, dict[str, Any]] = {}
    different: list[str] = []
    held = 0
    for raw in records:
        o = orjson.loads(raw)
        o = {k: o.get(k) for k in OUTCOME_FIELDS}
        eid = o["event_id"]
        if eid in seen:
            if seen[eid] != o:
                different.append(eid)
            continue
        seen[eid] = o
        want = expected.get(eid)
        if want is None:
            different.append(eid)
        elif o["reason"] == "held_for_review" and want["type"] == "payout":
            held += 1
        elif {k: want.get(k) for k in OUTCOME_FIELDS} != o:
            different.append(eid)
    missing = sum(1 for eid in expected if eid not in seen)
    return {"identical": len(seen) - len(different) - held, "different": len(different), "missing": missing,
            "held_for_review": held, "examples": different[:5]}


def stalls(timeline: list[dict[str, float]], first: float | None, last: float | None) -> dict[str, Any]:
    """Seconds between the first and the last outcome below STALL_SHARE of the run's
    median rate (input was waiting all along: the backlog was there from the start)."""
    inside = [row for row in timeline if first is not None and last is not None and first + 1 <= row["t"] <= last]
    if not inside:
        return {"median_per_s": 0, "stalled_seconds": 0, "at": []}
    median = statistics.median(row["processed_per_s"] for row in inside)
    low = [row["t"] for row in inside if row["processed_per_s"] < STALL_SHARE * median]
    return {"median_per_s": round(median), "stalled_seconds": len(low), "at": low[:20]}


async def measure(s: Settings, outcome_topic: str, pids: list[int], started: float, expected: dict[str, dict[str, Any]],
                  alive: Callable[[], bool]) -> dict[str, Any]:
    """One engine's figures, counted from `started`, when its processes started. Its end
    is the read of the last expected outcome (by event id: a repeat cannot stand in for
    a missing one); its CPU, read then, is its processes' whole CPU since they started."""
    stats = ProcStats(pids, tree=True)
    answered = Answered.of(eid.encode() for eid in expected)
    timeline, records = await read_outcomes(s, outcome_topic, answered, started, stats, alive=alive,
                                            until_s=MAX_RUN_S, keep=True)
    cpu = stats.cpu_seconds()
    end = answered.last - started if answered.done and answered.last is not None else None
    first = answered.first - started if answered.first is not None else None
    return {
        "events": answered.count, "outcome_records": answered.records, "complete": answered.done,
        "elapsed_s": round(end, 2) if end else None,
        "events_per_s": round(answered.expected / end) if end else 0,
        "first_to_last_per_s": round(answered.rate()),
        "first_outcome_s": round(first, 2) if first is not None else None,
        "cpu_avg_pct": round(100 * cpu / end, 1) if end else None,
        "events_per_cpu_s": round(answered.count / cpu) if cpu > 0 else 0,
        "peak_rss_mb": round(stats.peak_rss_mb, 1),
        "agreement": agreement(records, expected),
        "stalls": stalls(timeline, first, end),
        "timeline": timeline,
    }


async def create_outputs(s: Settings, prefix: str) -> None:
    admin = AIOKafkaAdminClient(**s.kafka_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}{name}", s.partitions, s.replication_factor)
                                   for name in (topics.OUTCOMES, topics.DEAD_LETTERS)])
    finally:
        await admin.close()


async def delete_peer_topics(s: Settings) -> None:
    """Topics that name the deployment's prefix inside (Quix Streams names its
    changelogs `changelog__{app id}...`)."""
    admin = AIOKafkaAdminClient(**s.kafka_options(), request_timeout_ms=30_000)
    await admin.start()
    try:
        theirs = [t for t in await admin.list_topics() if s.topic_prefix in t and not t.startswith(s.topic_prefix)]
        if theirs:
            await admin.delete_topics(theirs)
    finally:
        await admin.close()


def prepare(peer: Peer, log_dir: Path) -> None:
    """Build a peer (untimed): Maven for Kafka Streams, a venv for Quix Streams."""
    with open(log_dir / f"bench-{peer.name}-build.log", "ab") as log:
        done = subprocess.run(peer.prepare, cwd=peer.dir, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"building the {peer.name} peer failed; see {log_dir / f'bench-{peer.name}-build.log'}")


async def run_peer(s: Settings, peer: Peer, expected: dict[str, dict[str, Any]], log_dir: Path) -> dict[str, Any]:
    """A peer on the backlog of deployment `s`: its own application id and outputs."""
    out_prefix = f"{s.topic_prefix}{peer.name}-"
    await create_outputs(s, out_prefix)
    state_dir = s.data_dir / "bench" / f"{peer.name}-state-{os.getpid()}"
    shutil.rmtree(state_dir, ignore_errors=True)
    env = {**os.environ, "PEER_BOOTSTRAP": s.bootstrap_servers, "PEER_INPUT_PREFIX": s.topic_prefix,
           "PEER_OUTPUT_PREFIX": out_prefix, "PEER_APP_ID": f"{s.topic_prefix}{peer.name}",
           "PEER_PARTITIONS": str(s.partitions), "PEER_STATE_DIR": str(state_dir)}
    with open(log_dir / f"bench-{peer.name}.log", "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(peer.command, cwd=peer.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        figures = await measure(s, out_prefix + topics.OUTCOMES, [proc.pid], started, expected,
                                lambda: proc.poll() is None)
    finally:
        _stop(proc)
        shutil.rmtree(state_dir, ignore_errors=True)
    return figures


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


async def run_ours(s: Settings, workers: int, expected: dict[str, dict[str, Any]], log_dir: Path,
                   root: Path | None = None) -> dict[str, Any]:
    """Our worker(s) on the backlog of deployment `s` (run from the tree at `root` if
    given), then the time until the creators' board shows every credited diamond."""
    with ExitStack() as stack:
        started = time.perf_counter()  # the workers' start-up (health) counts
        procs = start_workers(stack, s, workers, log_dir, root)
        figures = await measure(s, s.topic(topics.OUTCOMES), [p.pid for p in procs], started, expected,
                                lambda: all(p.poll() is None for p in procs))
        credited = sum(o["diamonds"] for o in expected.values() if o["type"] == "gift" and o["status"] == "accepted")
        client = redis_client.connect(s)
        try:
            deadline = time.perf_counter() + 60
            while await board_total(client, s) != credited and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            figures["board_complete_s"] = round(time.perf_counter() - started, 2)
            figures["board_exact"] = await board_total(client, s) == credited
        finally:
            await client.aclose()
        figures.update(workers=workers, credited_diamonds=credited)
    return figures
