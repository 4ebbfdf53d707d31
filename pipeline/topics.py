"""Every topic the pipeline uses, their creation with one partition count, and reading
one to its end (tools: soak, redrive).

Topics are created explicitly (never auto-created by the broker) so that all
co-partitioned inputs, the internal credit topic and the changelogs share one partition
count: the engine relies on partition p of each holding the same keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from pipeline.invariants import require
from pipeline.settings import ConfigError, Settings

log = logging.getLogger(__name__)

# Contract topics.
RECHARGES = "recharges"
GIFTS = "gifts"
PAYOUTS = "payouts"
SPEND_LIMITS = "spend-limits"
# Compacted, keyed by promo_id, read whole by every worker (a broadcast input).
PROMOTIONS = "promotions"
OUTCOMES = "ledger-outcomes"
BADGES = "badges"
DEAD_LETTERS = "dead-letters"
FRAUD_ALERTS = "fraud-alerts"
# The inputs the worker group consumes, partition p of each by one task (PIPELINE_PARTITIONS
# partitions each), and every input.
PARTITIONED_INPUTS = (RECHARGES, GIFTS, PAYOUTS, SPEND_LIMITS)
INPUTS = (*PARTITIONED_INPUTS, PROMOTIONS)
OUTPUTS = (OUTCOMES, DEAD_LETTERS, FRAUD_ALERTS, BADGES)
# Read whole by every worker, whatever their partition count (pipeline/engine/broadcast.py).
BROADCAST = (PROMOTIONS,)

# Internal topics (design of this project, under the same prefix).
# Credits of accepted gifts and validated payouts, repartitioned by creator.
CREATOR_OPS = "ledger-creator-ops"
USERS_CHANGELOG = "ledger-users-changelog"
CREATORS_CHANGELOG = "ledger-creators-changelog"
# What `redrive` has sent back, by fingerprint (pipeline/redrive.py).
REDRIVE_LOG = "ledger-redrive-log"
INTERNAL = (CREATOR_OPS, USERS_CHANGELOG, CREATORS_CHANGELOG, REDRIVE_LOG)
COMPACTED = (USERS_CHANGELOG, CREATORS_CHANGELOG, REDRIVE_LOG, PROMOTIONS)
# A promotion's superseded versions and tombstones are kept this long at least: a
# recharge dated up to the duplicate window (7 days) back must find the version then in
# force, also on a worker that reads the topic anew.
BROADCAST_HISTORY_MS = 8 * 86_400_000

# Largest record the pipeline writes (a changelog record of a busy key); the topic
# setting must allow it.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
CHANGELOG_SEGMENT_BYTES = 32 * 1024 * 1024
FETCH_RECORDS = 50_000  # per fetch of read_to_end


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def specs(settings: Settings, extra: tuple[str, ...] = ()) -> list[TopicSpec]:
    out = []
    for name in INPUTS + OUTPUTS + INTERNAL + extra:
        config = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
        if name in INPUTS:
            # The broker's clock stamps each record when written: among events of equal
            # event time the merge takes the one written first (causal order).
            config["message.timestamp.type"] = "LogAppendTime"
        if name in COMPACTED:
            # Small segments: the cleaner compacts only closed segments, and a restore
            # reads what is not compacted yet (every batch writes each key it changed).
            config.update({"cleanup.policy": "compact", "segment.bytes": str(CHANGELOG_SEGMENT_BYTES),
                           "min.cleanable.dirty.ratio": "0.3"})
        if name in BROADCAST:
            config.update({"min.compaction.lag.ms": str(BROADCAST_HISTORY_MS),
                           "delete.retention.ms": str(BROADCAST_HISTORY_MS)})
        if settings.replication_factor > 1:
            config["min.insync.replicas"] = str(min(2, settings.replication_factor))
        out.append(TopicSpec(settings.topic(name), 1 if name in BROADCAST else settings.partitions, config))
    return out


async def ensure_topics(settings: Settings, timeout_s: float = 30.0, extra: tuple[str, ...] = ()) -> None:
    """Create missing topics (the contract's, the internal ones and `extra`); refuse to
    run on topics with another partition count."""
    admin = AIOKafkaAdminClient(**settings.kafka_options(), request_timeout_ms=10_000)
    # aiokafka logs each failed bootstrap connection itself (to stderr, before logging is
    # set up, in commands): the one line of the ConfigError below says it all.
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        if settings.kafka_security_protocol.endswith("SSL"):
            tls = await tls_failure(settings)
            if tls is not None:
                raise ConfigError(tls) from None
        secured = settings.kafka_security_protocol != "PLAINTEXT"
        raise ConfigError(
            f"cannot reach Kafka at PIPELINE_BOOTSTRAP_SERVERS={settings.bootstrap_servers} "
            f"({exc.__class__.__name__}); "
            + ("check PIPELINE_KAFKA_SECURITY_PROTOCOL, PIPELINE_KAFKA_SASL_MECHANISM, PIPELINE_KAFKA_USERNAME and "
               "PIPELINE_KAFKA_PASSWORD (and PIPELINE_KAFKA_CA_FILE for TLS), and that the broker is up"
               if secured else
               "start it with `python -m pipeline dev up` or point the setting at a running broker")
        ) from None
    finally:
        kafka_log.setLevel(level)
    try:
        wanted = specs(settings, extra)
        existing = await admin.describe_topics([s.name for s in wanted])
        counts = {t["topic"]: len(t["partitions"]) for t in existing if t.get("error_code", 0) == 0}
        missing = [s for s in wanted if s.name not in counts]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, settings.replication_factor, topic_configs=s.config)
                     for s in missing]
                )
            except TopicAlreadyExistsError:
                pass  # created concurrently by another worker
            log.info("created topics: %s", ", ".join(s.name for s in missing))
        broadcast = {settings.topic(t) for t in BROADCAST}  # any count will do
        wrong = {n: c for n, c in counts.items() if c != settings.partitions and n not in broadcast}
        if wrong:
            raise ConfigError(
                f"topics {wrong} do not have PIPELINE_PARTITIONS={settings.partitions} partitions; "
                "set PIPELINE_PARTITIONS to their count or recreate them"
            )
    finally:
        await admin.close()


async def tls_failure(settings: Settings, timeout_s: float = 5.0) -> str | None:
    """Why a TLS handshake with a bootstrap server fails certificate verification (a
    CA that did not sign its certificate, or a certificate for another host name), as
    the one line of a ConfigError; None if none does. aiokafka only logs that reason and
    reports "Unable to bootstrap", so the worker and the commands ask again here."""
    context = settings.kafka_options()["ssl_context"]
    for server in settings.bootstrap_list:
        host, _, port = server.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=context), timeout_s)
        except ssl.SSLCertVerificationError as exc:
            return (f"Kafka at {server} failed TLS verification ({exc.verify_message.rstrip('.')}); "
                    "set PIPELINE_KAFKA_CA_FILE "
                    "to the PEM file of the CA that signed the brokers' certificates, and make "
                    "PIPELINE_BOOTSTRAP_SERVERS name hosts those certificates are for")
        except (TimeoutError, OSError):
            continue  # down, or not TLS: the caller's message says so
        writer.close()
    return None


async def delete_topics(settings: Settings) -> None:
    """Delete every topic under this deployment's prefix (benchmarks clean up after
    themselves); refuses an empty prefix, which would mean every topic."""
    require(bool(settings.topic_prefix), "deleting every topic of a cluster is not a clean-up")
    admin = AIOKafkaAdminClient(**settings.kafka_options(), request_timeout_ms=30_000)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: Any  # decoded JSON


async def read_to_end(settings: Settings, name: str) -> AsyncIterator[Record]:
    """Every committed record of a topic (created with PIPELINE_PARTITIONS partitions)
    below its end offsets when called: bounded, never waits for new records, and holds
    one fetch at a time."""
    consumer = AIOKafkaConsumer(**settings.kafka_options(), isolation_level="read_committed",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(name), p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while reading := [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            consumer.pause(*(tp for tp in tps if tp not in reading))
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=FETCH_RECORDS)).items():
                for r in records:
                    if r.offset < ends[tp]:
                        yield Record(tp.partition, r.offset, r.key, json.loads(r.value))
    finally:
        await consumer.stop()


async def read_values(settings: Settings, name: str) -> list[Any]:
    return [r.value async for r in read_to_end(settings, name)]
