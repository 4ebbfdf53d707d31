"""`python -m pipeline redrive`: send dead letters back to their source topic.

For after a fix that makes them acceptable (a decoder or economics change; a producer
that repairs its own messages sends them anew instead). Safe to repeat: the ledger drops an event
id it has decided before (README, "Operations"), and a message still malformed goes
to `dead-letters` again. A dry run (the default) shows what would be sent, grouped by
source topic and error; `--apply` sends. Bounded: the topic is read up to its end at
the start, at most `--max` messages are sent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline import settings, topics
from pipeline.settings import Settings

MAX_DEFAULT = 100_000


@dataclass(frozen=True, slots=True)
class Letter:
    source_topic: str
    key: bytes | None
    payload: bytes
    error: str


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source-topic", choices=topics.INPUTS, help="only dead letters of this input topic")
    p.add_argument("--error", default="", help="only dead letters whose error contains this text")
    p.add_argument("--max", type=int, default=MAX_DEFAULT, help=f"send at most this many (default {MAX_DEFAULT})")
    p.add_argument("--apply", action="store_true", help="send them (default: a dry run that only counts)")


def select(record: dict[str, Any], key: bytes | None, s: Settings, source: str | None, error: str) -> Letter | None:
    """The dead letter to send again if it matches the filters; None otherwise. Only
    to this deployment's own input topics: a dead letter is data, not an address."""
    inputs = {s.topic(t) for t in ([source] if source else topics.INPUTS)}
    if record.get("source_topic") not in inputs or error not in str(record.get("error", "")):
        return None
    try:
        payload = base64.b64decode(str(record.get("payload_b64", "")), validate=True)
    except binascii.Error:
        return None
    return Letter(record["source_topic"], key, payload, str(record["error"]))


async def send(s: Settings, letters: list[Letter]) -> None:
    producer = AIOKafkaProducer(**s.kafka_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for future in [await producer.send(x.source_topic, x.payload, key=x.key) for x in letters]:
            await future
    finally:
        await producer.stop()


def main(args: argparse.Namespace) -> int:
    if args.max < 1:
        print("error: --max must be at least 1", file=sys.stderr)
        return 2
    s = settings.load()
    found = asyncio.run(topics.read_to_end(s, topics.DEAD_LETTERS))
    letters = [x for key, record in found if (x := select(record, key, s, args.source_topic, args.error))]
    chosen = letters[:args.max]
    print(f"{len(found)} dead letters; {len(letters)} match" + (f", the first {len(chosen)} taken" if len(chosen) < len(letters) else ""))
    for (topic, error), n in Counter((x.source_topic, x.error) for x in chosen).most_common(20):
        print(f"  {n:7d}  {topic}: {error}")
    if not args.apply:
        print("dry run: nothing sent; add --apply to send them to their source topics")
        return 0
    asyncio.run(send(s, chosen))
    print(f"sent {len(chosen)} messages back to their source topics")
    return 0
