"""The Store's cache of decoded committed values: it saves a KV read and a decode for a
key seen again, and must never show what the KV does not hold."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.engine.codec import loads
from pipeline.engine.kv import MemoryKV
from pipeline.engine.store import Store, cached_bytes
from pipeline.invariants import InvariantError
from tests.unit.test_store_merge import Box, box_from_json


class CountingKV(MemoryKV):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return super().get(key)


def committed(store: Store[Box], key: str) -> Any:
    raw = store.kv.get(store.prefix + key.encode())
    return None if raw is None else box_from_json(loads(raw))


# What one small Box value costs in the cache (its encoded size, times the estimate).
BOX = cached_bytes(len(b'{"n":1,"q":1}'))


def make(cached: int = 10) -> tuple[Store[Box], CountingKV]:
    """A store whose cache holds `cached` one-digit Box values."""
    kv = CountingKV()
    return Store(Box, box_from_json, kv, b"t:", cached=cached * BOX), kv


def test_a_committed_value_is_read_from_the_kv_once() -> None:
    store, kv = make()
    store.for_update("a").bump(5)
    store.encoded_changes()
    store.commit()
    reads = kv.reads
    for _ in range(3):
        store.for_update("a").bump()
        store.commit()
    assert kv.reads == reads  # every later batch found it in the cache
    assert store.get("a") == committed(store, "a") == Box(8, 4)


def test_an_aborted_change_never_reaches_the_cache() -> None:
    store, _ = make()
    store.for_update("a").bump(5)
    store.commit()
    store.for_update("a").bump(100)
    store.abort()
    assert store.get("a") == committed(store, "a") == Box(5, 1)


def test_every_change_is_found_and_written_with_the_next_seq() -> None:
    store, _ = make()
    store.for_update("a").bump(5)
    store.commit()
    store.for_update("a").n = 999  # changed without a word to the store
    assert store.encoded_changes() == [("a", b'{"n":999,"q":2}')]
    store.commit()
    assert store.get("a") == committed(store, "a") == Box(999, 2)


def test_an_unchanged_value_is_not_written_and_stays_cached() -> None:
    store, kv = make()
    store.for_update("a").bump(5)
    store.commit()
    value = store.for_update("a")
    value.n += 1
    value.n -= 1  # changed back: the same encoding as committed
    assert store.encoded_changes() == []
    store.commit()
    reads = kv.reads
    assert store.get("a") == Box(5, 1)
    assert kv.reads == reads  # back in the cache without a read
    assert committed(store, "a") == Box(5, 1)


def test_a_rule_that_sets_seq_fails_loudly() -> None:
    store, _ = make()
    store.for_update("a").seq = 7
    with pytest.raises(InvariantError, match="set by its store"):
        store.encoded_changes()


def test_the_cache_is_bounded_and_evicts_the_oldest() -> None:
    store, kv = make(cached=3)
    for key in "abcde":
        store.for_update(key).bump()
    store.commit()
    assert list(store._cache) == ["c", "d", "e"]
    reads = kv.reads
    assert store.get("a") == Box(1, 1)  # evicted: read again from the KV
    assert kv.reads == reads + 1


def test_a_restored_record_replaces_the_cached_value() -> None:
    store, _ = make()
    store.for_update("a").bump(5)
    store.commit()
    store.restore("a", b'{"n":42,"q":9}')
    store.end_restore()
    assert store.get("a") == Box(42, 9)
    store.restore("a", None)
    store.end_restore()
    assert store.get("a") is None


def test_a_smaller_limit_evicts_at_once_and_zero_turns_the_cache_off() -> None:
    store, kv = make(cached=5)
    for key in "abcde":
        store.for_update(key).bump()
    store.commit()
    store.limit_cache(2 * BOX)
    assert list(store._cache) == ["d", "e"] and store.cache_bytes == 2 * BOX
    store.limit_cache(0)
    assert not store._cache
    reads = kv.reads
    assert store.get("e") == store.get("e") == Box(1, 1)
    assert kv.reads == reads + 2 and not store._cache


def test_a_worker_budget_is_split_over_partitions_and_stages() -> None:
    """The engine gives each stage its share of PIPELINE_STATE_CACHE_MB as if the
    worker held every partition; a stage's side tables get a small part of it."""
    from agents.credit.agent import CreatorLedger
    from agents.ledger.agent import UserLedger
    from pipeline import economics
    from pipeline.engine.engine import Engine
    from pipeline.settings import Settings

    econ = economics.load(None)
    settings = Settings(partitions=4, state_cache_mb=8)
    engine = Engine(settings, lambda p: [UserLedger(econ, p, 4), CreatorLedger(econ, 4)], lambda updates: None)
    task = engine._new_task(1)
    budgets = [sum(t.cached for _, t in stage._tables()) for stage in task.stages]
    assert budgets == [8 * 1024 * 1024 // 8] * 2
    for stage in task.stages:
        assert all(t.cached < stage.table.cached for t in stage.side.values())


def test_a_value_costs_what_it_weighs() -> None:
    """A big value (a creator with many senders) takes the room of many small ones."""
    store, kv = make(cached=4)
    store.for_update("small").bump()
    big = store.for_update("big")
    big.bump(10**30)  # ~4 times the encoded size of a small one
    store.commit()
    assert store.cache_bytes <= 4 * BOX
    assert "big" not in store._cache or "small" not in store._cache


def test_taking_an_uncached_value_for_update_evicts_nothing() -> None:
    """It goes from the KV to the batch, not through the cache: the values cached stay."""
    store, kv = make(cached=2)
    for key in "abc":
        store.for_update(key).bump()
    store.commit()
    assert list(store._cache) == ["b", "c"]
    store.for_update("a").bump()  # in the KV only
    assert list(store._cache) == ["b", "c"]
    store.commit()
    assert list(store._cache) == ["c", "a"]
