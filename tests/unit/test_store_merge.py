"""Store overlay, DedupeIndex segments and expiry, and the event-time merge."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.engine.codec import dumps
from pipeline.engine.dedupe import MAX_EXPIRE_PER_BATCH, DedupeIndex
from pipeline.engine.kv import KV, MemoryKV, RocksKV
from pipeline.engine.merge import NO_TIME, EventTimeMerge, Pending
from pipeline.engine.store import Store

WINDOW = 1_000
Records = list[tuple[str, dict[str, Any] | None]]


# --- Store ----------------------------------------------------------------------------


@dataclass
class Box:
    n: int = 0
    seq: int = 0

    def copy(self) -> Box:
        return Box(self.n, self.seq)

    def bump(self, by: int = 1) -> None:
        self.n += by  # the store finds the change and sets seq

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "q": self.seq}


def box_from_json(data: dict[str, Any]) -> Box:
    return Box(data["n"], data["q"])


@pytest.fixture(params=["memory", "rocksdb"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KV]:
    """Every store test runs on both backends: they must not differ."""
    kv: KV = MemoryKV() if request.param == "memory" else RocksKV(tmp_path / "db")
    yield kv
    kv.close()


@pytest.fixture
def store(kv: KV) -> Store[Box]:
    s: Store[Box] = Store(Box, box_from_json, kv, b"t:")
    s.for_update("a").bump(5)
    s.commit()
    return s


def test_for_update_copies_on_first_touch(store: Store[Box]) -> None:
    value = store.for_update("a")
    value.bump()
    assert store.for_update("a") is value  # one copy per batch
    assert store.get("a") == Box(6, 1)  # seq moves with the commit
    assert store.as_dict()["a"] == Box(5, 1)


def test_commit_publishes_only_changed_keys(store: Store[Box]) -> None:
    store.for_update("a")  # read-only touch
    store.for_update("new")  # created, never changed
    store.for_update("b").bump(2)
    store.for_update("b").bump(3)
    assert [(k, v.to_json()) for k, v in store.changes()] == [("b", {"n": 5, "q": 1})]  # one seq per batch
    store.commit()
    assert store.as_dict() == {"a": Box(5, 1), "b": Box(5, 1)}
    assert store.dirty == {} and store.get("new") is None
    assert len(store) == 2


def test_abort_drops_the_overlay(store: Store[Box]) -> None:
    store.for_update("a").bump()
    store.for_update("b").bump()
    store.abort()
    assert store.as_dict() == {"a": Box(5, 1)}
    assert (store.get("a"), store.get("b"), list(store.changes())) == (Box(5, 1), None, [])


def test_rocksdb_directory_is_removed_on_close(tmp_path: Path) -> None:
    kv = RocksKV(tmp_path / "db")
    kv.write([(b"a", b"1"), (b"b", b"2"), (b"c", None)])
    assert (kv.get(b"a"), kv.get(b"c"), list(kv.scan(b"b"))) == (b"1", None, [(b"b", b"2")])
    kv.close()
    kv.close()  # idempotent
    assert not (tmp_path / "db").exists()


def test_restore_and_tombstone(store: Store[Box]) -> None:
    store.restore("b", b"{\"n\":9,\"q\":4}")
    store.restore("a", None)
    store.restore("zzz", None)  # a tombstone for an unknown key is harmless
    store.end_restore()
    assert len(store) == 1
    assert store.as_dict() == {"b": Box(9, 4)}


# --- DedupeIndex ----------------------------------------------------------------------


@pytest.fixture
def index(kv: KV) -> DedupeIndex:
    return DedupeIndex(WINDOW, clock=StepClock(), kv=kv, prefix=b"i:")


class StepClock:
    """Wall clock (seconds) that moves a full window per batch, so that these tests see
    expiry by event time alone; the wall-time condition has its own test."""

    def __init__(self) -> None:
        self.now_ms = 10**12

    def __call__(self) -> float:
        self.now_ms += 2 * WINDOW
        return self.now_ms / 1000


def batch(index: DedupeIndex, keys: dict[str, int], observe: int | None = None) -> Records:
    """One batch: observe each event time, add the keys, write the changelog, commit."""
    for key, ts in keys.items():
        index.observe(ts)
        index.add(key, ts)
    if observe is not None:
        index.observe(observe)
    records = index.changelog()
    index.commit()
    return records


def strip(records: Records) -> Records:
    """The records without their wall times, for exact comparison."""
    return [(k, None if v is None else {f: x for f, x in v.items() if f != "w"}) for k, v in records]


def test_new_segment_per_batch(index: DedupeIndex) -> None:
    assert strip(batch(index, {"a": 10, "b": 30, "c": 20})) == [("#dd:0", {"t": 30, "k": ["a", "b", "c"]})]
    assert batch(index, {}) == []
    assert strip(batch(index, {"d": 5})) == [("#dd:1", {"t": 5, "k": ["d"]})]
    assert [(b.first, b.last, b.t, b.n) for b in index.buckets] == [(0, 0, 30, 3), (1, 1, 5, 1)]
    assert index.ids() == ["a", "b", "c", "d"]
    assert len(index) == 4


def test_seen_includes_the_uncommitted_batch(index: DedupeIndex) -> None:
    index.add("a", 1)
    assert index.seen("a") and not index.seen("b")
    with pytest.raises(AssertionError):
        index.add("a", 2)


def test_id_exactly_window_behind_is_kept_one_more_is_forgotten(index: DedupeIndex) -> None:
    batch(index, {"old": 100})
    assert batch(index, {}, observe=100 + WINDOW) == []
    assert index.seen("old")
    assert batch(index, {}, observe=100 + WINDOW + 1) == [("#dd:0", None)]
    assert not index.seen("old") and index.buckets == []


def test_tombstones_exactly_for_expired_segments(index: DedupeIndex) -> None:
    for i, ts in enumerate((100, 200, 300, 400)):
        batch(index, {f"k{i}": ts})
    records = batch(index, {"new": 1_250})
    assert strip(records) == [("#dd:4", {"t": 1_250, "k": ["new"]}), ("#dd:0", None), ("#dd:1", None)]
    assert sorted(index.ids()) == ["k2", "k3", "new"]
    assert [b.first for b in index.buckets] == [2, 3, 4]


def test_young_segment_lingers_behind_an_older_one(index: DedupeIndex) -> None:
    """Expiry walks segments in creation order and stops at the first young one."""
    batch(index, {"late": 900})
    batch(index, {"early": 100})
    assert batch(index, {}, observe=1_500) == []
    assert index.seen("early")
    assert batch(index, {}, observe=1_901) == [("#dd:0", None), ("#dd:1", None)]


def test_expiry_is_capped_per_batch(index: DedupeIndex) -> None:
    for i in range(MAX_EXPIRE_PER_BATCH + 5):
        batch(index, {f"k{i}": 1})
    first = batch(index, {}, observe=10_000)
    assert first == [(f"#dd:{i}", None) for i in range(MAX_EXPIRE_PER_BATCH)]
    assert batch(index, {}) == [(f"#dd:{i}", None) for i in range(MAX_EXPIRE_PER_BATCH, MAX_EXPIRE_PER_BATCH + 5)]
    assert len(index) == 0


def test_commit_matches_changelog_and_restore_reproduces(index: DedupeIndex) -> None:
    records: Records = []
    for keys, observe in [({"a": 100}, None), ({"b": 600}, None), ({"c": 1_200}, 1_500), ({"d": 1_700}, None)]:
        records += batch(index, keys, observe)
    assert ("#dd:0", None) in records and ("#dd:1", None) in records
    fresh = DedupeIndex(WINDOW, clock=index.clock)  # time goes on
    for key, value in records:
        fresh.restore(key, None if value is None else dumps(value))
    assert (fresh.ids(), fresh.buckets, fresh.next_segment) == (index.ids(), index.buckets, index.next_segment)
    assert sorted(fresh.ids()) == ["c", "d"]
    assert fresh.watermark == 1_700


def test_restore_then_continue(index: DedupeIndex) -> None:
    records = batch(index, {"a": 100}) + batch(index, {"b": 200})
    fresh = DedupeIndex(WINDOW, clock=index.clock)  # time goes on
    for key, value in records:
        fresh.restore(key, None if value is None else dumps(value))
    assert strip(batch(fresh, {"c": 1_150})) == [("#dd:2", {"t": 1_150, "k": ["c"]}), ("#dd:0", None)]


def test_abort_forgets_pending_keys_and_watermark(index: DedupeIndex) -> None:
    batch(index, {"a": 100})
    index.add("b", 50_000)
    index.observe(50_000)
    index.abort()
    assert not index.seen("b")
    assert index.changelog() == []  # the aborted watermark expires nothing
    assert index.watermark == 100


# --- EventTimeMerge -------------------------------------------------------------------

INPUTS = ("a", "b", "c")


def merge_of(**buffers: list[int]) -> EventTimeMerge:
    merge = EventTimeMerge(INPUTS, max_idle_ms=500)
    for topic, times in buffers.items():
        for offset, ts in enumerate(times):
            merge.add(Pending(ts, topic, offset, None, None, f"{topic}{offset}"))
    return merge


def drained(
    merge: EventTimeMerge, now_ms: float = 0, lagging: tuple[str, ...] = (), unknown: tuple[str, ...] = ()
) -> list[str]:
    """`lagging` inputs have known unread data; `unknown` ones have no fetch answer yet."""
    return [p.item for p in merge.drain(lambda t: None if t in unknown else t not in lagging, now_ms)]


def test_merges_by_event_time() -> None:
    merge = merge_of(a=[10, 40], b=[20, 30], c=[5])
    assert drained(merge) == ["c0", "a0", "b0", "b1", "a1"]
    assert [merge.buffered(t) for t in INPUTS] == [0, 0, 0]


def test_each_input_keeps_its_order_when_time_goes_backwards() -> None:
    merge = merge_of(a=[10, 5, 50], b=[7, 30])
    assert drained(merge) == ["b0", "a0", "a1", "b1", "a2"]


def test_ties_go_to_the_input_listed_first() -> None:
    merge = merge_of(c=[5, 5], b=[5], a=[5])
    assert drained(merge) == ["a0", "b0", "c0", "c1"]


def test_malformed_records_come_first() -> None:
    assert drained(merge_of(a=[3], b=[NO_TIME])) == ["b0", "a0"]


def test_holds_back_while_an_empty_input_has_known_unread_data() -> None:
    """Known lag: the data is on its way, so the merge waits however long it takes."""
    merge = merge_of(a=[10, 20])
    assert drained(merge, 1_000, lagging=("b",)) == []
    assert drained(merge, 100_000, lagging=("b",)) == []
    merge.add(Pending(15, "b", 0, None, None, "b0"))
    assert drained(merge, 100_001) == ["a0", "b0", "a1"]


def test_an_input_of_unknown_lag_is_waited_for_at_most_max_idle() -> None:
    merge = merge_of(a=[10, 20])
    assert drained(merge, 1_000, unknown=("b",)) == []
    assert drained(merge, 1_499, unknown=("b",)) == []
    assert drained(merge, 1_500, unknown=("b",)) == ["a0", "a1"]


def test_waiting_starts_over_after_the_buffers_ran_dry() -> None:
    merge = merge_of(a=[10])
    drained(merge, 0, unknown=("b",))
    assert drained(merge, 500, unknown=("b",)) == ["a0"]
    merge.add(Pending(11, "a", 1, None, None, "a1"))
    assert drained(merge, 600, unknown=("b",)) == []
    assert drained(merge, 1_100, unknown=("b",)) == ["a1"]


def test_data_arriving_on_the_lagging_input_is_merged_in_order() -> None:
    merge = merge_of(a=[10, 30])
    assert drained(merge, 0, lagging=("b",)) == []
    merge.add(Pending(20, "b", 0, None, None, "b0"))
    assert drained(merge, 100) == ["a0", "b0", "a1"]


def test_proceeds_at_once_when_the_empty_input_is_caught_up() -> None:
    assert drained(merge_of(a=[10], b=[20]), 0) == ["a0", "b0"]


def test_a_lagging_input_blocks_only_once_its_buffer_is_empty() -> None:
    """Only an empty buffer can hide an earlier record."""
    assert drained(merge_of(a=[10], b=[20], c=[30]), 0, lagging=("c",)) == ["a0", "b0", "c0"]
    assert drained(merge_of(a=[10], b=[20], c=[30]), 0, lagging=("a",)) == ["a0"]


def test_clear_forgets_buffers() -> None:
    merge = merge_of(a=[1], b=[2])
    merge.clear()
    assert drained(merge) == []


def test_far_future_event_time_alone_does_not_expire_recent_ids() -> None:
    """An id is kept for the window in real time too: one event dated far in the future
    (a bad producer clock) must not flush the ids written a moment ago."""
    now = [1_000.0]
    index = DedupeIndex(WINDOW, clock=lambda: now[0])
    batch(index, {"a": 10})
    batch(index, {"z": 10**12})  # the watermark jumps far ahead
    assert index.seen("a")
    now[0] += 2 * WINDOW / 1000  # a window of real time later, it may go
    batch(index, {"y": 10**12})
    assert not index.seen("a")


def test_a_far_future_segment_does_not_hold_back_expiry_of_later_ones() -> None:
    """Event times are capped a day past the clock, so a segment dated in the year 9999
    expires like any other once real and event time have moved past it."""
    day = 86_400_000
    now = [0.0]
    index = DedupeIndex(WINDOW, clock=lambda: now[0])
    batch(index, {"future": 253_402_300_799_999})
    for i in range(5):
        now[0] += 2 * day / 1000
        batch(index, {f"k{i}": int(now[0] * 1000)})
    assert not index.seen("future") and not index.seen("k0")
    assert len(index.buckets) <= 2


def test_equal_event_times_go_by_when_each_record_was_written() -> None:
    """Causal order among equal event times: a gift written (and acknowledged) before a
    recharge of the same time goes first, though recharges are listed first."""
    merge = EventTimeMerge(("recharges", "gifts"), 0)
    merge.add(Pending(100, "recharges", 0, None, None, "r", 2_000))
    merge.add(Pending(100, "gifts", 0, None, None, "g", 1_999))
    merge.add(Pending(100, "gifts", 1, None, None, "g2", 2_000))
    assert [p.item for p in merge.drain(lambda topic: True, 0)] == ["g", "r", "g2"]  # then input order
