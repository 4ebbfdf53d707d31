"""One partition's work: its stages, their merges, and its transactional producer.

Exactly-once, the Kafka way: each partition has its own transactional id, so the
worker that takes a partition over fences the previous owner (a zombie can no longer
commit) and aborts its open transaction before restoring state from the changelog.
A batch's outputs, changelog records and input offsets commit in one transaction, so
state, outcomes and progress never disagree, whenever a worker dies.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer, errors
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline import metrics
from pipeline.engine.batches import RecordBatches
from pipeline.engine.broadcast import Broadcast
from pipeline.engine.merge import NO_TIME, EventTimeMerge, Pending
from pipeline.engine.partitioning import misrouted_error, partition_for
from pipeline.engine.signing import UNSIGNED_ERROR, signer_of
from pipeline.engine.stage import Malformed, Output, ReadModelUpdate, Stage
from pipeline.invariants import InvariantError, require
from pipeline.settings import Settings
from pipeline.topics import DEAD_LETTERS, MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

# A dead letter carries at most this much of its payload (plus its length and hash), so
# it always fits in a transaction whatever the record's size (CONTRACT.md).
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024
MAX_DEAD_LETTER_KEY_BYTES = 256
MAX_ERROR_CHARS = 500


def dead_letter(source_topic: str, partition: int, offset: int, error: str, payload: bytes) -> dict[str, object]:
    return {
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "error": error[:MAX_ERROR_CHARS],
        "payload_b64": base64.b64encode(payload[:MAX_DEAD_LETTER_PAYLOAD]).decode(),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }


class TransactionFailed(Exception):
    """A partition's batch could not be committed (broker, fencing, producer state, or
    what the batch holds): nothing of it took effect, and the partition must be rebuilt
    from Kafka. `records`: the batch's input, (topic, offset) in order."""

    def __init__(self, partition: int, cause: BaseException, records: list[tuple[str, int]] | None = None) -> None:
        super().__init__(f"transaction failed: {cause.__class__.__name__}: {cause}")
        self.partition = partition
        self.cause = cause
        self.records = records or []

    @property
    def for_content(self) -> bool:
        """Refused for what the batch holds, not for the broker's state: retrying the
        same batch fails the same way (engine.py then looks for the record)."""
        return isinstance(self.cause, CONTENT_ERRORS)


class PoisonRecord(Exception):
    """Applying one record raised (an invariant its content breaks, or a bug it hits):
    the batch is abandoned, and the record is dead-lettered when the partition is
    rebuilt, so no record stops the worker or holds up the keys after it."""

    def __init__(self, partition: int, topic: str, offset: int, cause: BaseException) -> None:
        super().__init__(f"{topic} offset {offset}: {cause.__class__.__name__}: {cause}")
        self.partition, self.topic, self.offset, self.cause = partition, topic, offset, cause


# The broker (or the client, before sending) refuses a batch for its records.
CONTENT_ERRORS = (
    errors.MessageSizeTooLargeError, errors.RecordTooLargeError, errors.RecordListTooLargeError,
    errors.CorruptRecordException, errors.InvalidTimestampError, errors.UnsupportedForMessageFormatError,
    errors.PolicyViolationError, InvariantError,
)
MAX_QUARANTINED = 10_000
LOG_APPEND_TIME = 1  # a record's timestamp_type when the broker set its timestamp


# How a quarantined record is answered, as its earlier answers keep failing: a dead
# letter with the payload's start, then one without it, then nothing (the record stays
# in its topic; an error line and ledger_poison_records_total say so).
WITH_PAYLOAD, WITHOUT_PAYLOAD, SKIPPED = 0, 1, 2


class Quarantine:
    """One partition's records to dead-letter, and the batch size while one is sought.

    A transaction refused for its content is retried with half the records, down to
    one: that one is the culprit. The limit returns to the full batch once the
    committed offsets pass the failed batch. Bounded: entries are dropped once
    committed past, and at most MAX_QUARANTINED are kept."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.batch_limit = max_batch
        self.records: dict[tuple[str, int], tuple[str, int]] = {}  # -> (error, WITH_PAYLOAD...)
        self._until: dict[str, int] = {}  # the failed batches' end, per topic

    def add(self, topic: str, offset: int, error: str, answer: int = WITH_PAYLOAD) -> None:
        require(len(self.records) < MAX_QUARANTINED, "quarantined records within MAX_QUARANTINED")
        self.records[(topic, offset)] = (error[:MAX_ERROR_CHARS], answer)

    def answer(self, topic: str, offset: int) -> int:
        return self.records.get((topic, offset), ("", WITH_PAYLOAD))[1]

    def refused(self, failure: TransactionFailed) -> None:
        """A transaction failed for what it holds: halve the batch, or, if it held one
        record, quarantine that record (or answer it more plainly if it already was)."""
        if len(failure.records) == 1:
            topic, offset = failure.records[0]
            known = self.records.get((topic, offset))
            if known is None:
                self.add(topic, offset, f"its outputs cannot be committed: {failure.cause.__class__.__name__}: "
                                        f"{str(failure.cause)[:200]}")
            else:
                self.records[(topic, offset)] = (known[0], min(SKIPPED, known[1] + 1))
        self.batch_limit = max(1, len(failure.records) // 2)
        for topic, offset in failure.records:
            self._until[topic] = max(self._until.get(topic, 0), offset + 1)

    def committed(self, offsets: dict[str, int]) -> None:
        if self.records:
            self.records = {k: v for k, v in self.records.items() if k[1] >= offsets.get(k[0], 0)}
        if self._until and all(offsets.get(t, 0) >= o for t, o in self._until.items()):
            self._until.clear()
            self.batch_limit = self.max_batch


# Buffered input records per topic-partition above which fetching it pauses: at least
# a batch (PIPELINE_MAX_BATCH), and with ~0.5 KB per decoded record, 16 input partitions
# of one worker hold at most ~80 MB.
MAX_BUFFERED = 10_000
TRANSACTION_TIMEOUT_MS = 120_000  # above a broker restart (see Engine._recover)


class PartitionTask:
    def __init__(self, partition: int, stages: list[Stage], settings: Settings,
                 quarantine: Quarantine | None = None, on_committed: Callable[[list[Any]], None] | None = None) -> None:
        self.partition = partition
        # Given each committed batch's Output.effects (the domain's metrics).
        self.on_committed = on_committed
        # Records to dead-letter instead of applying, and the batch size while one is
        # sought (engine.py): kept by the engine across this partition's rebuilds.
        self.quarantine = quarantine or Quarantine(settings.max_batch)
        self.processed: list[tuple[str, int]] = []  # (topic, offset) of the batch, in order
        # Changelog records left out of the restore, for dead-letters (dead_letter_record).
        self.restore_letters: list[tuple[str, int, bytes | None, bytes | None, str, str]] = []
        self.stages = stages
        self.settings = settings
        self.merges = [EventTimeMerge(s.inputs, settings.max_idle_ms) for s in stages]
        self.stage_of = {topic: i for i, s in enumerate(stages) for topic in s.inputs}
        # Offset after the last processed record, per input topic (unprefixed).
        self.next_offsets: dict[str, int] = {}
        self.committed_offsets: dict[str, int] = {}
        self.out = Output()
        # Offset after the last record buffered, per input: where fetching resumes.
        self.fetch_next: dict[str, int] = {}
        self.producer: AIOKafkaProducer | None = None
        # Internal topics (full names): their records are signed when written and
        # verified when read, if the deployment has a key (signing.py).
        self.signer = signer_of(settings.internal_keys, settings.accept_unsigned)
        # Partition 0 only: per broadcast partition, the offset below which its malformed
        # records are dead-lettered, as committed (None: not ours), and as this batch
        # moves it (broadcast.py).
        self.broadcast_marks: dict[TopicPartition, int] | None = None
        self._broadcast_next: dict[TopicPartition, int] = {}
        self.internal = frozenset(settings.topic(t) for s in stages for t in (s.changelog_topic, *s.internal_inputs))

    @property
    def transactional_id(self) -> str:
        return f"{self.settings.topic('ledger-tx')}-{self.partition}"

    def tp(self, topic: str) -> TopicPartition:
        return TopicPartition(self.settings.topic(topic), self.partition)

    @property
    def input_topics(self) -> list[str]:
        return list(self.stage_of)

    async def start_producer(self) -> None:
        """Create the producer and fence any previous owner of this partition."""
        self.producer = AIOKafkaProducer(
            **self.settings.kafka_options(),
            transactional_id=self.transactional_id,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            max_batch_size=1_048_576,
            max_request_size=MAX_MESSAGE_BYTES,
            linger_ms=0,  # batches are built whole (batches.py): nothing to wait for
            request_timeout_ms=30_000,
        )
        await self.producer.start()
        await self.producer.begin_transaction()  # InitProducerId: fences the old epoch
        await self.producer.commit_transaction()

    async def stop(self) -> None:
        """Stop producing and release the state (rebuilt from the changelog if the
        partition comes back)."""
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        for stage in self.stages:
            stage.close()

    def add(self, topic: str, records: list[Any]) -> None:
        stage = self.stages[self.stage_of[topic]]
        merge = self.merges[self.stage_of[topic]]
        start = self.fetch_next[topic]
        if records[0].offset < start:  # fetched before a seek: where to resume is `start`
            records = [r for r in records if r.offset >= start]
            if not records:
                return
        self.fetch_next[topic] = records[-1].offset + 1
        keyed, partitions = topic in stage.keyed_inputs, self.settings.partitions
        signed = self.signer is not None and topic in stage.internal_inputs
        for r in records:
            if signed and not self.verified(topic, r):
                item, ts = Malformed(UNSIGNED_ERROR), None
            else:
                item, ts = self._decode(stage, topic, r, keyed, partitions)
            # The raw record is kept only for a dead letter: buffered input is the
            # worker's largest memory when it lags (see MAX_BUFFERED).
            bad = isinstance(item, Malformed)
            merge.add(Pending(NO_TIME if ts is None else ts, topic, r.offset, r.key if bad else None,
                              r.value if bad else None, item, r.timestamp or 0,
                              (r.timestamp or 0) if r.timestamp_type == LOG_APPEND_TIME else 0))

    def verified(self, topic: str, r: Any) -> bool:
        """`topic` unprefixed or full; always true without a key."""
        full = topic if topic in self.internal else self.settings.topic(topic)
        return self.signer is None or self.signer.verified(full, self.partition, r.key, r.value, r.headers)

    def _decode(self, stage: Stage, topic: str, r: Any, keyed: bool, partitions: int) -> tuple[Any, int | None]:
        """A record as the stage's item, or Malformed: quarantined, on the wrong partition
        for its key, or whatever the stage refuses. Never raises: a decoder's bug is
        this record's dead letter, not the worker's end."""
        poison = self.quarantine.records.get((topic, r.offset))
        if poison is not None:
            return Malformed(poison[0], "poison"), None
        if keyed and r.key is not None and partition_for(r.key, partitions) != self.partition:
            return Malformed(misrouted_error(r.key, self.partition, partitions), "misrouted"), None
        try:
            return stage.decode(topic, r.key, r.value)
        except Exception as exc:  # noqa: BLE001 - any record, any content
            log.error("partition %d: %s offset %d cannot be decoded: %r", self.partition, topic, r.offset, exc)
            return Malformed(f"cannot be decoded: {exc.__class__.__name__}: {str(exc)[:200]}", "poison"), None

    def broadcast_letters(self, broadcast: Broadcast) -> None:
        """Dead-letter the broadcast's malformed records read since the last batch."""
        marks = self.broadcast_marks
        if marks is None:
            return
        start = {tp: self._broadcast_next.get(tp, marks.get(tp, 0)) for tp in broadcast.tps}
        for letter in broadcast.letters_between(marks):
            if letter.offset >= start[letter.tp]:
                self.out.dead_letters.append((letter.tp.topic[len(self.settings.topic_prefix):], "malformed"))
                self._send_dead_letter(letter.tp.topic, letter.offset, letter.key, letter.value, letter.error,
                                       with_payload=True, partition=letter.tp.partition)
        self._broadcast_next = {tp: broadcast.position(tp) for tp in broadcast.tps}

    def _broadcast_moved(self) -> dict[TopicPartition, int]:
        marks = self.broadcast_marks or {}
        return {tp: o for tp, o in self._broadcast_next.items() if marks.get(tp) != o}

    def buffered(self, topic: str) -> int:
        return self.merges[self.stage_of[topic]].buffered(topic)

    def process(self, caught_up: Callable[[str], bool | None], now_ms: float, positions: dict[str, int],
                watch_ends: dict[tuple[str, int], int],
                time_cut: tuple[int, dict[tuple[str, int], int]] | None = None, share: int | None = None) -> int:
        """Run the merged records that are ready through their stages; returns how many.
        `positions`: each input's consumer position; `watch_ends`, `time_cut`: the
        offsets the stages watch (Stage.watch, Stage.watch_time); `share`: this task's
        part of the cycle's records (Engine._cycle), at most a batch per stage."""
        # Each stage takes up to its share; while a culprit is sought (Quarantine), the
        # stages share the smaller limit, so a batch can shrink to one record.
        limit = self.quarantine.batch_limit
        seeking = limit < self.quarantine.max_batch
        if share is not None and not seeking:
            limit = max(1, min(limit, share))
        budget = limit
        if self.restore_letters:
            self._send_restore_letters()
        for stage, merge in zip(self.stages, self.merges):
            if stage.watched_inputs:
                stage.watch(watch_ends)
                if time_cut is not None:
                    stage.watch_time(*time_cut)
            stage.begin(now_ms)
            stage.tick(self.out, now_ms)
            for p in itertools.islice(merge.drain(caught_up, now_ms), budget):
                self.processed.append((p.topic, p.offset))
                if isinstance(p.item, Malformed):
                    self._dead_letter(p)
                else:
                    try:
                        stage.handle(p.topic, p.item, self.out, p.appended)
                    except Exception as exc:  # noqa: BLE001 - an invariant broken by this record
                        raise PoisonRecord(self.partition, p.topic, p.offset, exc) from exc
                self.next_offsets[p.topic] = p.offset + 1
            budget = limit - len(self.processed) if seeking else limit
            idle = all(not merge.buffered(t) and caught_up(t) is True for t in stage.inputs)
            stage.end_batch(self.out, idle, now_ms, {t: self._applied(t, merge, positions) for t in stage.inputs})
        return len(self.processed)

    def _applied(self, topic: str, merge: EventTimeMerge, positions: dict[str, int]) -> int:
        """The offset below which every record of `topic` is applied: the consumer's
        position once nothing is buffered (past control records too), else the next
        record to apply."""
        if not merge.buffered(topic):
            return max(positions[topic], self.next_offsets.get(topic, 0))
        return self.next_offsets.get(topic, self.committed_offsets.get(topic, 0))

    def _dead_letter(self, p: Pending) -> None:
        assert isinstance(p.item, Malformed)
        self.out.dead_letters.append((p.topic, p.item.kind))
        answer = self.quarantine.answer(p.topic, p.offset)
        if answer == SKIPPED:
            log.error("partition %d: %s offset %d: not even a dead letter without its payload could be committed; "
                      "it is skipped (it stays in its topic)", self.partition, p.topic, p.offset)
            return
        self._send_dead_letter(self.settings.topic(p.topic), p.offset, p.key, p.value, p.item.error,
                               with_payload=answer == WITH_PAYLOAD)

    def dead_letter_record(self, source_topic: str, offset: int, key: bytes | None, value: bytes | None, error: str,
                           kind: str) -> None:
        """A record of another topic than the inputs (a changelog read while restoring),
        dead-lettered with this partition's first batch (kept apart until then: taking
        the partition on rewinds its output)."""
        self.restore_letters.append((source_topic, offset, key, value, error, kind))

    def _send_restore_letters(self) -> None:
        for source_topic, offset, key, value, error, kind in self.restore_letters:
            self.out.dead_letters.append((source_topic[len(self.settings.topic_prefix):], kind))
            self._send_dead_letter(source_topic, offset, key, value, error, with_payload=True)
        self.restore_letters = []

    def _send_dead_letter(self, source_topic: str, offset: int, key: bytes | None, value: bytes | None, error: str,
                          with_payload: bool, partition: int | None = None) -> None:
        letter = dead_letter(source_topic, self.partition if partition is None else partition, offset, error,
                             value or b"")
        if not with_payload:
            letter.update(payload_b64="", error=f"{error} (payload left out: a dead letter with it could not be "
                                                "committed)"[:MAX_ERROR_CHARS])
        text_key = None
        if key is not None and with_payload:
            text_key = key[:MAX_DEAD_LETTER_KEY_BYTES].decode("utf-8", "replace")
        self.out.send(DEAD_LETTERS, text_key, letter)

    @property
    def has_work(self) -> bool:
        return bool(self.out.messages) or self.next_offsets != self.committed_offsets or bool(self._broadcast_moved())

    async def commit(self) -> list[ReadModelUpdate]:
        """Commit the batch: outputs, changelogs and offsets in one transaction."""
        assert self.producer is not None
        started = time.perf_counter()
        producer, prefix = self.producer, self.settings.topic_prefix
        out, self.out = self.out, Output()
        try:
            async with producer.transaction():
                batches = RecordBatches(producer, self.signer, self.internal)
                for m in out.messages:
                    await batches.add(prefix + m.topic, m.key, m.value, m.partition)
                for stage in self.stages:
                    topic = prefix + stage.changelog_topic
                    for key, value in stage.changelog():
                        await batches.add(topic, key.encode(), value, self.partition)
                await batches.flush()
                offsets = {
                    self.tp(t): OffsetAndMetadata(o, "")
                    for t, o in self.next_offsets.items()
                    if self.committed_offsets.get(t) != o
                }
                broadcast = self._broadcast_moved()
                offsets.update((tp, OffsetAndMetadata(o, "")) for tp, o in broadcast.items())
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, self.settings.group_id)
        except Exception as exc:
            metrics.TRANSACTIONS.labels("aborted").inc()
            for stage in self.stages:
                stage.abort()
            self._broadcast_next = {}
            raise TransactionFailed(self.partition, exc, list(self.processed)) from exc
        metrics.TRANSACTIONS.labels("committed").inc()
        self.committed_offsets = dict(self.next_offsets)
        if self.broadcast_marks is not None:
            self.broadcast_marks.update(broadcast)
        self.processed = []
        self.quarantine.committed(self.committed_offsets)
        updates = [u for stage in self.stages for u in stage.commit()]
        if self.on_committed is not None:
            self.on_committed(out.effects)
        metrics.count_dead_letters(out.dead_letters)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return updates

    def rewind(self) -> dict[str, int]:
        """Forget buffered and uncommitted input; returns where to seek (the last commit)."""
        for merge in self.merges:
            merge.clear()
        self.out = Output()
        self.processed = []
        self._broadcast_next = {}
        self.next_offsets = dict(self.committed_offsets)
        self.fetch_next = dict(self.committed_offsets)
        return dict(self.committed_offsets)
