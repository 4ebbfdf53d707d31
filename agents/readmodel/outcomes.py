"""Committed outcomes in Redis, for `GET /outcomes/{event_id}?wait_ms=N` (CONTRACT.md).

An app shows "added to your account" or "sent" only once it knows the decision on its
own event; consuming `ledger-outcomes` for one record is not something an app can do.
Each worker writes the outcomes its transactions committed to `outcome:{event_id}` (the
record's JSON, as on `ledger-outcomes`) with the retention as time to live, and then
publishes the batch's event ids on the channel `outcomes:committed`, which wakes the
long polls of every worker. A waiter also re-reads its key every POLL_S, so a
notification lost to a Redis reconnect delays an answer, never loses it.

A `duplicate` outcome never replaces another one (SET NX): the key keeps the decision
on the event, not the answer to a producer's retry. Anything else replaces what is
there (an event rejected `invalid_ts` and sent again is decided again).

Bounded: at most MAX_PENDING outcomes wait for Redis (beyond that the oldest are
dropped, counted in ledger_outcome_cache_dropped_total: they are still on
`ledger-outcomes`), at most `max_waits` long polls are open per worker (beyond that
the endpoint answers 503), and each waits at most MAX_WAIT_MS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import ResponseError

from agents.outcomes import LevelUp, Outcome
from pipeline.engine.codec import dumps
from pipeline.invariants import require

log = logging.getLogger(__name__)

CHANNEL = "outcomes:committed"
LEVEL_UPS = "badges:latest"  # sorted set: badges record JSON -> its event time
MAX_LEVEL_UPS = 100
MAX_PENDING = 200_000
CHUNK = 2_000  # outcomes per pipelined round trip
RETRY_S = 1.0
MAX_WAIT_MS = 10_000
POLL_S = 2.0  # a safety net: the notification answers first

DROPPED = Counter("ledger_outcome_cache_dropped_total",
                  "Committed outcomes not written to Redis (more than MAX_PENDING waiting while Redis failed).")
WRITE_ERRORS = Counter("ledger_outcome_cache_errors_total", "Failed writes of committed outcomes to Redis.")
OPEN_WAITS = Gauge("ledger_outcome_waits_open", "Long polls of GET /outcomes open on this worker.")


# ARGV: key prefix, time to live (s), channel, and the chunk's outcomes as one string:
# event id NUL duplicate ("1"/"0") NUL record JSON NUL, per outcome (neither an id nor
# orjson's output holds a NUL). One argument per chunk: a pipeline of one SET per
# outcome cost the worker ~50 us of Python per outcome (command packing, replies).
_WRITE = r"""
local prefix, ttl, blob = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local ids, pos = {}, 1
while pos <= #blob do
  local a = string.find(blob, '\0', pos, true)
  local b = string.find(blob, '\0', a + 1, true)
  local c = string.find(blob, '\0', b + 1, true)
  local id = string.sub(blob, pos, a - 1)
  local key = prefix .. 'outcome:' .. id
  if string.sub(blob, a + 1, b - 1) == '1' then
    redis.call('SET', key, string.sub(blob, b + 1, c - 1), 'EX', ttl, 'NX')
  else
    redis.call('SET', key, string.sub(blob, b + 1, c - 1), 'EX', ttl)
  end
  ids[#ids + 1] = id
  pos = c + 1
end
redis.call('PUBLISH', prefix .. ARGV[3], table.concat(ids, '\n'))
return #ids
"""


def key_of(prefix: str, event_id: str) -> str:
    return f"{prefix}outcome:{event_id}"


class OutcomeCache:
    """The writer: fed each committed batch's outcomes and level-ups (the engine's
    on_committed hook), writes them in the background, one flush at a time. Level-ups go
    to a feed of the latest MAX_LEVEL_UPS for the dashboard (not refilled if Redis is
    emptied: the `badges` topic is their record)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, retention_s: int) -> None:
        require(retention_s >= 1, "outcomes are kept at least a second")
        self.redis = redis
        self.prefix = prefix
        self.retention_s = retention_s
        self.pending: deque[tuple[str, bytes, bool]] = deque()  # (event_id, JSON, duplicate)
        self.level_ups: deque[LevelUp] = deque(maxlen=MAX_LEVEL_UPS)
        self._flushing: asyncio.Task[None] | None = None
        self._script = redis.register_script(_WRITE)

    def add(self, outcomes: Iterable[Outcome], level_ups: Iterable[LevelUp] = ()) -> None:
        for o in outcomes:
            self.pending.append((o.event_id, dumps(o), o.status == "duplicate"))
        self.level_ups.extend(level_ups)
        over = len(self.pending) - MAX_PENDING
        if over > 0:
            for _ in range(over):
                self.pending.popleft()
            DROPPED.inc(over)
        if (self.pending or self.level_ups) and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        if self.level_ups:
            ups = list(self.level_ups)
            self.level_ups.clear()
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(self.prefix + LEVEL_UPS, {dumps(u.to_json()).decode(): u.ts for u in ups})
                    pipe.zremrangebyrank(self.prefix + LEVEL_UPS, 0, -MAX_LEVEL_UPS - 1)
                    await pipe.execute()
            except (TimeoutError, aioredis.RedisError, OSError):
                WRITE_ERRORS.inc()  # a feed of the latest: not retried
        while self.pending:
            chunk = [self.pending.popleft() for _ in range(min(CHUNK, len(self.pending)))]
            blob = b"".join(b"%s\0%s\0%s\0" % (e.encode(), b"1" if dup else b"0", raw) for e, raw, dup in chunk)
            try:
                await self._script(args=[self.prefix, str(self.retention_s), CHANNEL, blob])
            except ResponseError as exc:  # refused, not unreachable: retrying cannot help
                WRITE_ERRORS.inc()
                DROPPED.inc(len(chunk))
                log.error("outcomes refused by Redis (%s); %d not cached", exc, len(chunk))
            except (TimeoutError, aioredis.RedisError, OSError) as exc:
                WRITE_ERRORS.inc()
                log.warning("outcomes not written to Redis (%s); retrying", exc.__class__.__name__)
                self.pending.extendleft(reversed(chunk))
                await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing


class TooManyWaits(Exception):
    """The worker has `max_waits` long polls open: the caller should retry shortly."""


class OutcomeWaiters:
    """The reader: answers a long poll as soon as its outcome is in Redis."""

    def __init__(self, redis: aioredis.Redis, prefix: str, max_waits: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_waits = max_waits
        self.waiting: dict[str, list[asyncio.Event]] = {}
        self.open = 0
        self._listener: asyncio.Task[None] | None = None

    async def get(self, event_id: str, wait_ms: int) -> bytes | str | None:
        """The committed outcome's JSON, waiting up to `wait_ms` for it; None if none."""
        require(wait_ms >= 0, "wait_ms >= 0")
        require(wait_ms <= MAX_WAIT_MS, "wait_ms <= MAX_WAIT_MS")
        found: bytes | str | None = await self.redis.get(key_of(self.prefix, event_id))
        if found is not None or wait_ms == 0:
            return found
        if self.open >= self.max_waits:
            raise TooManyWaits(f"{self.open} long polls open on this worker (PIPELINE_OUTCOME_MAX_WAITS)")
        self._listen()
        event = asyncio.Event()
        self.waiting.setdefault(event_id, []).append(event)
        self.open += 1
        OPEN_WAITS.set(self.open)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        try:
            while True:
                # Cleared before the read: a notification that comes while it runs is
                # kept for the wait (the outcome may have come since the last read).
                event.clear()
                found = await self.redis.get(key_of(self.prefix, event_id))
                left = deadline - loop.time()
                if found is not None or left <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, POLL_S))
        finally:
            self.open -= 1
            OPEN_WAITS.set(self.open)
            events = self.waiting.get(event_id, [])
            events.remove(event)
            if not events:
                self.waiting.pop(event_id, None)

    def _listen(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.ensure_future(self._subscribe())

    async def _subscribe(self) -> None:
        """Wake the waiters of each committed event id; reconnects after a failure
        (meanwhile the waiters poll)."""
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.prefix + CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") != "message" or not self.waiting:
                            continue
                        data = message["data"]
                        for event_id in (data.decode() if isinstance(data, bytes) else data).split("\n"):
                            for event in self.waiting.get(event_id, ()):
                                event.set()
            except (TimeoutError, aioredis.RedisError, OSError) as exc:
                log.debug("outcome notifications lost (%s); reconnecting", exc.__class__.__name__)
                await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
