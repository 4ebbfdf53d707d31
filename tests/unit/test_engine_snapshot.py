"""A read-model refill reads a partition's stores between awaits: it must stop, not read
closed stores, when the partition is revoked or the worker stops meanwhile (seen: a
graceful stop during the first refill crashed the worker with DbClosedError)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.engine.engine import SNAPSHOT_CHUNK, Engine, PartitionMoved


def engine_with(n_updates: int) -> SimpleNamespace:
    stage = SimpleNamespace(snapshot=lambda: iter(range(n_updates)))
    return SimpleNamespace(tasks={0: SimpleNamespace(stages=[stage])})


def test_snapshot_stops_when_the_task_goes_away_between_chunks() -> None:
    engine = engine_with(3 * SNAPSHOT_CHUNK)
    chunks = Engine.snapshot(engine, 0)  # type: ignore[arg-type]
    assert len(next(chunks)) == SNAPSHOT_CHUNK
    engine.tasks.clear()  # stopped (its stores closed) while the caller awaited
    with pytest.raises(PartitionMoved):
        next(chunks)


def test_snapshot_stops_when_the_partition_was_rebuilt_meanwhile() -> None:
    engine = engine_with(2 * SNAPSHOT_CHUNK)
    chunks = Engine.snapshot(engine, 0)  # type: ignore[arg-type]
    next(chunks)
    engine.tasks[0] = SimpleNamespace(stages=[])  # a new task with new stores
    with pytest.raises(PartitionMoved):
        next(chunks)


def test_snapshot_of_a_kept_partition_is_whole_and_of_another_empty() -> None:
    engine = engine_with(2 * SNAPSHOT_CHUNK + 1)
    assert sum(len(c) for c in Engine.snapshot(engine, 0)) == 2 * SNAPSHOT_CHUNK + 1  # type: ignore[arg-type]
    assert list(Engine.snapshot(engine, 1)) == []  # type: ignore[arg-type]
