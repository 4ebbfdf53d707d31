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
from pipeline.engine.store import SEGMENT_PREFIX, DedupeIndex, Store


@dataclass(frozen=True, slots=True)
class Message:
    topic: str  # contract or internal name, without the prefix
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class ReadModelUpdate:
    """A committed value to show in the read model; `seq` orders writes of one key."""

    kind: str  # "user" | "creator"
    id: str
    fields: dict[str, int | str]
    seq: int


class Output:
    """Everything one batch of one partition writes; its outcomes and credited diamonds
    are counted in metrics only once the batch's transaction has committed."""

    __slots__ = ("messages", "outcomes", "diamonds_credited")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.outcomes: list[Outcome] = []
        self.diamonds_credited = 0

    def send(self, topic: str, key: str | None, value: Any) -> None:
        self.messages.append(Message(topic, None if key is None else key.encode(), dumps(value)))

    def outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.send(OUTCOMES, outcome.event_id, outcome.to_dict())

    def __len__(self) -> int:
        return len(self.messages)


class Stage(ABC):
    """A keyed state machine of one partition: a table of values and the index of the
    event ids it applied, both restored from one changelog topic."""

    # Input topics (without prefix) merged in event-time order, and the changelog.
    inputs: tuple[str, ...]
    changelog_topic: str
    # Names of the table and the event-id index, for metrics.
    table_name: str
    index_name: str

    def __init__(self, table: Store[Any], dedupe_window_ms: int) -> None:
        self.table = table
        self.dedupe = DedupeIndex(dedupe_window_ms)

    @abstractmethod
    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[Any, int | None]:
        """(item, event time); an item of type `Malformed` goes to dead-letters, and
        event time None means "as soon as possible" in the merge."""

    @abstractmethod
    def handle(self, topic: str, item: Any, out: Output) -> None: ...

    @abstractmethod
    def read_model(self, key: str, value: Any) -> ReadModelUpdate: ...

    def end_batch(self, out: Output) -> None:
        """Write what the stage combined over the batch."""

    def changelog(self) -> list[tuple[str, dict[str, Any] | None]]:
        """This batch's state changes as changelog records (None: tombstone)."""
        records: list[tuple[str, dict[str, Any] | None]] = [(k, v.to_json()) for k, v in self.table.changes()]
        return records + self.dedupe.changelog()

    def commit(self) -> list[ReadModelUpdate]:
        """The batch's transaction committed: publish its state; return what changed."""
        updates = [self.read_model(k, v) for k, v in self.table.changes()]
        self.table.commit()
        self.dedupe.commit()
        return updates

    def abort(self) -> None:
        self.table.abort()
        self.dedupe.abort()

    def restore(self, key: str, value: dict[str, Any] | None) -> None:
        if key.startswith(SEGMENT_PREFIX):
            self.dedupe.restore(key, value)
        else:
            self.table.restore(key, value)

    def snapshot(self) -> list[ReadModelUpdate]:
        """Every committed value, to refill an emptied read model."""
        return [self.read_model(k, v) for k, v in self.table.committed.items()]

    def sizes(self) -> dict[str, int]:
        return {self.table_name: len(self.table), self.index_name: len(self.dedupe)}
