"""Keyed state of one partition, with per-batch isolation (the id index: dedupe.py).

Committed state lives in a `KV` (RocksDB in a worker, kv.py), encoded exactly as in the
changelog. A batch changes it only through an overlay: `for_update` decodes the
committed value on first touch, `commit` writes the overlay after the Kafka transaction
committed, `abort` drops it. So an aborted transaction never leaks into state, and each
key touched by a batch is written to the changelog once, however often it changed.

Changes are found by content, not declared: a value taken for update is written if its
encoding differs from the committed one it started from, so a rule cannot change state
and forget to say so (the change would vanish on a restart).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from pipeline.engine.codec import dumps, loads
from pipeline.engine.kv import KV, MemoryKV, Op
from pipeline.invariants import require


class Value(Protocol):
    """A table's value. `seq` counts the committed batches that changed it: the store
    sets it (rules never do) and `to_json` carries it under SEQ_FIELD, so the read model
    can order the writes of one key."""

    seq: int

    def to_json(self) -> dict[str, Any]: ...


SEQ_FIELD = "q"


V = TypeVar("V", bound=Value)


RESTORE_CHUNK = 10_000  # changelog records per RocksDB write while restoring
# The value cache (Store._cache) is bounded by an estimate of its memory: a decoded value
# takes about this many times its encoded size (measured: a user of 336 JSON bytes holds
# 2.9 KB of Python objects), so a creator holding 64 new senders costs what it weighs,
# not what a user does.
DECODED_BYTES_PER_ENCODED_BYTE = 9


def cached_bytes(encoded: int) -> int:
    """The estimated memory of a cached value of `encoded` bytes: it and its encoding
    (kept to tell a changed value from an unchanged one)."""
    return encoded * (DECODED_BYTES_PER_ENCODED_BYTE + 1)


# Per table unless the stage is given its share of PIPELINE_STATE_CACHE_MB (Stage.limit_cache).
CACHE_BYTES = 16 * 1024 * 1024


class Store(Generic[V]):
    """One table: keys under `prefix` in `kv`. Values are decoded (and their invariants
    checked by `from_json`) on every first read of a batch, so memory holds only what
    the current batch touches."""

    def __init__(self, factory: Callable[[], V], from_json: Callable[[dict[str, Any]], V],
                 kv: KV | None = None, prefix: bytes = b"", cached: int = CACHE_BYTES) -> None:
        require(cached >= 0, "a cache of at least 0 bytes")
        self._factory = factory
        self._from_json = from_json
        self.kv: KV = MemoryKV() if kv is None else kv
        self.prefix = prefix
        self.count = 0  # committed keys
        # key -> (value, its seq when taken, its committed encoding; None: absent)
        self.dirty: dict[str, tuple[V, int, bytes | None]] = {}
        self._blank = dumps(factory().to_json())  # what an absent key's new value starts as
        self._encoded: list[tuple[str, bytes]] | None = None
        self._restoring: list[Op] = []
        # Committed values already decoded, oldest first, their estimated memory at most
        # `cached` bytes: a key seen again in a later batch skips the KV read and the
        # decode. A value leaves the cache while a batch holds it for update, and comes
        # back only with the commit, so an aborted batch's changes never reach it.
        self.cached = cached
        self._cache: dict[str, tuple[V, bytes, int]] = {}  # key -> (value, encoding, estimated bytes)
        self.cache_bytes = 0

    def committed_get(self, key: str) -> V | None:
        entry = self._cache.get(key)
        if entry is not None:
            return entry[0]
        loaded = self._load(key)
        if loaded is None:
            return None
        self._keep(key, *loaded)
        return loaded[0]

    def _load(self, key: str) -> tuple[V, bytes] | None:
        """The committed value from the KV, decoded, and its encoding."""
        raw = self.kv.get(self.prefix + key.encode())
        return None if raw is None else (self._from_json(loads(raw)), raw)

    def _keep(self, key: str, value: V, raw: bytes) -> None:
        self._forget(key)
        cost = cached_bytes(len(raw))
        self._cache[key] = (value, raw, cost)
        self.cache_bytes += cost
        self._evict()

    def _forget(self, key: str) -> tuple[V, bytes] | None:
        """Out of the cache; what it held, if anything."""
        entry = self._cache.pop(key, None)
        if entry is None:
            return None
        self.cache_bytes -= entry[2]
        return entry[0], entry[1]

    def _evict(self) -> None:
        cache = self._cache
        while self.cache_bytes > self.cached:
            self.cache_bytes -= cache.pop(next(iter(cache)))[2]
        require(self.cache_bytes >= 0, "the cache's bytes are counted")

    def limit_cache(self, max_bytes: int) -> None:
        require(max_bytes >= 0, "a cache of at least 0 bytes")
        self.cached = max_bytes
        self._evict()

    def get(self, key: str) -> V | None:
        """For reading only, and only within the batch: the value is the cached or the
        batch's own object, which a later `for_update` changes in place."""
        entry = self.dirty.get(key)
        return self.committed_get(key) if entry is None else entry[0]

    def for_update(self, key: str) -> V:
        entry = self.dirty.get(key)
        if entry is None:
            # Out of the cache (or straight from the KV, never through the cache): changed
            # in place from now on, it comes back only with the commit.
            base = self._forget(key) or self._load(key)
            if base is None:
                value = self._factory()
                entry = self.dirty[key] = (value, value.seq, None)
            else:
                entry = self.dirty[key] = (base[0], base[0].seq, base[1])
        return entry[0]

    def taken(self) -> Iterator[tuple[str, V]]:
        """Every value taken for update in this batch, changed or not."""
        for key, (value, _, _) in self.dirty.items():
            yield key, value

    def changes(self) -> Iterator[tuple[str, V]]:
        """Keys whose value changed in this batch (a read-only touch writes nothing)."""
        for key, _ in self.encoded_changes():
            yield key, self.dirty[key][0]

    def encoded_changes(self) -> list[tuple[str, bytes]]:
        """The changes as changelog values, each with the next seq; encoded once for the
        changelog and the KV. After this the batch's values are final."""
        if self._encoded is None:
            encoded = []
            for key, (value, seq, base) in self.dirty.items():
                require(value.seq == seq, "a value's seq is set by its store, never by a rule")
                data = value.to_json()
                require(data.get(SEQ_FIELD) == seq, "a value's encoding carries its seq under SEQ_FIELD")
                raw = dumps(data)
                if raw == (self._blank if base is None else base):
                    continue
                value.seq = data[SEQ_FIELD] = seq + 1
                encoded.append((key, dumps(data)))
            self._encoded = encoded
        return self._encoded

    def commit(self) -> None:
        changes = self.encoded_changes()
        self.count += sum(1 for k, _ in changes if self.dirty[k][2] is None)
        self.kv.write([(self.prefix + k.encode(), raw) for k, raw in changes])
        if self.cached:
            # Every value taken is as committed now: changed and written, or unchanged.
            written = dict(changes)
            for key, (value, _, base) in self.dirty.items():
                raw = written.get(key, base)
                if raw is not None:
                    self._keep(key, value, raw)
        self.abort()

    def abort(self) -> None:
        self.dirty.clear()
        self._encoded = None

    def restore(self, key: str, raw: bytes | None) -> None:
        """A changelog record, decoded and checked here (it is read as untrusted, and a
        value that fails must not fail every later event of its key), stored as it is;
        written in chunks, and counted by `end_restore`. Raises on a bad record, which
        is then left out: the key keeps its previous value."""
        self._forget(key)
        if raw is not None:
            value = loads(raw)
            if type(value) is not dict:
                raise ValueError("a state value must be a JSON object")
            self._from_json(value)
        self._restoring.append((self.prefix + key.encode(), raw))
        if len(self._restoring) >= RESTORE_CHUNK:
            self.kv.write(self._restoring)
            self._restoring = []

    def end_restore(self) -> None:
        self.kv.write(self._restoring)
        self._restoring = []
        self.count = sum(1 for _ in self.kv.scan(self.prefix))

    def items(self) -> Iterator[tuple[str, V]]:
        """Every committed value (for a refill of the read model)."""
        n = len(self.prefix)
        for key, raw in self.kv.scan(self.prefix):
            yield key[n:].decode(), self._from_json(loads(raw))

    def as_dict(self) -> dict[str, V]:
        """Every committed value (tests and small tables)."""
        return dict(self.items())

    def __len__(self) -> int:
        return self.count

