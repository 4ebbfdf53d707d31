"""Hostile records on a real broker, as an attacker would write them (CONTRACT.md,
Trust): each becomes one dead letter or one `invalid_ts` outcome, mints nothing, and
the events after it on the same partition are decided by the same worker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline import topics
from pipeline.engine.partitioning import partition_for
from pipeline.settings import PROJECT_ROOT
from tests.conftest import Cluster
from tests.support.harness import Deployment, Worker, one_worker, run
from tools.infra.debian import require

pytestmark = pytest.mark.integration

DAY = 86_400_000
PARTITIONS = 4


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def live(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Worker]]:
    """One deployment and worker for the module: every finding must leave it running."""
    with one_worker(cluster.bootstrap, cluster.redis_url, tmp_path_factory.mktemp("hostile"), "hostile") as live:
        yield live


async def _send(bootstrap: str, messages: list[tuple[str, bytes | None, bytes, int | None]]) -> None:
    """Any size up to the topics' 8 MiB, on the key's partition (murmur2) unless given."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for topic, key, value, partition in messages:
            await (await producer.send(topic, value, key=key, partition=partition))
    finally:
        await producer.stop()


def send(d: Deployment, *messages: tuple[str, bytes | None, bytes] | tuple[str, bytes | None, bytes, int]) -> None:
    run(_send(d.bootstrap, [(d.topic(m[0]), m[1], m[2], m[3] if len(m) > 3 else None) for m in messages]))


def event(topic: str, **fields: Any) -> tuple[str, bytes, bytes]:
    key = fields[{"recharges": "user_id", "gifts": "sender_id", "payouts": "creator_id",
                  "spend-limits": "user_id"}[topic]]
    return topic, key.encode(), json.dumps(fields).encode()


def recharge(eid: str, user: str, coins: int, ts: int | None = None) -> tuple[str, bytes, bytes]:
    return event("recharges", event_id=eid, user_id=user, coins=coins, amount_cents=coins, currency="USD",
                 ts=now_ms() if ts is None else ts)


def gift(
    eid: str, sender: str, creator: str, gift_id: str, quantity: int, ts: int | None = None
) -> tuple[str, bytes, bytes]:
    return event("gifts", event_id=eid, sender_id=sender, creator_id=creator, stream_id=f"{creator}-live",
                 gift_id=gift_id, quantity=quantity, ts=now_ms() if ts is None else ts)


def wait_for(d: Deployment, topic: str, match: Any, n: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The first `n` values of `topic` that `match`, waiting for them."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [v for v in run(topics.read_values(d.settings(), topic)) if match(v)]
        if len(found) >= n:
            return found
        assert time.monotonic() < deadline, f"only {len(found)} of {n} on {topic}: {found[:3]}"
        time.sleep(0.3)


def outcomes(d: Deployment, *ids: str) -> dict[str, dict[str, Any]]:
    found = wait_for(d, topics.OUTCOMES, lambda o: o["event_id"] in ids, len(ids))
    return {o["event_id"]: o for o in found}


def letters(d: Deployment, source: str, n: int, where: Any = lambda letter: True) -> list[dict[str, Any]]:
    return wait_for(d, topics.DEAD_LETTERS, lambda x: x["source_topic"] == d.topic(source) and where(x), n)


def test_a_7_mb_record_is_one_small_dead_letter_and_its_partition_goes_on(live: tuple[Deployment, Worker]) -> None:
    d, worker = live
    huge = b'{"event_id": "big", "user_id": "big-u", "pad": "' + b"x" * (7 * 1024 * 1024) + b'"}'
    send(d, ("recharges", b"big-u", huge), recharge("big-after", "big-u", 500))
    assert outcomes(d, "big-after")["big-after"]["status"] == "accepted"  # same key: same partition, after it
    [letter] = letters(d, topics.RECHARGES, 1, lambda x: x["payload_bytes"] == len(huge))
    assert letter["payload_sha256"] == hashlib.sha256(huge).hexdigest()
    assert base64.b64decode(letter["payload_b64"]) == huge[:65536]
    assert "exceeds" in letter["error"]
    assert worker.get("/health")[0] == 200


def test_forged_and_unreadable_creator_ops_records_mint_nothing(live: tuple[Deployment, Worker]) -> None:
    d, worker = live
    ops = topics.CREATOR_OPS
    forged = {"op": "c", "creator_id": "forged-c", "coins": 1, "gifts": 1, "items": [[now_ms(), 10**12]], "n": []}
    send(d, (ops, b"forged-c", json.dumps(forged).encode()),
         (ops, b"forged-c", b"\x00not json at all"),
         (ops, None, json.dumps({"op": "m", "source": 999, "ts": 2**62, "idle": True}).encode(), 0),
         (ops, b"forged-c", json.dumps({"op": "p", "event_id": "x", "creator_id": "other-c", "diamonds": 5,
                                        "ts": 1}).encode()))
    found = letters(d, ops, 4)
    assert any("item diamonds must be" in x["error"] for x in found)  # 10^12 diamonds for 1 coin
    assert any("not JSON" in x["error"] for x in found)
    assert any("source" in x["error"] for x in found)
    assert any("key must be" in x["error"] for x in found)
    send(d, event("payouts", event_id="forged-payout", creator_id="forged-c", diamonds=10**12, ts=now_ms()))
    out = outcomes(d, "forged-payout")["forged-payout"]
    assert (out["status"], out["reason"], out["balance_after"]) == ("rejected", "insufficient_diamonds", 0)
    status, creator = worker.get("/creators/forged-c")
    assert status == 200 and creator["diamonds"] == 0 and creator["lifetime_diamonds"] == 0


def test_events_dated_outside_the_bounds_are_invalid_ts(live: tuple[Deployment, Worker], cluster: Cluster) -> None:
    d, worker = live
    now = now_ms()
    dates = {"1970": 0, "3d-ago": now - 3 * DAY, "today": now, "tomorrow": now + DAY, "in-100d": now + 100 * DAY,
             "9999": 253_402_300_799_000, "8d-ago": now - 8 * DAY}
    # Dated before every gift in time: the merge applies events of a user by event time.
    send(d, recharge("ts-r", "ts-u", 1_000_000, ts=now - 4 * DAY), recharge("ts-r-old", "ts-u", 1_000_000, ts=0),
         *(gift(f"ts-{name}", "ts-u", "ts-c", "money_gun", 400, ts=ts) for name, ts in dates.items()))
    out = outcomes(d, "ts-r", "ts-r-old", *(f"ts-{name}" for name in dates))
    assert out["ts-r-old"]["reason"] == "invalid_ts" and out["ts-r-old"]["balance_after"] == 1_000_000
    accepted = {name for name in dates if out[f"ts-{name}"]["status"] == "accepted"}
    assert accepted == {"3d-ago", "today"}  # each 200,000 coins: one daily limit per real day
    assert all(out[f"ts-{name}"]["reason"] == "invalid_ts" for name in dates if name not in accepted)
    assert worker.get("/users/ts-u")[1]["coins"] == 600_000
    # The 9999 gift did not move the creator's windows: the current minute is still there.
    r = redis.Redis.from_url(cluster.redis_url)
    windows, minute = f"{d.prefix}win:1m:ts-c", str(now - now % 60_000)
    deadline = time.monotonic() + 20
    while r.hget(windows, minute) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert int(r.hget(windows, minute) or 0) == 100_000
    assert max(int(m) for m in r.hkeys(windows)) <= now


def test_a_repeated_field_name_is_a_dead_letter(live: tuple[Deployment, Worker]) -> None:
    d, worker = live
    raw = (b'{"event_id": "dup-r", "user_id": "dup-u", "coins": 5, "amount_cents": 5, "currency": "USD", '
           b'"ts": %d, "coins": 1000000}' % now_ms())
    send(d, ("recharges", b"dup-u", raw), recharge("dup-after", "dup-u", 5))
    assert outcomes(d, "dup-after")["dup-after"]["balance_after"] == 5
    [letter] = letters(d, topics.RECHARGES, 1, lambda x: x["payload_sha256"] == hashlib.sha256(raw).hexdigest())
    assert "repeated" in letter["error"]


def test_a_record_from_librdkafkas_default_partitioner_is_refused_and_redriven(live: tuple[Deployment, Worker]) -> None:
    """kcat (librdkafka) hashes keys with CRC32 by default: a user whose CRC32 and
    murmur2 partitions differ lands on another task's partition."""
    d, worker = live
    kcat = require("kcat", "kcat")
    users = [f"crc-u{i}" for i in range(40)]
    wrong = [u for u in users if zlib.crc32(u.encode()) % PARTITIONS != partition_for(u.encode(), PARTITIONS)][:3]
    assert wrong, "no user whose partitions differ"
    lines = "".join(u + "\t" + recharge(f"{u}-r", u, 100)[2].decode() + "\n" for u in wrong)
    subprocess.run([kcat, "-P", "-b", d.bootstrap, "-t", d.topic("recharges"), "-K", "\t"], input=lines.encode(),
                   check=True, timeout=60)
    found = letters(d, topics.RECHARGES, len(wrong), lambda x: "murmur2_random" in x["error"])
    assert {base64.b64decode(x["payload_b64"]).decode().split('"user_id": "')[1].split('"')[0]
            for x in found} == set(wrong)
    metrics = urllib.request.urlopen(worker.url("/metrics"), timeout=5).read().decode()
    assert 'ledger_misrouted_records_total{topic="recharges"} 3.0' in metrics
    proc = subprocess.run([sys.executable, "-m", "pipeline", "redrive", "--error", "murmur2_random", "--apply"],
                          cwd=PROJECT_ROOT, env=d.env(web_port=1), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = outcomes(d, *(f"{u}-r" for u in wrong))
    assert all(o["status"] == "accepted" and o["balance_after"] == 100 for o in out.values())


def test_a_dead_letter_the_broker_refuses_is_found_and_sent_without_its_payload(
    cluster: Cluster, deployment: Deployment, workers: list[Worker]
) -> None:
    """The transaction fails for one record's output (dead-letters takes only 4 KB
    here): the batch is halved down to that record, whose dead letter then goes without
    its payload; every other event of the batch is decided once."""
    deployment.create_topics()
    run(_limit_dead_letters(deployment, 4096))
    bad = b'{"event_id": "pad", "pad": "' + b"y" * 6000 + b'"}'
    batch = [recharge(f"q{i}", "q-u", 10) for i in range(20)]
    send(deployment, *batch[:10], ("recharges", b"q-u", bad), *batch[10:])
    worker = Worker(deployment, "quarantine")
    workers.append(worker.start())
    out = outcomes(deployment, *(f"q{i}" for i in range(20)))
    assert sorted(o["balance_after"] for o in out.values()) == list(range(10, 210, 10))
    [letter] = letters(deployment, topics.RECHARGES, 1)
    assert letter["payload_b64"] == "" and letter["payload_bytes"] == len(bad)
    assert letter["payload_sha256"] == hashlib.sha256(bad).hexdigest() and "payload left out" in letter["error"]
    assert len(run(topics.read_values(deployment.settings(), topics.OUTCOMES))) == 20
    assert worker.get("/health")[0] == 200


async def _limit_dead_letters(d: Deployment, max_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=d.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, d.topic(topics.DEAD_LETTERS),
                                                  {"max.message.bytes": str(max_bytes)})])
        await asyncio.sleep(1)
    finally:
        await admin.close()


def test_nothing_above_stopped_the_worker(live: tuple[Deployment, Worker]) -> None:
    d, worker = live
    send(d, recharge("last", "last-u", 100))
    assert outcomes(d, "last")["last"]["status"] == "accepted"
    assert worker.proc.poll() is None and not worker.crashes()



KEY = "k" * 40


def test_with_a_key_forged_internal_records_that_pass_every_check_are_refused_even_after_a_restart(
    deployment: Deployment, workers: list[Worker]
) -> None:
    """Content that passes every check (a consistent balance of 10^12, a credit within
    the creator share, a planted event id) written to the changelogs and creator-ops by
    someone who is not the pipeline: with PIPELINE_INTERNAL_KEY it is unsigned, a dead
    letter, and the restarted worker restores the real state."""
    deployment.extra_env["PIPELINE_INTERNAL_KEY"] = KEY
    deployment.create_topics()
    first = Worker(deployment, "signed-1")
    workers.append(first.start())
    send(deployment, recharge("sig-r1", "sig-u", 1_000))
    assert outcomes(deployment, "sig-r1")["sig-r1"]["balance_after"] == 1_000
    users_log, ops = topics.USERS_CHANGELOG, topics.CREATOR_OPS
    forged_state = {"b": 10**12, "r": 10**12, "s": 0, "l": None, "d": [], "q": 99}
    partition = partition_for(b"sig-u", PARTITIONS)
    send(deployment,
         (users_log, b"sig-u", json.dumps(forged_state).encode(), partition),
         (users_log, b"sig-ghost", json.dumps(forged_state).encode(), partition),
         (users_log, b"#dd:77", json.dumps({"t": now_ms(), "w": now_ms(), "k": ["r|sig-u|sig-planted"]}).encode(),
          partition),
         (ops, b"sig-c", json.dumps({"op": "c", "creator_id": "sig-c", "coins": 200_000, "gifts": 1,
                                     "items": [[now_ms(), 100_000]], "n": []}).encode()))
    [credit] = letters(deployment, ops, 1, lambda x: "not signed" in x["error"])
    assert credit["payload_bytes"] > 0
    first.stop()
    second = Worker(deployment, "signed-2")
    workers.append(second.start())
    found = letters(deployment, users_log, 3, lambda x: "not signed" in x["error"])
    assert len(found) == 3  # each forged state record, left out of the restore
    send(deployment, recharge("sig-planted", "sig-u", 5),
         event("payouts", event_id="sig-p", creator_id="sig-c", diamonds=100_000, ts=now_ms()))
    out = outcomes(deployment, "sig-planted", "sig-p")
    assert (out["sig-planted"]["status"], out["sig-planted"]["balance_after"]) == ("accepted", 1_005)
    assert (out["sig-p"]["reason"], out["sig-p"]["balance_after"]) == ("insufficient_diamonds", 0)
    assert second.get("/users/sig-ghost")[1]["coins"] == 0
