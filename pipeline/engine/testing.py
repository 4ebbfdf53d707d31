"""Test doubles shipped with the engine: drive a stage batch by batch through the same
lifecycle as PartitionTask (begin -> tick -> handle* -> end_batch -> changelog ->
commit or abort), in memory, without Kafka. Stage tests use these instead of their own
copies of the lifecycle, so they break when the lifecycle changes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.engine.codec import loads
from pipeline.engine.stage import Output, ReadModelUpdate, Stage


def start(stage: Stage, out: Output, now_ms: float) -> None:
    """A cycle of the stage's batch, as the engine runs it: the clock, then tick."""
    stage.begin(now_ms)
    stage.tick(out, now_ms)


@dataclass
class BatchResult:
    out: Output
    # the changelog records, decoded as a restore reads them (None: a tombstone)
    changelog: list[tuple[str, Any]]
    raw_changelog: list[tuple[str, bytes | None]] = field(repr=False)
    updates: list[ReadModelUpdate]  # read-model updates of a committed batch (else empty)


def run_batch(stage: Stage, items: Iterable[tuple[str, Any]], now_ms: float, *, idle: bool = True,
              applied: dict[str, int] | None = None, commit: bool = True, appended: int = 0) -> BatchResult:
    """One batch of decoded items (topic, item); committed unless `commit` is False, when it
    is aborted as a failed transaction would be."""
    out = Output()
    start(stage, out, now_ms)
    for topic, item in items:
        stage.handle(topic, item, out, appended)
    stage.end_batch(out, idle, now_ms, applied)
    raw = stage.changelog()
    updates = stage.commit() if commit else []
    if not commit:
        stage.abort()
    return BatchResult(out, [(k, None if v is None else loads(v)) for k, v in raw], raw, updates)


def restored(make: Callable[[], Stage], records: Iterable[tuple[str, bytes | None]], now_ms: float) -> Stage:
    """A new stage rebuilt from changelog records, as a worker taking the partition over
    would (state lost with a crash comes back from these alone)."""
    stage = make()
    stage.start_restore(now_ms)
    for key, raw in records:
        stage.restore(key, raw)
    stage.end_restore()
    return stage
