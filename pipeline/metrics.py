"""Prometheus metrics of the engine and the worker (docs/reference.md, "Metrics"); the
ledger's own (outcomes, coins, diamonds, alerts) are in agents/metrics.py.

Labels are low-cardinality only (type, status, reason, topic, table): never user or
creator ids.
"""

from __future__ import annotations

import collections

from prometheus_client import Counter, Gauge, Histogram

DEAD_LETTERS = Counter("ledger_dead_letters_total", "Records of any topic sent to dead-letters.", ["topic"])
MISROUTED = Counter(
    "ledger_misrouted_records_total", "Records on another partition than their key's (a producer without Kafka's "
    "default murmur2 partitioner), dead-lettered.", ["topic"],
)
POISON = Counter(
    "ledger_poison_records_total", "Records that could not be applied or committed (a broken invariant, a refused "
    "output, a decoder failure), dead-lettered after the partition was rebuilt without them.", ["topic"],
)
FETCH_ERRORS = Counter(
    "ledger_fetch_errors_total", "Fetched data that could not be decoded (corrupt or unsupported batches), by "
    "topic; the partition waits while the others go on.", ["topic"],
)
UNDECODABLE_PARTITIONS = Gauge(
    "ledger_undecodable_partitions", "Input partitions paused because their fetched data cannot be decoded.")
TRANSACTIONS = Counter("ledger_transactions_total", "Kafka transactions, by result.", ["result"])
BATCH_SECONDS = Histogram(
    "ledger_batch_duration_seconds", "Time to process and commit one partition's batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CYCLE_SECONDS = Histogram(
    "ledger_cycle_phase_seconds", "Time of each phase of the engine's cycle: fetch (waiting for input), process "
    "(rules, all partitions), commit (the partitions' transactions, in parallel), read_model (Redis, in the "
    "background), read_model_wait (a cycle waiting for it: MAX_UNSUNK), end_offsets (the ListOffsets round trip "
    "of causal order).",
    ["phase"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
TABLE_ENTRIES = Gauge("ledger_table_entries", "Entries in the worker's state tables.", ["table"])
STATE_MEMORY = Gauge(
    "ledger_state_memory_bytes",
    "RAM held by the RocksDB state stores, by kind (memtables, table_readers, block_cache).",
    ["kind"],
)
ASSIGNED_PARTITIONS = Gauge("ledger_assigned_partitions", "Partitions this worker processes.")
CONSUMER_LAG = Gauge("ledger_consumer_lag_messages", "Messages behind the end of each input partition.",
                     ["topic", "partition"])
READ_MODEL_ERRORS = Counter("ledger_redis_errors_total", "Failed Redis writes (retried).")
READ_MODEL_SECONDS = Histogram(
    "ledger_redis_write_duration_seconds", "Time of one Redis read-model write.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)


def count_dead_letters(letters: list[tuple[str, str]]) -> None:
    for (topic, kind), n in collections.Counter(letters).items():
        DEAD_LETTERS.labels(topic).inc(n)
        if kind == "misrouted":
            MISROUTED.labels(topic).inc(n)
        elif kind == "poison":
            POISON.labels(topic).inc(n)


def forget_partition(partition: int, topics: list[str]) -> None:
    """A partition moved to another worker: stop reporting its lag here."""
    for topic in topics:
        try:
            CONSUMER_LAG.remove(topic, str(partition))
        except KeyError:
            pass
