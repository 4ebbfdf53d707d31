"""A fetch that stops only the partition whose data cannot be decoded.

What aiokafka 0.14 does (consumer/fetcher.py): a fetched batch is decoded lazily, when
getmany() drains it (PartitionRecords._unpack_records: CRC check, then decompression
in the batch's iterator). A batch that cannot be decoded raises out of getmany() for
the whole call:
  - CRC mismatch: aiokafka.errors.CorruptRecordException("Invalid CRC - <tp>"), the
    partition only in the message;
  - a codec whose library is missing: UnsupportedCodecError("Libraries for snappy
    compression codec not found"), no partition;
  - corrupt compressed data: whatever the codec raises, no partition: zlib.error (gzip),
    cramjam.DecompressionError (snappy, lz4, zstd), EOFError or gzip.BadGzipFile.
Partitions drained earlier in the same call had their positions advanced and their
records dropped with the exception; records of the broken partition before the bad
batch are dropped too (the next call finds its dead iterator, returns nothing and
moves its position to the bad batch). Partitions not yet drained keep their buffered
fetch. The broken partition is fetched again and raises again on every later call.

fetch() below undoes that: it notes every partition's position first; on a decode
error it seeks every partition back there (which drops aiokafka's buffered results,
refetched in the background), then drains each partition in its own getmany() call,
concurrently, so an error belongs to exactly one partition: that one is seeked back,
paused and returned in `errors`; the others' records are returned as usual.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import struct
import zlib
from typing import Any

from aiokafka.errors import CorruptRecordException, RecordTooLargeError, UnsupportedCodecError
from aiokafka.structs import TopicPartition
from cramjam import DecompressionError  # aiokafka's codecs for snappy, lz4 and zstd (a runtime dependency)

log = logging.getLogger(__name__)

# Errors that a partition's fetched data raises while it is decoded: they stop that
# partition only. Anything else from getmany() (a stopped consumer, a group or
# authorization error) is the consumer's and is raised as before.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    CorruptRecordException, UnsupportedCodecError, RecordTooLargeError,
    zlib.error, DecompressionError, gzip.BadGzipFile, EOFError, struct.error,
)

Records = dict[TopicPartition, list[Any]]


async def fetch(consumer: Any, timeout_ms: int, max_records: int,
                probe_ms: int | None = None) -> tuple[Records, dict[TopicPartition, BaseException]]:
    """getmany(timeout_ms, max_records), except that a partition whose data cannot be
    decoded is paused and returned in the second dict with its error, positioned where
    this call found it (nothing of it is skipped), while the others' records are
    returned. Paused partitions are not fetched, as with getmany().

    A caller that seeks while this runs (a rebalance) must re-seek afterwards, as the
    engine does on a seek-epoch change: the seek-back here uses the positions of the
    call's start."""
    partitions = [tp for tp in consumer.assignment() if tp not in consumer.paused()]
    before = {tp: await consumer.position(tp) for tp in partitions}
    try:
        return await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records), {}
    except DECODE_ERRORS as exc:
        first: BaseException = exc
    assigned = consumer.assignment()
    partitions = [tp for tp in partitions if tp in assigned]
    for tp in partitions:  # undo what the failed call drained and dropped
        consumer.seek(tp, before[tp])
    # One call per partition, concurrently: an error is that partition's own.
    share = max(1, max_records // max(1, len(partitions)))
    results = await asyncio.gather(
        *(consumer.getmany(tp, timeout_ms=timeout_ms if probe_ms is None else probe_ms, max_records=share)
          for tp in partitions),
        return_exceptions=True,
    )
    records: Records = {}
    errors: dict[TopicPartition, BaseException] = {}
    for tp, result in zip(partitions, results):
        if isinstance(result, DECODE_ERRORS):
            consumer.seek(tp, before[tp])  # drop aiokafka's dead iterator: resume() reads it again
            consumer.pause(tp)
            errors[tp] = result
            log.error("%s-%d: undecodable fetch at offset %d, partition paused: %r",
                      tp.topic, tp.partition, before[tp], result)
        elif isinstance(result, BaseException):
            raise result
        else:
            for got_tp, got in result.items():
                records.setdefault(got_tp, []).extend(got)
    if not errors:  # not fetched again in time: the next call raises again, and probes again
        log.warning("undecodable fetch (%r) not found again in any single partition; retrying", first)
    return records, errors
