"""The index of the event ids a stage applied within the dedupe window.

Ids live in the stage's KV (RocksDB in a worker), persisted in the changelog as one
record per batch that added ids (a "segment", numbered in creation order). Memory holds
one small entry per *bucket*: a run of consecutive segments written in the same span of
wall-clock time (an hour for the contract's window), so it stays at about
BUCKETS_PER_WINDOW entries whatever the batch rate (one entry per segment was ~14 M at
20 batches/s over 8 days).

The changelog keeps one record per segment (a restore reads those of the window). Old
segments are not merged into bucket records there: a merged record is written after
the segments it replaces, so once the topic is compacted a restore would read segments
out of creation order and have to rebuild buckets from any order, and each merge would
add a tombstone per merged segment to the log.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.engine.codec import dumps, loads
from pipeline.engine.kv import KV, MemoryKV, Op
from pipeline.invariants import require

MAX_CLOCK_SKEW_MS = 86_400_000


def cap_to_clock(ts: int, now_s: float) -> int:
    """An event time, at most a day past the clock `now_s` (seconds)."""
    return min(ts, int(now_s * 1000) + MAX_CLOCK_SKEW_MS)


# Segments expired per batch at most, so one batch's tombstones and KV work stay small.
MAX_EXPIRE_PER_BATCH = 1000
MAX_SEGMENT_IDS = 100_000  # a batch's ids: at most PIPELINE_MAX_BATCH's highest value
MAX_ID_CHARS = 200
SEGMENT_PREFIX = "#dd:"  # '#' is outside the id pattern: no clash with state keys
# Buckets per window: for the contract's 8 days (7 + 1), a bucket spans one hour, so
# an id lives at most an hour past the window (expiry goes by a bucket's newest times).
BUCKETS_PER_WINDOW = 192
MAX_SEGMENT_DIGITS = 18  # below 2**63: a segment number fits the KV's 8-byte key


@dataclass(slots=True)
class Bucket:
    """What memory holds of segments first..last (consecutive numbers; their id lists
    are in the KV)."""

    first: int
    last: int
    t: int  # newest event time of its segments (capped to the clock)
    w: int  # newest wall time (ms) at which one of them was written
    n: int  # its ids still in the index


Segment = tuple[int, int, int, list[str]]  # (number, newest event time, wall time ms, ids)


class DedupeIndex:
    """Event ids applied within the window (the contract's 7 days plus one).

    A bucket is dropped, a segment at a time from the front and at most
    MAX_EXPIRE_PER_BATCH segments per batch (one tombstone each), once its newest event
    is older than the window behind the newest event time this partition has seen AND
    its newest segment was written longer than the window ago: every id lives at least
    the window in event time and in real time, so one event dated far in the future
    cannot flush the index. Expiry keeps creation order: a young bucket holds back the
    ones behind it.

    KV: `prefix` + "d" + id -> its segment number, `prefix` + "s" + number -> its ids.
    `changelog()` decides the batch's changes (the new segment, the expired ones) and
    `commit()` applies exactly those, in the order of the records, which is also what
    `restore` does with them: a restore from the records rebuilds the same buckets. From
    a compacted log (the records of expired segments gone) it rebuilds the same ids and
    buckets, but a front bucket that had started to expire gets the newest times of its
    segments left, which are past both conditions as well.
    """

    def __init__(self, window_ms: int, clock: Callable[[], float] = time.time,
                 kv: KV | None = None, prefix: bytes = b"") -> None:
        require(window_ms > 0, "the dedupe window is positive")
        self.window_ms = window_ms
        # At most the window (so the bucket a batch could join is never one that
        # expires in the same batch: it was written over a window ago).
        self.span_ms = max(1, window_ms // BUCKETS_PER_WINDOW)
        self.clock = clock
        self.kv: KV = MemoryKV() if kv is None else kv
        self._ids = prefix + b"d"
        self._lists = prefix + b"s"
        self.buckets: list[Bucket] = []  # by first segment, disjoint
        self.count = 0
        self.next_segment = 0
        self.watermark = 0  # newest event time seen
        self._pending: dict[str, int] = {}
        self._pending_watermark = 0
        self._plan: tuple[Segment | None, list[int]] | None = None  # what changelog() wrote

    def seen(self, key: str) -> bool:
        return key in self._pending or self.kv.get(self._ids + key.encode()) is not None

    def _plausible(self, ts: int) -> int:
        """One event dated in the far future must not hold expiry back (its bucket
        would never expire, nor any after it)."""
        return cap_to_clock(ts, self.clock())

    def add(self, key: str, ts: int) -> None:
        require(not self.seen(key), "an id is added once")
        self._pending[key] = self._plausible(ts)

    def observe(self, ts: int) -> None:
        if ts > self._pending_watermark:
            self._pending_watermark = self._plausible(ts)

    def changelog(self) -> list[tuple[str, dict[str, Any] | None]]:
        """The records that make this batch's changes durable: its new segment, then a
        tombstone per expired one. `commit()` applies exactly these."""
        now = int(self.clock() * 1000)
        new: Segment | None = None
        out: list[tuple[str, dict[str, Any] | None]] = []
        if self._pending:
            # More would be refused by `restore`: the batch's ids would be lost.
            require(len(self._pending) <= MAX_SEGMENT_IDS, "a batch adds at most MAX_SEGMENT_IDS ids")
            new = (self.next_segment, max(self._pending.values()), now, list(self._pending))
            out.append((f"{SEGMENT_PREFIX}{new[0]}", {"t": new[1], "w": new[2], "k": new[3]}))
        expired = self._expired(max(self.watermark, self._pending_watermark), now)
        out.extend((f"{SEGMENT_PREFIX}{seg}", None) for seg in expired)
        self._plan = new, expired
        return out

    def _expired(self, watermark: int, now: int) -> list[int]:
        """Segments to drop now, from the front, at most MAX_EXPIRE_PER_BATCH."""
        out: list[int] = []
        for b in self.buckets:
            room = MAX_EXPIRE_PER_BATCH - len(out)
            if room <= 0 or b.t >= watermark - self.window_ms or b.w >= now - self.window_ms:
                break
            out.extend(range(b.first, min(b.last + 1, b.first + room)))
        return out

    def commit(self) -> None:
        """The batch's transaction committed: apply what `changelog()` wrote."""
        self.watermark = max(self.watermark, self._pending_watermark)
        if self._plan is None:
            require(not self._pending, "a batch's ids are written by changelog() before commit()")
            return
        new, expired = self._plan
        if new is not None:
            self._place(*new)
        for seg in expired:
            self._drop(seg)
        self._pending.clear()
        self._plan = None

    def abort(self) -> None:
        self._pending.clear()
        self._pending_watermark = self.watermark
        self._plan = None

    def restore(self, key: str, raw: bytes | None) -> None:
        """A segment record or tombstone, checked (untrusted: ValueError leaves it out).
        Times are capped to this clock: a forged time in the future cannot pin a bucket
        (and every bucket behind it) for ever, and a real one is in the past."""
        number = key[len(SEGMENT_PREFIX):]
        if not (number.isascii() and number.isdigit() and len(number) <= MAX_SEGMENT_DIGITS):
            raise ValueError(f"segment key {key[:40]!r} is not {SEGMENT_PREFIX}<number>")
        seg = int(number)
        if raw is None:
            self._drop(seg)
            return
        data = loads(raw)
        if type(data) is not dict or type(data.get("t")) is not int or type(data.get("w", 0)) is not int:
            raise ValueError("a segment is {t: int, w: int, k: [ids]}")
        ids = data.get("k")
        if type(ids) is not list or len(ids) > MAX_SEGMENT_IDS or not all(
                type(k) is str and len(k) <= MAX_ID_CHARS for k in ids):
            raise ValueError(f"a segment's ids are at most {MAX_SEGMENT_IDS} strings")
        if len(set(ids)) != len(ids):
            raise ValueError("a segment's ids are distinct")
        now_s = self.clock()
        t = cap_to_clock(data["t"], now_s)
        self._place(seg, t, min(data.get("w", 0), int(now_s * 1000)), ids)
        self.watermark = self._pending_watermark = max(self.watermark, t)

    def _segment_key(self, seg: int) -> bytes:
        return self._lists + seg.to_bytes(8, "big")

    def _bucket_at(self, seg: int) -> int:
        """Index of the last bucket starting at or before `seg` (-1: none)."""
        return bisect_right(self.buckets, seg, key=lambda b: b.first) - 1

    def _place(self, seg: int, ts: int, wall: int, keys: list[str]) -> None:
        """Write a segment's ids and count them in its bucket: the one before it if it
        follows that one's last segment within the same span of wall time (or earlier:
        a clock set back), else a new one. A batch always appends; a restore may also
        replace a segment (a record read twice) or bring one in front of a higher number
        (one forged without a signing key)."""
        i = self._bucket_at(seg)
        prev = self.buckets[i] if i >= 0 else None
        if prev is not None and seg <= prev.last:
            deleted = self._delete(seg)
            prev.n -= deleted
            self.count -= deleted
            bucket = prev
        elif prev is not None and seg == prev.last + 1 and wall // self.span_ms <= prev.w // self.span_ms:
            prev.last = seg
            bucket = prev
        else:
            bucket = Bucket(seg, seg, ts, wall, 0)
            self.buckets.insert(i + 1, bucket)
        value = str(seg).encode()
        ops: list[Op] = [(self._ids + k.encode(), value) for k in keys]
        ops.append((self._segment_key(seg), dumps(keys)))
        self.kv.write(ops)
        bucket.t, bucket.w = max(bucket.t, ts), max(bucket.w, wall)
        bucket.n += len(keys)
        self.count += len(keys)
        self.next_segment = max(self.next_segment, seg + 1)

    def _drop(self, seg: int) -> None:
        """Forget a segment's ids; its bucket's front moves past it if it was the first
        (expiry drops only front segments; a restore may read any tombstone)."""
        i = self._bucket_at(seg)
        if i < 0 or seg > self.buckets[i].last:
            return  # not in the index: a tombstone read twice, or forged
        bucket = self.buckets[i]
        deleted = self._delete(seg)
        bucket.n -= deleted
        self.count -= deleted
        if seg == bucket.first:
            bucket.first += 1
            if bucket.first > bucket.last:
                del self.buckets[i]

    def _delete(self, seg: int) -> int:
        """Delete a segment's list and those of its ids no younger segment took over;
        how many ids. A segment already gone (a tombstone in the middle of a bucket,
        read at a restore) deletes nothing."""
        raw = self.kv.get(self._segment_key(seg))
        if raw is None:
            return 0
        value = str(seg).encode()
        ops: list[Op] = [(self._segment_key(seg), None)]
        for key in loads(raw):
            kv_key = self._ids + key.encode()
            if self.kv.get(kv_key) == value:
                ops.append((kv_key, None))
        self.kv.write(ops)
        return len(ops) - 1

    def ids(self) -> list[str]:
        """Every id in the index (tests)."""
        return [k[len(self._ids):].decode() for k, _ in self.kv.scan(self._ids)]

    def __len__(self) -> int:
        return self.count
