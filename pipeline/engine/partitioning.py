"""Where a key's records belong: Kafka's default partitioner (the Java client's murmur2),
which aiokafka also uses, so a key's records on every co-partitioned topic meet in one
task. A producer with another partitioner (librdkafka's default is CRC32) would split
a key's state across two tasks; the engine refuses such records (task.py)."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2

# Keys are user and creator ids: a live event's active ones fit, and the pure-Python
# murmur2 runs once per key rather than once per record.
CACHED_KEYS = 1 << 17


@lru_cache(maxsize=CACHED_KEYS)
def partition_for(key: bytes, partitions: int) -> int:
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def misrouted_error(key: bytes, partition: int, partitions: int) -> str:
    right = partition_for(key, partitions)
    return (f"on partition {partition}, but key {key[:64].decode('utf-8', 'replace')!r} belongs on partition {right} "
            f"of {partitions}: produce with Kafka's default partitioner, murmur2 (librdkafka clients: "
            "partitioner=murmur2_random); `python -m pipeline redrive` sends it to the right one")
