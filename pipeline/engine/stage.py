"""The contract between the transactional engine and the keyed state machines it runs.

A stage owns the state of one partition for its keys. The engine feeds it decoded input
in event-time order, collects what it writes in an `Output`, and commits the output,
the stage's changelog records and the input offsets in one Kafka transaction; only then
does it call `commit()` (or `abort()` if the transaction failed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from agents.outcomes import Outcome
from pipeline.engine.codec import dumps
from pipeline.topics import OUTCOMES
from pipeline.engine.kv import KV, MemoryKV
from pipeline.engine.store import SEGMENT_PREFIX, DedupeIndex, Store


@dataclass(frozen=True, slots=True)
class Message:
    topic: str  # contract or internal name, without the prefix
    key: bytes | None
    value: bytes | None
    partition: int | None = None  # None: by key, with Kafka's default partitioner


@dataclass(frozen=True, slots=True)
class ReadModelUpdate:
    """A committed value to show in the read model; `seq` orders writes of one key.
    `scores` are leaderboard entries derived from the same value: (sorted set key
    without prefix, member, absolute score), written only with the value."""

    kind: str  # "user" | "creator"
    id: str
    fields: dict[str, int | str]
    seq: int
    scores: tuple[tuple[str, str, int], ...] = ()


class Output:
    """Everything one batch of one partition writes; its outcomes, dead letters and
    credited diamonds are counted in metrics only once its transaction has committed."""

    __slots__ = ("messages", "outcomes", "diamonds_credited", "dead_letters")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.outcomes: list[Outcome] = []
        self.diamonds_credited = 0
        self.dead_letters: list[str] = []  # source topic of each

    def send(self, topic: str, key: str | None, value: Any, partition: int | None = None) -> None:
        self.messages.append(Message(topic, None if key is None else key.encode(), dumps(value), partition))

    def outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.send(OUTCOMES, outcome.event_id, outcome)


class Stage(ABC):
    """A keyed state machine of one partition: a table of values (plus, for some stages,
    side tables under a key prefix) and the index of the event ids it applied, all
    restored from one changelog topic."""

    # Input topics (without prefix) merged in event-time order, and the changelog.
    inputs: tuple[str, ...]
    changelog_topic: str
    # Names of the table and the event-id index, for metrics.
    table_name: str
    index_name: str

    def __init__(self, table: Store[Any], dedupe_window_ms: int, side: dict[str, Store[Any]] | None = None,
                 kv: KV | None = None) -> None:
        self.table = table
        self.side = side or {}  # key prefix (outside the id pattern) -> table
        assert all(prefix.startswith("#") for prefix in self.side)
        # One KV per stage and partition, a key namespace per table.
        self.kv: KV = MemoryKV() if kv is None else kv
        for namespace, t in [("t:", table), *((f"{p}:", t) for p, t in self.side.items())]:
            assert len(t) == 0 and not t.dirty, "a table is bound to its stage's KV before use"
            t.kv, t.prefix = self.kv, namespace.encode()
        self.dedupe = DedupeIndex(dedupe_window_ms, kv=self.kv, prefix=b"i:")

    @abstractmethod
    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[Any, int | None]:
        """(item, event time); an item of type `Malformed` goes to dead-letters, and
        event time None means "as soon as possible" in the merge."""

    @abstractmethod
    def handle(self, topic: str, item: Any, out: Output) -> None: ...

    @abstractmethod
    def read_model(self, key: str, value: Any, full: bool = False) -> ReadModelUpdate:
        """What the read model shows of `value`: the leaderboard entries it touched in
        this batch, or all of its entries when `full` (a refill)."""

    def tick(self, out: Output, now_ms: float) -> None:
        """Called every cycle, input or not: for work that waits on time."""

    def end_batch(self, out: Output, idle: bool, now_ms: float) -> None:
        """Write what the stage combined over the batch; `idle`: every input is caught up."""

    def _tables(self) -> list[tuple[str, Store[Any]]]:
        return [("", self.table), *self.side.items()]

    def changelog(self) -> list[tuple[str, bytes | None]]:
        """This batch's state changes as changelog records (None: tombstone)."""
        records: list[tuple[str, bytes | None]] = [
            (prefix + k, raw) for prefix, t in self._tables() for k, raw in t.encoded_changes()
        ]
        records.extend((k, None if v is None else dumps(v)) for k, v in self.dedupe.changelog())
        return records

    def commit(self) -> list[ReadModelUpdate]:
        """The batch's transaction committed: publish its state; return what changed."""
        updates = [self.read_model(k, v) for k, v in self.table.changes()]
        for _, t in self._tables():
            t.commit()
        self.dedupe.commit()
        return updates

    def abort(self) -> None:
        for _, t in self._tables():
            t.abort()
        self.dedupe.abort()

    def restore(self, key: str, raw: bytes | None) -> None:
        """One changelog record, as written by `changelog()`."""
        if key.startswith(SEGMENT_PREFIX):
            self.dedupe.restore(key, raw)
            return
        for prefix, t in self.side.items():
            if key.startswith(prefix):
                t.restore(key[len(prefix):], raw)
                return
        self.table.restore(key, raw)

    def end_restore(self) -> None:
        """Every changelog record is in: finish writing the restored state."""
        for _, t in self._tables():
            t.end_restore()

    def snapshot(self) -> list[ReadModelUpdate]:
        """Every committed value, to refill an emptied read model."""
        return [self.read_model(k, v, full=True) for k, v in self.table.items()]

    def sizes(self) -> dict[str, int]:
        return {self.table_name: len(self.table), self.index_name: len(self.dedupe)}

    def close(self) -> None:
        """Release the state's storage (the partition moved away or is rebuilt)."""
        self.kv.close()
