"""The contract between the transactional engine and the keyed state machines it runs.

A stage owns the state of one partition for its keys. The engine feeds it decoded input
in event-time order, collects what it writes in an `Output`, and commits the output,
the stage's changelog records and the input offsets in one Kafka transaction; only then
does it call `commit()` (or `abort()` if the transaction failed).

A batch goes IDLE -> OPEN (`begin`, which also gives the batch its clock: no rule reads
the wall clock) -> PREPARED (`changelog`: the records are decided, nothing may change
them) -> IDLE (`commit`, or `abort` from any state). Each step asserts the one before,
so a changelog taken twice, a commit without a changelog or input handled after the
changelog fails loudly instead of losing or mis-writing state. A batch stays OPEN over
quiet cycles (nothing to commit) until the engine commits it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pipeline.engine.codec import dumps
from pipeline.engine.dedupe import SEGMENT_PREFIX, DedupeIndex
from pipeline.engine.kv import KV, MemoryKV
from pipeline.engine.store import Store
from pipeline.invariants import require


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


@dataclass(frozen=True, slots=True)
class Malformed:
    """A record the engine cannot hand to its stage: it goes to dead-letters, with no
    other effect. Decoders return it for bad content; the engine makes it for records
    on the wrong partition or that could not be applied."""

    error: str
    # "malformed" (its content), "misrouted" (on another partition than its key's) or
    # "poison" (applying or committing it failed): each is counted in its own metric.
    kind: str = "malformed"


class Output:
    """Everything one batch of one partition writes. `effects` are what the stages
    decided, in the domain's own types: the engine hands them to its `on_committed`
    hook (metrics) only once the batch's transaction has committed, and never reads them."""

    __slots__ = ("messages", "dead_letters", "effects")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.dead_letters: list[tuple[str, str]] = []  # (source topic, Malformed.kind) of each
        self.effects: list[Any] = []

    def send(self, topic: str, key: str | None, value: Any, partition: int | None = None) -> None:
        self.messages.append(Message(topic, None if key is None else key.encode(), dumps(value), partition))


class BatchState(Enum):
    IDLE = "idle"  # no batch: after a commit or an abort, and while restoring
    OPEN = "open"  # begun: tick, handle and end_batch change the overlay
    PREPARED = "prepared"  # changelog() decided the records: commit or abort only


class Stage(ABC):
    """A keyed state machine of one partition: a table of values (plus, for some stages,
    side tables under a key prefix) and the index of the event ids it applied, all
    restored from one changelog topic."""

    # Input topics (without prefix) merged in event-time order, and the changelog.
    inputs: tuple[str, ...]
    # Inputs whose keyed records must sit on their key's partition (partitioning.py):
    # the others are re-keyed by the stage (payouts) or unkeyed (progress marks).
    keyed_inputs: frozenset[str] = frozenset()
    # Topics (any stage's inputs) whose end offsets on every partition this stage is
    # given each cycle, asked after the cycle's fetch (`watch`): its causal cuts.
    watched_inputs: tuple[str, ...] = ()
    # Inputs written by another stage of the pipeline (internal topics): with a key,
    # their records are signed and verified like the changelogs (signing.py).
    internal_inputs: tuple[str, ...] = ()
    changelog_topic: str
    # Names of the table and the event-id index, for metrics.
    table_name: str
    index_name: str

    def __init__(self, table: Store[Any], dedupe_window_ms: int, side: dict[str, Store[Any]] | None = None,
                 kv: KV | None = None) -> None:
        self.table = table
        # key prefix (outside the id pattern) -> table
        self.side = dict(side or {})
        require(all(prefix.startswith("#") for prefix in self.side), "side table prefixes start with #")
        # One KV per stage and partition, a key namespace per table.
        self.kv: KV = MemoryKV() if kv is None else kv
        for namespace, t in [("t:", table), *((f"{p}:", t) for p, t in self.side.items())]:
            require(len(t) == 0, "a table is bound to its stage's KV before use: empty")
            require(not t.dirty, "a table is bound to its stage's KV before use: no batch")
            t.kv, t.prefix = self.kv, namespace.encode()
        self.dedupe = DedupeIndex(dedupe_window_ms, clock=self._clock_s, kv=self.kv, prefix=b"i:")
        self.batch = BatchState.IDLE
        self.now_ms: float | None = None  # the clock the engine gave (begin, start_restore)

    def clock_ms(self) -> float:
        """The clock the engine gave this batch (or this restore): the rules' only clock."""
        now = self.now_ms
        require(now is not None, "the engine gave the stage its clock (begin or start_restore)")
        assert now is not None
        return now

    def _clock_s(self) -> float:
        return self.clock_ms() / 1000

    def begin(self, now_ms: float) -> None:
        """A cycle of the current batch (a new one if none is open), at `now_ms`."""
        require(self.batch is not BatchState.PREPARED, "no input after changelog() until commit or abort")
        self.batch = BatchState.OPEN
        self.now_ms = now_ms

    def start_restore(self, now_ms: float) -> None:
        """Changelog records follow (`restore`), read at `now_ms`."""
        require(self.batch is BatchState.IDLE, "a restore starts with no batch open")
        self.now_ms = now_ms

    @abstractmethod
    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[Any, int | None]:
        """(item, event time); an item of type `Malformed` goes to dead-letters, and
        event time None means "as soon as possible" in the merge."""

    @abstractmethod
    def handle(self, topic: str, item: Any, out: Output, appended: int = 0) -> None:
        """`appended`: when the broker wrote the record (LogAppendTime), or 0 if unknown."""

    @abstractmethod
    def read_model(self, key: str, value: Any, full: bool = False) -> ReadModelUpdate:
        """What the read model shows of `value`: the leaderboard entries it touched in
        this batch, or all of its entries when `full` (a refill)."""

    def watch(self, ends: dict[tuple[str, int], int]) -> None:
        """Every cycle before `tick`, for a stage with `watched_inputs`: their end offsets
        by (topic, partition), asked after this cycle's fetch; empty if unknown."""

    def wanted_time(self) -> int | None:
        """A broker time (ms) at which the stage wants the offsets of its watched
        inputs (`watch_time`), asked in the next cycle; None: none wanted."""
        return None

    def watch_time(self, at: int, offsets: dict[tuple[str, int], int]) -> None:
        """Per watched (topic, partition), the first offset written at broker time `at`
        or later (its end offset if none is)."""

    def tick(self, out: Output, now_ms: float) -> None:
        """Called every cycle, input or not: for work that waits on time."""

    def end_batch(self, out: Output, idle: bool, now_ms: float, applied: dict[str, int] | None = None) -> None:
        """Write what the stage combined over the batch; `idle`: every input is caught
        up; `applied`: per input, the offset below which every record is applied."""

    def _tables(self) -> list[tuple[str, Store[Any]]]:
        return [("", self.table), *self.side.items()]

    def changelog(self) -> list[tuple[str, bytes | None]]:
        """This batch's state changes as changelog records (None: tombstone)."""
        require(self.batch is BatchState.OPEN, "changelog() once per batch, after begin()")
        self.batch = BatchState.PREPARED
        records: list[tuple[str, bytes | None]] = [
            (prefix + k, raw) for prefix, t in self._tables() for k, raw in t.encoded_changes()
        ]
        records.extend((k, None if v is None else dumps(v)) for k, v in self.dedupe.changelog())
        return records

    def commit(self) -> list[ReadModelUpdate]:
        """The batch's transaction committed: publish its state; return what changed."""
        require(self.batch is BatchState.PREPARED, "commit() writes what changelog() decided")
        self.batch = BatchState.IDLE
        updates = [self.read_model(k, v) for k, v in self.table.changes()]
        for _, t in self._tables():
            t.commit()
        self.dedupe.commit()
        return updates

    def abort(self) -> None:
        self.batch = BatchState.IDLE
        for _, t in self._tables():
            t.abort()
        self.dedupe.abort()

    def restore(self, key: str, raw: bytes | None) -> None:
        """One changelog record, as written by `changelog()`; raises (ValueError, an
        invariant) on one that `changelog()` could not have written, which then has no
        effect (the engine dead-letters it)."""
        require(self.batch is BatchState.IDLE, "restore with no batch open")
        if key.startswith(SEGMENT_PREFIX):
            self.dedupe.restore(key, raw)
            return
        for prefix, t in self.side.items():
            if key.startswith(prefix):
                t.restore(key[len(prefix):], raw)
                return
        if key.startswith("#") or not key:
            raise ValueError(f"changelog key {key[:40]!r} names no table")
        self.table.restore(key, raw)

    def limit_cache(self, max_bytes: int) -> None:
        """At most `max_bytes` (estimated) of decoded values cached over this stage's
        tables: the main table gets what the small side tables do not need."""
        sides = list(self.side.values())
        side_share = max_bytes // (4 * len(sides)) if sides else 0
        for t in sides:
            t.limit_cache(side_share)
        self.table.limit_cache(max_bytes - side_share * len(sides))

    def end_restore(self) -> None:
        """Every changelog record is in: finish writing the restored state."""
        for _, t in self._tables():
            t.end_restore()

    def snapshot(self) -> Iterator[ReadModelUpdate]:
        """Every committed value, to refill an emptied read model."""
        for k, v in self.table.items():
            yield self.read_model(k, v, full=True)

    def sizes(self) -> dict[str, int]:
        return {self.table_name: len(self.table), self.index_name: len(self.dedupe)}

    def close(self) -> None:
        """Release the state's storage (the partition moved away or is rebuilt)."""
        self.kv.close()
