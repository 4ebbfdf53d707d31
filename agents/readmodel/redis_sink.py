"""Committed user and creator state, mirrored into Redis hashes for the HTTP read model.

Any worker answers any key by reading Redis. Writes happen after the Kafka commit and
carry the state's `seq`: a Lua script applies a write only if it is newer than what the
hash holds, so a late write from a worker that lost the partition cannot go backwards;
leaderboard totals only grow and are written with ZADD GT. Failed writes stay pending
(at most one per key) and are retried every second; while Redis is failing the ledger
does not wait on it at all. A marker key per partition tells an emptied Redis (restart,
FLUSHALL): the partition's whole state is then written again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agents.readmodel import alerts, leaderboards
from pipeline import metrics
from pipeline.engine.codec import dumps
from pipeline.engine.stage import ReadModelUpdate
from pipeline.invariants import require
from pipeline.settings import Settings

log = logging.getLogger(__name__)

KEYS_PER_CALL = 500
WRITE_TIMEOUT_S = 2.0
REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)  # what a failed call raises
RETRY_INTERVAL_S = 1.0

# KEYS: hashes. ARGV[1]: JSON [key prefix, leaderboard time to live in seconds (0:
# none), [[seq, [field, value, ...], [[key, member, score, kind, oldest], ...]], ...]]
# with one entry per hash, every number as a string (Lua numbers are doubles: strings
# keep totals beyond 2^53 exact). kind 'z' is a sorted set that expires, 'a' one that
# does not, 'w' a window hash (oldest: first window start to keep), 'c' a capped index
# of hashes (alerts.py; oldest: the cap), whose trimmed members' hashes are deleted. The hash is
# written only with a newer seq; every board and window total only grows, so scores
# are written with ZADD GT (and compare-and-set for windows): a late or repeated write
# (a refill racing the live updates) can never lower one.
_WRITE = """
local data = cjson.decode(ARGV[1])
local prefix = data[1]
local ttl = tonumber(data[2])
for k, u in ipairs(data[3]) do
  local cur = tonumber(redis.call('HGET', KEYS[k], 'seq') or '-1')
  if cur < tonumber(u[1]) then
    redis.call('HSET', KEYS[k], 'seq', u[1], unpack(u[2]))
  end
  for _, e in ipairs(u[3]) do
    local zkey = prefix .. e[1]
    if e[4] == 'w' then
      local old = tonumber(redis.call('HGET', zkey, e[2]) or '-1')
      if old < tonumber(e[3]) then
        redis.call('HSET', zkey, e[2], e[3])
      end
      local oldest = tonumber(e[5])
      for _, f in ipairs(redis.call('HKEYS', zkey)) do
        if tonumber(f) < oldest then redis.call('HDEL', zkey, f) end
      end
    elseif e[4] == 'c' then
      redis.call('ZADD', zkey, e[3], e[2])
      local over = redis.call('ZCARD', zkey) - tonumber(e[5])
      if over > 0 then
        for _, m in ipairs(redis.call('ZRANGE', zkey, 0, over - 1)) do
          redis.call('DEL', prefix .. 'alert:' .. m)
        end
        redis.call('ZREMRANGEBYRANK', zkey, 0, over - 1)
      end
    else
      redis.call('ZADD', zkey, 'GT', e[3], e[2])
    end
    if ttl > 0 and e[4] ~= 'a' and e[4] ~= 'c' then
      redis.call('EXPIRE', zkey, ttl)
    end
  end
end
return #KEYS
"""


def _chunked(items: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def hash_key(settings: Settings, kind: str, id_: str) -> str:
    """`user:{id}`, `creator:{id}` or `alert:{id}` (alerts.hash_name)."""
    return settings.redis_key(f"{kind}:{id_}")


def merged(a: ReadModelUpdate, b: ReadModelUpdate) -> ReadModelUpdate:
    """Two pending updates of one key as one: the fields of the newer (higher seq) and
    the union of both updates' board entries, the newer's winning. Board scores are
    totals that only grow, so an older entry is never wrong to keep; dropping one loses
    it (a refill's full update carries boards that a live update of the same seq,
    pending beside it, did not touch: seen after a SIGKILL, a stream board missing a
    gifter)."""
    require((a.kind, a.id) == (b.kind, b.id), '(a.kind, a.id) == (b.kind, b.id)')
    older, newer = (a, b) if a.seq <= b.seq else (b, a)
    scores = {z[:2]: z for z in older.scores} | {z[:2]: z for z in newer.scores}
    return ReadModelUpdate(newer.kind, newer.id, newer.fields, newer.seq, tuple(scores.values()))


class RedisReadModel:
    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.ttl_s = settings.leaderboard_retention_days * 86_400
        self.redis = client or aioredis.from_url(settings.redis_url, socket_timeout=WRITE_TIMEOUT_S)
        self._script = self.redis.register_script(_WRITE)
        self.pending: dict[tuple[str, str], ReadModelUpdate] = {}
        self.healthy = True  # False after a failed write, until the retry loop succeeds
        self._lock = asyncio.Lock()

    async def write(self, updates: list[ReadModelUpdate]) -> None:
        for u in updates:
            old = self.pending.get((u.kind, u.id))
            self.pending[(u.kind, u.id)] = u if old is None else merged(old, u)
        if self.healthy:
            await self.flush()
        # else: Redis failed lately; the retry loop writes, the ledger does not wait

    async def flush(self) -> None:
        """Everything pending, in chunks of KEYS_PER_CALL keys sent in one pipeline: one
        round trip, so a flush does not wait on the ledger's cycles between chunks
        (sequential chunks took seconds under load)."""
        async with self._lock:
            if not self.pending:
                return
            chunks = list(_chunked(list(self.pending.items()), KEYS_PER_CALL))
            started = time.perf_counter()
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for chunk in chunks:
                        keys = [hash_key(self.settings, kind, id_) for (kind, id_), _ in chunk]
                        entries = [self._entry(u) for _, u in chunk]
                        payload = dumps([self.settings.redis_prefix, str(self.ttl_s), entries])
                        await self._script(keys=keys, args=[payload], client=pipe)  # queued
                    await asyncio.wait_for(pipe.execute(), WRITE_TIMEOUT_S * len(chunks))
            except REDIS_DOWN as exc:
                self.healthy = False
                metrics.READ_MODEL_ERRORS.inc()
                log.warning("Redis write failed (%s); %d keys pending, retrying", exc.__class__.__name__,
                            len(self.pending))
                return
            metrics.READ_MODEL_SECONDS.observe(time.perf_counter() - started)
            self.healthy = True
            for chunk in chunks:
                for key, u in chunk:
                    if self.pending.get(key) is u:
                        del self.pending[key]

    @staticmethod
    def _entry(u: ReadModelUpdate) -> list[Any]:
        if u.kind == "alert":
            feed = [alerts.FEED, u.id, str(u.fields["ts"]), "c", str(alerts.MAX_FEED)]
            return ["0", ["json", u.fields["json"]], [feed]]
        fields = list(map(str, itertools.chain.from_iterable(u.fields.items())))
        newest: dict[str, int] = {}  # window key -> newest window start in this update
        for zkey, member, _ in u.scores:
            if leaderboards.is_windows(zkey):
                newest[zkey] = max(newest.get(zkey, 0), int(member))
        scores = []
        for zkey, member, score in u.scores:
            if zkey in newest:
                # the ledger keeps a bounded span of windows: Redis may drop older ones
                scores.append([zkey, member, str(score), "w", str(newest[zkey] - leaderboards.window_span(zkey))])
            else:
                scores.append([zkey, member, str(score), "z" if leaderboards.expires(zkey) else "a", "0"])
        return [str(u.seq), fields, scores]

    async def retry_forever(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL_S)
            if self.pending:
                await self.flush()

    def _marker(self, partition: int) -> str:
        return self.settings.redis_key(f"ledger:filled:{partition}")

    async def refill(self, partition: int, snapshot: Callable[[], Iterable[list[ReadModelUpdate]]],
                     force: bool = False) -> bool:
        """Write the partition's whole state if `force` or its marker is gone (Redis was
        emptied); True if it did, completely."""
        try:
            if not force and await self.redis.exists(self._marker(partition)):
                return False
        except REDIS_DOWN:
            return False  # Redis down: the retry loop and the next check handle it
        for chunk in snapshot():
            await self.write(chunk)
            await asyncio.sleep(0)  # let the ledger run between chunks
        if self.pending:
            return False  # not all written: try again at the next check
        try:
            await self.redis.set(self._marker(partition), "1")
        except REDIS_DOWN:
            return False
        log.info("read model of partition %d written in full", partition)
        return True

    async def close(self) -> None:
        await self.redis.aclose()
