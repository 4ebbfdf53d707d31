"""DedupeIndex with the contract's window: hour buckets, bounded memory, expiry in event
and wall time, and restore from the changelog (tests/unit/test_store_merge.py has the
per-segment cases with a small window)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.engine.codec import dumps
from pipeline.engine.dedupe import (
    BUCKETS_PER_WINDOW,
    MAX_CLOCK_SKEW_MS,
    MAX_EXPIRE_PER_BATCH,
    MAX_SEGMENT_IDS,
    Bucket,
    DedupeIndex,
)
from pipeline.engine.kv import KV, MemoryKV
from pipeline.invariants import InvariantError
from tests.unit.test_store_merge import batch, kv  # noqa: F401 - kv: the fixture on both backends

HOUR = 3_600_000
DAY = 24 * HOUR
WINDOW = 8 * DAY  # 7 days + 1: one bucket per hour
T0 = 1_700_000_000_000 // HOUR * HOUR  # an hour's start
Records = list[tuple[str, dict[str, Any] | None]]


class Clock:
    def __init__(self, now_ms: int = T0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms / 1000


def new(clock: Clock, store: KV | None = None) -> DedupeIndex:
    return DedupeIndex(WINDOW, clock=clock, kv=store, prefix=b"i:")


def restored(records: Records, clock: Clock, store: KV | None = None) -> DedupeIndex:
    fresh = new(clock, store)
    for key, value in records:
        fresh.restore(key, None if value is None else dumps(value))
    return fresh


def compacted(records: Records) -> Records:
    """What a compacted changelog may hold: the last record of each key, at its offset,
    tombstones gone."""
    last = {key: (offset, value) for offset, (key, value) in enumerate(records)}
    return [(key, value) for key, (_, value) in sorted(last.items(), key=lambda item: item[1][0]) if value is not None]


def state(index: DedupeIndex) -> tuple[Any, ...]:
    return index.ids(), index.buckets, index.next_segment, len(index)


def test_batches_of_one_hour_share_a_bucket() -> None:
    clock = Clock()
    index = new(clock)
    for i in range(4):  # 0, 20, 40, 60 minutes
        batch(index, {f"k{i}": clock.now_ms})
        clock.now_ms += 20 * 60_000
    assert index.buckets == [Bucket(0, 2, T0 + 2 * 20 * 60_000, T0 + 2 * 20 * 60_000, 3),
                             Bucket(3, 3, T0 + HOUR, T0 + HOUR, 1)]
    assert index.span_ms == HOUR and len(index) == 4


def test_a_clock_set_back_joins_the_newest_bucket() -> None:
    clock = Clock(T0 + HOUR)
    index = new(clock)
    batch(index, {"a": clock.now_ms})
    clock.now_ms -= 3 * HOUR
    batch(index, {"b": clock.now_ms})
    assert index.buckets == [Bucket(0, 1, T0 + HOUR, T0 + HOUR, 2)]


def test_memory_stays_bounded_over_a_long_run() -> None:
    """Three windows of batches every 2 minutes: memory holds about one entry per hour
    of the window, while the ids (in the KV) follow the window."""
    clock = Clock()
    index = new(clock)
    step = 2 * 60_000
    most_buckets = 0
    for i in range(3 * WINDOW // step):
        clock.now_ms += step
        batch(index, {f"k{i}": clock.now_ms - 30_000})
        most_buckets = max(most_buckets, len(index.buckets))
    assert BUCKETS_PER_WINDOW <= most_buckets <= BUCKETS_PER_WINDOW + 2
    # ids of the window and of at most one hour more, and none older
    assert WINDOW // step <= len(index) <= (WINDOW + HOUR) // step + 1
    assert len(index.ids()) == len(index)
    assert index.buckets[0].w >= clock.now_ms - WINDOW - HOUR


def test_a_bucket_goes_when_its_newest_event_is_a_window_behind() -> None:
    """The wall clock is long past; the event-time condition decides (inclusive)."""
    clock = Clock()
    index = new(clock)
    batch(index, {"a": T0 - 10})
    clock.now_ms += 30 * 60_000
    batch(index, {"b": T0})  # same bucket: its newest event time is T0
    clock.now_ms += 2 * WINDOW
    assert batch(index, {}, observe=T0 + WINDOW) == []
    assert index.seen("a")  # older than the window, kept with its bucket (at most an hour more)
    assert batch(index, {}, observe=T0 + WINDOW + 1) == [("#dd:0", None), ("#dd:1", None)]
    assert index.buckets == [] and len(index) == 0


def test_a_bucket_goes_when_its_newest_segment_was_written_a_window_ago() -> None:
    """Event time is long past; the wall-time condition decides (inclusive)."""
    clock = Clock()
    index = new(clock)
    batch(index, {"a": T0})
    clock.now_ms += 59 * 60_000
    batch(index, {"b": T0})
    newest = clock.now_ms
    clock.now_ms = newest + WINDOW
    assert batch(index, {}, observe=T0 + 3 * WINDOW) == []
    assert index.seen("a") and index.seen("b")
    clock.now_ms += 1
    assert batch(index, {}) == [("#dd:0", None), ("#dd:1", None)]


def test_an_event_dated_far_in_the_future_does_not_flush_the_index() -> None:
    """Its time is capped a day past the clock, which moves the watermark past "a"'s
    window a day early: the wall-time condition keeps "a" until its window is over."""
    clock = Clock()
    index = new(clock)
    batch(index, {"a": T0})
    clock.now_ms = T0 + WINDOW - 2 * HOUR
    batch(index, {"z": 253_402_300_799_999}, observe=253_402_300_799_999)
    assert index.watermark == clock.now_ms + MAX_CLOCK_SKEW_MS > T0 + WINDOW
    assert index.seen("a") and index.seen("z")
    clock.now_ms = T0 + WINDOW
    batch(index, {})
    assert index.seen("a")
    clock.now_ms += 1
    assert batch(index, {}) == [("#dd:0", None)]
    assert not index.seen("a") and index.seen("z")


def test_expiry_drops_at_most_max_segments_per_batch_shrinking_the_front_bucket() -> None:
    clock = Clock()
    index = new(clock)
    total = MAX_EXPIRE_PER_BATCH * 2 + 10
    for i in range(total):  # one bucket
        batch(index, {f"k{i}": T0})
    clock.now_ms += WINDOW + HOUR
    first = batch(index, {"new": clock.now_ms})
    assert first[0][0] == f"#dd:{total}"
    assert first[1:] == [(f"#dd:{i}", None) for i in range(MAX_EXPIRE_PER_BATCH)]
    assert index.buckets[0] == Bucket(MAX_EXPIRE_PER_BATCH, total - 1, T0, T0, total - MAX_EXPIRE_PER_BATCH)
    second = batch(index, {})
    assert second == [(f"#dd:{i}", None) for i in range(MAX_EXPIRE_PER_BATCH, 2 * MAX_EXPIRE_PER_BATCH)]
    assert batch(index, {}) == [(f"#dd:{i}", None) for i in range(2 * MAX_EXPIRE_PER_BATCH, total)]
    assert index.ids() == ["new"] and len(index) == 1
    assert index.buckets == [Bucket(total, total, clock.now_ms, clock.now_ms, 1)]


def test_restore_rebuilds_the_live_state(kv: KV) -> None:  # noqa: F811 - kv: the fixture imported above
    """Every record in order (as before compaction), after buckets expired whole and in
    part: the same ids, buckets, numbering and count; and the restored index goes on
    exactly like the live one."""
    clock = Clock()
    live = new(clock, kv)
    records: Records = []
    step = 20 * 60_000
    for i in range((WINDOW + 6 * HOUR) // step):
        clock.now_ms += step
        keys = {f"k{i}-{j}": clock.now_ms - j * 60_000 for j in range(i % 3)}
        records += batch(live, keys, observe=clock.now_ms)
    for i in range(MAX_EXPIRE_PER_BATCH + 5):  # one bucket expiring in two batches
        records += batch(live, {f"burst{i}": clock.now_ms})
    clock.now_ms += WINDOW + 1
    records += batch(live, {"last": clock.now_ms})
    assert any(v is None for _, v in records)
    fresh = restored(records, clock, MemoryKV())
    assert state(fresh) == state(live)
    assert fresh.watermark == live.watermark
    assert batch(fresh, {"after": clock.now_ms}) == batch(live, {"after": clock.now_ms})
    assert state(fresh) == state(live)


def test_restore_from_a_compacted_changelog_keeps_the_same_ids() -> None:
    """After compaction only live segments are left: the same ids in the same numbering
    and buckets; a partly expired front bucket may restore with older times (which
    only lets it go as soon or sooner, all its ids being past both conditions)."""
    clock = Clock()
    live = new(clock)
    records: Records = []
    for i in range(MAX_EXPIRE_PER_BATCH + 5):
        records += batch(live, {f"old{i}": T0 + i})
    clock.now_ms += HOUR
    records += batch(live, {"next": clock.now_ms})
    clock.now_ms += WINDOW + HOUR
    records += batch(live, {"new": clock.now_ms})  # the front bucket expires in part
    fresh = restored(compacted(records), clock)
    assert (fresh.ids(), fresh.next_segment, len(fresh)) == (live.ids(), live.next_segment, len(live))
    assert [(b.first, b.last, b.n) for b in fresh.buckets] == [(b.first, b.last, b.n) for b in live.buckets]
    assert fresh.buckets[0].t <= live.buckets[0].t and fresh.buckets[0].w <= live.buckets[0].w


def test_tombstones_at_restore() -> None:
    """Of the front segment, of one in the middle, twice, of an unknown one."""
    clock = Clock()
    live = new(clock)
    records: Records = []
    for i in range(4):
        records += batch(live, {f"k{i}": T0})
    fresh = restored(records + [("#dd:0", None), ("#dd:2", None), ("#dd:2", None), ("#dd:99", None)], clock)
    assert sorted(fresh.ids()) == ["k1", "k3"] and len(fresh) == 2
    assert fresh.buckets == [Bucket(1, 3, T0, T0, 2)]
    clock.now_ms += WINDOW + HOUR
    assert batch(fresh, {}, observe=clock.now_ms) == [("#dd:1", None), ("#dd:2", None), ("#dd:3", None)]
    assert fresh.buckets == [] and fresh.ids() == [] and len(fresh) == 0


@pytest.mark.parametrize("key, value", [
    ("#dd:x", {"t": 1, "w": 1, "k": []}),
    ("#dd:-1", {"t": 1, "w": 1, "k": []}),
    ("#dd:" + "9" * 19, {"t": 1, "w": 1, "k": []}),
    ("#dd:١", {"t": 1, "w": 1, "k": []}),  # a non-ASCII digit
    ("#dd:1", [1, 2]),
    ("#dd:1", {"w": 1, "k": ["a"]}),
    ("#dd:1", {"t": "1", "w": 1, "k": ["a"]}),
    ("#dd:1", {"t": True, "w": 1, "k": ["a"]}),
    ("#dd:1", {"t": 1, "w": 1.5, "k": ["a"]}),
    ("#dd:1", {"t": 1, "w": 1, "k": "a"}),
    ("#dd:1", {"t": 1, "w": 1, "k": [1]}),
    ("#dd:1", {"t": 1, "w": 1, "k": ["x" * 201]}),
    ("#dd:1", {"t": 1, "w": 1, "k": ["a", "a"]}),
    ("#dd:1", {"t": 1, "w": 1, "k": [f"k{i}" for i in range(MAX_SEGMENT_IDS + 1)]}),
])
def test_bad_records_are_refused_and_change_nothing(key: str, value: Any) -> None:
    clock = Clock()
    live = new(clock)
    index = restored(batch(live, {"a": T0}), clock)
    before = state(index)
    with pytest.raises(ValueError):
        index.restore(key, dumps(value))
    assert state(index) == before


def test_undecodable_record_is_refused() -> None:
    index = new(Clock())
    with pytest.raises(ValueError):
        index.restore("#dd:0", b"{not json")
    assert state(index) == ([], [], 0, 0)


def test_restored_times_are_capped_to_the_clock() -> None:
    """A record dated far ahead (forged, or a wrong clock) cannot pin its bucket, and
    every bucket behind it, for ever."""
    clock = Clock()
    index = new(clock)
    far = 253_402_300_799_999
    index.restore("#dd:0", dumps({"t": far, "w": far, "k": ["a"]}))
    assert index.buckets == [Bucket(0, 0, T0 + MAX_CLOCK_SKEW_MS, T0, 1)]
    clock.now_ms += WINDOW + MAX_CLOCK_SKEW_MS + 1
    batch(index, {"b": clock.now_ms})
    assert not index.seen("a") and index.seen("b")


def test_a_forged_high_number_does_not_shadow_the_segments_after_it() -> None:
    """Without a signing key a forged segment is taken as it is; the real segments read
    after it keep their ids, in a bucket of their own, before it in the order."""
    clock = Clock()
    live = new(clock)
    records = batch(live, {"a": T0}) + batch(live, {"b": T0})
    forged = [("#dd:777", {"t": T0, "w": T0, "k": ["planted"]})]
    later = batch(live, {"c": T0}) + batch(live, {"d": T0})
    fresh = restored(records + forged + later, clock)
    assert sorted(fresh.ids()) == ["a", "b", "c", "d", "planted"] and len(fresh) == 5
    assert fresh.buckets == [Bucket(0, 3, T0, T0, 4), Bucket(777, 777, T0, T0, 1)]
    assert fresh.next_segment == 778


def test_a_record_read_twice_replaces_its_segment() -> None:
    clock = Clock()
    index = new(clock)
    index.restore("#dd:0", dumps({"t": T0, "w": T0, "k": ["a", "b"]}))
    index.restore("#dd:0", dumps({"t": T0, "w": T0, "k": ["b", "c"]}))
    assert (sorted(index.ids()), len(index), index.buckets) == (["b", "c"], 2, [Bucket(0, 0, T0, T0, 2)])


def test_commit_applies_what_changelog_wrote() -> None:
    """Time moving between changelog() and commit() changes nothing: commit applies
    the records written, not a new decision."""
    clock = Clock()
    index = new(clock)
    batch(index, {"a": T0})
    index.add("b", T0)
    records = index.changelog()
    clock.now_ms += 2 * WINDOW  # would expire "a" now
    index.observe(T0 + 2 * WINDOW)
    index.commit()
    assert [k for k, _ in records] == ["#dd:1"]
    assert index.seen("a") and index.seen("b")


def test_ids_need_a_changelog_before_commit() -> None:
    index = new(Clock())
    index.add("a", T0)
    with pytest.raises(InvariantError):
        index.commit()


def test_the_memory_benchmark_runs_and_reports() -> None:
    """A short run of the benchmark (tools/benchmark/dedupe.py), in its subprocess."""
    from tools.benchmark import dedupe as bench

    figures = bench.run(1, days=0.02, batches_per_s=5.0, ids_per_batch=2, samples=4)
    assert figures["batches"] == 8_640 and figures["ids_end"] == 17_280
    assert figures["entries_end"] == figures["entries_max"] == 1  # under an hour: one bucket
    assert figures["rss_mb_end"] > 0 and len(figures["timeline"]) == 5
