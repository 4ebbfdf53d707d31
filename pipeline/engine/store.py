"""Keyed state of one partition, with per-batch isolation, and the duplicate index.

State is changed only through a batch overlay: `for_update` copies the committed value
on first touch, `commit` publishes the overlay after the Kafka transaction committed,
`abort` drops it. So an aborted transaction never leaks into memory, and each key
touched by a batch is written to the changelog once, however often it changed.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generic, Iterator, Protocol, TypeVar


class Value(Protocol):
    seq: int

    def copy(self) -> Any: ...

    def to_json(self) -> dict[str, Any]: ...


V = TypeVar("V", bound=Value)


class Store(Generic[V]):
    def __init__(self, factory: Callable[[], V], from_json: Callable[[dict[str, Any]], V]) -> None:
        self._factory = factory
        self._from_json = from_json
        self.committed: dict[str, V] = {}
        self.dirty: dict[str, V] = {}

    def get(self, key: str) -> V | None:
        value = self.dirty.get(key)
        return self.committed.get(key) if value is None else value

    def for_update(self, key: str) -> V:
        value = self.dirty.get(key)
        if value is None:
            base = self.committed.get(key)
            value = self.dirty[key] = base.copy() if base is not None else self._factory()
        return value

    def changes(self) -> Iterator[tuple[str, V]]:
        """Keys whose value changed in this batch (a read-only touch writes nothing)."""
        for key, value in self.dirty.items():
            base = self.committed.get(key)
            if value.seq != (0 if base is None else base.seq):
                yield key, value

    def commit(self) -> None:
        self.committed.update(list(self.changes()))
        self.dirty.clear()

    def abort(self) -> None:
        self.dirty.clear()

    def restore(self, key: str, data: dict[str, Any] | None) -> None:
        if data is None:
            self.committed.pop(key, None)
        else:
            self.committed[key] = self._from_json(data)

    def __len__(self) -> int:
        return len(self.committed)


MAX_CLOCK_SKEW_MS = 86_400_000


def cap_to_clock(ts: int, now_s: float) -> int:
    """An event time, at most a day past the clock `now_s` (seconds)."""
    return min(ts, int(now_s * 1000) + MAX_CLOCK_SKEW_MS)

# Segments expired per batch at most, so one batch's tombstones stay small.
MAX_EXPIRE_PER_BATCH = 1000
SEGMENT_PREFIX = "#dd:"  # '#' is outside the id pattern: no clash with state keys


class DedupeIndex:
    """event ids applied within the dedupe window, persisted as one changelog record per
    batch ("segment"). A segment is dropped, with a tombstone, once its newest event is
    older than the window behind the newest event time this partition has seen AND it
    was written longer than the window ago: an id lives at least the window in event
    time and in real time, so one event dated far in the future cannot flush the index.
    The window is the contract's 7 days plus one.
    """

    def __init__(self, window_ms: int, clock: Callable[[], float] = time.time) -> None:
        assert window_ms > 0
        self.window_ms = window_ms
        self.clock = clock
        self.index: dict[str, int] = {}  # dedupe key -> segment
        # segment -> (newest event time, wall time written in ms, keys), in creation order
        self.segments: dict[int, tuple[int, int, list[str]]] = {}
        self.next_segment = 0
        self.watermark = 0  # newest event time seen
        self._pending: dict[str, int] = {}
        self._pending_watermark = 0
        self._batch_wall = 0

    def seen(self, key: str) -> bool:
        return key in self.index or key in self._pending

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

    def restore(self, key: str, data: dict[str, Any] | None) -> None:
        seg = int(key[len(SEGMENT_PREFIX):])
        if data is None:
            self._drop(seg)
        else:
            self._install(seg, data["t"], data.get("w", 0), data["k"])
            self.watermark = self._pending_watermark = max(self.watermark, data["t"])

    def _install(self, seg: int, ts: int, wall: int, keys: list[str]) -> None:
        self.segments[seg] = (ts, wall, keys)
        for key in keys:
            self.index[key] = seg
        self.next_segment = max(self.next_segment, seg + 1)

    def _drop(self, seg: int) -> None:
        entry = self.segments.pop(seg, None)
        if entry is not None:
            for key in entry[2]:
                if self.index.get(key) == seg:
                    del self.index[key]

    def __len__(self) -> int:
        return len(self.index)
