"""The ledger end to end on the real broker and Redis, against the reference ledger.

A seeded stream of thousands of mixed events (every outcome, duplicates, malformed
messages, a UTC midnight) is produced as a backlog, then processed by real worker
processes; the outcomes, dead letters and every balance must equal what the
independent reference ledger computes, with and without SIGKILLs mid-stream.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Cluster
from tests.support.eventgen import Stream, payout_stream, user_stream
from tests.support.harness import Deployment, Sent, Worker, produce, read_all, run, wait_end_offsets
from tests.support.reference import ReferenceLedger

pytestmark = pytest.mark.integration

EVENTS = 4000
DONE_TIMEOUT_S = 120


def _canon(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True) for r in records)


def _assert_same_outcomes(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    extra, missing = _canon(got) - _canon(want), _canon(want) - _canon(got)
    by_ts = lambda c: sorted(c.elements(), key=lambda r: json.loads(r)["ts"])[:6]  # noqa: E731
    assert not extra and not missing, (
        f"{sum(extra.values())} unexpected and {sum(missing.values())} missing outcomes; earliest:\n"
        + "\n".join(["unexpected:", *by_ts(extra), "missing:", *by_ts(missing)])
    )


def _wait_outcomes(d: Deployment, expected: int, kill_at: tuple[float, ...], worker: Worker) -> list[dict[str, Any]]:
    """Wait for `expected` outcomes, SIGKILLing and restarting the worker when about
    each fraction `kill_at` of them is committed; each kill must land mid-stream."""
    committed = 0
    for fraction in kill_at:
        # End offsets also count commit markers and, after a kill, the aborted batch:
        # ask for real progress beyond what was committed at the last kill.
        target = max(int(expected * fraction), committed + expected // 5)
        run(wait_end_offsets(d.bootstrap, d.topic("ledger-outcomes"), target, DONE_TIMEOUT_S))
        worker.kill()
        now = len(run(read_all(d.bootstrap, d.topic("ledger-outcomes"), expected, 2.0, settle_s=0)))
        print(f"SIGKILL with {now} of {expected} outcomes committed")
        assert committed < now < expected, "the kill did not land mid-stream"
        committed = now
        worker.start(wait=False)
    return run(read_all(d.bootstrap, d.topic("ledger-outcomes"), expected, DONE_TIMEOUT_S))


def _eventually(check: Callable[[], None], timeout_s: float = 10.0) -> None:
    """The read model follows a commit by one Redis round trip: retry a failing check."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _check_state(worker: Worker, model: ReferenceLedger, users: set[str], creators: set[str]) -> None:
    for user in sorted(users):
        status, body = worker.get(f"/users/{user}")
        assert status == 200
        assert {k: body[k] for k in model.user(user)} == model.user(user), user
        want = model.budget_fields(user)
        assert {k: body[k] for k in want} == want, user
    for creator in sorted(creators):
        status, body = worker.get(f"/creators/{creator}")
        assert status == 200
        got = {k: body[k] for k in ("diamonds", "lifetime_diamonds", "paid_out_diamonds")}
        assert got == model.creator(creator), creator


def parts_of(key: str) -> list[str]:
    return key.split(":")


def _board_url(key: str) -> str:
    parts = parts_of(key)
    if parts[1] == "stream":
        return f"/leaderboards/streams/{parts[2]}/gifters?limit=1000"
    if parts[1] == "gifters":
        return f"/leaderboards/gifters?day={parts[3]}&limit=1000"
    if parts[2] == "all":
        return "/leaderboards/creators?period=all&limit=1000"
    return f"/leaderboards/creators?period=day&day={parts[3]}&limit=1000"


def _check_boards(d: Deployment, worker: Worker, model: ReferenceLedger) -> None:
    """Every leaderboard, in Redis and over HTTP, equals the reference's exactly."""
    expected = model.boards()
    client = redis.Redis.from_url(d.redis_url)
    try:
        stored = {k.decode()[len(d.prefix):] for k in client.scan_iter(match=f"{d.prefix}lb:*")}
        assert stored == set(expected)
        for key, entries in expected.items():
            in_redis = [(m.decode(), int(s)) for m, s in client.zrange(d.prefix + key, 0, -1, withscores=True)]
            assert sorted(in_redis, key=lambda e: (-e[1], e[0])) == entries, key
            status, body = worker.get(_board_url(key))
            assert status == 200, body
            id_name, score_name = ("creator_id", "diamonds") if "creators" in key else ("user_id", "coins")
            got = [(e[id_name], e[score_name]) for e in body["entries"]]
            assert got == entries[:1000], key
            assert [e["rank"] for e in body["entries"]] == list(range(1, len(got) + 1))
            top = [e["rank"] for e in body["entries"] if e.get("badge") == "top_gifter"]
            assert top == (list(range(1, min(3, len(got)) + 1)) if parts_of(key)[1] == "stream" else []), key
    finally:
        client.close()


def _check_windows(worker: Worker, model: ReferenceLedger, creators: set[str]) -> None:
    for creator in sorted(creators):
        for size in ("1m", "1h"):
            status, body = worker.get(f"/creators/{creator}/windows?size={size}")
            assert status == 200, body
            got = [(w["start"], w["diamonds"]) for w in body["windows"]]
            want = sorted((start, n) for (c, s, start), n in model.windows.items() if c == creator and s == size and n)
            assert got == want, (creator, size)


def _check_metrics(worker: Worker, model: ReferenceLedger, malformed: int) -> None:
    """/metrics parses as Prometheus text and its ledger counters equal the model's."""
    with urllib.request.urlopen(worker.url("/metrics"), timeout=5) as resp:
        text = resp.read().decode()
    samples: dict[str, float] = Counter()
    input_lag = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] += sample.value
            if sample.name == "ledger_consumer_lag_messages" and sample.labels["topic"] != "ledger-creator-ops":
                input_lag += sample.value
    accepted = [o for o in model.outcomes if o["status"] == "accepted"]
    assert samples["ledger_events_total"] == len(model.outcomes)
    assert samples["ledger_dead_letters_total"] == malformed
    assert samples["ledger_coins_recharged_total"] == sum(model.recharged.values())
    assert samples["ledger_bonus_coins_total"] == sum(model.bonus.values()) > 0
    assert samples["ledger_gifter_level_ups_total"] == len(model.badges)
    assert samples["ledger_coins_spent_total"] == sum(model.spent.values())
    assert samples["ledger_diamonds_credited_total"] == sum(model.lifetime.values())
    assert samples["ledger_diamonds_paid_out_total"] == sum(model.paid_out.values())
    assert samples["ledger_payout_usd_cents_total"] == sum(o["usd_cents"] for o in accepted if o["type"] == "payout")
    assert samples["ledger_event_to_outcome_seconds_count"] == len(model.outcomes)
    assert input_lag == 0  # every input read (creator-ops carries idle progress marks)
    assert samples["ledger_table_entries"] > 0


CREATORS = {f"c{i}" for i in range(12)}


def _backlog(d: Deployment, seed: int, events: int) -> tuple[Stream, ReferenceLedger, list[Sent]]:
    """A seeded stream and its reference outcomes; the stream is produced before any
    worker starts: a backlog is where the event-time merge of a user's topics matters
    most."""
    stream = user_stream(seed=seed, n=events)
    model = ReferenceLedger()
    stream.apply_to(model)
    d.create_topics()
    return stream, model, run(produce(d.bootstrap, [(d.topic(t), k, v) for t, k, v in stream.messages]))


def _users_of(stream: Stream) -> set[str]:
    return {ev.get("user_id") or ev.get("sender_id") for t, ev in stream.events if t != "payouts"}


def _scenario(d: Deployment, workers: list[Worker], events: int, kill_at: tuple[float, ...]) -> None:
    stream, model, sent = _backlog(d, seed=11, events=events)
    statuses = Counter((o["type"], o["status"], o["reason"]) for o in model.outcomes)
    # The stream must exercise every outcome of the contract (else the test proves less).
    for reason in ("unknown_gift", "self_gift", "insufficient_coins", "spend_limit_exceeded"):
        assert statuses[("gift", "rejected", reason)] > 0, reason
    for kind in ("recharge", "gift", "spend_limit", "payout"):
        assert statuses[(kind, "duplicate", None)] > 0, kind
    for reason in ("below_min_payout", "insufficient_diamonds"):
        assert statuses[("payout", "rejected", reason)] > 0, reason
    assert statuses[("payout", "accepted", None)] > 0
    assert stream.malformed
    # Promotions: each one given, the tie broken by id, max_per_user reached, the new version.
    given = Counter((o["promo_id"], o["bonus_coins"] * 100 // o["coins"]) for o in model.outcomes
                    if o["type"] == "recharge" and o["status"] == "accepted")
    for promo in (("welcome", 20), ("welcome", 50), ("big", 10), ("tie", 10), (None, 0)):
        assert given[promo] > 0, promo
    assert len({b["user_id"] for b in model.badges}) > 10 and any(b["level"] - b["previous_level"] > 1
                                                                 for b in model.badges)

    worker = Worker(d, "w1")
    workers.append(worker)
    started = time.monotonic()
    worker.start(wait=False)
    outcomes = _wait_outcomes(d, len(stream.events), kill_at, worker)
    elapsed = time.monotonic() - started
    print(f"\n{len(stream.messages)} messages processed in {elapsed:.1f}s with {len(kill_at)} kills")
    _assert_same_outcomes(outcomes, model.outcomes)

    malformed = {(s.topic, s.partition, s.offset) for s in sent
                 if (s.topic[len(d.prefix):], s.key, s.value) in stream.malformed}
    letters = run(read_all(d.bootstrap, d.topic("dead-letters"), len(malformed), 30))
    assert {(x["source_topic"], x["partition"], x["offset"]) for x in letters} == malformed
    assert len(letters) == len(malformed)
    assert all(x["error"] for x in letters)
    badges = run(read_all(d.bootstrap, d.topic("badges"), len(model.badges), 30))
    assert set(map(json.dumps, badges)) == set(map(json.dumps, model.badges))  # a repeat is the same record
    assert len({b["badge_id"] for b in badges}) == len(badges) or kill_at

    # Payouts once every credit is in: their outcomes depend on the creators' balances.
    creators = set(model.diamonds) | CREATORS
    payouts = payout_stream(seed=12, diamonds={c: model.diamonds[c] for c in creators},
                            start_ts=stream.events[-1][1]["ts"])
    for topic, ev in payouts.events:
        model.apply(topic, ev)
    run(produce(d.bootstrap, [(d.topic(t), k, v) for t, k, v in payouts.messages]))
    outcomes = _wait_outcomes(d, len(model.outcomes), (), worker)
    _assert_same_outcomes(outcomes, model.outcomes)
    payout_statuses = Counter((o["status"], o["reason"]) for o in model.outcomes if o["type"] == "payout")
    assert payout_statuses[("accepted", None)] and payout_statuses[("rejected", "insufficient_diamonds")]
    assert payout_statuses[("rejected", "below_min_payout")] and payout_statuses[("duplicate", None)]

    users = _users_of(stream)
    _eventually(lambda: _check_state(worker, model, users, creators))
    _eventually(lambda: _check_boards(d, worker, model))
    _eventually(lambda: _check_windows(worker, model, creators))
    if not kill_at:  # one worker process from start to end: its counters are exact
        _check_metrics(worker, model, len(stream.malformed))
    # An emptied Redis is refilled from the pipeline's own state, no replay needed.
    redis.Redis.from_url(d.redis_url).flushall()
    _eventually(lambda: _check_boards(d, worker, model))
    _eventually(lambda: _check_windows(worker, model, creators))
    _eventually(lambda: _check_state(worker, model, users, creators))
    # Conservation: coins recharged + bonus = held + spent; spent = diamonds credited + fee.
    assert sum(model.recharged.values()) + sum(model.bonus.values()) == (
        sum(model.coins.values()) + sum(model.spent.values()))
    assert sum(model.spent.values()) == sum(model.lifetime.values()) + model.fees


def test_clean_run_matches_reference(deployment: Deployment, workers: list[Worker]) -> None:
    _scenario(deployment, workers, EVENTS, kill_at=())
    worker = workers[0]
    for bad in (
        "/users/not%20an%20id", "/creators/" + "x" * 65, "/leaderboards/gifters?day=2026-13-01",
        "/leaderboards/gifters?day=2026-01-01&limit=0", "/leaderboards/creators?period=week",
        "/leaderboards/creators?period=all&limit=1001", "/leaderboards/streams/s0/gifters?limit=ten",
    ):
        status, body = worker.get(bad)
        assert status == 400 and body["error"], bad


def test_sigkill_mid_stream_matches_reference(deployment: Deployment, workers: list[Worker]) -> None:
    # Small batches: many transactions, so the kills land between and inside them
    # rather than after one transaction that holds the whole backlog.
    deployment.extra_env["PIPELINE_MAX_BATCH"] = "50"
    _scenario(deployment, workers, 3 * EVENTS, kill_at=(0.2, 0.6))


def test_workers_share_partitions_rebalance_and_answer_any_key(deployment: Deployment, workers: list[Worker]) -> None:
    """Two workers split the partitions; one is SIGKILLed mid-stream (its partitions move
    to the other) and comes back; either answers for every user and creator."""
    d = deployment
    d.extra_env["PIPELINE_MAX_BATCH"] = "50"
    # The reference has no fraud rules: with promotions' bonus coins, this seed's creator
    # c1 gets most of a day's diamonds from new senders, and payout_concentration would
    # hold a payout (alerted, paid here; tests/integration/test_fraud_pipeline.py holds).
    d.extra_env["PIPELINE_HOLD_SUSPICIOUS_PAYOUTS"] = "0"
    stream, model, _ = _backlog(d, seed=21, events=3 * EVENTS)
    w1, w2 = Worker(d, "w1"), Worker(d, "w2")
    workers.extend([w1, w2])
    w1.start(wait=False)
    w2.start(wait=False)
    w1.wait_healthy()
    w2.wait_healthy()
    run(wait_end_offsets(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes) // 4, DONE_TIMEOUT_S))
    assert sorted(w2.get("/health")[1]["partitions"]), "w2 held no partition when killed"
    w2.kill()
    at_kill = len(run(read_all(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes), 2.0, settle_s=0)))
    print(f"SIGKILL of w2 with {at_kill} of {len(model.outcomes)} outcomes committed")
    assert 0 < at_kill < len(model.outcomes), "the kill did not land mid-stream"
    outcomes = run(read_all(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes), DONE_TIMEOUT_S))
    _assert_same_outcomes(outcomes, model.outcomes)
    w2.start()
    users, creators = _users_of(stream), CREATORS
    for w in (w1, w2):
        _eventually(lambda w=w: _check_state(w, model, users, creators))
    deadline = time.monotonic() + 30
    while sorted(w1.get("/health")[1]["partitions"] + w2.get("/health")[1]["partitions"]) != [0, 1, 2, 3]:
        assert time.monotonic() < deadline, "the two workers do not split the partitions"
        time.sleep(0.5)


def _metric(worker: Worker, name: str) -> float:
    with urllib.request.urlopen(worker.url("/metrics"), timeout=5) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_redis_outage_the_ledger_keeps_going_and_boards_come_back_exact(
    cluster: Cluster, deployment: Deployment, workers: list[Worker]
) -> None:
    """Redis stopped mid-stream and restarted empty: outcomes keep flowing during the
    outage, and hashes, boards and windows are refilled exactly from the ledger's state."""
    d = deployment
    d.extra_env["PIPELINE_MAX_BATCH"] = "10"  # small batches: the backlog lasts through the outage
    stream, model, _ = _backlog(d, seed=31, events=3 * EVENTS)
    worker = Worker(d, "w1")
    workers.append(worker)
    worker.start()
    run(wait_end_offsets(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes) // 10, DONE_TIMEOUT_S))
    errors_before = _metric(worker, "ledger_redis_errors_total")
    cluster.redis.stop()
    try:
        before = len(run(read_all(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes), 1.0, settle_s=0)))
        assert before < len(model.outcomes), "the backlog was done before the outage: the test proves nothing"
        time.sleep(3)
        during = len(run(read_all(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes), 1.0, settle_s=0)))
        assert during > before, "the ledger stalled while Redis was down"
        assert _metric(worker, "ledger_redis_errors_total") > errors_before  # the outage shows
        assert worker.get("/health")[1]["read_model_pending"] > 0
    finally:
        cluster.redis.start()  # empty: it keeps nothing on disk
    outcomes = run(read_all(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes), DONE_TIMEOUT_S))
    _assert_same_outcomes(outcomes, model.outcomes)
    users, creators = _users_of(stream), CREATORS
    _eventually(lambda: _check_state(worker, model, users, creators), timeout_s=30)
    _eventually(lambda: _check_boards(d, worker, model), timeout_s=30)
    _eventually(lambda: _check_windows(worker, model, creators), timeout_s=30)
    assert worker.get("/health")[1]["read_model_pending"] == 0
