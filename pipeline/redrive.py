"""`python -m pipeline redrive`: send dead letters back to their source topic.

For after a fix that makes them acceptable (a decoder or economics change; a producer
that repairs its own messages sends them anew instead). Each distinct message is sent
back at most once, however often this runs: a message is known by its fingerprint
(source topic, key, payload), and `--apply` writes the fingerprints it sends to the
compacted topic `ledger-redrive-log` in the same Kafka transaction as the messages. So
the copy that comes back to `dead-letters` when a message is still malformed, or a
letter accepted long ago (beyond the ledger's duplicate window), is never sent again.
A dry run (the default) shows what would be sent, grouped by source topic and error.
Bounded: the topics are read up to their ends at the start, one fetch at a time, and at
most `--max` messages are sent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline import settings, topics
from pipeline.settings import Settings

MAX_DEFAULT = 100_000
MAX_LOGGED = 10_000_000  # fingerprints held in memory (16 bytes each)
TX_LETTERS = 10_000  # per transaction, well within the transaction timeout


@dataclass(frozen=True, slots=True)
class Letter:
    source_topic: str
    key: bytes | None
    payload: bytes
    error: str

    @property
    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for part in (self.source_topic.encode(), self.key or b"", self.payload):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.hexdigest()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source-topic", choices=topics.PARTITIONED_INPUTS, help="only dead letters of this input topic")
    p.add_argument("--error", default="", help="only dead letters whose error contains this text")
    p.add_argument("--max", type=int, default=MAX_DEFAULT, help=f"send at most this many (default {MAX_DEFAULT})")
    p.add_argument("--apply", action="store_true", help="send them (default: a dry run that only counts)")


def letter(record: Any, key: bytes | None, inputs: set[str]) -> Letter | None:
    """The dead letter as a message to send back; None if its source is not one of
    `inputs`, this deployment's input topics (a dead letter is data, not an address), it
    is unreadable, or it holds only the start of its payload (over 64 KiB: gone for good,
    its producer must send it anew)."""
    if not isinstance(record, dict) or record.get("source_topic") not in inputs:
        return None
    try:
        payload = base64.b64decode(str(record.get("payload_b64", "")), validate=True)
    except binascii.Error:
        return None
    if record.get("payload_bytes", len(payload)) != len(payload):
        return None
    return Letter(record["source_topic"], key, payload, str(record.get("error", "")))


async def plan(s: Settings, source: str | None, error: str, limit: int) -> tuple[dict[str, Letter], Counter[str]]:
    """The letters to send by fingerprint, and counts of what was read and skipped."""
    sent = set()
    async for r in topics.read_to_end(s, topics.REDRIVE_LOG):
        sent.add(r.key.decode() if r.key else "")
        if len(sent) > MAX_LOGGED:
            raise RuntimeError(f"over {MAX_LOGGED} fingerprints in {topics.REDRIVE_LOG}")
    counts: Counter[str] = Counter()
    chosen: dict[str, Letter] = {}
    # Not promotions: a fixed promotion is published again by its owner, as any version.
    inputs = {s.topic(t) for t in topics.PARTITIONED_INPUTS}
    async for r in topics.read_to_end(s, topics.DEAD_LETTERS):
        counts["read"] += 1
        x = letter(r.value, r.key, inputs)
        if x is None or (source and x.source_topic != s.topic(source)) or error not in x.error:
            continue
        counts["match"] += 1
        fp = x.fingerprint
        if fp in sent or fp in chosen:
            counts["sent before or repeated"] += 1
        elif len(chosen) < limit:
            chosen[fp] = x
        else:
            counts["over --max"] += 1
    return chosen, counts


async def send(s: Settings, letters: dict[str, Letter]) -> None:
    """Messages and their fingerprints in the same transactions: both or neither. One
    transactional id: a second redrive running at once fences this one."""
    producer = AIOKafkaProducer(**s.kafka_options(), acks="all", enable_idempotence=True,
                                transactional_id=s.topic("ledger-redrive"))
    await producer.start()
    try:
        items = list(letters.items())
        for start in range(0, len(items), TX_LETTERS):
            async with producer.transaction():
                for fingerprint, x in items[start:start + TX_LETTERS]:
                    # By key with the Java client's partitioner (murmur2): a letter dead
                    # for being on the wrong partition goes to the right one.
                    await producer.send(x.source_topic, x.payload, key=x.key)
                    await producer.send(s.topic(topics.REDRIVE_LOG), b"1", key=fingerprint.encode())
    finally:
        await producer.stop()


def main(args: argparse.Namespace) -> int:
    if args.max < 1:
        print("error: --max must be at least 1", file=sys.stderr)
        return 2
    s = settings.load()
    asyncio.run(topics.ensure_topics(s))  # the log topic of a deployment created before it existed
    chosen, counts = asyncio.run(plan(s, args.source_topic, args.error, args.max))
    print(f"{counts['read']} dead letters; {counts['match']} match; {len(chosen)} to send"
          + "".join(f"; {n} {why}" for why, n in counts.items() if why not in ("read", "match")))
    for (topic, err), n in Counter((x.source_topic, x.error) for x in chosen.values()).most_common(20):
        print(f"  {n:7d}  {topic}: {err}")
    if not args.apply:
        print("dry run: nothing sent; add --apply to send them to their source topics")
        return 0
    asyncio.run(send(s, chosen))
    print(f"sent {len(chosen)} messages back to their source topics")
    return 0
