"""The client of the platform services that write the ledger's inputs (CONTRACT.md).

A malformed input is not refused by Kafka: it reaches the pipeline, goes to
`dead-letters` and its producer never hears of it. So every value is checked here
against `schemas/` first, keyed by its id field and put on the partition the pipeline
checks it against (murmur2), and written by an idempotent producer; `send` then waits
for the committed outcome on the read model (`GET /outcomes/{event_id}`), which is what
a service needs before telling a viewer their coins arrived.

Needs `jsonschema` and the repository's `schemas/` folder: the client runs from a
checkout (see docs/client.md, "Limits").
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, overload

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError
from jsonschema import ValidationError
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from yarl import URL

from pipeline import topics
from pipeline.engine.partitioning import partition_for
from pipeline.schemas import SCHEMA_DIR, validator
from pipeline.settings import Settings, load

DEFAULT_TIMEOUT_S = 30.0
MAX_WAIT_MS = 10_000  # the read model's longest long poll (CONTRACT.md, Read model)
# An HTTP answer may come this long after the wait it was asked for (network, a busy worker).
HTTP_MARGIN_S = 5.0
MIN_POLL_S = 0.05  # between two polls answered at once: never a busy loop
BACKOFF_S = (0.1, 2.0)  # after a 5xx or no connection: first and longest pause
READ_MODEL_URL_ENV = "PIPELINE_READ_MODEL_URL"


class _Unset(enum.Enum):
    UNSET = "unset"


# A spend limit left as it was: absent on the wire, unlike None, which clears it.
UNSET: Final = _Unset.UNSET


def new_event_id() -> str:
    return uuid.uuid4().hex  # 32 hex digits: matches the contract's id pattern


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, kw_only=True)
class Recharge:
    TOPIC: ClassVar[str] = topics.RECHARGES
    KEY: ClassVar[str] = "user_id"
    user_id: str
    coins: int
    amount_cents: int
    currency: str
    event_id: str = field(default_factory=new_event_id)
    ts: int = field(default_factory=now_ms)

    def value(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "user_id": self.user_id, "coins": self.coins,
                "amount_cents": self.amount_cents, "currency": self.currency, "ts": self.ts}


@dataclass(frozen=True, kw_only=True)
class Gift:
    TOPIC: ClassVar[str] = topics.GIFTS
    KEY: ClassVar[str] = "sender_id"
    sender_id: str
    creator_id: str
    stream_id: str
    gift_id: str
    quantity: int = 1
    event_id: str = field(default_factory=new_event_id)
    ts: int = field(default_factory=now_ms)

    def value(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "sender_id": self.sender_id, "creator_id": self.creator_id,
                "stream_id": self.stream_id, "gift_id": self.gift_id, "quantity": self.quantity, "ts": self.ts}


@dataclass(frozen=True, kw_only=True)
class Payout:
    TOPIC: ClassVar[str] = topics.PAYOUTS
    KEY: ClassVar[str] = "creator_id"
    creator_id: str
    diamonds: int
    event_id: str = field(default_factory=new_event_id)
    ts: int = field(default_factory=now_ms)

    def value(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "creator_id": self.creator_id, "diamonds": self.diamonds, "ts": self.ts}


@dataclass(frozen=True, kw_only=True)
class SpendLimit:
    """Sets (an int), clears (None) or leaves as it was (UNSET, the default) each of the
    user's own limits; at least one must be given."""

    TOPIC: ClassVar[str] = topics.SPEND_LIMITS
    KEY: ClassVar[str] = "user_id"
    user_id: str
    daily_coin_limit: int | None | Literal[_Unset.UNSET] = UNSET
    monthly_coin_limit: int | None | Literal[_Unset.UNSET] = UNSET
    event_id: str = field(default_factory=new_event_id)
    ts: int = field(default_factory=now_ms)

    def value(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "user_id": self.user_id, "ts": self.ts}
        if self.daily_coin_limit is not UNSET:
            out["daily_coin_limit"] = self.daily_coin_limit
        if self.monthly_coin_limit is not UNSET:
            out["monthly_coin_limit"] = self.monthly_coin_limit
        return out


@dataclass(frozen=True, kw_only=True)
class Promotion:
    """A version of a promotion: recharges dated from `ts` on get it (CONTRACT.md)."""

    TOPIC: ClassVar[str] = topics.PROMOTIONS
    KEY: ClassVar[str] = "promo_id"
    promo_id: str
    starts_ts: int
    ends_ts: int
    bonus_percent: int
    packages: tuple[int, ...]
    max_per_user: int
    ts: int = field(default_factory=now_ms)

    def value(self) -> dict[str, Any]:
        return {"promo_id": self.promo_id, "starts_ts": self.starts_ts, "ends_ts": self.ends_ts,
                "bonus_percent": self.bonus_percent, "packages": list(self.packages),
                "max_per_user": self.max_per_user, "ts": self.ts}


@dataclass(frozen=True, kw_only=True)
class WithdrawPromotion:
    """The tombstone of `promo_id`. It has no value to carry a time: recharges dated from
    its Kafka timestamp on (when the broker wrote it) no longer get the promotion."""

    TOPIC: ClassVar[str] = topics.PROMOTIONS
    KEY: ClassVar[str] = "promo_id"
    promo_id: str

    def value(self) -> None:
        return None


LedgerEvent = Recharge | Gift | Payout | SpendLimit  # each has one outcome
PromotionEvent = Promotion | WithdrawPromotion  # no outcome
Event = LedgerEvent | PromotionEvent


class InvalidEvent(ValueError):
    """The event breaks the schema of its topic; it was not sent."""

    def __init__(self, topic: str, field: str, reason: str) -> None:
        super().__init__(f"{topic}: {field}: {reason}")
        self.topic, self.field, self.reason = topic, field, reason


class OutcomeTimeout(TimeoutError):
    """Nothing in time. `acked`: Kafka acknowledged the event, so it is written and will
    be decided, but no outcome was committed yet; else it may or may not be written.
    Either way sending the same event again (same event_id) is safe: the pipeline
    applies an event_id once. `event_id` is None for a promotion (never acknowledged)."""

    def __init__(self, topic: str | None, waited_s: float, *, event_id: str | None, acked: bool,
                 last: str = "", promo_id: str | None = None) -> None:
        what = f"event_id {event_id!r}" if event_id is not None else f"promo_id {promo_id!r}"
        where = f" on {topic}" if topic else ""
        if acked:
            text = (f"no committed outcome for {what}{where} after {waited_s:g}s (last answer: {last}); "
                    "it is in Kafka: check the workers' health and lag")
        else:
            text = (f"Kafka did not acknowledge {what}{where} within {waited_s:g}s; check that Kafka is up and "
                    "the topic exists (PIPELINE_TOPIC_PREFIX), then send the same event again")
        super().__init__(text)
        self.event_id, self.topic, self.waited_s, self.acked = event_id, topic, waited_s, acked


class ReadModelError(RuntimeError):
    """The read model refused the request for a reason waiting will not fix (401: the
    bearer token is missing or wrong; 400; an answer that is not an outcome)."""


@dataclass(frozen=True)
class Outcome:
    """A committed record of `ledger-outcomes`; `record` is it whole, with any field
    added after this client was written."""

    event_id: str
    type: str
    status: str
    reason: str | None
    subject_id: str
    coins: int | None
    diamonds: int | None
    usd_cents: int | None
    balance_after: int | None
    ts: int
    bonus_coins: int | None = None  # an accepted recharge's; null on other outcomes
    promo_id: str | None = None
    record: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @classmethod
    def from_record(cls, record: Any) -> Outcome:
        required = ("event_id", "type", "status", "reason", "subject_id", "coins", "diamonds", "usd_cents",
                    "balance_after", "ts")
        if not isinstance(record, dict) or any(name not in record for name in required):
            raise ReadModelError(f"not an outcome record: {str(record)[:200]}")
        return cls(**{name: record[name] for name in required}, bonus_coins=record.get("bonus_coins"),
                   promo_id=record.get("promo_id"), record=record)


@dataclass(frozen=True)
class Delivery:
    """Where Kafka wrote an event (its acknowledgement)."""

    topic: str
    partition: int
    offset: int


# --- validation -----------------------------------------------------------------------

def _validator(schema_dir: Path, topic: str) -> Validator:
    try:
        return validator(topic, schema_dir)
    except ValueError:
        raise FileNotFoundError(f"no schema for {topic} in {schema_dir}: the client reads schemas/ of a checkout of "
                                "the repository (pass schema_dir= to use another copy)") from None


def _field_of(error: ValidationError) -> str:
    if error.absolute_path:
        return ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        return str(next(name for name in error.validator_value if name not in error.instance))
    if error.validator == "anyOf":  # spend-limits: at least one of two fields
        return " or ".join(name for branch in error.validator_value for name in branch.get("required", ()))
    return "value"


def check_field(topic: str, name: str, value: Any, schema_dir: Path = SCHEMA_DIR) -> None:
    """Raise InvalidEvent unless `value` is valid as field `name` of `topic`'s schema."""
    validator = _validator(schema_dir, topic)
    # The field's subschema, with the definitions its $ref may point to.
    schema = {"$defs": validator.schema.get("$defs", {}), **validator.schema["properties"][name]}
    error = best_match(validator.evolve(schema=schema).iter_errors(value))
    if error is not None:
        raise InvalidEvent(topic, name, error.message)


def check(event: Event, schema_dir: Path = SCHEMA_DIR) -> None:
    """Raise InvalidEvent naming the first field of `event` its topic's schema refuses,
    or the one rule the schema cannot state (a promotion ends after it starts)."""
    value = event.value()
    if value is None:  # a tombstone: only its key
        check_field(event.TOPIC, event.KEY, getattr(event, event.KEY), schema_dir)
        return
    error = best_match(_validator(schema_dir, event.TOPIC).iter_errors(value))
    if error is not None:
        raise InvalidEvent(event.TOPIC, _field_of(error), error.message)
    if isinstance(event, Promotion) and event.ends_ts <= event.starts_ts:
        raise InvalidEvent(event.TOPIC, "ends_ts", f"{event.ends_ts} is not greater than starts_ts {event.starts_ts}")


def wire(event: Event) -> tuple[bytes, bytes | None]:
    """The record's key and value as written (not checked: see `check`)."""
    value = event.value()
    key = getattr(event, event.KEY).encode()
    return key, None if value is None else json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _murmur2(key: bytes, all_partitions: list[int], _available: list[int]) -> int:
    """The pipeline's own rule (engine/partitioning.py), so a user's events are never
    refused as misrouted, whatever aiokafka's default partitioner becomes."""
    return all_partitions[partition_for(key, len(all_partitions))]


def _path_segment(event_id: str) -> str:
    # "." and ".." are valid ids, but as a path segment a URL library would resolve them.
    return "%2E" * len(event_id) if set(event_id) == {"."} else event_id


# --- the client -------------------------------------------------------------------------

class Client:
    """Writes events to one deployment's input topics and reads their outcomes.

    Use as `async with Client(settings) as client:`. Kafka is connected at the first
    send (a client that only reads outcomes never connects). Events of one user that
    depend on each other (a recharge, then the gift it pays for) must be sent one after
    the other: an event acknowledged before the next is produced is applied first."""

    def __init__(self, settings: Settings, *, base_url: str | None = None, token: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, schema_dir: Path = SCHEMA_DIR) -> None:
        self.settings = settings
        self.base_url = URL(base_url or f"http://127.0.0.1:{settings.web_port}")
        # The first of the deployment's tokens: the new one during a rotation.
        self.token = token if token is not None else (settings.http_tokens[0] if settings.http_tokens else None)
        self.timeout_s = timeout_s
        self.schema_dir = schema_dir
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> Client:
        """Settings from the PIPELINE_* variables, as a worker reads them, and the read
        model's address from PIPELINE_READ_MODEL_URL (default: this host's worker)."""
        env = os.environ if env is None else env
        return cls(load(env), base_url=env.get(READ_MODEL_URL_ENV) or None, **options)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Waits for events still in flight, then disconnects."""
        producer, self._producer = self._producer, None
        session, self._session = self._session, None
        if producer is not None:
            await producer.stop()
        if session is not None:
            await session.close()

    def check(self, event: Event) -> None:
        check(event, self.schema_dir)

    @overload
    async def send(self, event: LedgerEvent, *, timeout_s: float | None = None) -> Outcome: ...

    @overload
    async def send(self, event: PromotionEvent, *, timeout_s: float | None = None) -> Delivery: ...

    async def send(self, event: Event, *, timeout_s: float | None = None) -> Outcome | Delivery:
        """The event's committed outcome; a promotion has none, so its Delivery. The
        timeout (default: the client's) covers both the acknowledgement and the wait."""
        budget = self.timeout_s if timeout_s is None else timeout_s
        deadline = asyncio.get_running_loop().time() + budget
        delivery = await self._publish(event, deadline, budget)
        if isinstance(event, Promotion | WithdrawPromotion):
            return delivery
        return await self._outcome(event.event_id, delivery.topic, deadline, budget)

    async def publish(self, event: Event, *, timeout_s: float | None = None) -> Delivery:
        """Send without waiting for the outcome (`outcome(event)` reads it later)."""
        budget = self.timeout_s if timeout_s is None else timeout_s
        return await self._publish(event, asyncio.get_running_loop().time() + budget, budget)

    async def outcome(self, event: LedgerEvent | str, *, timeout_s: float | None = None) -> Outcome:
        """The committed outcome of an event (or of an event_id) sent before."""
        if isinstance(event, str):
            event_id, topic = event, None
            check_field(topics.OUTCOMES, "event_id", event_id, self.schema_dir)
        else:
            event_id, topic = event.event_id, self.settings.topic(event.TOPIC)
        budget = self.timeout_s if timeout_s is None else timeout_s
        return await self._outcome(event_id, topic, asyncio.get_running_loop().time() + budget, budget)

    async def _publish(self, event: Event, deadline: float, budget: float) -> Delivery:
        self.check(event)
        topic = self.settings.topic(event.TOPIC)
        key, value = wire(event)
        try:
            async with asyncio.timeout_at(deadline):
                producer = await self._kafka()
                ack = await producer.send(topic, value, key=key)
                # Shielded: giving up must not cancel aiokafka's own future of the batch.
                meta = await asyncio.shield(ack)
        except (TimeoutError, KafkaTimeoutError, UnknownTopicOrPartitionError):
            if isinstance(event, Promotion | WithdrawPromotion):
                raise OutcomeTimeout(topic, budget, event_id=None, promo_id=event.promo_id, acked=False) from None
            raise OutcomeTimeout(topic, budget, event_id=event.event_id, acked=False) from None
        return Delivery(meta.topic, meta.partition, meta.offset)

    async def _kafka(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(**self.settings.kafka_options(), acks="all", enable_idempotence=True,
                                            partitioner=_murmur2, client_id="coin-ledger-client")
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def _outcome(self, event_id: str, topic: str | None, deadline: float, budget: float) -> Outcome:
        """Long polls until the deadline: 404 (not committed yet) asks again, 503 (the
        worker holds too many waits, or Redis is down), other 5xx and no connection
        back off and ask again; any other answer is final."""
        loop = asyncio.get_running_loop()
        url = self.base_url.joinpath("outcomes", _path_segment(event_id), encoded=True)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        last, backoff = "none yet", BACKOFF_S[0]
        if self._session is None:
            self._session = aiohttp.ClientSession()
        session = self._session
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    asked = loop.time()
                    # Answered before the deadline, so the last answer is known.
                    wait_ms = max(0, min(MAX_WAIT_MS, int((deadline - asked - MIN_POLL_S) * 1000)))
                    try:
                        async with session.get(url, params={"wait_ms": str(wait_ms)}, headers=headers,
                                               timeout=aiohttp.ClientTimeout(total=wait_ms / 1000 + HTTP_MARGIN_S),
                                               allow_redirects=False) as resp:
                            status, text = resp.status, await resp.text()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        status, text = 0, f"{exc.__class__.__name__}: {exc}"
                    if status == 200:
                        outcome = Outcome.from_record(_json(text))
                        if outcome.event_id != event_id:
                            raise ReadModelError(f"asked for the outcome of {event_id!r}, got {outcome.event_id!r}'s")
                        return outcome
                    last = f"{status} {_error_of(text)}" if status else text
                    if status == 404:
                        backoff = BACKOFF_S[0]
                        await asyncio.sleep(max(0.0, MIN_POLL_S - (loop.time() - asked)))
                    elif status == 0 or status >= 500:
                        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # jitter: workers see no herd
                        backoff = min(backoff * 2, BACKOFF_S[1])
                    elif status == 401:
                        raise ReadModelError(f"GET {url}: 401 {_error_of(text)}: pass token= or set "
                                             "PIPELINE_HTTP_TOKEN to the deployment's bearer token")
                    else:
                        raise ReadModelError(f"GET {url}: {last}")
        except TimeoutError:
            raise OutcomeTimeout(topic, budget, event_id=event_id, acked=True, last=last) from None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ReadModelError(f"not JSON: {text[:200]!r}") from None


def _error_of(text: str) -> str:
    """The `error` of a JSON error body, else the body's start."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return str(body["error"]) if isinstance(body, dict) and "error" in body else text[:200]
