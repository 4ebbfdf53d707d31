"""The worker's processing loop: one consumer group, one task per assigned partition.

Faust's per-message stream machinery tops out near 1,500 events/s with a table write
per event (../shared/FAUST_NOTES.md), and its exactly-once mode has open duplicate and
fencing bugs; this loop reads with aiokafka in batches and commits each partition's
batch in a Kafka transaction (see task.py). The range assignor gives one worker
partition p of every input topic, so a task holds all inputs of the keys it owns.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from pipeline import metrics
from pipeline.engine.broadcast import Broadcast, BroadcastSink
from pipeline.engine.fetch import fetch
from pipeline.engine.signing import UNSIGNED_ERROR
from pipeline.engine.stage import ReadModelUpdate, Stage
from pipeline.engine.task import MAX_BUFFERED, PartitionTask, PoisonRecord, Quarantine, TransactionFailed
from pipeline.settings import Settings

log = logging.getLogger(__name__)

StageFactory = Callable[[int], list[Stage]]  # partition -> its stages
ReadModelSink = Callable[[list[ReadModelUpdate]], Awaitable[None]]

POLL_TIMEOUT_MS = 50
RESTORE_POLL_MS = 200
# Committed read-model updates waiting for Redis at most (the sink is slower than the
# ledger for a while, e.g. Redis restarting): beyond this, a cycle waits for the sink.
MAX_UNSUNK = 100_000
RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
SNAPSHOT_CHUNK = 2_000
END_OFFSETS_TIMEOUT_S = 5.0  # then the cycle goes on with every empty input lagging
# Records fetched per cycle at least, whatever PIPELINE_MAX_BATCH (which bounds what a
# task applies per cycle): with small batches, a fetch of as few records across every
# input partition starves some, and a merge waits on its starved inputs (memory stays
# bounded by MAX_BUFFERED per input).
MIN_FETCH_RECORDS = 2_000
UNDECODABLE_RETRY_S = 30.0
MIN_SHARE = 250  # records per stage a task may apply in a cycle, at least (Engine._share)
BROADCAST_WAIT_S = 1.0  # then the cycle's input waits for the next cycle (broadcast.py)


class Engine:
    def __init__(self, settings: Settings, stages: StageFactory, sink: ReadModelSink,
                 on_committed: Callable[[list[Any]], None] | None = None,
                 broadcasts: dict[str, BroadcastSink] | None = None) -> None:
        self.settings = settings
        # Topics every worker reads whole, into the stages' shared state (broadcast.py).
        self.broadcast = Broadcast(settings, broadcasts) if broadcasts else None
        self.on_committed = on_committed  # each committed batch's Output.effects (PartitionTask)
        self.make_stages = stages
        self.sink = sink  # committed state changes, written in the background (_sink_soon)
        self.tasks: dict[int, PartitionTask] = {}
        self.lock = asyncio.Lock()
        probe = stages(0)
        self.input_topics = sorted({t for s in probe for t in s.inputs})
        self.changelog_topics = [s.changelog_topic for s in probe]
        self.watched_topics = sorted({t for s in probe for t in s.watched_inputs})
        # Every partition of each watched topic, as the stages' cuts need them.
        self.watched_tps = {t: [TopicPartition(settings.topic(t), p) for p in range(settings.partitions)]
                            for t in self.watched_topics}
        for stage in probe:
            stage.close()
        self.consumer: AIOKafkaConsumer | None = None
        self._stopping = False
        self._failures: dict[int, int] = {}  # partition -> transactions failed in a row
        self._due: dict[int, float] = {}  # partition -> when to (re)build it (monotonic)
        self._unbuilt: set[int] = set()  # assigned, not yet built once: not ready until built
        self._quarantines: dict[int, Quarantine] = {}  # partition -> records to dead-letter (task.py)
        self._undecodable: dict[TopicPartition, float] = {}  # paused until (monotonic): see fetch.py
        self._seek_epoch = 0
        self.fatal: BaseException | None = None  # raised by the loop: see _Listener
        self.ready = asyncio.Event()
        # Last time the loop finished a cycle or a restore read a batch (liveness).
        self.progress_at = time.monotonic()
        self.processed_total = 0
        self._unsunk: list[ReadModelUpdate] = []  # committed, for Redis (_sink_soon)
        self._sinking: asyncio.Future[None] | None = None
        # Partitions taken on whose whole state must be written to the read model (a
        # crashed owner may have committed without writing Redis): done in the
        # background by the worker (app.py), not while taking the partition on.
        self.needs_refill: set[int] = set()

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            **s.kafka_options(),
            group_id=s.group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            # A fetch response stays in memory while any of its partitions' records is
            # unread (a paused input pins it): small responses keep a lagging worker's
            # memory small; a batch needs a few hundred KB.
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=50,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=300_000,
            # A rebalance waits for the current cycle (or restore) to end: give it time.
            rebalance_timeout_ms=300_000,
            # A topic missing from the metadata when the worker subscribes (a broker that
            # just created it) is looked for again only at the next refresh: at aiokafka's
            # default of 5 minutes, a soak's workers on a fresh broker consumed nothing
            # for 5 minutes. One small request per 30 s bounds that wait.
            metadata_max_age_ms=30_000,
        )
        await self.consumer.start()
        if self.broadcast is not None:
            await self.broadcast.start()
        self.consumer.subscribe([s.topic(t) for t in self.input_topics], listener=_Listener(self))

    async def stop(self) -> None:
        self._stopping = True
        async with self.lock:
            if self._sinking is not None:
                await self._sinking
            unsunk, self._unsunk = self._unsunk, []
            await self._write_read_model(unsunk)
            stopping = list(self.tasks.values())
            self.tasks.clear()  # first: nothing reads a task being stopped (snapshot, /metrics)
            for task in stopping:
                await task.stop()
            if self.consumer is not None:
                await self.consumer.stop()
            if self.broadcast is not None:
                await self.broadcast.stop()

    async def run(self) -> None:
        assert self.consumer is not None
        while not self._stopping:
            if self.fatal is not None:
                raise self.fatal
            if self._due:
                async with self.lock:  # before the fetch: a rebuild seeks
                    await self._build_due()
            epoch = self._seek_epoch
            with metrics.CYCLE_SECONDS.labels("fetch").time():
                batch, undecodable = await fetch(self.consumer, POLL_TIMEOUT_MS,
                                                 max(self.settings.max_batch, MIN_FETCH_RECORDS))
            async with self.lock:
                self._stop_undecodable(undecodable)
                if epoch != self._seek_epoch:
                    # A seek (assignment, rewind) came between the fetch and now: the
                    # batch may predate it. Drop it and resume exactly where each
                    # input's buffered data ends; nothing is skipped or read twice.
                    self._seek_all()
                    batch = {}
                await self._cycle(batch)
                self.progress_at = time.monotonic()

    def _stop_undecodable(self, undecodable: dict[TopicPartition, BaseException]) -> None:
        """A partition whose fetched data cannot be decoded (corrupt, or a codec this
        worker lacks) waits, paused where it stopped, while the others go on; it is
        fetched again after UNDECODABLE_RETRY_S (fetch() pauses it again if it still
        fails). Its task's merge holds its other inputs back meanwhile, so that
        partition's order is kept."""
        now = time.monotonic()
        for tp in undecodable:
            metrics.FETCH_ERRORS.labels(tp.topic[len(self.settings.topic_prefix):]).inc()
            self._undecodable[tp] = now + UNDECODABLE_RETRY_S
        for tp, retry_at in list(self._undecodable.items()):
            if retry_at <= now:
                del self._undecodable[tp]  # _flow_control resumes it
        metrics.UNDECODABLE_PARTITIONS.set(len(self._undecodable))

    def _seek(self, task: PartitionTask, offsets: dict[str, int]) -> None:
        assert self.consumer is not None
        for topic, offset in offsets.items():
            self.consumer.seek(task.tp(topic), offset)
            task.fetch_next[topic] = offset
        self._seek_epoch += 1

    def _seek_all(self) -> None:
        for task in self.tasks.values():
            self._seek(task, dict(task.fetch_next))

    # -- one cycle -------------------------------------------------------------
    async def _cycle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        consumer = self.consumer
        assert consumer is not None
        prefix_len = len(self.settings.topic_prefix)
        for tp, records in batch.items():
            task = self.tasks.get(tp.partition)
            if task is not None:  # else revoked meanwhile: the new owner re-reads it
                task.add(tp.topic[prefix_len:], records)
        ends = await self._fresh_ends()
        watch_ends = {(t, p): ends[tp] for t, tps in self.watched_tps.items() for p, tp in enumerate(tps)
                      if tp in ends}
        if len(watch_ends) < len(self.watched_topics) * self.settings.partitions:
            watch_ends = {}  # a cut needs every partition: unknown this cycle
        time_cut = await self._time_cut(watch_ends)
        now_ms = time.time() * 1000
        if self.broadcast is not None and self.tasks:
            with metrics.CYCLE_SECONDS.labels("broadcast").time():
                caught = await self.broadcast.catch_up(ends, now_ms, BROADCAST_WAIT_S)
            if not caught:  # causal order: what was fetched may depend on what is unread
                log.warning("broadcast inputs not read to their ends this cycle: the fetched input waits")
                self._flow_control()
                return
            first = self.tasks.get(0)
            if first is not None:
                first.broadcast_letters(self.broadcast)
        started = time.perf_counter()
        poisoned: list[tuple[PartitionTask, PoisonRecord]] = []
        assigned = consumer.assignment()
        share = self._share()
        for task in self.tasks.values():
            if any(task.tp(t) not in assigned for t in task.input_topics):
                continue  # the group took it away during this cycle's awaits: its listener follows
            positions = {t: await consumer.position(task.tp(t)) for t in task.input_topics}
            self._report_lag(task, positions)

            def caught_up(topic: str, task: PartitionTask = task, positions: dict[str, int] = positions) -> bool:
                end = ends.get(task.tp(topic))
                return end is not None and positions[topic] >= end

            try:
                self.processed_total += task.process(caught_up, now_ms, positions, watch_ends, time_cut, share)
            except PoisonRecord as exc:
                poisoned.append((task, exc))
        for task, poison in poisoned:
            await self._quarantine(task, poison)
        busy = [t for t in self.tasks.values() if t.has_work]
        before = {t.partition: t.committed_offsets for t in busy}
        metrics.CYCLE_SECONDS.labels("process").observe(time.perf_counter() - started)
        with metrics.CYCLE_SECONDS.labels("commit").time():
            results = await asyncio.gather(*(t.commit() for t in busy), return_exceptions=True)
        for task, result in zip(busy, results):
            if isinstance(result, BaseException):
                await self._recover(task, result)
            else:
                self._unsunk.extend(result)
                if task.committed_offsets != before[task.partition]:  # input moved on: healthy
                    self._failures.pop(task.partition, None)
        await self._sink_soon()
        self._flow_control()

    async def _sink_soon(self) -> None:
        """Committed changes go to Redis in the background while the next cycles run:
        the ledger waits on the read model only when MAX_UNSUNK updates are waiting.
        One write at a time; what commits meanwhile waits in `_unsunk` for the next
        (the sink merges updates of a key)."""
        sinking = self._sinking
        if sinking is not None:
            if not sinking.done():
                if len(self._unsunk) < MAX_UNSUNK:
                    return
                with metrics.CYCLE_SECONDS.labels("read_model_wait").time():
                    await asyncio.wait([sinking])
            sinking.result()  # a sink that raised is a bug: stop the worker
        self._sinking = None
        if self._unsunk:
            updates, self._unsunk = self._unsunk, []
            self._sinking = asyncio.ensure_future(self._write_read_model(updates))

    def _share(self) -> int:
        """Each task's part of a cycle: PIPELINE_MAX_BATCH records per stage split over
        the tasks with input buffered (at least MIN_SHARE each), so that a cycle, and
        the time to its commit, stays the same however many partitions lag. Without
        it, four lagging partitions made a cycle four batches long: outcomes came
        in bursts a few seconds apart, with nothing committed in between."""
        waiting = sum(1 for t in self.tasks.values() if any(t.buffered(x) for x in t.input_topics))
        return max(MIN_SHARE, self.settings.max_batch // max(1, waiting))

    async def _fresh_ends(self) -> dict[TopicPartition, int]:
        """Causal order (CONTRACT.md): the end offsets, asked after this cycle's fetch
        returned, of every input with nothing buffered. Only these say an empty input
        is caught up: a fetch response's last stable offset can predate a write that was
        acknowledged before a record of another input was produced and fetched, and
        letting that record pass would apply it first. One ListOffsets round trip per
        cycle (a request per leader). If the broker does not answer, every empty input
        counts as lagging this cycle: the merge waits rather than guess."""
        assert self.consumer is not None
        wanted = {task.tp(t) for task in self.tasks.values() for t in task.input_topics if not task.buffered(t)}
        if self.tasks:  # and the stages' cuts (Stage.watched_inputs), in the same round trip
            wanted.update(tp for tps in self.watched_tps.values() for tp in tps)
            if self.broadcast is not None:
                wanted.update(self.broadcast.tps)
        if not wanted:
            return {}
        try:
            with metrics.CYCLE_SECONDS.labels("end_offsets").time():
                ends: dict[TopicPartition, int] = await asyncio.wait_for(self.consumer.end_offsets(sorted(wanted)),
                                                                         END_OFFSETS_TIMEOUT_S)
            return ends
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("end offsets unknown this cycle (%s): empty inputs count as lagging", exc.__class__.__name__)
            return {}

    async def _time_cut(self, ends: dict[tuple[str, int], int]) -> tuple[int, dict[tuple[str, int], int]] | None:
        """The offsets at the latest broker time a stage wants (Stage.wanted_time): per
        watched partition, the first record written then or later, else its end."""
        wanted = [t for task in self.tasks.values() for s in task.stages if s.watched_inputs
                  for t in [s.wanted_time()] if t is not None]
        if not wanted or not ends:
            return None
        assert self.consumer is not None
        at = max(wanted)
        tps = {tp: (t, p) for t, tps in self.watched_tps.items() for p, tp in enumerate(tps)}
        try:
            with metrics.CYCLE_SECONDS.labels("end_offsets").time():
                found = await asyncio.wait_for(self.consumer.offsets_for_times({tp: at for tp in tps}),
                                               END_OFFSETS_TIMEOUT_S)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("offsets at a broker time unknown this cycle (%s)", exc.__class__.__name__)
            return None
        return at, {key: ends[key] if found.get(tp) is None else found[tp].offset for tp, key in tps.items()}

    async def _write_read_model(self, updates: list[ReadModelUpdate]) -> None:
        if updates:
            with metrics.CYCLE_SECONDS.labels("read_model").time():
                await self.sink(updates)

    def _report_lag(self, task: PartitionTask, positions: dict[str, int]) -> None:
        """Unread committed input per topic-partition: last stable offset - position,
        plus what is fetched but not yet processed (buffered in the merge)."""
        assert self.consumer is not None
        for topic, position in positions.items():
            lso = self.consumer.last_stable_offset(task.tp(topic))
            if lso is not None:
                lag = max(0, lso - position) + task.buffered(topic)
                metrics.CONSUMER_LAG.labels(topic, str(task.partition)).set(lag)

    def _flow_control(self) -> None:
        """Pause inputs whose buffer is full (another input of the merge lags)."""
        consumer = self.consumer
        assert consumer is not None
        paused = consumer.paused()
        for task in self.tasks.values():
            for topic in task.input_topics:
                tp = task.tp(topic)
                full = task.buffered(topic) >= MAX_BUFFERED or tp in self._undecodable
                if full and tp not in paused:
                    consumer.pause(tp)
                elif not full and tp in paused:
                    consumer.resume(tp)

    async def _recover(self, task: PartitionTask, error: BaseException) -> None:
        """A transaction failed: nothing of the batch took effect. The partition is rebuilt
        from Kafka as if newly assigned (new producer, which fences any other; state from
        the changelog; committed offsets), with backoff while the broker is away. Anything
        but a failed transaction is a bug (an invariant assertion, say): stop."""
        if not isinstance(error, TransactionFailed):
            raise error
        self.tasks.pop(task.partition, None)  # first: nothing reads a task being stopped
        await task.stop()
        if error.for_content and error.records:
            task.quarantine.refused(error)  # retried with half the records, down to the culprit
            log.warning("partition %d: %s; retrying with at most %d records", task.partition, error,
                        task.quarantine.batch_limit)
            self._due[task.partition] = time.monotonic() + RETRY_BACKOFF_S[0]
        else:
            self._rebuild_later(task.partition, error)

    async def _quarantine(self, task: PartitionTask, exc: PoisonRecord) -> None:
        """A record could not be applied: the partition is rebuilt from its last commit,
        and the record goes to dead-letters then (nothing of it took effect)."""
        log.error("partition %d: a record cannot be applied, it goes to dead-letters: %s", task.partition, exc)
        task.quarantine.add(exc.topic, exc.offset, f"cannot be applied: {exc.cause.__class__.__name__}: {exc.cause}")
        self.tasks.pop(task.partition, None)
        for stage in task.stages:
            stage.abort()
        await task.stop()
        self._due[task.partition] = time.monotonic()

    def _rebuild_later(self, partition: int, reason: BaseException) -> None:
        """Schedule a partition's rebuild, backing off with its failures in a row (reset
        only once a commit moved its input on)."""
        failures = self._failures[partition] = self._failures.get(partition, 0) + 1
        delay = RETRY_BACKOFF_S[min(failures - 1, len(RETRY_BACKOFF_S) - 1)]
        log.warning("partition %d: %s; rebuilding it in %.1fs (failure %d)", partition, reason, delay, failures)
        self._due[partition] = time.monotonic() + delay

    async def _build_due(self) -> None:
        """Build the partitions newly assigned, and those whose transaction failed once
        their backoff is over."""
        assert self.consumer is not None
        now = time.monotonic()
        due = [p for p, at in self._due.items() if at <= now]
        if not due:
            return
        assigned = {tp.partition for tp in self.consumer.assignment()}
        for p in due:
            del self._due[p]
        self._unbuilt &= assigned  # moved away meanwhile: not ours to wait for
        # One restore for all (one reader over their changelogs); skipped: moved away,
        # or built already.
        tasks = [self._new_task(p) for p in due if p in assigned and p not in self.tasks]
        if tasks:
            try:
                await self._build(tasks)
            except (TimeoutError, KafkaError, OSError) as exc:
                for task in tasks:
                    if self.tasks.get(task.partition) is task:
                        del self.tasks[task.partition]
                    await task.stop()
                    self._rebuild_later(task.partition, exc)
                return
            log.info("partitions %s built", [t.partition for t in tasks])
            self._unbuilt.difference_update(t.partition for t in tasks)
        if not self._unbuilt:
            self.ready.set()

    def _new_task(self, partition: int) -> PartitionTask:
        quarantine = self._quarantines.setdefault(partition, Quarantine(self.settings.max_batch))
        stages = self.make_stages(partition)
        # The worker's cache budget, as if it held every partition (it may come to).
        share = self.settings.state_cache_mb * 1024 * 1024 // (self.settings.partitions * len(stages))
        for stage in stages:
            stage.limit_cache(share)
        return PartitionTask(partition, stages, self.settings, quarantine, self.on_committed)

    async def _build(self, tasks: list[PartitionTask]) -> None:
        """Take partitions on: fence with a new producer, restore state, seek to the
        committed offsets, and mark them for a full read-model refill (a crashed owner
        may have committed without writing Redis)."""
        for task in tasks:
            await task.start_producer()
        await self._restore(tasks)
        for task in tasks:
            await self._seek_committed(task)
            self.tasks[task.partition] = task
            self.needs_refill.add(task.partition)

    # -- assignment --------------------------------------------------------------
    async def on_revoked(self) -> None:
        """Everything processed is committed at the end of each cycle, which holds the
        lock: waiting for it means nothing is half-done when partitions move."""
        async with self.lock:
            for task in self.tasks.values():
                self._seek(task, task.rewind())
            self.ready.clear()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self.lock:
            prefix_len = len(self.settings.topic_prefix)
            by_partition: dict[int, set[str]] = {}
            for tp in assigned:
                by_partition.setdefault(tp.partition, set()).add(tp.topic[prefix_len:])
            for p, topics in by_partition.items():
                if topics != set(self.input_topics):
                    raise RuntimeError(f"partition {p} assigned without all co-partitioned inputs: {sorted(topics)}")
            for p in [p for p in self.tasks if p not in by_partition]:
                task = self.tasks.pop(p)
                await task.stop()
                metrics.forget_partition(p, task.input_topics)
            self._undecodable.clear()
            for task in list(self.tasks.values()):  # kept: back to its last commit
                if not await self._resume(task):
                    del self.tasks[task.partition]  # another worker moved it on: rebuilt below
                    await task.stop()
            new = sorted(p for p in by_partition if p not in self.tasks)
            # New partitions are built by the loop (`_build_due`), not here: aiokafka
            # sends no heartbeat while this listener runs, so a restore longer than the
            # session timeout would get this worker evicted, and the group would rebalance
            # again (and again, each new owner restoring in turn).
            now = time.monotonic()
            self._due = {p: now for p in new}
            self._unbuilt = set(new)
            log.info("assigned partitions %s (kept: %s, to restore: %s)", sorted(by_partition), sorted(self.tasks), new)
            if not new:
                self.ready.set()

    async def _committed(self, task: PartitionTask) -> dict[str, int]:
        """Each input's committed offset in the group (its beginning if none)."""
        consumer = self.consumer
        assert consumer is not None
        tps = [task.tp(t) for t in task.input_topics]
        beginnings = await consumer.beginning_offsets(tps)
        offsets = {}
        for topic, tp in zip(task.input_topics, tps):
            committed = await consumer.committed(tp)
            offsets[topic] = beginnings[tp] if committed is None else committed
        return offsets

    async def _resume(self, task: PartitionTask) -> bool:
        """A partition kept across a rebalance goes back to its own last commit, which
        the group's offsets can trail for a moment: a transaction's offsets become
        readable only once its markers are written, after the commit returned, and
        reading the older ones would apply the last batch again (seen: 50 outcomes
        answered twice, as duplicates). False if the group is ahead of the task: another
        worker owned the partition meanwhile (this one missed a generation), and the
        task's state is stale."""
        group = await self._committed(task)
        if any(group[t] > task.committed_offsets.get(t, 0) for t in task.input_topics):
            log.warning("partition %d: committed elsewhere meanwhile (%s after %s); rebuilding it",
                        task.partition, group, task.committed_offsets)
            return False
        self._seek(task, task.rewind())
        return True

    async def _seek_committed(self, task: PartitionTask) -> None:
        """Position every input at its committed offset (or its beginning), always by an
        explicit seek: aiokafka's lazy reset can land after a fetch and re-deliver. For a
        task just built: its producer's fencing waited for the previous owner's last
        transaction to complete, so the group's offsets include it."""
        task.committed_offsets = await self._committed(task)
        if task.partition == 0 and self.broadcast is not None:
            assert self.consumer is not None
            task.broadcast_marks = {tp: await self.consumer.committed(tp) or 0 for tp in self.broadcast.tps}
        self._seek(task, task.rewind())  # rewind: nothing buffered, nothing uncommitted

    async def _restore(self, tasks: list[PartitionTask]) -> None:
        """Rebuild new partitions' state from their changelogs (committed records only)."""
        if not tasks:
            return
        started = time.monotonic()
        owners: dict[TopicPartition, tuple[PartitionTask, Stage]] = {}
        for task in tasks:
            for stage in task.stages:
                owners[TopicPartition(self.settings.topic(stage.changelog_topic), task.partition)] = task, stage
        restorer = AIOKafkaConsumer(
            **self.settings.kafka_options(),
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await restorer.start()
        try:
            now_ms = time.time() * 1000
            for _, stage in owners.values():
                stage.start_restore(now_ms)
            restorer.assign(list(owners))
            await restorer.seek_to_beginning(*owners)
            ends = await restorer.end_offsets(list(owners))
            remaining = {tp for tp in owners if await restorer.position(tp) < ends[tp]}
            n = 0
            while remaining:
                batch = await restorer.getmany(*remaining, timeout_ms=RESTORE_POLL_MS, max_records=10_000)
                for tp, records in batch.items():
                    task, stage = owners[tp]
                    for record in records:
                        if not task.verified(tp.topic, record):
                            log.error("partition %d: %s offset %d is not signed by this deployment; left out",
                                      task.partition, tp.topic, record.offset)
                            task.dead_letter_record(tp.topic, record.offset, record.key, record.value, UNSIGNED_ERROR,
                                                    "malformed")
                            continue
                        try:
                            stage.restore(record.key.decode(), record.value)
                        except Exception as exc:  # noqa: BLE001 - untrusted, like every record
                            log.error("partition %d: %s offset %d is not a state record: %r; left out",
                                      task.partition, tp.topic, record.offset, exc)
                            task.dead_letter_record(tp.topic, record.offset, record.key, record.value,
                                                    f"not a state record: {exc.__class__.__name__}: {exc}", "poison")
                    n += len(records)
                    self.progress_at = time.monotonic()
                # getmany() returns without suspending while it has records prefetched:
                # let heartbeats, metrics and HTTP run between batches.
                await asyncio.sleep(0)
                remaining = {tp for tp in remaining if await restorer.position(tp) < ends[tp]}
            for _, stage in owners.values():
                stage.end_restore()
            log.info(
                "restored partitions %s from %d changelog records in %.2fs",
                [t.partition for t in tasks], n, time.monotonic() - started,
            )
        finally:
            await restorer.stop()

    def snapshot(self, partition: int) -> Iterator[list[ReadModelUpdate]]:
        """The committed state of a partition as read-model updates, in chunks (nothing
        if not ours): a caller awaits between chunks, so a large state does not stall
        the worker (heartbeats, processing). PartitionMoved if the partition was revoked,
        rebuilt or stopped meanwhile."""
        task = self.tasks.get(partition)
        if task is not None:
            updates = (u for s in task.stages for u in s.snapshot())
            while chunk := list(itertools.islice(updates, SNAPSHOT_CHUNK)):
                yield chunk
                if self.tasks.get(partition) is not task:  # its stores may be closed now
                    raise PartitionMoved(partition)

    def table_sizes(self) -> dict[str, int]:
        return self._summed(lambda stage: stage.sizes())

    def state_memory(self) -> dict[str, int]:
        """RocksDB's RAM by kind, summed over this worker's databases."""
        return self._summed(lambda stage: stage.kv.memory())

    def _summed(self, per_stage: Callable[[Stage], dict[str, int]]) -> dict[str, int]:
        total: dict[str, int] = {}
        for task in self.tasks.values():
            for stage in task.stages:
                for name, n in per_stage(stage).items():
                    total[name] = total.get(name, 0) + n
        return total


class PartitionMoved(Exception):
    """A partition's task went away while its snapshot was being read: its next owner
    (or its rebuild) writes the read model in full."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type information
    """aiokafka logs and swallows a listener's exception; a worker that cannot take its
    partitions must stop instead, so the exception is handed to the processing loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self.engine.on_revoked()
        except Exception as exc:
            self.engine.fatal = exc

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self.engine.on_assigned(assigned)
        except Exception as exc:
            self.engine.fatal = exc
