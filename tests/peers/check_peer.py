"""Agreement check of a benchmark peer (bench/peers/*) with the reference ledger.

Not a pytest test (nothing here is collected): run it by hand, e.g.

    .venv/bin/python -m tests.peers.check_peer --name kstreams \\
        --build "bench/peers/kstreams/run.sh build" --command bench/peers/kstreams/run.sh

It creates fresh topics under a unique prefix on the local broker (inputs with
LogAppendTime and N partitions, the two output topics), produces a seeded stream from
the project's simulator (duplicates, malformed messages, spend limits, payouts) with
the Java client's partitioning (aiokafka's default partitioner is murmur2), plus 33
hostile and edge-case records spread through it (`hostile_messages`: malformed in every way the
contract names, a misrouted one, and two well-formed oddities), runs the
peer's command with its environment (PEER_BOOTSTRAP, PEER_INPUT_PREFIX,
PEER_OUTPUT_PREFIX, PEER_APP_ID, PEER_PARTITIONS, PEER_STATE_DIR; --env adds more),
reads every committed
outcome and dead letter, SIGTERMs the peer, and compares them with
tests/support/reference.py's ReferenceLedger by event_id. It exits 0 only when all
agree; the topics it made (and the peer's internal ones, under the same prefix) are
deleted at the end.

The reference is applied in the order a stream processor that merges input partitions
by event time applies them (Kafka Streams: the record with the lowest timestamp at the
head of its partition goes first; a partition's records stay in offset order): each
message's place is the highest event time on its partition up to it, ties by
production order. For messages whose partitions are each in event-time order this is
plainly the global event-time order; it differs only for a late message (a
simulator's duplicate re-sends an older message), which comes right after its
partition's previous message. Payouts and the credits of gifts are placed the same
way. The event time taken is the value's `ts` if it is in the contract's window (7
days behind to 5 minutes ahead of the clock), else the partition's time so far.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from agents.ingest.decode import Malformed, decode
from pipeline import economics
from pipeline import settings as pipeline_settings
from tests.support.reference import KEY_FIELD, MAX_AHEAD_MS, MAX_BEHIND_MS, ReferenceLedger
from tools.simulate import SimConfig, generate

ROOT = Path(__file__).resolve().parents[2]
INPUTS = ("recharges", "gifts", "payouts", "spend-limits")
ROUTED = ("recharges", "gifts", "spend-limits")  # must sit on murmur2(key) % partitions
OUTCOMES, DEAD_LETTERS = "ledger-outcomes", "dead-letters"
CONTRACT_EXTRAS = {"bonus_coins", "promo_id"}  # an accepted recharge's extra fields (no promotions here)
__test__ = False  # pytest: nothing to collect in this module


@dataclasses.dataclass
class Sent:
    topic: str  # without prefix
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    index: int  # production order


@dataclasses.dataclass
class CheckResult:
    name: str
    counts: dict[str, Any]
    differences: list[str]
    ok: bool
    log_path: Path | None = None

    def report(self) -> str:
        lines = [f"peer {self.name}: {'AGREES' if self.ok else 'DISAGREES'} with the reference ledger"]
        lines += [f"  {k}: {v}" for k, v in self.counts.items()]
        if self.differences:
            lines.append("  examples:")
            lines += [f"    {d}" for d in self.differences]
        if self.log_path:
            lines.append(f"  peer log: {self.log_path}")
        return "\n".join(lines)


# --- the expected outcomes -------------------------------------------------------------


def _extracted_ts(value: bytes, now_ms: int) -> int | None:
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    ts = data.get("ts") if isinstance(data, dict) else None
    if type(ts) is not int or not now_ms - MAX_BEHIND_MS <= ts <= now_ms + MAX_AHEAD_MS:
        return None
    return ts


def malformed_reason(m: Sent, partitions: int) -> str | None:
    """Why the contract makes `m` malformed, or None (agents.ingest.decode plus the
    partition rule; a spend limit may carry either of its two limits)."""
    decoded = decode(m.topic, m.key, m.value)
    if (isinstance(decoded, Malformed) and m.topic == "spend-limits"
            and decoded.error == "missing field daily_coin_limit"):
        # The contract asks for at least one of the two limits; the project's decoder for the daily one.
        try:
            data = json.loads(m.value)
        except ValueError:
            data = None
        monthly = data.get("monthly_coin_limit", "absent") if isinstance(data, dict) else "absent"
        if monthly is None or (type(monthly) is int and 0 <= monthly <= 10**9):
            decoded = decode(m.topic, m.key, json.dumps({**data, "daily_coin_limit": None}).encode())  # type: ignore[dict-item]
    if isinstance(decoded, Malformed):
        return decoded.error
    if m.topic in ROUTED and (m.key is None or (murmur2(m.key) & 0x7FFFFFFF) % partitions != m.partition):
        return "misrouted"
    return None


def merge_order(sent: Sequence[Sent], now_ms: int) -> list[Sent]:
    """Every message in the order of an event-time merge of partitions (module doc)."""
    partition_time: dict[tuple[str, int], int] = {}
    placed = []
    for m in sorted(sent, key=lambda m: (m.topic, m.partition, m.offset)):
        q = (m.topic, m.partition)
        ts = _extracted_ts(m.value, now_ms)
        t = max(partition_time.get(q, 0), ts if ts is not None else 0)
        partition_time[q] = t
        placed.append((t, m.index, m))
    return [m for _, _, m in sorted(placed, key=lambda e: (e[0], e[1]))]


def expected_outcomes(sent: Sequence[Sent], partitions: int, now_ms: int) -> tuple[list[dict[str, Any]], list[Sent]]:
    """The reference's outcomes, and the messages that must be dead-lettered."""
    model = ReferenceLedger()
    malformed = []
    for m in merge_order(sent, now_ms):
        if malformed_reason(m, partitions) is not None:
            malformed.append(m)
            continue
        ev = json.loads(m.value)
        if m.topic == "spend-limits" and "daily_coin_limit" not in ev:  # absent: the limit stays as it was
            ev = {**ev, "daily_coin_limit": model.own_limit.get(ev[KEY_FIELD[m.topic]])}
        model.apply(m.topic, ev, now_ms=now_ms)
    return model.outcomes, malformed


# --- Kafka -----------------------------------------------------------------------------


async def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        new = [NewTopic(prefix + t, partitions, 1, topic_configs={"message.timestamp.type": "LogAppendTime"})
               for t in INPUTS]
        new += [NewTopic(prefix + t, partitions, 1) for t in (OUTCOMES, DEAD_LETTERS)]
        await admin.create_topics(new)
        # Wait for every partition's leader, so the first sends are not refused.
        names = [t.name for t in new]
        for _ in range(100):
            described = await admin.describe_topics(names)
            if all(t.get("error_code", 0) == 0 and len(t["partitions"]) == partitions
                   and all(p["leader"] >= 0 for p in t["partitions"]) for t in described):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the broker answers NotLeader for a moment after that
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if prefix in t]  # Quix: changelog__{prefix}...
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


def hostile_messages(template_ts: int, partitions: int) -> list[tuple[str, bytes | None, bytes, int | None]]:
    """Malformed records of every kind the contract names (beyond the simulator's four);
    two well-formed oddities: a spend limit with only `monthly_coin_limit` (the daily one
    stays as it was) and a recharge with unknown nested fields (ignored); and events for
    the outcomes the simulator never produces (unknown_gift, self_gift,
    insufficient_coins, below_min_payout, invalid_ts too old and too far ahead).
    (topic, key, value, partition or None for the key's); `"ts": 0` is filled in later."""
    ts = template_ts
    good = {"event_id": "h-r", "user_id": "hu1", "coins": 100, "amount_cents": 99, "currency": "USD", "ts": ts}

    def rch(**changes: Any) -> bytes:
        return json.dumps({**good, **changes}).encode()

    right = (murmur2(b"hu1") & 0x7FFFFFFF) % partitions
    out: list[tuple[str, bytes | None, bytes, int | None]] = [
        ("recharges", b"hu1", b'{"event_id":"h1","user_id":"hu1","coins":5,"coins":1000000,"amount_cents":0,'
                              b'"currency":"USD","ts":%d}' % ts, None),  # a repeated field name
        ("recharges", b"hu1", rch(event_id="h2", coins=100.0), None),  # a float for an int
        ("recharges", b"hu1", rch(event_id="h3", coins=True), None),
        ("recharges", b"hu1", rch(event_id="h4", currency="US"), None),
        ("recharges", b"hu1", rch(event_id="h5 bad"), None),  # id pattern
        ("recharges", b"hu1", rch(event_id="h6", coins=1_000_001), None),
        ("recharges", b"hu1", rch(event_id="h7", ts=-5), None),
        ("recharges", b"hu1",
         b'{"event_id":"h8","user_id":"hu1","coins":NaN,"amount_cents":0,"currency":"USD","ts":%d}' % ts, None),
        ("recharges", b"hu1", rch(event_id="h9") + b" x", None),  # trailing content
        ("recharges", b"hu1", b"[1, 2]", None),
        ("recharges", b"hu1", b"", None),
        ("recharges", b"hu1", b"\xff{\"a\": 1}", None),  # not UTF-8
        ("recharges", None, rch(event_id="h10"), right),  # no key
        ("recharges", b"hu1\xff", rch(event_id="h11"), None),  # key not UTF-8
        ("recharges", b"hu1", rch(event_id="h12"), (right + 1) % partitions if partitions > 1 else None),  # misrouted
        ("recharges", b"u" * 65, rch(event_id="h13", user_id="u" * 65), None),  # id too long
        ("gifts", b"hu1", json.dumps({"event_id": "h14", "sender_id": "hu1", "creator_id": "hc1", "stream_id": "s",
                                      "gift_id": "rose", "quantity": 10_001, "ts": ts}).encode(), None),
        ("gifts", b"hu1", json.dumps({"event_id": "h15", "sender_id": "hu1", "creator_id": "hc1", "stream_id": "s",
                                      "gift_id": 7, "quantity": 1, "ts": ts}).encode(), None),
        ("payouts", b"hc1",
         json.dumps({"event_id": "h16", "creator_id": "hc1", "diamonds": 10**12 + 1, "ts": ts}).encode(), None),
        ("payouts", b"hc1",
         json.dumps({"event_id": "h17", "creator_id": "hc2", "diamonds": 5000, "ts": ts}).encode(), None),
        ("spend-limits", b"hu1",
         json.dumps({"event_id": "h18", "user_id": "hu1", "daily_coin_limit": "10", "ts": ts}).encode(), None),
        ("spend-limits", b"hu1", json.dumps({"event_id": "h19", "user_id": "hu1", "ts": ts}).encode(), None),
        ("spend-limits", b"hu1",
         json.dumps({"event_id": "h20", "user_id": "hu1", "daily_coin_limit": 10**9 + 1, "ts": ts}).encode(), None),
        # Well-formed:
        ("spend-limits", b"hu1",
         json.dumps({"event_id": "h21", "user_id": "hu1", "monthly_coin_limit": 500, "ts": ts}).encode(), None),
        ("recharges", b"hu1", rch(event_id="h22", extra={"nested": [1, {"x": None}]}), None),
    ]
    # Well-formed, for the outcomes the simulator never produces (hu2 never recharges in time).
    old, ahead = int(time.time() * 1000) - 8 * 86_400_000, int(time.time() * 1000) + 10 * 60_000

    def gift(eid: str, creator: str, gift_id: str, quantity: int, at: int = 0) -> bytes:
        return json.dumps({"event_id": eid, "sender_id": "hu2", "creator_id": creator, "stream_id": "s",
                           "gift_id": gift_id, "quantity": quantity, "ts": at}).encode()

    out += [
        ("gifts", b"hu2", gift("h30", "hc1", "dragon", 1), None),  # unknown_gift
        ("gifts", b"hu2", gift("h31", "hu2", "rose", 1), None),  # self_gift
        ("gifts", b"hu2", gift("h32", "hc1", "rose", 5), None),  # insufficient_coins
        ("payouts", b"hc1",
         json.dumps({"event_id": "h33", "creator_id": "hc1", "diamonds": 1999, "ts": 0}).encode(), None),
        ("recharges", b"hu2", json.dumps({**good, "event_id": "h34", "user_id": "hu2", "ts": old}).encode(), None),
        ("gifts", b"hu2", gift("h35", "hc1", "rose", 1, ahead), None),  # invalid_ts, ahead
        ("payouts", b"hc1",
         json.dumps({"event_id": "h36", "creator_id": "hc1", "diamonds": 2000, "ts": old}).encode(), None),
        ("spend-limits", b"hu2",
         json.dumps({"event_id": "h37", "user_id": "hu2", "daily_coin_limit": 5, "ts": ahead}).encode(), None),
    ]
    return out


async def produce(
    bootstrap: str, prefix: str,
    messages: Sequence[tuple[str, bytes | None, bytes] | tuple[str, bytes | None, bytes, int | None]],
) -> list[Sent]:
    """In order; the idempotent producer keeps each partition's order. A 4-tuple names
    its partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", enable_idempotence=True,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(prefix + m[0], m[2], key=m[1], partition=m[3] if len(m) > 3 else None)
                   for m in messages]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(m[0], m[1], m[2], md.partition, md.offset, i) for i, (m, md) in enumerate(zip(messages, metas))]


class Reader:
    """Reads a topic's committed records from the start, as they come."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                         auto_offset_reset="earliest", isolation_level="read_committed")
        self.records: list[dict[str, Any]] = []
        self.first_at: float | None = None
        self.last_at: float | None = None

    async def start(self) -> None:
        await self.consumer.start()
        while not self.consumer.partitions_for_topic(self.topic):
            await self.consumer._client.force_metadata_update()  # aiokafka has no public refresh
            await asyncio.sleep(0.05)
        self.consumer.assign([TopicPartition(self.topic, p)
                              for p in sorted(self.consumer.partitions_for_topic(self.topic))])

    async def poll(self, timeout_ms: int = 200) -> int:
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)
        n = 0
        for records in batch.values():
            for r in records:
                try:
                    self.records.append(json.loads(r.value))
                except (ValueError, TypeError):
                    self.records.append({"unparsable": repr(r.value)[:200]})
                n += 1
        if n:
            now = time.perf_counter()
            self.first_at = self.first_at or now
            self.last_at = now
        return n

    async def stop(self) -> None:
        await self.consumer.stop()


# --- the run -----------------------------------------------------------------------------


def _canon(record: Mapping[str, Any], fields: Iterable[str]) -> str:
    return json.dumps({k: record.get(k, "<absent>") for k in fields}, sort_keys=True)


def compare(
    want: Sequence[dict[str, Any]], got: Sequence[dict[str, Any]], max_examples: int = 10
) -> tuple[dict[str, int], list[str]]:
    """By event_id: the multiset of each event's records (a re-sent event id has two)."""
    # The peers know no promotions: the extras are checked apart (below), as 0 and null.
    fields = [f for f in want[0] if f not in CONTRACT_EXTRAS] if want else []
    want_by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    got_by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in want:
        want_by[o["event_id"]].append(o)
    for o in got:
        got_by[str(o.get("event_id"))].append(o)
    identical = different = missing = 0
    examples: list[str] = []
    bad_extras = 0
    for o in got:
        extra = set(o) - set(fields)
        if extra - CONTRACT_EXTRAS or (extra and (o.get("bonus_coins", 0) != 0 or o.get("promo_id") is not None)):
            bad_extras += 1
            if len(examples) < max_examples:
                examples.append(f"unexpected fields {sorted(extra)} in {o}")
    for eid, records in want_by.items():
        seen = got_by.get(eid)
        if not seen:
            missing += 1
            if len(examples) < max_examples:
                examples.append(f"missing {eid}: expected {records}")
            continue
        w = Counter(_canon(r, fields) for r in records)
        # A record repeated identically (redelivery after a crash) is allowed.
        g = Counter(_canon(r, fields) for r in seen)
        if set(g) == set(w) and all(g[k] >= w[k] for k in w):
            identical += 1
        else:
            different += 1
            if len(examples) < max_examples:
                examples.append(f"different {eid}: expected {sorted(w)}, got {sorted(g)}")
    extra_ids = [eid for eid in got_by if eid not in want_by]
    for eid in extra_ids[: max(0, max_examples - len(examples))]:
        examples.append(f"extra {eid}: {got_by[eid]}")
    return {"event_ids_expected": len(want_by), "event_ids_seen": len(got_by), "identical": identical,
            "different": different, "missing": missing, "extra": len(extra_ids),
            "records_with_unknown_fields": bad_extras}, examples


def check_letters(expected: Sequence[Sent], got: Sequence[dict[str, Any]], prefix: str) -> tuple[int, list[str]]:
    want = {(prefix + m.topic, m.partition, m.offset): m for m in expected}
    problems = []
    seen: Counter[tuple[str, int, int]] = Counter()
    for x in got:
        where = (x.get("source_topic"), x.get("partition"), x.get("offset"))
        seen[where] += 1  # type: ignore[index]
        m = want.get(where)  # type: ignore[arg-type]
        if m is None:
            problems.append(f"unexpected dead letter {json.dumps(x)[:300]}")
            continue
        if not x.get("error") or x.get("payload_bytes") != len(m.value) \
                or x.get("payload_sha256") != hashlib.sha256(m.value).hexdigest() \
                or x.get("payload_b64") != base64.b64encode(m.value[:65536]).decode():
            problems.append(f"wrong dead letter for {where}: {json.dumps(x)[:300]}")
    for where in want:
        if not seen[where]:
            problems.append(f"no dead letter for {where}: {want[where].value[:120]!r}")
    return sum(1 for w in want if seen[w]), problems


def _argv(command: str | Sequence[str]) -> str | list[str]:
    """A simple command line runs without a shell in between (so SIGTERM and the exit
    code are the peer's own); one with shell syntax runs with `sh -c`."""
    if not isinstance(command, str):
        return list(command)
    if any(c in command for c in ";&|<>$`()*?~\n"):
        return command
    return shlex.split(command)


def _group_cpu_s(pgid: int) -> float | None:
    """CPU seconds used so far by the live processes of process group `pgid` (Linux /proc)."""
    total, tick, found = 0.0, os.sysconf("SC_CLK_TCK"), False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return round(total, 1) if found else None


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 40) -> int | None:
    """SIGTERM the peer's process group and wait; SIGKILL if it does not go."""
    if proc.poll() is not None:
        return proc.returncode
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def check_peer(name: str, command: str | Sequence[str], *, build_command: str | Sequence[str] | None = None,
               env: Mapping[str, str] | None = None, events: int = 10_000, users: int = 500, creators: int = 50,
               seed: int = 5, partitions: int = 4, bootstrap: str = "127.0.0.1:9092", timeout_s: float = 300,
               settle_s: float = 5.0, cwd: Path = ROOT, keep_topics: bool = False,
               log_dir: Path | None = None, hostile: bool = True, kill_at: Sequence[float] = ()) -> CheckResult:
    """Run the whole check for one peer (module doc); `command`/`build_command` are run
    with a shell when given as a string, from `cwd`. `kill_at`: fractions of the
    expected outcomes at which the peer is SIGKILLed and started again (its state
    directory kept): exactly-once must still give the same outcomes (an identical
    repeat is allowed)."""
    argv: str | list[str] = _argv(command)
    if build_command is not None:
        started = time.perf_counter()
        subprocess.run(build_command, shell=isinstance(build_command, str), cwd=cwd, check=True)
        print(f"built in {time.perf_counter() - started:.1f}s", flush=True)

    prefix = f"peercheck-{name}-{os.urandom(4).hex()}-"
    state_dir = Path(tempfile.mkdtemp(prefix=f"peercheck-{name}-state-"))
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"peercheck-{name}-log-"))
    log_path = log_dir / f"{name}.log"
    s = pipeline_settings.load()
    econ = economics.load(s.economics_file)
    cfg = SimConfig(events=events, users=users, creators=creators, duplicate_share=0.02, malformed_share=0.01,
                    spend_limit_share=0.01, payout_share=0.01, seed=seed)
    messages: list[Any] = list(generate(cfg, econ))
    if hostile and messages:
        # Spread through the stream, each dated like the message before it.
        step = max(1, len(messages) // 30)
        for n, h in enumerate(hostile_messages(0, partitions)):
            at = min(len(messages), (n + 1) * step)
            prev_ts = _extracted_ts(messages[at - 1][2], int(time.time() * 1000) + MAX_AHEAD_MS) or 0
            topic, key, value, part = h
            value = value.replace(b'"ts": 0', b'"ts": %d' % prev_ts).replace(b'"ts":0', b'"ts":%d' % prev_ts)
            messages.insert(at, (topic, key, value, part))
    proc: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(create_topics(bootstrap, prefix, partitions))
        sent = asyncio.run(produce(bootstrap, prefix, messages))
        now_ms = int(time.time() * 1000)
        want, malformed = expected_outcomes(sent, partitions, now_ms)
        print(f"produced {len(sent)} messages under {prefix} "
              f"({len(want)} outcomes and {len(malformed)} dead letters expected)", flush=True)
        peer_env = {**os.environ, "PEER_BOOTSTRAP": bootstrap, "PEER_INPUT_PREFIX": prefix,
                    "PEER_OUTPUT_PREFIX": prefix, "PEER_APP_ID": prefix + "app", "PEER_PARTITIONS": str(partitions),
                    "PEER_STATE_DIR": str(state_dir), **(env or {})}
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            def start() -> subprocess.Popen[bytes]:
                nonlocal proc
                proc = subprocess.Popen(argv, shell=isinstance(argv, str), cwd=cwd, env=peer_env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                return proc

            outcomes, letters, done_at, kills = asyncio.run(_collect(bootstrap, prefix, len(want), len(malformed),
                                                                     start, timeout_s, settle_s, kill_at))
            assert proc is not None
            cpu_s = _group_cpu_s(proc.pid)
            exit_code = _stop(proc)
        counts: dict[str, Any] = {"messages": len(sent), "sigkills": kills, "outcomes_expected": len(want),
                                  "outcomes_seen": len(outcomes.records)}
        outcome_counts, examples = compare(want, outcomes.records)
        counts.update(outcome_counts)
        letters_seen, letter_problems = check_letters(malformed, letters.records, prefix)
        counts.update({"dead_letters_expected": len(malformed), "dead_letters_seen": len(letters.records),
                       "dead_letters_matching": letters_seen})
        if outcomes.first_at and outcomes.last_at and done_at:
            span = done_at - outcomes.first_at
            counts["seconds_to_all_outcomes_from_start"] = round(done_at - started, 1)
            counts["seconds_first_to_last_outcome"] = round(span, 1)
            counts["outcomes_per_s_first_to_last"] = round(len(want) / span) if span > 0 else None
        statuses = Counter((o["type"], o["status"], o["reason"]) for o in want)
        counts["expected_mix"] = ", ".join(f"{t}/{st}{'/' + r if r else ''}={n}"
                                           for (t, st, r), n in sorted(statuses.items(), key=str))
        counts["peer_cpu_s"] = cpu_s
        counts["peer_exit_on_sigterm"] = exit_code
        examples += letter_problems[: max(0, 10 - len(examples))]
        ok = (outcome_counts["identical"] == len({o["event_id"] for o in want}) and outcome_counts["different"] == 0
              and outcome_counts["missing"] == 0 and outcome_counts["extra"] == 0
              and outcome_counts["records_with_unknown_fields"] == 0 and not letter_problems
              and len(letters.records) == len(malformed))
        return CheckResult(name, counts, examples[:10], ok, log_path)
    finally:
        if proc is not None and proc.poll() is None:
            _stop(proc)
        if not keep_topics:
            try:
                asyncio.run(delete_topics(bootstrap, prefix))
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
                print(f"could not delete topics {prefix}*: {exc}", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)


async def _collect(bootstrap: str, prefix: str, n_outcomes: int, n_letters: int,
                   start: Callable[[], subprocess.Popen[bytes]], timeout_s: float, settle_s: float,
                   kill_at: Sequence[float] = ()) -> tuple[Reader, Reader, float | None, int]:
    """Start the peer and read outcomes and dead letters until both are complete (then
    `settle_s` more, to see any extra), the peer exits, or the timeout; SIGKILL and
    restart it at each of `kill_at`."""
    outcomes, letters = Reader(bootstrap, prefix + OUTCOMES), Reader(bootstrap, prefix + DEAD_LETTERS)
    await outcomes.start()
    await letters.start()
    proc = start()
    kills = sorted(kill_at)
    killed = 0
    deadline = time.perf_counter() + timeout_s
    done_at: float | None = None
    last_report = time.perf_counter()
    try:
        while time.perf_counter() < deadline:
            await outcomes.poll(100)
            await letters.poll(0)
            now = time.perf_counter()
            if kills and len(outcomes.records) >= kills[0] * n_outcomes:
                kills.pop(0)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed += 1
                print(f"  SIGKILL with {len(outcomes.records)}/{n_outcomes} outcomes committed; restarting", flush=True)
                proc = start()
                continue
            if done_at is None and len(outcomes.records) >= n_outcomes and len(letters.records) >= n_letters:
                done_at = outcomes.last_at or now
            if done_at is not None and now >= done_at + settle_s:
                break
            if proc.poll() is not None:
                print(f"the peer exited with {proc.returncode}", flush=True)
                await asyncio.sleep(1)
                await outcomes.poll(500)
                await letters.poll(500)
                break
            if now - last_report > 10:
                print(f"  {len(outcomes.records)}/{n_outcomes} outcomes, "
                      f"{len(letters.records)}/{n_letters} dead letters", flush=True)
                last_report = now
        return outcomes, letters, done_at, killed
    finally:
        await outcomes.stop()
        await letters.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="the peer's name (in topic prefixes and the report)")
    ap.add_argument("--command", required=True, help="shell command that runs the peer (from the project root)")
    ap.add_argument("--build", help="shell command that builds the peer, run once first")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for the peer")
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--creators", type=int, default=50)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for every outcome")
    ap.add_argument("--keep-topics", action="store_true")
    ap.add_argument("--kill-at", type=float, action="append", default=[], metavar="FRACTION",
                    help="SIGKILL and restart the peer when this fraction of the outcomes is committed (repeatable)")
    ap.add_argument("--no-hostile", action="store_true", help="only the simulator's messages (no extra malformed ones)")
    args = ap.parse_args(argv)
    extra_env = dict(e.split("=", 1) for e in args.env)
    result = check_peer(args.name, args.command, build_command=args.build, env=extra_env, events=args.events,
                        users=args.users, creators=args.creators, seed=args.seed, partitions=args.partitions,
                        bootstrap=args.bootstrap, timeout_s=args.timeout, keep_topics=args.keep_topics,
                        hostile=not args.no_hostile, kill_at=args.kill_at)
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
