"""GET /outcomes/{event_id}?wait_ms=N (CONTRACT.md, Read model) and the promotions
broadcast, on the real broker and Redis with two workers: a long poll answered as soon
as its outcome is committed, with the record as on `ledger-outcomes`, by either worker;
its bounds and its cap; the retention; and a malformed promotion dead-lettered once
whichever worker reads it."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from pipeline import topics
from tests.support.harness import Deployment, Worker, produce, run

pytestmark = pytest.mark.integration

NOW = lambda: int(time.time() * 1000)  # noqa: E731


def get(worker: Worker, path: str, timeout_s: float = 15.0) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(worker.url(path), timeout=timeout_s) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def recharge(eid: str, user: str, coins: int = 500) -> tuple[str, bytes, bytes]:
    ev = {"event_id": eid, "user_id": user, "coins": coins, "amount_cents": coins, "currency": "USD", "ts": NOW()}
    return topics.RECHARGES, user.encode(), json.dumps(ev).encode()


def send(d: Deployment, messages: list[tuple[str, bytes | None, bytes | None]]) -> None:
    run(produce(d.bootstrap, [(d.topic(t), k, v) for t, k, v in messages]))  # type: ignore[misc]


@pytest.fixture
def two(deployment: Deployment, workers: list[Worker]) -> tuple[Deployment, Worker, Worker]:
    deployment.extra_env.update(PIPELINE_OUTCOME_RETENTION_S="60", PIPELINE_OUTCOME_MAX_WAITS="3")
    deployment.create_topics()
    a, b = Worker(deployment, "a"), Worker(deployment, "b")
    workers += [a, b]
    a.start(wait=False)
    b.start()
    a.wait_healthy()
    return deployment, a, b


def test_a_long_poll_returns_the_committed_outcome_as_soon_as_it_is_committed(
    two: tuple[Deployment, Worker, Worker],
) -> None:
    d, a, b = two
    send(d, [recharge("warm-up", "u0")])  # both workers past their first cycle
    assert get(a, "/outcomes/warm-up?wait_ms=10000")[0] == 200
    with ThreadPoolExecutor(4) as pool:
        waits = {eid: pool.submit(get, w, f"/outcomes/{eid}?wait_ms=10000") for eid, w in (("lp-1", a), ("lp-2", b))}
        time.sleep(0.5)  # the polls are open before the events exist
        produced = time.monotonic()
        send(d, [recharge("lp-1", "u1"), recharge("lp-2", "u2", 1_000)])
        answers = {eid: f.result() for eid, f in waits.items()}
        elapsed = time.monotonic() - produced
    on_topic = {o["event_id"]: o for o in run(topics.read_values(d.settings(), topics.OUTCOMES))}
    for eid, (status, body, headers) in answers.items():
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == on_topic[eid]  # the record as on ledger-outcomes
    assert json.loads(answers["lp-2"][1])["balance_after"] == 1_000
    assert elapsed < 8, f"answered {elapsed:.1f}s after the events were produced"
    # Any worker answers for any event, at once once committed.
    assert json.loads(get(b, "/outcomes/lp-1")[1]) == on_topic["lp-1"]


def test_bounds_cap_and_retention(two: tuple[Deployment, Worker, Worker]) -> None:
    d, a, _ = two
    for bad in ("10001", "-1", "abc", "1.5", "%EF%BC%91"):  # the last: a full-width 1
        status, body, _ = get(a, f"/outcomes/x?wait_ms={bad}")
        assert status == 400 and b"wait_ms" in body, bad
    assert get(a, "/outcomes/bad%20id")[0] == 400
    started = time.monotonic()
    status, body, _ = get(a, "/outcomes/never?wait_ms=300")
    assert status == 404 and json.loads(body)["error"] and time.monotonic() - started >= 0.3
    # PIPELINE_OUTCOME_MAX_WAITS=3: a fourth open wait is refused at once, retry shortly.
    with ThreadPoolExecutor(4) as pool:
        waits = [pool.submit(get, a, f"/outcomes/none-{i}?wait_ms=3000") for i in range(3)]
        time.sleep(0.5)
        status, body, headers = get(a, "/outcomes/none-x?wait_ms=3000")
        assert status == 503 and headers.get("Retry-After") == "1", body
        assert [f.result()[0] for f in waits] == [404, 404, 404]
    # Kept for PIPELINE_OUTCOME_RETENTION_S (60 s here), no longer.
    send(d, [recharge("kept", "u3")])
    assert get(a, "/outcomes/kept?wait_ms=10000")[0] == 200
    ttl = redis.Redis.from_url(d.redis_url).ttl(f"{d.prefix}outcome:kept")
    assert 0 < ttl <= 60


def test_a_duplicate_never_replaces_the_decision(two: tuple[Deployment, Worker, Worker]) -> None:
    d, a, _ = two
    send(d, [recharge("once", "u4")])
    first = json.loads(get(a, "/outcomes/once?wait_ms=10000")[1])
    send(d, [recharge("once", "u4"), recharge("after", "u4")])
    assert get(a, "/outcomes/after?wait_ms=10000")[0] == 200  # the copy was decided before it
    copies = [o for o in run(topics.read_values(d.settings(), topics.OUTCOMES)) if o["event_id"] == "once"]
    assert [o["status"] for o in copies] == ["accepted", "duplicate"]
    assert json.loads(get(a, "/outcomes/once")[1]) == first


def test_malformed_promotions_are_dead_lettered_once_and_good_ones_apply_on_every_worker(
    two: tuple[Deployment, Worker, Worker],
) -> None:
    d, a, b = two
    day = 86_400_000
    good = {"promo_id": "p-ok", "starts_ts": NOW() - day, "ends_ts": NOW() + day, "bonus_percent": 50,
            "packages": [1_000], "max_per_user": 1, "ts": NOW() - 1}
    bad: list[tuple[str, bytes | None, bytes | None]] = [
        (topics.PROMOTIONS, b"p-bad", b"{not json"),
        (topics.PROMOTIONS, b"p-bad", json.dumps(dict(good, promo_id="p-bad", ends_ts=good["starts_ts"])).encode()),
        (topics.PROMOTIONS, b"other", json.dumps(good).encode()),  # key != promo_id
        (topics.PROMOTIONS, b"bad key", None),  # a tombstone whose key is no promo_id
    ]
    send(d, [*bad, (topics.PROMOTIONS, b"p-ok", json.dumps(good).encode())])
    # Recharges of users on every partition, so both workers decide some.
    users = [f"pu{i}" for i in range(12)]
    send(d, [recharge(f"pr-{u}", u, 1_000) for u in users])
    got = [json.loads(get(w, f"/outcomes/pr-{u}?wait_ms=10000")[1]) for u, w in zip(users, [a, b] * 6)]
    assert {(o["bonus_coins"], o["promo_id"], o["balance_after"]) for o in got} == {(500, "p-ok", 1_500)}
    assert {p for w in (a, b) for p in w.get("/health")[1]["partitions"]} == set(range(d.partitions))
    asyncio.run(asyncio.sleep(2))  # partition 0's next cycles commit the dead letters
    letters = [x for x in run(topics.read_values(d.settings(), topics.DEAD_LETTERS))
               if x["source_topic"] == d.topic(topics.PROMOTIONS)]
    assert sorted(x["offset"] for x in letters) == [0, 1, 2, 3]  # once each, with two workers reading
    assert all(x["partition"] == 0 and x["error"] for x in letters)
    # A restart reads the topic again, and answers nothing again.
    a.kill()
    a.start()
    send(d, [recharge("after-restart", "pu0", 1_000)])
    assert get(a, "/outcomes/after-restart?wait_ms=10000")[0] == 200
    asyncio.run(asyncio.sleep(2))
    again = [x for x in run(topics.read_values(d.settings(), topics.DEAD_LETTERS))
             if x["source_topic"] == d.topic(topics.PROMOTIONS)]
    assert len(again) == 4
    bodies: list[Any] = [json.loads(get(w, "/outcomes/after-restart")[1]) for w in (a, b)]
    assert bodies[0] == bodies[1] and bodies[0]["promo_id"] is None  # max_per_user 1: used
