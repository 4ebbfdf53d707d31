"""A read-model refill reads a partition's stores between awaits: it must stop, not read
closed stores, when the partition is revoked or the worker stops meanwhile (seen: a
graceful stop during the first refill crashed the worker with DbClosedError)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

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


class _Consumer:
    """The consumer calls `Engine._resume` makes: the group's offsets, and seeks."""

    def __init__(self, group: dict[str, int]) -> None:
        self.group, self.seeks = group, {}

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    async def committed(self, tp: Any) -> int | None:
        return self.group.get(tp.topic)

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks[tp.topic] = offset


def _kept(group: dict[str, int], own: dict[str, int]) -> tuple[Engine, Any, _Consumer]:
    from pipeline.engine.task import PartitionTask
    from pipeline.settings import Settings

    engine = Engine.__new__(Engine)
    engine.consumer = consumer = _Consumer(group)  # type: ignore[assignment]
    engine._seek_epoch = 0
    task = PartitionTask.__new__(PartitionTask)
    task.partition, task.settings, task.merges = 0, Settings(), []
    task.stage_of = dict.fromkeys(own, 0)
    task.committed_offsets = dict(own)
    task.next_offsets, task.fetch_next, task.processed = {}, {}, []
    return engine, task, consumer


def test_a_kept_partition_resumes_at_its_own_commit_when_the_group_trails_it() -> None:
    """A transaction's offsets are readable only once its markers are written: right after
    the task's last commit the group may still show the offsets before it. Seeking there
    applied that batch again (CI: 50 outcomes answered twice, as duplicates)."""
    import asyncio

    engine, task, consumer = _kept(group={"gifts": 100, "recharges": 40}, own={"gifts": 150, "recharges": 40})
    assert asyncio.run(Engine._resume(engine, task)) is True
    assert consumer.seeks == {"gifts": 150, "recharges": 40}


def test_a_kept_partition_the_group_moved_past_is_rebuilt() -> None:
    """Ahead of the task: another worker owned it meanwhile, so the task's state is stale."""
    import asyncio

    engine, task, consumer = _kept(group={"gifts": 200, "recharges": 40}, own={"gifts": 150, "recharges": 40})
    assert asyncio.run(Engine._resume(engine, task)) is False
    assert consumer.seeks == {}
