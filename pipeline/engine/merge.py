"""Event-time merge of a stage's co-partitioned inputs within one partition.

Kafka orders each partition, not the topics of one key: a recharge and a gift of one
user sit in two topics, and what a fetch returns first depends on timing (a backlog
fetched after a restart can deliver a thousand gifts before their recharges). As Kafka
Streams does (KIP-695), the merge takes the record with the smallest event time among
the heads of the buffers, and holds back while an input with no buffered record is
known to have unread data (its position is below its end offset as asked after the
fetch: causal order, see engine.py): that data is on its way, however long it takes.
An input whose lag is unknown (`caught_up` gives None; the engine never does) would
be waited for at most `max_idle_ms`. Each input keeps its own
partition order. Equal event times go by the records' Kafka timestamps (when each was
written, by the broker's clock on topics the pipeline creates), then by the input listed
first: an event acknowledged before another of the same time was produced goes first
unless both were written in the same millisecond.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.invariants import require

NO_TIME = -1  # malformed input carries no event time: merged as early as possible


@dataclass(slots=True)
class Pending:
    ts: int
    topic: str
    offset: int
    key: bytes | None
    value: bytes | None
    item: Any
    # The record's Kafka timestamp: among equal event times, the one written first goes
    # first (the pipeline creates its inputs with LogAppendTime: the broker's clock).
    written: int = 0
    appended: int = 0  # the same, if the broker's clock set it (LogAppendTime), else 0


class EventTimeMerge:
    def __init__(self, inputs: tuple[str, ...], max_idle_ms: int) -> None:
        require(bool(inputs), "a merge has inputs")
        self.inputs = inputs
        self.max_idle_ms = max_idle_ms
        self.buffers: dict[str, deque[Pending]] = {t: deque() for t in inputs}
        self._blocked_since: float | None = None

    def add(self, pending: Pending) -> None:
        self.buffers[pending.topic].append(pending)

    def buffered(self, topic: str) -> int:
        return len(self.buffers[topic])

    def clear(self) -> None:
        for buf in self.buffers.values():
            buf.clear()
        self._blocked_since = None

    def drain(self, caught_up: Callable[[str], bool | None], now_ms: float) -> Iterator[Pending]:
        """Yield records in merge order while the order is known. `caught_up(topic)` is
        True (nothing unread), False (unread data known: wait) or None (unknown: wait at
        most max_idle_ms)."""
        buffers = [(i, self.buffers[t]) for i, t in enumerate(self.inputs)]
        while True:
            best: deque[Pending] | None = None
            best_key = (0, 0, 0)
            lagging = unknown = False
            for i, buf in buffers:
                if buf:
                    key = (buf[0].ts, buf[0].written, i)
                    if best is None or key < best_key:
                        best, best_key = buf, key
                else:
                    state = caught_up(self.inputs[i])
                    lagging = lagging or state is False
                    unknown = unknown or state is None
            if best is None or lagging or not unknown:
                self._blocked_since = None
            if best is None or lagging:
                return
            if unknown:
                if self._blocked_since is None:
                    self._blocked_since = now_ms
                if now_ms - self._blocked_since < self.max_idle_ms:
                    return
            yield best.popleft()
