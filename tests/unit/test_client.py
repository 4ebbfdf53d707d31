"""pipeline.client without Kafka: the builders' values (checked against the schemas and
against the worker's own decoder), keys and partitions, and the outcome long poll
against a local HTTP server that answers like the read model's /outcomes/{event_id}."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiokafka.partitioner import DefaultPartitioner

from agents.ingest import records
from agents.ingest.decode import decode, decode_promotion
from pipeline.client import (
    Client,
    Event,
    Gift,
    InvalidEvent,
    Outcome,
    OutcomeTimeout,
    Payout,
    Promotion,
    ReadModelError,
    Recharge,
    SpendLimit,
    WithdrawPromotion,
    _murmur2,
    check,
    wire,
)
from pipeline.engine.partitioning import partition_for
from pipeline.engine.stage import Malformed
from pipeline.settings import Settings
from tests.support.harness import free_port

ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
TS = 1_700_000_000_000
TOKEN = "t" * 32


def outcome_record(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": "recharge", "status": "accepted", "reason": None, "subject_id": "u1",
            "coins": 100, "diamonds": None, "usd_cents": None, "balance_after": 100, "ts": TS,
            "bonus_coins": 0, "promo_id": None, **fields}


# --- builders ---------------------------------------------------------------------------

def test_builders_fill_event_id_and_ts() -> None:
    before = time.time_ns() // 1_000_000
    a, b = Recharge(user_id="u1", coins=100, amount_cents=99, currency="USD"), Payout(creator_id="c1", diamonds=1)
    after = time.time_ns() // 1_000_000
    assert a.event_id != b.event_id and ID.match(a.event_id) and ID.match(b.event_id)
    assert before <= a.ts <= b.ts <= after
    given = Gift(sender_id="u1", creator_id="c1", stream_id="s1", gift_id="rose", event_id="mine", ts=TS)
    assert (given.event_id, given.ts, given.quantity) == ("mine", TS, 1)


VALID: list[Event] = [
    Recharge(user_id="u.1", coins=1_000_000, amount_cents=10**30, currency="usd", event_id="e1", ts=TS),
    Gift(sender_id="u_1", creator_id="c-1", stream_id="s:1", gift_id="not in the catalog ü", quantity=10_000,
         event_id="e2", ts=TS),
    Payout(creator_id="c-1", diamonds=10**12, event_id="e3", ts=TS),
    SpendLimit(user_id="u1", daily_coin_limit=0, event_id="e4", ts=TS),
    SpendLimit(user_id="u1", monthly_coin_limit=None, event_id="e5", ts=TS),
    SpendLimit(user_id="u1", daily_coin_limit=None, monthly_coin_limit=10**9, event_id="e6", ts=TS),
]


@pytest.mark.parametrize("event", VALID, ids=lambda e: type(e).__name__)
def test_values_are_what_the_worker_decodes(event: Event) -> None:
    check(event)
    key, value = wire(event)
    assert key == getattr(event, event.KEY).encode()
    decoded = decode(event.TOPIC, key, value)
    assert not isinstance(decoded, Malformed), decoded
    assert type(decoded).__name__ == type(event).__name__, decoded
    for name, sent in json.loads(value or b"null").items():
        assert getattr(decoded, name) == sent, name


def test_spend_limit_tells_absent_from_clear() -> None:
    _, value = wire(SpendLimit(user_id="u1", daily_coin_limit=None, event_id="e", ts=TS))
    assert json.loads(value or b"") == {"event_id": "e", "user_id": "u1", "ts": TS, "daily_coin_limit": None}
    decoded = decode("spend-limits", b"u1", value)
    assert isinstance(decoded, records.SpendLimit)
    assert (decoded.daily_coin_limit, decoded.sets_daily, decoded.sets_monthly) == (None, True, False)


def test_promotion_and_its_withdrawal() -> None:
    promo = Promotion(promo_id="p1", starts_ts=TS, ends_ts=TS + 1, bonus_percent=100, packages=(100, 500),
                      max_per_user=1000, ts=TS)
    check(promo)
    key, value = wire(promo)
    decoded = decode_promotion(key, value, 0)
    assert decoded == records.Promotion("p1", TS, TS + 1, 100, frozenset({100, 500}), 1000, TS)
    withdrawal = WithdrawPromotion(promo_id="p1")
    check(withdrawal)
    assert wire(withdrawal) == (b"p1", None)
    assert decode_promotion(b"p1", None, TS) == records.Withdrawal("p1", TS)  # its time: the record's


def _promo(**fields: Any) -> Promotion:
    base: dict[str, Any] = {"promo_id": "p1", "starts_ts": TS, "ends_ts": TS + 1, "bonus_percent": 10,
                            "packages": (100,), "max_per_user": 1}
    return Promotion(**{**base, **fields})


def _recharge(**fields: Any) -> Recharge:
    return Recharge(**{"user_id": "u1", "coins": 100, "amount_cents": 99, "currency": "USD", **fields})


INVALID: list[tuple[str, Event, str]] = [
    ("coins 0", _recharge(coins=0), "coins"),
    ("coins 5.0", _recharge(coins=5.0), "coins"),  # the contract's integers are integer literals
    ("coins True", _recharge(coins=True), "coins"),
    ("coins above max", _recharge(coins=1_000_001), "coins"),
    ("user_id trailing newline", _recharge(user_id="u1\n"), "user_id"),  # "$" is the end of the string
    ("user_id 65 chars", _recharge(user_id="u" * 65), "user_id"),
    ("event_id with a slash", _recharge(event_id="a/b"), "event_id"),
    ("currency 4 letters", _recharge(currency="USDT"), "currency"),
    ("ts negative", _recharge(ts=-1), "ts"),
    ("quantity 0", Gift(sender_id="u1", creator_id="c1", stream_id="s1", gift_id="rose", quantity=0), "quantity"),
    ("gift_id not a string", Gift(sender_id="u1", creator_id="c1", stream_id="s1", gift_id=5),  # type: ignore[arg-type]
     "gift_id"),
    ("diamonds 0", Payout(creator_id="c1", diamonds=0), "diamonds"),
    ("neither limit", SpendLimit(user_id="u1"), "daily_coin_limit or monthly_coin_limit"),
    ("daily limit above max", SpendLimit(user_id="u1", daily_coin_limit=10**9 + 1), "daily_coin_limit"),
    ("packages repeated", _promo(packages=(100, 100)), "packages"),
    ("packages empty", _promo(packages=()), "packages"),
    ("21 packages", _promo(packages=tuple(range(1, 22))), "packages"),
    ("package 0", _promo(packages=(0,)), "packages.0"),
    ("bonus_percent 101", _promo(bonus_percent=101), "bonus_percent"),
    ("max_per_user 0", _promo(max_per_user=0), "max_per_user"),
    ("ends before it starts", _promo(ends_ts=TS), "ends_ts"),
    ("tombstone of a bad id", WithdrawPromotion(promo_id=""), "promo_id"),
]


@pytest.mark.parametrize(("event", "field"), [pytest.param(e, f, id=n) for n, e, f in INVALID])
def test_invalid_events_name_the_field(event: Event, field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        check(event)
    assert caught.value.field == field and caught.value.topic == event.TOPIC
    assert str(caught.value).startswith(f"{event.TOPIC}: {field}: ")


def test_partitioner_is_the_pipelines() -> None:
    """The engine refuses a record off partition_for's partition; aiokafka's default agrees."""
    default = DefaultPartitioner()
    for n in (1, 4, 7, 256):
        partitions = list(range(n))
        for i in range(300):
            key = f"user-{i}".encode()
            assert _murmur2(key, partitions, []) == partition_for(key, n) == default(key, partitions, partitions)


def test_from_env() -> None:
    env = {"PIPELINE_TOPIC_PREFIX": "blue-", "PIPELINE_HTTP_TOKEN": f"{TOKEN},{'o' * 32}",
           "PIPELINE_WEB_PORT": "7000"}
    client = Client.from_env(env)
    assert (str(client.base_url), client.token, client.settings.topic("gifts")) == (
        "http://127.0.0.1:7000", TOKEN, "blue-gifts")
    other = Client.from_env({**env, "PIPELINE_READ_MODEL_URL": "https://ledger.internal/api"}, timeout_s=3)
    assert (str(other.base_url), other.timeout_s) == ("https://ledger.internal/api", 3)


# --- the outcome long poll --------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def read_model(handler: Handler, prefix: str = "") -> AsyncIterator[tuple[Client, list[web.Request]]]:
    """A local server answering GET {prefix}/outcomes/{event_id}, and a client of it."""
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    app = web.Application()
    app.router.add_get(prefix + "/outcomes/{event_id}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with Client(Settings(), base_url=f"http://127.0.0.1:{port}{prefix}", token=TOKEN,
                          timeout_s=5) as client:
            yield client, seen
    finally:
        await runner.cleanup()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def long_poll(answers: list[tuple[int, Any]], max_wait_s: float = 10.0) -> Handler:
    """Answers in turn (the last one repeats); 404s wait `wait_ms` first, like the
    endpoint, or `max_wait_s` if shorter (the outcome is committed meanwhile)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        if status == 404:
            await asyncio.sleep(min(max_wait_s, int(request.query["wait_ms"]) / 1000))
        return web.json_response(body, status=status)

    return handle


def test_polls_until_committed() -> None:
    async def scenario() -> None:
        record = outcome_record("e1", bonus_coins=50, promo_id="p1", added_later={"x": 1})
        answers = [(404, {"error": "no outcome yet"}), (404, {"error": "no outcome yet"}), (200, record)]
        async with read_model(long_poll(answers, max_wait_s=0.1)) as (client, seen):
            client.timeout_s = 60  # wait_ms: at most the endpoint's 10 s
            got = await client.outcome(_recharge(event_id="e1"))
        assert got.accepted and (got.balance_after, got.bonus_coins, got.promo_id) == (100, 50, "p1")
        assert got.record == record and got == Outcome.from_record(record)
        assert len(seen) == 3
        for request in seen:
            assert request.match_info["event_id"] == "e1"
            assert request.headers["Authorization"] == f"Bearer {TOKEN}"
            assert 0 <= int(request.query["wait_ms"]) <= 10_000

    run(scenario())


def test_503_and_5xx_are_retried() -> None:
    async def scenario() -> None:
        answers = [(503, {"error": "too many waits"}), (500, {"error": "internal error"}), (200, outcome_record("e1"))]
        async with read_model(long_poll(answers)) as (client, seen):
            started = time.monotonic()
            assert (await client.outcome("e1")).status == "accepted"
        assert len(seen) == 3 and time.monotonic() - started < 2

    run(scenario())


def test_timeout_names_the_event_the_topic_and_the_wait() -> None:
    async def scenario() -> None:
        async with read_model(long_poll([(404, {"error": "no outcome"})])) as (client, _):
            started = time.monotonic()
            with pytest.raises(OutcomeTimeout) as caught:
                await client.outcome(_recharge(event_id="never-sent"), timeout_s=1.5)
            elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 2.5
        text = str(caught.value)
        assert "'never-sent'" in text and "on recharges" in text and "after 1.5s" in text and "404 no outcome" in text
        assert isinstance(caught.value, TimeoutError) and caught.value.acked and caught.value.event_id == "never-sent"

    run(scenario())


def test_no_busy_loop_when_answered_at_once() -> None:
    """A server that ignores wait_ms (or a wait of 0 near the deadline) is asked at
    most every MIN_POLL_S."""

    async def at_once(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "no outcome"}, status=404)

    async def scenario() -> None:
        async with read_model(at_once) as (client, seen):
            with pytest.raises(OutcomeTimeout):
                await client.outcome("e1", timeout_s=0.5)
        assert 2 <= len(seen) <= 12

    run(scenario())


@pytest.mark.parametrize(("status", "body", "expected"), [
    (401, {"error": "missing or wrong bearer token"}, "PIPELINE_HTTP_TOKEN"),
    (400, {"error": "event_id must match"}, "400 event_id must match"),
    (200, {"status": "accepted"}, "not an outcome record"),
    (200, outcome_record("someone-else"), "got 'someone-else'"),
])
def test_final_answers_are_errors_at_once(status: int, body: Any, expected: str) -> None:
    async def scenario() -> None:
        async with read_model(long_poll([(status, body)])) as (client, seen):
            with pytest.raises(ReadModelError, match=expected):
                await client.outcome("e1")
        assert len(seen) == 1

    run(scenario())


def test_ids_of_dots_and_a_path_prefix() -> None:
    """`..` is a valid id: it must reach the endpoint as itself, not as the parent path."""

    async def scenario() -> None:
        async def echo(request: web.Request) -> web.StreamResponse:
            return web.json_response(outcome_record(request.match_info["event_id"]))

        async with read_model(echo, prefix="/ledger") as (client, _):
            for event_id in ("..", ".", "a.b", "x:y-z_1"):
                assert (await client.outcome(event_id)).event_id == event_id

    run(scenario())


def test_no_read_model_times_out_with_the_last_error() -> None:
    async def scenario() -> None:
        async with Client(Settings(), base_url=f"http://127.0.0.1:{free_port()}", timeout_s=1) as client:
            started = time.monotonic()
            with pytest.raises(OutcomeTimeout, match="ClientConnectorError"):
                await client.outcome("e1")
        assert time.monotonic() - started < 2

    run(scenario())


def test_an_invalid_event_id_is_not_asked_for() -> None:
    async def scenario() -> None:
        async with Client(Settings()) as client:
            with pytest.raises(InvalidEvent, match="event_id"):
                await client.outcome("a/b")

    run(scenario())
