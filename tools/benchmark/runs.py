"""The measured runs: our worker(s), the naive Faust reference and the read-only
ceiling, on the same topics of the same broker. Each returns its figures and a
per-second timeline."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from agents.ingest.decode import decode
from agents.readmodel import leaderboards
from pipeline import redis_client, topics
from pipeline.engine.stage import Malformed
from pipeline.settings import PROJECT_ROOT, Settings
from tools import broken
from tools.benchmark.probes import SAMPLE_S, Answered, ProcStats, read_outcomes
from tools.local_worker import get, running_worker
from tools.simulate import InputMessage, Message

INPUTS = list(topics.PARTITIONED_INPUTS)
MAX_RUN_S = 3_600  # a run that has not finished by then is a failed run
RECOVERY_TIMEOUT_S = 900
BOARD_TIMEOUT_S = 60  # after every outcome is read, for the board to show them
PRODUCER = {"linger_ms": 5, "max_batch_size": 512 * 1024}
# Leaderboard latency: every 10th first gift of a (stream, viewer) is watched on its
# board, polled every 10 ms (more would load Redis as much as the ledger does).
BOARD_SAMPLE = 10
BOARD_POLL_S = 0.01
# Every ANSWER_SAMPLE-th gift is also asked for with GET /outcomes/{id}?wait_ms=10000 as
# soon as it is sent, as an app would: the time to that call's answer. A sample: every
# poll costs the worker an HTTP request and Redis reads, on the same 2 cores.
ANSWER_SAMPLE = 25
MAX_OPEN_POLLS = 2_000
# bench/naive.py's topics (not imported: bench/ is outside the type-checked packages).
NAIVE_OUTCOMES = "naive-outcomes"
NAIVE_CREDITS = "naive-credits"
PROBE = b"probe"  # the event id of the event sent after a recovery


def worker_env(s: Settings, web_port: int) -> dict[str, str]:
    return {"PIPELINE_TOPIC_PREFIX": s.topic_prefix, "PIPELINE_REDIS_PREFIX": s.redis_prefix,
            "PIPELINE_WEB_PORT": str(web_port), "PIPELINE_PARTITIONS": str(s.partitions),
            # The load generator's long polls all come from 127.0.0.1, as through a proxy.
            "PIPELINE_HTTP_MAX_CONNECTIONS_PER_CLIENT": str(MAX_OPEN_POLLS + 100),
            "PIPELINE_HTTP_MAX_CONNECTIONS": str(MAX_OPEN_POLLS + 1_000)}


def start_workers(stack: ExitStack, s: Settings, n: int, log_dir: Path,
                  root: Path | None = None) -> list[subprocess.Popen[bytes]]:
    """n healthy workers (web ports from PIPELINE_WEB_PORT up); run from the tree at
    `root` (a broken copy, tools/broken.py) when given."""
    def env(i: int) -> dict[str, str]:
        given = worker_env(s, s.web_port + i)
        return given if root is None else broken.worker_env(root, {**os.environ, **given})

    return [
        stack.enter_context(running_worker(
            Settings(**{**s.__dict__, "web_port": s.web_port + i}), log_dir / f"bench-worker-{i}.log",
            env(i), cwd=root))
        for i in range(n)
    ]


async def produce(s: Settings, messages: Iterable[InputMessage], rate: float | None = None,
                  sent_at: dict[bytes, float] | None = None) -> int:
    """Send `messages` (at `rate` per second, or as fast as one producer goes); with
    `sent_at`, remember each event id's send time (for latency)."""
    producer = AIOKafkaProducer(**s.kafka_options(), **PRODUCER)
    await producer.start()
    n = 0
    started = time.perf_counter()
    try:
        for topic, key, value in messages:
            if rate is not None and n % 50 == 0:
                ahead = started + n / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if sent_at is not None:
                sent_at[_event_id(value)] = time.perf_counter()
            await producer.send(s.topic(topic), value, key=key)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


_EVENT_ID = re.compile(rb'"event_id":"([^"]*)"')


def _event_id(value: bytes) -> bytes:
    m = _EVENT_ID.search(value)
    return m.group(1) if m else b""


async def watch(s: Settings, outcome_topic: str, answered: Answered, pids: list[int], *,
                started: float | None = None, budget_s: float | None = None,
                alive: Callable[[], bool] = lambda: True, inputs: Sequence[str] = ()) -> dict[str, Any]:
    """Read `outcome_topic` into `answered`, with lag, CPU and memory each second, until
    every expected outcome is visible (or `budget_s` passed): the end is that read.
    `started` (perf_counter): when the processes were started for this run, whose times
    and CPU then count from their start; by default they already run and both count
    from now. The rate is over the time from the first outcome read to the last."""
    stats = ProcStats(pids, tree=True)
    cpu0 = 0.0 if started is not None else stats.cpu_seconds()
    started = time.perf_counter() if started is None else started
    timeline, _ = await read_outcomes(s, outcome_topic, answered, started, stats, alive=alive,
                                      until_s=budget_s or MAX_RUN_S, inputs=inputs)
    watched = time.perf_counter() - started
    cpu = stats.cpu_seconds() - cpu0
    end = answered.last if answered.done and answered.last is not None else None
    return {
        "events": answered.count, "outcome_records": answered.records, "complete": answered.done,
        "elapsed_s": round(end - started if end is not None else watched, 2),
        "events_per_s": round(answered.rate()),
        "first_outcome_s": round(answered.first - started, 2) if answered.first is not None else None,
        "cpu_avg_pct": round(100 * cpu / watched, 1) if watched > 0 else None,
        "peak_rss_mb": round(stats.peak_rss_mb, 1), "timeline": timeline,
    }


def well_formed_ids(messages: Iterable[InputMessage]) -> set[bytes]:
    """The event ids that must each get an outcome (the contract: one per well-formed
    input; the naive reference sends none for a malformed one)."""
    ids: set[bytes] = set()
    for topic, key, value in messages:
        ev = decode(topic, key, value)
        if not isinstance(ev, Malformed):
            ids.add(ev.event_id.encode())
    return ids


async def naive(s: Settings, answered: Answered, budget_s: float, log_dir: Path) -> dict[str, Any]:
    """The naive Faust reference on the same input topics (already produced), for at
    most `budget_s`, judged by its outputs: Faust's start-up drop (FAUST_NOTES.md) can
    leave its committed offsets stuck at a gap while it goes on answering, and the
    dropped events unanswered. `answered`: the event ids it must answer."""
    await topics.ensure_topics(s, extra=(NAIVE_OUTCOMES, NAIVE_CREDITS))  # as it does: read before it runs
    env = {**os.environ, **worker_env(s, s.web_port), "PIPELINE_LOG_LEVEL": "warn"}
    with open(log_dir / "bench-naive.log", "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "bench.naive"], cwd=PROJECT_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        figures = await watch(s, s.topic(NAIVE_OUTCOMES), answered, [proc.pid], started=started, budget_s=budget_s,
                              alive=lambda: proc.poll() is None)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    figures["budget_s"] = budget_s
    return figures


async def ceiling(s: Settings, total: int, budget_s: float) -> dict[str, Any]:
    """A plain aiokafka consumer that reads and decodes the same input topics."""
    consumer = AIOKafkaConsumer(**s.kafka_options(), enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    stats = ProcStats([os.getpid()])
    try:
        tps = [TopicPartition(s.topic(t), p) for t in INPUTS for p in range(s.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started = time.perf_counter()
        cpu_started = stats.cpu_seconds()
        n = 0
        while n < total and time.perf_counter() - started < budget_s:
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).items():
                topic = tp.topic[len(s.topic_prefix):]
                for r in records:
                    decode(topic, r.key, r.value)
                n += len(records)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"events": n, "complete": n >= total, "elapsed_s": round(elapsed, 2), "events_per_s": round(n / elapsed),
            "cpu_avg_pct": round(100 * (stats.cpu_seconds() - cpu_started) / elapsed, 1)}


async def latency(s: Settings, messages: list[Message], rate: float, log_dir: Path) -> dict[str, Any]:
    """A fixed offered rate: each event's time from its send to its committed outcome;
    for the first gift of each (stream, viewer), to its score on the stream's board; and
    for every ANSWER_SAMPLE-th gift, to the answer of GET /outcomes/{id}?wait_ms=10000
    asked right after its send."""
    sampled: dict[bytes, tuple[str, str]] = {}  # event id -> (board key, viewer)
    pairs: set[tuple[str, str]] = set()
    asked: list[bytes] = []  # gifts whose outcome is asked over HTTP, in send order
    gifts = 0
    for topic, key, value in messages:
        if topic == topics.GIFTS:
            gifts += 1
            if gifts % ANSWER_SAMPLE == 0:
                asked.append(_event_id(value))
            stream = re.search(rb'"stream_id":"([^"]*)"', value).group(1).decode()  # type: ignore[union-attr]
            if (stream, key.decode()) not in pairs:
                pairs.add((stream, key.decode()))
                if len(pairs) % BOARD_SAMPLE == 0:
                    sampled[_event_id(value)] = (s.redis_key(leaderboards.stream_key(stream)), key.decode())
    sent_at: dict[bytes, float] = {}
    to_outcome: list[tuple[float, float]] = []  # (sent, seconds)
    to_board: list[tuple[float, float]] = []
    to_answer: list[tuple[float, float]] = []
    asked_set = set(asked)
    to_outcome_asked: list[float] = []  # the same gifts' time to their outcome on the topic
    pending: dict[bytes, tuple[str, str, int]] = {}
    with ExitStack() as stack:
        pids = [p.pid for p in start_workers(stack, s, 1, log_dir)]
        consumer = AIOKafkaConsumer(**s.kafka_options(), isolation_level="read_committed",
                                    enable_auto_commit=False, fetch_max_wait_ms=5)
        await consumer.start()
        tps = [TopicPartition(s.topic(topics.OUTCOMES), p) for p in range(s.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        client = redis_client.connect(s)
        started = time.perf_counter()
        done = asyncio.Event()

        async def outcomes() -> None:
            seen = 0
            while seen < len(messages):
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.perf_counter()
                    for r in records:
                        seen += 1
                        sent = sent_at[r.key]
                        to_outcome.append((sent - started, now - sent))
                        if r.key in asked_set:
                            to_outcome_asked.append(now - sent)
                        if r.key in sampled and b'"status":"accepted"' in r.value:
                            coins = int(re.search(rb'"coins":(\d+)', r.value).group(1))  # type: ignore[union-attr]
                            pending[r.key] = (*sampled[r.key], coins)
            done.set()

        async def boards() -> None:
            while not (done.is_set() and not pending):
                if pending:
                    ids = list(pending)
                    async with client.pipeline(transaction=False) as pipe:
                        for eid in ids:
                            pipe.zscore(pending[eid][0], pending[eid][1])
                        scores = await pipe.execute()
                    now = time.perf_counter()
                    for eid, score in zip(ids, scores):
                        if score is not None and score >= pending[eid][2]:
                            to_board.append((sent_at[eid] - started, now - sent_at[eid]))
                            del pending[eid]
                await asyncio.sleep(BOARD_POLL_S)

        async def answers() -> None:
            open_polls = asyncio.Semaphore(MAX_OPEN_POLLS)

            async def ask(http: aiohttp.ClientSession, eid: bytes) -> None:
                url = f"http://127.0.0.1:{s.web_port}/outcomes/{eid.decode()}?wait_ms=10000"
                async with open_polls:
                    while True:
                        async with http.get(url) as resp:
                            await resp.read()
                            if resp.status == 200:
                                sent = sent_at[eid]
                                to_answer.append((sent - started, time.perf_counter() - sent))
                                return
                            if resp.status not in (404, 503):
                                raise RuntimeError(f"GET /outcomes answered {resp.status}")
                            if resp.status == 503:
                                await asyncio.sleep(0.05)

            connector = aiohttp.TCPConnector(limit=MAX_OPEN_POLLS)
            async with aiohttp.ClientSession(connector=connector) as http:
                polls = []
                for eid in asked:
                    while eid not in sent_at:
                        await asyncio.sleep(0.002)
                    polls.append(asyncio.create_task(ask(http, eid)))
                await asyncio.gather(*polls)

        tasks = [asyncio.create_task(outcomes()), asyncio.create_task(boards()), asyncio.create_task(answers())]
        watching = asyncio.create_task(watch(s, s.topic(topics.OUTCOMES), Answered(len(messages), distinct=False),
                                             pids, inputs=INPUTS))
        await produce(s, messages, rate=rate, sent_at=sent_at)
        figures = await watching
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await consumer.stop()
        await client.aclose()
        figures["cycle_phase_mean_ms"] = cycle_phases(s)
    figures["offered_events_per_s"] = round(rate)
    figures["to_outcome"] = percentiles([x for _, x in to_outcome])
    figures["to_leaderboard"] = percentiles([x for _, x in to_board])
    figures["to_http_answer"] = percentiles([x for _, x in to_answer])
    figures["to_outcome_of_the_asked_gifts"] = percentiles(to_outcome_asked)
    figures["http_answer_sample"] = f"every {ANSWER_SAMPLE}th gift, GET /outcomes/{{id}}?wait_ms=10000 after its send"
    for row in figures["timeline"]:  # latency by the second of sending
        second = [x for t, x in to_outcome if row["t"] - SAMPLE_S <= t < row["t"]]
        if second:
            row.update({f"outcome_{k}": v for k, v in percentiles(second).items() if k in ("p50_ms", "p99_ms")})
        answered = [x for t, x in to_answer if row["t"] - SAMPLE_S <= t < row["t"]]
        if answered:
            row.update({f"answer_{k}": v for k, v in percentiles(answered).items() if k in ("p50_ms", "p99_ms")})
    return figures


def cycle_phases(s: Settings) -> dict[str, float]:
    """Mean time of each phase of the worker's cycle, from its /metrics: where the
    latency goes."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(get(s, "/metrics", raw=True)):
        if family.name == "ledger_cycle_phase_seconds":
            for sample in family.samples:
                phase = sample.labels.get("phase", "")
                if sample.name.endswith("_sum"):
                    sums[phase] = sample.value
                elif sample.name.endswith("_count"):
                    counts[phase] = sample.value
    return {phase: round(1000 * sums[phase] / counts[phase], 2) for phase in sums if counts.get(phase)}


def percentiles(seconds: list[float], digits: int = 1) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds, rounded to `digits`."""
    if len(seconds) < 2:
        return {"n": len(seconds)}
    q = statistics.quantiles([x * 1000 for x in seconds], n=100, method="inclusive")
    return {"p50_ms": round(q[49], digits), "p95_ms": round(q[94], digits), "p99_ms": round(q[98], digits),
            "max_ms": round(max(seconds) * 1000, digits), "n": len(seconds)}


async def recovery(s: Settings, stack: ExitStack, worker: subprocess.Popen[bytes], log_dir: Path) -> dict[str, Any]:
    """SIGKILL the worker, start another, and time until the outcome of an event sent
    after the start is visible: restore, group join (the dead member's session must
    expire first) and the first batch included."""
    worker.kill()
    worker.wait()
    consumer = AIOKafkaConsumer(**s.kafka_options(), isolation_level="read_committed", enable_auto_commit=False,
                                fetch_max_wait_ms=5)
    await consumer.start()
    try:
        tps = [TopicPartition(s.topic(topics.OUTCOMES), p) for p in range(s.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)  # past every outcome of the backlog
        for tp in tps:
            await consumer.position(tp)
        started = time.perf_counter()
        log = log_dir / "bench-worker-recovered.log"
        log_start = log.stat().st_size if log.exists() else 0
        stack.enter_context(running_worker(s, log, worker_env(s, s.web_port), health_timeout_s=RECOVERY_TIMEOUT_S))
        healthy = time.perf_counter() - started
        await produce(s, [(topics.SPEND_LIMITS, b"probe", b'{"event_id":"%s","user_id":"probe",'
                          b'"daily_coin_limit":null,"ts":%d}' % (PROBE, int(time.time() * 1000)))])
        answered = Answered.of([PROBE])
        while not answered.done:
            if time.perf_counter() - started > 2 * RECOVERY_TIMEOUT_S:
                raise SystemExit(f"no outcome of the probe after {2 * RECOVERY_TIMEOUT_S}s; see {log}")
            for records in (await consumer.getmany(timeout_ms=50)).values():
                answered.add([r.key for r in records], time.perf_counter())
        assert answered.last is not None  # done
        visible = answered.last - started
    finally:
        await consumer.stop()
    with open(log, errors="replace") as f:
        f.seek(log_start)
        restored = re.findall(r"restored partitions .* from (\d+) changelog records in ([0-9.]+)s", f.read())
    return {"healthy_s": round(healthy, 2), "first_outcome_s": round(visible, 2),
            "changelog_records": sum(int(n) for n, _ in restored), "restore_s": sum(float(x) for _, x in restored)}


async def state(s: Settings, messages: Iterable[Message], total: int, log_dir: Path) -> dict[str, Any]:
    """Many distinct users: memory while the state grows, then recovery after SIGKILL."""
    with ExitStack() as stack:
        [worker] = start_workers(stack, s, 1, log_dir)
        producing = asyncio.create_task(produce(s, messages))
        figures = await watch(s, s.topic(topics.OUTCOMES), Answered(total, distinct=False), [worker.pid],
                              inputs=INPUTS)
        await producing
        figures["recovery"] = await recovery(s, stack, worker, log_dir)
    return figures


def counting(messages: Iterable[Message], counts: Counter[str]) -> Iterator[Message]:
    """`messages`, counting them by topic on the way (a stream too long to keep)."""
    for m in messages:
        counts[m[0]] += 1
        yield m
