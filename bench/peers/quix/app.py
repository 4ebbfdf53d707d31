"""The coin and gift ledger as one Quix Streams 3.28 application (benchmark peer).

    inputs (4 topics) --decode/validate--> dead-letters
        |  re-stamp: re-keyed by their own id -> {app}--*-by-user, Kafka timestamp = event ts
        v
    user stage: concat(recharges, gifts, spend-limits), one state per user_id
        |-- outcomes of recharges, gifts, spend limits --> ledger-outcomes
        +-- credits of accepted gifts --re-keyed by creator_id--> {app}--credits-by-creator --+
    payouts --re-keyed by creator_id--> {app}--payouts-by-creator --> {app}--payouts-to-creator +
                                                                                               v
    creator stage: concat(credits, payouts), one state per creator_id --> ledger-outcomes

See README.md beside this file for why it is shaped so. Configuration comes from the
environment (PEER_*), and the app stops cleanly on SIGTERM (Quix's own handler).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from quixstreams import Application, State, message_context
from quixstreams.models import Deserializer, TopicConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contract as c  # noqa: E402

logger = logging.getLogger("quix-peer")


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"quix peer: {name} must be set")
    return value


BOOTSTRAP = env("PEER_BOOTSTRAP", "127.0.0.1:9092")
IN = env("PEER_INPUT_PREFIX", "")
OUT = env("PEER_OUTPUT_PREFIX", "")
APP_ID = env("PEER_APP_ID", "quix-peer")
PARTITIONS = int(env("PEER_PARTITIONS"))
STATE_DIR = env("PEER_STATE_DIR", "state")
# "event": user events are re-stamped through repartition topics so that concat's
# timestamp alignment follows event time (the default). "append": the input topics are
# concatenated as they are, aligned by their Kafka timestamps (LogAppendTime here).
ORDER = env("PEER_QUIX_ORDER", "event")
REPLICATION = int(env("PEER_REPLICATION_FACTOR", "1"))  # of the topics the app creates
# Diagnostics only (check.py): a file to which each ledger step appends what it applied,
# in order, so differences from the reference can be told apart by cause.
# Open (line-buffered) for the app's whole life, so no context manager.
TRACE = (
    open(os.environ["PEER_QUIX_TRACE"], "a", buffering=1)  # noqa: SIM115
    if os.environ.get("PEER_QUIX_TRACE") else None
)
COMMIT_INTERVAL_S = float(env("PEER_QUIX_COMMIT_INTERVAL_S", "0.2"))
# With concat, Quix feeds its alignment buffer with consume(num_messages=buffer size,
# timeout=poll timeout), which waits out the whole timeout unless the batch fills up:
# the 1 s default stalls the app for a second whenever the buffer runs dry.
POLL_TIMEOUT_S = float(env("PEER_QUIX_POLL_TIMEOUT_S", "0.02"))


class InputDeserializer(Deserializer):
    """Parses and validates a raw input value and never raises (an exception in a
    deserializer would stop the app): a bad value becomes a marker that the first
    dataframe step turns into a dead letter, with the message's partition and offset."""

    def __init__(self, topic: str):
        super().__init__()
        self.topic = topic

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        try:
            event = c.decode_value(self.topic, value)
        except Exception as exc:  # a bug must not stop the app either
            event = c.Malformed(f"undecodable: {exc!r}"[:300])
        if isinstance(event, c.Malformed):
            return {"_malformed": str(event), "_raw": value}
        event["_raw"] = value  # kept (by reference) until the key/partition checks
        return event


class InternalDeserializer(Deserializer):
    """Repartition topics are read as untrusted too: anything but a record this app
    writes there is dead-lettered."""

    def __init__(self, *allowed: str):
        super().__init__()
        self.allowed = allowed

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        try:
            record = c.validate_internal(c.parse_json(value), self.allowed)
        except Exception as exc:
            record = c.Malformed(f"not JSON: {exc!r}"[:300])
        if isinstance(record, c.Malformed):
            return {"_malformed": str(record), "_raw": value}
        return record


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    """The record's timestamp is the event's `ts` (the broker's for a malformed one)."""
    if isinstance(value, dict) and "_malformed" not in value:
        return value["ts"]
    return timestamp


def wire_timestamp(value: Any, key: Any, timestamp: int, headers: Any) -> int:
    # librdkafka reads 0 as "now", and a broker may refuse a timestamp far in the
    # future; such an event is rejected invalid_ts anyway, only its place may differ.
    return min(max(timestamp, 1), c.now_ms() + c.MAX_AHEAD_MS)


def to_dead_letter(value: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    ctx = message_context()
    if value is None:
        return {"_dead": c.dead_letter(ctx.topic, ctx.partition, ctx.offset, "empty value (null)", None)}
    return {"_dead": c.dead_letter(ctx.topic, ctx.partition, ctx.offset, error or value["_malformed"], value["_raw"])}


def is_dead(value: dict[str, Any]) -> bool:
    return "_dead" in value


def is_live(value: dict[str, Any]) -> bool:
    return "_dead" not in value


def check_internal(value: dict[str, Any]) -> dict[str, Any]:
    return to_dead_letter(value) if "_malformed" in value else value


def no_key(value: Any) -> None:
    return None  # the contract fixes no key for dead letters


def dead_value(value: dict[str, Any]) -> dict[str, Any]:
    return value["_dead"]


def build(app: Application):
    outcomes = app.topic(OUT + "ledger-outcomes", key_serializer="str", value_serializer="json")
    dead_letters = app.topic(OUT + "dead-letters", key_serializer="bytes", value_serializer="json")

    def ingest(topic: str):
        """One input topic: decode, check key and partition, dead-letter the rest."""
        source = app.topic(IN + topic, key_deserializer="bytes", value_deserializer=InputDeserializer(topic),
                           timestamp_extractor=event_time)

        def route(value: dict[str, Any] | None, key: bytes | None, timestamp: int, headers: Any) -> dict[str, Any]:
            if value is None or "_malformed" in value:
                return to_dead_letter(value)
            problem = c.check_envelope(topic, value, key, message_context().partition, PARTITIONS)
            if problem:
                return to_dead_letter(value, problem)
            del value["_raw"]
            return value

        sdf = app.dataframe(source).apply(route, metadata=True)
        sdf.filter(is_dead).apply(dead_value).to_topic(dead_letters, key=no_key)  # a branch
        return sdf.filter(is_live)

    def repartition(sdf, name: str, key_field: str, *kinds: str):
        """What `group_by(key_field)` does (produce re-keyed, read back), through a topic
        named here: Quix names a group_by's topic, and the changelog of a store on a
        concat, by nesting the names of every upstream topic, which with this pipeline's
        concats and a benchmark prefix passes Kafka's 249-character limit
        (TopicNameLengthExceeded). String keys: murmur2 of the id, so a user's records
        stay on the partition number they came from. The record's timestamp (its event
        time) becomes the Kafka timestamp, which is what concat's alignment reads."""
        topic = app.topic(f"{APP_ID}--{name}", key_serializer="str", key_deserializer="str",
                          value_serializer="json", value_deserializer=InternalDeserializer(*kinds),
                          config=TopicConfig(num_partitions=PARTITIONS, replication_factor=REPLICATION))
        sdf.set_timestamp(wire_timestamp).to_topic(topic, key=lambda v: v[key_field])
        return app.dataframe(topic)

    recharges, gifts, limits, payouts = (ingest(t) for t in ("recharges", "gifts", "spend-limits", "payouts"))
    # Payouts are keyed by creator_id but their partition is not checked (the contract
    # lets the pipeline re-key them): they are always repartitioned.
    payouts = repartition(payouts, "payouts-by-creator", "creator_id", "payout")
    if ORDER == "event":
        recharges = repartition(recharges, "recharges-by-user", "user_id", "recharge")
        gifts = repartition(gifts, "gifts-by-user", "sender_id", "gift")
        limits = repartition(limits, "limits-by-user", "user_id", "spend_limit")
        # One more hop, as many as the gifts take to become credits: a payout and the
        # credits of the gifts before it then reach the creator stage in the same
        # transaction, where concat orders them by event time (README.md).
        payouts = payouts.apply(check_internal)
        payouts.filter(is_dead).apply(dead_value).to_topic(dead_letters, key=no_key)
        payouts = repartition(payouts.filter(is_live), "payouts-to-creator", "creator_id", "payout")
    elif ORDER != "append":
        sys.exit(f"quix peer: PEER_QUIX_ORDER must be event or append, not {ORDER!r}")

    # --- user stage: one state per user across its three topics ---------------------
    def user_step(value: dict[str, Any], state: State) -> dict[str, Any]:
        if "_malformed" in value:
            return to_dead_letter(value)
        outcome, credit = c.apply_user_event(value, state, c.now_ms())
        if TRACE:
            TRACE.write(f"user {value['type']} {value['event_id']} {outcome['status']}\n")
        return {"outcome": outcome, "credit": credit}

    users = recharges.concat(gifts).concat(limits).apply(user_step, stateful=True)
    users.filter(is_dead).apply(dead_value).to_topic(dead_letters, key=no_key)
    users.filter(lambda v: "outcome" in v).apply(lambda v: v["outcome"]).to_topic(
        outcomes, key=lambda o: o["event_id"])
    credits = repartition(users.filter(lambda v: v.get("credit") is not None).apply(lambda v: v["credit"]),
                          "credits-by-creator", "creator_id", "credit")

    # --- creator stage: credits and payouts of a creator share one state --------------
    def creator_step(value: dict[str, Any], state: State) -> dict[str, Any] | None:
        if "_malformed" in value:
            return to_dead_letter(value)
        outcome = c.apply_creator_event(value, state, c.now_ms())
        if TRACE:
            TRACE.write(f"creator {value['type']} {value['event_id']} {outcome and outcome['status']}\n")
        return None if outcome is None else {"outcome": outcome}

    creators = credits.concat(payouts).apply(creator_step, stateful=True).filter(lambda v: v is not None)
    creators.filter(is_dead).apply(dead_value).to_topic(dead_letters, key=no_key)
    creators.filter(lambda v: "outcome" in v).apply(lambda v: v["outcome"]).to_topic(
        outcomes, key=lambda o: o["event_id"])


def suppress_bad_message(exc: Exception, message: Any, log: logging.Logger) -> bool:
    """A record the consumer cannot even hand over (not a decoding problem: those are
    dead letters) is logged and skipped rather than stopping the app."""
    log.error("skipped a message the consumer could not deliver: %r", exc)
    return True


def main() -> None:
    app = Application(
        broker_address=BOOTSTRAP,
        consumer_group=APP_ID,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=STATE_DIR,
        commit_interval=COMMIT_INTERVAL_S,
        consumer_poll_timeout=POLL_TIMEOUT_S,
        loglevel=os.environ.get("PEER_QUIX_LOGLEVEL", "INFO"),
        on_consumer_error=suppress_bad_message,
        consumer_extra_config={
            # Bigger fetches: a backlog is read in large batches.
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
            "fetch.wait.max.ms": 100,
            # A restarted instance gets its partitions when the dead member's session
            # ends (librdkafka's default: 45 s).
            "session.timeout.ms": 10_000,
        },
        producer_extra_config={
            "linger.ms": 20,
            "batch.size": 1024 * 1024,
            "compression.type": "lz4",
            # Quix gives each producer a random transactional.id, so a killed instance's
            # open transaction is not fenced by its successor but aborted by the broker
            # after this timeout; until then it holds back read_committed readers
            # (librdkafka's default: 60 s).
            "transaction.timeout.ms": 15_000,
        },
    )
    build(app)
    app.run()


if __name__ == "__main__":
    main()
