"""The benchmark's naive reference (bench/naive.py) computes the same results as the
independent reference ledger, so comparing speeds compares equal work.

Events go in three phases (recharges and limits, then gifts, then payouts), each
processed before the next is sent: the naive app does not order a user's topics by
event time, nor payouts after credits, and is not asked to.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer

from tests.conftest import Cluster
from tests.support.harness import Deployment, Worker, partitions_of, produce, read_all, run
from tests.support.reference import CATALOG, ReferenceLedger

pytestmark = pytest.mark.integration

TIMEOUT_S = 90
T0 = 1_780_000_000_000


def _event(topic: str, key_field: str, **fields: Any) -> tuple[str, str, dict[str, Any]]:
    return topic, fields[key_field], fields


def _phases(rng: random.Random) -> list[list[tuple[str, str, dict[str, Any]]]]:
    users, creators = [f"u{i}" for i in range(30)], [f"c{i}" for i in range(5)]
    ts = iter(range(T0, T0 + 10**6))
    first = [_event("recharges", "user_id", event_id=f"r{i}", user_id=u, coins=rng.choice((100, 500, 1_000, 5_000)),
                    amount_cents=100, currency="USD", ts=next(ts)) for i, u in enumerate(users)]
    first += [_event("spend-limits", "user_id", event_id=f"l{i}", user_id=u,
                     daily_coin_limit=rng.choice((50, 300, None)), ts=next(ts)) for i, u in enumerate(users[:10])]
    gifts = []
    for i in range(300):
        sender = rng.choice(users)
        gifts.append(_event("gifts", "sender_id", event_id=f"g{i}", sender_id=sender, creator_id=rng.choice(creators),
                            stream_id=f"s{rng.randrange(3)}", gift_id=rng.choice([*CATALOG, "nope"]),
                            quantity=rng.choice((1, 1, 2, 5)), ts=next(ts)))
    gifts += rng.sample(gifts, 20)  # producer retries
    payouts = [_event("payouts", "creator_id", event_id=f"p{i}", creator_id=c,
                      diamonds=rng.choice((1_000, 2_000, 3_000)), ts=next(ts)) for i, c in enumerate(creators * 2)]
    return [first, gifts, payouts]


def test_naive_reference_matches_the_reference_ledger(
    cluster: Cluster, deployment: Deployment, workers: list[Worker]
) -> None:
    deployment.create_topics()
    naive = Worker(deployment, "naive", module=("bench.naive",))
    workers.append(naive.start(wait=False))
    outcomes_topic = deployment.topic("naive-outcomes")
    # Warm up until the app answers: Faust drops what arrives while it starts (FAUST_NOTES).
    deadline = time.monotonic() + TIMEOUT_S
    warm = 0
    while run(_count(cluster.bootstrap, outcomes_topic)) == 0:
        assert time.monotonic() < deadline, f"the naive app never answered:\n{naive.tail()}"
        warm += 1
        run(produce(cluster.bootstrap, [(deployment.topic("spend-limits"), b"warm", json.dumps(
            {"event_id": f"w{warm}", "user_id": "warm", "daily_coin_limit": None, "ts": T0}).encode())]))
        time.sleep(1.0)
    reference = ReferenceLedger()
    r = redis.Redis.from_url(cluster.redis_url)
    for phase in _phases(random.Random(5)):
        run(produce(cluster.bootstrap,
                    [(deployment.topic(t), k.encode(), json.dumps(v).encode()) for t, k, v in phase]))
        for topic, _, value in phase:
            reference.apply(topic, value)
        deadline = time.monotonic() + TIMEOUT_S
        got: list[dict[str, Any]] = []
        while len(got) < len(reference.outcomes) and time.monotonic() < deadline:
            got = [o for o in run(read_all(cluster.bootstrap, outcomes_topic, len(reference.outcomes), 5,
                                           committed=False, settle_s=0.3))
                   if o["subject_id"] != "warm"]
        assert len(got) == len(reference.outcomes), naive.tail()
        want_lifetime = {c: d for c, d in reference.lifetime.items() if d}
        while _board(r, deployment.prefix + "naive:lb:creators:all") != want_lifetime:  # credits are asynchronous
            assert time.monotonic() < deadline, "creator credits never arrived"
            time.sleep(0.1)
    assert sorted(map(_canon, got)) == sorted(map(_canon, reference.outcomes))
    assert {s for o in got for s in [o["status"]]} == {"accepted", "rejected", "duplicate"}


def _canon(outcome: dict[str, Any]) -> str:
    return json.dumps(outcome, sort_keys=True)


def _board(r: redis.Redis, key: str) -> dict[str, int]:
    return {m.decode(): int(s) for m, s in r.zrange(key, 0, -1, withscores=True)}


async def _count(bootstrap: str, topic: str) -> int:
    """Records in a topic (0 while it does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return 0
        return sum((await consumer.end_offsets(await partitions_of(consumer, topic))).values())
    finally:
        await consumer.stop()
