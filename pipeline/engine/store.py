"""Keyed state of one partition, with per-batch isolation, and the duplicate index.

Committed state lives in a `KV` (RocksDB in a worker, kv.py), encoded exactly as in the
changelog. A batch changes it only through an overlay: `for_update` decodes the
committed value on first touch, `commit` writes the overlay after the Kafka transaction
committed, `abort` drops it. So an aborted transaction never leaks into state, and each
key touched by a batch is written to the changelog once, however often it changed.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generic, Iterator, Protocol, TypeVar

from pipeline.engine.codec import dumps, loads
from pipeline.engine.kv import KV, MemoryKV, Op


class Value(Protocol):
    seq: int

    def to_json(self) -> dict[str, Any]: ...


V = TypeVar("V", bound=Value)


RESTORE_CHUNK = 10_000  # changelog records per RocksDB write while restoring


class Store(Generic[V]):
    """One table: keys under `prefix` in `kv`. Values are decoded (and their invariants
    checked by `from_json`) on every first read of a batch, so memory holds only what
    the current batch touches."""

    def __init__(self, factory: Callable[[], V], from_json: Callable[[dict[str, Any]], V],
                 kv: KV | None = None, prefix: bytes = b"") -> None:
        self._factory = factory
        self._from_json = from_json
        self.kv: KV = MemoryKV() if kv is None else kv
        self.prefix = prefix
        self.count = 0  # committed keys
        # key -> (value, seq when read; -1: absent)
        self.dirty: dict[str, tuple[V, int]] = {}
        self._encoded: list[tuple[str, bytes]] | None = None
        self._restoring: list[Op] = []

    def committed_get(self, key: str) -> V | None:
        raw = self.kv.get(self.prefix + key.encode())
        return None if raw is None else self._from_json(loads(raw))

    def get(self, key: str) -> V | None:
        entry = self.dirty.get(key)
        return self.committed_get(key) if entry is None else entry[0]

    def for_update(self, key: str) -> V:
        entry = self.dirty.get(key)
        if entry is None:
            base = self.committed_get(key)
            entry = self.dirty[key] = (self._factory(), -1) if base is None else (base, base.seq)
        return entry[0]

    def changes(self) -> Iterator[tuple[str, V]]:
        """Keys whose value changed in this batch (a read-only touch writes nothing)."""
        for key, (value, base_seq) in self.dirty.items():
            if value.seq != max(base_seq, 0):
                yield key, value

    def encoded_changes(self) -> list[tuple[str, bytes]]:
        """The changes as changelog values; encoded once for the changelog and the KV."""
        if self._encoded is None:
            self._encoded = [(k, dumps(v.to_json())) for k, v in self.changes()]
        return self._encoded

    def commit(self) -> None:
        changes = self.encoded_changes()
        self.count += sum(1 for k, _ in changes if self.dirty[k][1] < 0)
        self.kv.write([(self.prefix + k.encode(), raw) for k, raw in changes])
        self.abort()

    def abort(self) -> None:
        self.dirty.clear()
        self._encoded = None

    def restore(self, key: str, raw: bytes | None) -> None:
        """A changelog record, decoded and checked here (it is read as untrusted, and a
        value that fails must not fail every later event of its key), stored as it is;
        written in chunks, and counted by `end_restore`. Raises on a bad record, which
        is then left out: the key keeps its previous value."""
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


MAX_CLOCK_SKEW_MS = 86_400_000


def cap_to_clock(ts: int, now_s: float) -> int:
    """An event time, at most a day past the clock `now_s` (seconds)."""
    return min(ts, int(now_s * 1000) + MAX_CLOCK_SKEW_MS)

# Segments expired per batch at most, so one batch's tombstones stay small.
MAX_EXPIRE_PER_BATCH = 1000
MAX_SEGMENT_IDS = 100_000  # a batch's ids: at most PIPELINE_MAX_BATCH's highest value
SEGMENT_PREFIX = "#dd:"  # '#' is outside the id pattern: no clash with state keys


class DedupeIndex:
    """event ids applied within the dedupe window, persisted as one changelog record per
    batch ("segment"). A segment is dropped, with a tombstone, once its newest event is
    older than the window behind the newest event time this partition has seen AND it
    was written longer than the window ago: an id lives at least the window in event
    time and in real time, so one event dated far in the future cannot flush the index.
    The window is the contract's 7 days plus one.

    The ids and each segment's list of them live in the KV (`prefix` + "d" + id -> its
    segment, `prefix` + "s" + segment -> its ids); memory holds one small entry per
    live segment and the current batch's ids.
    """

    def __init__(self, window_ms: int, clock: Callable[[], float] = time.time,
                 kv: KV | None = None, prefix: bytes = b"") -> None:
        assert window_ms > 0
        self.window_ms = window_ms
        self.clock = clock
        self.kv: KV = MemoryKV() if kv is None else kv
        self._ids = prefix + b"d"
        self._lists = prefix + b"s"
        # segment -> (newest event time, wall time written in ms, ids), in creation order
        self.segments: dict[int, tuple[int, int, int]] = {}
        self.count = 0
        self.next_segment = 0
        self.watermark = 0  # newest event time seen
        self._pending: dict[str, int] = {}
        self._pending_watermark = 0
        self._batch_wall = 0

    def seen(self, key: str) -> bool:
        return key in self._pending or self.kv.get(self._ids + key.encode()) is not None

    def _plausible(self, ts: int) -> int:
        """One event dated in the far future must not hold expiry back (its segment
        would never expire, nor any after it)."""
        return cap_to_clock(ts, self.clock())

    def add(self, key: str, ts: int) -> None:
        assert not self.seen(key)
        self._pending[key] = self._plausible(ts)

    def observe(self, ts: int) -> None:
        if ts > self._pending_watermark:
            self._pending_watermark = self._plausible(ts)

    def changelog(self) -> list[tuple[str, dict[str, Any] | None]]:
        """The records that make this batch's changes durable (new segment, tombstones)."""
        self._batch_wall = int(self.clock() * 1000)
        out: list[tuple[str, dict[str, Any] | None]] = []
        if self._pending:
            segment = {"t": max(self._pending.values()), "w": self._batch_wall, "k": list(self._pending)}
            out.append((f"{SEGMENT_PREFIX}{self.next_segment}", segment))
        watermark = max(self.watermark, self._pending_watermark)
        out.extend((f"{SEGMENT_PREFIX}{seg}", None) for seg in self._expired(watermark))
        return out

    def _expired(self, watermark: int) -> list[int]:
        """Expired segments at the front (segments are kept in creation order; one whose
        newest event is later than a younger one's lingers a little longer)."""
        out = []
        for seg, (ts, wall, _) in self.segments.items():
            if ts >= watermark - self.window_ms or wall >= self._batch_wall - self.window_ms:
                break
            if len(out) >= MAX_EXPIRE_PER_BATCH:
                break
            out.append(seg)
        return out

    def commit(self) -> None:
        """Apply what `changelog()` wrote: the same expiry, then the new segment."""
        self.watermark = max(self.watermark, self._pending_watermark)
        for seg in self._expired(self.watermark):
            self._drop(seg)
        if self._pending:
            self._install(self.next_segment, max(self._pending.values()), self._batch_wall, list(self._pending))
        self._pending.clear()

    def abort(self) -> None:
        self._pending.clear()
        self._pending_watermark = self.watermark

    def restore(self, key: str, raw: bytes | None) -> None:
        """A segment record, checked (untrusted: ValueError leaves it out)."""
        number = key[len(SEGMENT_PREFIX):]
        if not (number.isascii() and number.isdigit() and len(number) <= 18):
            raise ValueError(f"segment key {key[:40]!r} is not {SEGMENT_PREFIX}<number>")
        seg = int(number)
        if raw is None:
            self._drop(seg)
            return
        data = loads(raw)
        if type(data) is not dict or type(data.get("t")) is not int or type(data.get("w", 0)) is not int:
            raise ValueError("a segment is {t: int, w: int, k: [ids]}")
        ids = data.get("k")
        if type(ids) is not list or len(ids) > MAX_SEGMENT_IDS or not all(type(k) is str and len(k) <= 200 for k in ids):
            raise ValueError(f"a segment's ids are at most {MAX_SEGMENT_IDS} strings")
        self._install(seg, data["t"], data.get("w", 0), ids)
        self.watermark = self._pending_watermark = max(self.watermark, data["t"])

    def _segment_key(self, seg: int) -> bytes:
        return self._lists + seg.to_bytes(8, "big")

    def _install(self, seg: int, ts: int, wall: int, keys: list[str]) -> None:
        if seg in self.segments:
            self._drop(seg)
        value = str(seg).encode()
        ops: list[Op] = [(self._ids + k.encode(), value) for k in keys]
        ops.append((self._segment_key(seg), dumps(keys)))
        self.kv.write(ops)
        self.segments[seg] = (ts, wall, len(keys))
        self.count += len(keys)
        self.next_segment = max(self.next_segment, seg + 1)

    def _drop(self, seg: int) -> None:
        if self.segments.pop(seg, None) is None:
            return
        raw = self.kv.get(self._segment_key(seg))
        assert raw is not None, f"segment {seg} without its ids"
        value = str(seg).encode()
        ops: list[Op] = [(self._segment_key(seg), None)]
        for key in loads(raw):
            kv_key = self._ids + key.encode()
            if self.kv.get(kv_key) == value:  # an id may live on in a younger segment
                ops.append((kv_key, None))
        self.count -= len(ops) - 1
        self.kv.write(ops)

    def ids(self) -> list[str]:
        """Every id in the index (tests)."""
        return [k[len(self._ids):].decode() for k, _ in self.kv.scan(self._ids)]

    def __len__(self) -> int:
        return self.count
