"""Committed user and creator state, mirrored into Redis hashes for the HTTP read model.

Any worker answers any key by reading Redis. Writes happen after the Kafka commit and
carry the state's `seq`: a Lua script applies a write only if it is newer than what the
hash holds, so a late write from a worker that lost the partition cannot go backwards.
Failed writes stay pending (at most one per key) and are retried; the ledger never
waits on Redis for longer than one bounded attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pipeline import metrics
from pipeline.engine.stage import ReadModelUpdate
from pipeline.settings import Settings

log = logging.getLogger(__name__)

KEYS_PER_CALL = 500
WRITE_TIMEOUT_S = 2.0
RETRY_INTERVAL_S = 1.0

# KEYS: hashes; ARGV per key: seq, field count n, then n field/value pairs.
_SET_IF_NEWER = """
local i = 1
for k = 1, #KEYS do
  local seq = tonumber(ARGV[i])
  local n = tonumber(ARGV[i + 1])
  local cur = tonumber(redis.call('HGET', KEYS[k], 'seq') or '-1')
  if cur < seq then
    redis.call('HSET', KEYS[k], 'seq', ARGV[i], unpack(ARGV, i + 2, i + 1 + 2 * n))
  end
  i = i + 2 + 2 * n
end
return #KEYS
"""


def hash_key(settings: Settings, kind: str, id_: str) -> str:
    return settings.redis_key(f"{kind}:{id_}")


class RedisReadModel:
    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or aioredis.from_url(settings.redis_url, socket_timeout=WRITE_TIMEOUT_S)
        self._script = self.redis.register_script(_SET_IF_NEWER)
        self.pending: dict[tuple[str, str], ReadModelUpdate] = {}
        self._lock = asyncio.Lock()

    async def write(self, updates: list[ReadModelUpdate]) -> None:
        for u in updates:
            old = self.pending.get((u.kind, u.id))
            if old is None or old.seq < u.seq:
                self.pending[(u.kind, u.id)] = u
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            while self.pending:
                chunk = list(self.pending.items())[:KEYS_PER_CALL]
                keys: list[str] = []
                args: list[int | str] = []
                for (kind, id_), u in chunk:
                    keys.append(hash_key(self.settings, kind, id_))
                    args += [u.seq, len(u.fields)]
                    for name, value in u.fields.items():
                        args += [name, value]
                started = time.perf_counter()
                try:
                    await asyncio.wait_for(self._script(keys=keys, args=args), WRITE_TIMEOUT_S)
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    metrics.READ_MODEL_ERRORS.inc()
                    log.warning("Redis write failed (%s); %d keys pending, retrying", exc.__class__.__name__, len(self.pending))
                    return
                metrics.READ_MODEL_SECONDS.observe(time.perf_counter() - started)
                for key, u in chunk:
                    if self.pending.get(key) is u:
                        del self.pending[key]

    async def retry_forever(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL_S)
            if self.pending:
                await self.flush()

    async def close(self) -> None:
        await self.redis.aclose()
