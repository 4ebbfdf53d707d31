"""Records read as untrusted (CONTRACT.md, Trust), without Kafka: internal creator-ops
records checked against what the pipeline could have written, repeated JSON names,
dead letters bounded whatever the payload, event-time bounds, and the engine's
quarantine that finds the one record a transaction fails on."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from aiokafka import errors

from agents.credit.ops import Forwarded, Mark, batch_op, decode_op, mark_op, payout_op
from agents.credit.rules import CreditBatch
from agents.fraud.loop import Closing
from agents.fraud.sender import Leg
from agents.ingest.decode import Malformed, decode, parse_json
from agents.ingest.records import Gift, Payout, Recharge
from agents.ledger.agent import UserLedger
from agents.ledger.rules import TimeBounds
from agents.outcomes import outcomes_of
from pipeline import economics, topics
from pipeline.engine.partitioning import partition_for
from pipeline.engine.stage import Output
from pipeline.engine.task import (
    MAX_DEAD_LETTER_PAYLOAD,
    SKIPPED,
    WITH_PAYLOAD,
    WITHOUT_PAYLOAD,
    Quarantine,
    TransactionFailed,
    dead_letter,
)
from pipeline.engine.testing import start
from pipeline.invariants import InvariantError, require

ECON = economics.load()
NOW = 1_800_000_000_000
DAY = 86_400_000


def op(value: dict[str, Any] | bytes, key: bytes | None = b"c1", partitions: int = 4) -> Any:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return decode_op(key, raw, ECON, partitions)


# --- creator-ops ---------------------------------------------------------------------


def test_what_the_pipeline_writes_decodes_back() -> None:
    credit = CreditBatch("c1", 1_000, 2, ((NOW, 250), (NOW + 1, 250)), (("u1", NOW - 5, NOW, 250, "g1"),))
    assert op(batch_op(credit)) == credit
    assert op(payout_op(Payout("p1", "c1", 5_000, NOW))) == Payout("p1", "c1", 5_000, NOW)
    assert op(payout_op(Payout("p1", "c1", 5_000, NOW), refused="invalid_ts")) == Forwarded(
        Payout("p1", "c1", 5_000, NOW), refused="invalid_ts")
    assert op(mark_op(3, 10, 20), key=None) == Mark(3, 10, 20)
    leg = Leg("a", "c1", NOW, NOW + 5, 1_000, ("g1", "g2"))
    assert op(leg.to_op(), key=b"a") == leg
    closing = Closing(Leg("x", "a", NOW, NOW, 1_000, ("g3",)), Leg("a", "y", NOW, NOW + 1, 1_000, ("g4",)))
    assert op(closing.to_op(), key=b"x") == closing  # needs y -> x, which meets at x


@pytest.mark.parametrize("into, out, key", [
    (("b", "x"), ("x", "y"), b"b"),  # the path's middle is not the smallest of the three
    (("x", "a"), ("a", "x"), b"x"),  # a pair, not a path between two others
    (("x", "a"), ("b", "y"), b"x"),  # two legs that do not meet
    (("x", "a"), ("a", "y"), b"y"),  # sent to the wrong meeting point
])
def test_a_closing_the_pipeline_could_not_have_written_is_malformed(into: tuple[str, str], out: tuple[str, str],
                                                                    key: bytes) -> None:
    closing = Closing(Leg(*into, NOW, NOW, 1_000, ("g1",)), Leg(*out, NOW, NOW, 1_000, ("g2",)))
    assert isinstance(op(closing.to_op(), key=key), Malformed)


@pytest.mark.parametrize("value, why", [
    ({"op": "c", "creator_id": "c1", "coins": 1, "gifts": 1, "items": [[NOW, 10**12]]}, "item diamonds"),
    ({"op": "c", "creator_id": "c1", "coins": 3, "gifts": 1, "items": [[NOW, 2]]}, "over the creator share"),
    ({"op": "c", "creator_id": "c1", "coins": 10**15, "gifts": 1, "items": [[NOW, 1]]}, "coins must be"),
    ({"op": "c", "creator_id": "c1", "coins": 2, "gifts": 0, "items": [[NOW, 1]]}, "gifts must be"),
    ({"op": "c", "creator_id": "c1", "coins": 4, "gifts": 2, "items": [[NOW, 1], [NOW, 1]]}, "rising ts"),
    ({"op": "c", "creator_id": "c1", "coins": 4, "gifts": 1, "items": [[NOW, 1], [NOW + 1, 1]]}, "at most 1"),
    ({"op": "c", "creator_id": "c1", "coins": 4, "gifts": 1, "items": []}, "one or more"),
    ({"op": "c", "creator_id": "c1", "coins": 4, "gifts": 1, "items": [[NOW, 2]], "n": [["u", 1, NOW, 3, "e"]]},
     "diamonds must be"),
    ({"op": "c", "creator_id": "c1", "coins": 4, "gifts": 1, "items": [[NOW, "2"]]}, "item diamonds"),
    ({"op": "c", "creator_id": "c 1", "coins": 4, "gifts": 1, "items": [[NOW, 2]]}, "creator_id must be an id"),
    ({"op": "p", "event_id": "p", "creator_id": "c1", "diamonds": 0, "ts": NOW}, "diamonds must be"),
    ({"op": "p", "event_id": "p", "creator_id": "c1", "diamonds": 5, "ts": NOW, "r": "because"}, "r must be"),
    ({"op": "x"}, "op must be"),
    ({"op": True}, "op must be"),
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe", "not JSON"),
    (b"", "empty"),
])
def test_a_record_the_pipeline_could_not_have_written_is_malformed(value: Any, why: str) -> None:
    found = op(value)
    assert isinstance(found, Malformed) and why in found.error, found


def test_marks_and_keys_are_checked() -> None:
    assert "source must be" in op(mark_op(4, 0, 0), key=None).error  # 4 partitions: 0..3
    assert "g must be" in op({"op": "m", "source": 1, "g": -1, "p": 0}, key=None).error
    assert "p must be" in op({"op": "m", "source": 1, "g": 0, "p": True}, key=None).error
    assert "key must be" in op(mark_op(1, 0, 0), key=b"c1").error
    assert "key must be" in op(payout_op(Payout("p1", "c2", 5_000, NOW)), key=b"c1").error
    assert "key must be" in op(batch_op(CreditBatch("c1", 2, 1, ((NOW, 1),))), key=None).error


def test_a_credit_at_the_bound_is_accepted() -> None:
    """The largest credit one record can carry: every gift at the platform's daily limit."""
    gifts = 3
    coins = gifts * ECON.platform_daily_coin_limit
    found = op({"op": "c", "creator_id": "c1", "coins": coins, "gifts": gifts,
                "items": [[NOW, ECON.creator_diamonds(coins)]]})
    assert isinstance(found, CreditBatch) and found.diamonds == coins // 2
    assert isinstance(op({"op": "c", "creator_id": "c1", "coins": coins + 1, "gifts": gifts, "items": [[NOW, 1]]}),
                      Malformed)


# --- input decoding ------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b'{"a": 1, "a": 2}',
    b'{"a": 1, "\\u0061": 2}',
    b'{"x": {"b": 1, "b": 1}}',
    b'[{"b": 1, "b": 1}]',
])
def test_a_repeated_name_at_any_depth_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="repeated"):
        parse_json(raw)


@pytest.mark.parametrize("raw", [b'{"a": 1, "b": "\\"a\\": 2"}', b'{"a": "a", "b": 1}', b'{"\\u00e9": 1, "e": 2}'])
def test_a_name_that_also_appears_elsewhere_is_not_a_repeat(raw: bytes) -> None:
    assert parse_json(raw) == json.loads(raw)


def test_the_last_of_a_repeated_field_never_wins() -> None:
    raw = (b'{"event_id": "e", "user_id": "u", "coins": 5, "amount_cents": 5, "currency": "USD", "ts": 1, '
           b'"coins": 1000000}')
    found = decode("recharges", b"u", raw)
    assert isinstance(found, Malformed) and "repeated" in found.error


# --- dead letters --------------------------------------------------------------------


def test_a_dead_letter_carries_at_most_64_kib_of_its_payload() -> None:
    payload = bytes(range(256)) * (7 * 4096)  # 7 MiB
    letter = dead_letter("recharges", 3, 12, "x" * 10_000, payload)
    assert base64.b64decode(letter["payload_b64"]) == payload[:MAX_DEAD_LETTER_PAYLOAD]
    assert letter["payload_bytes"] == len(payload)
    assert letter["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert len(letter["error"]) <= 500 and len(json.dumps(letter)) < 100_000


# --- event time ----------------------------------------------------------------------


def test_time_bounds_are_inclusive_and_sane() -> None:
    bounds = TimeBounds(300_000, 7 * DAY)
    assert bounds.admits(NOW + 300_000, NOW) and not bounds.admits(NOW + 300_001, NOW)
    assert bounds.admits(NOW - 7 * DAY, NOW) and not bounds.admits(NOW - 7 * DAY - 1, NOW)
    with pytest.raises(InvariantError):
        TimeBounds(-1, 7 * DAY)
    with pytest.raises(InvariantError):
        TimeBounds(300_000, 1)


def test_out_of_time_events_change_nothing() -> None:
    users = UserLedger(ECON, 0, 1)
    out = Output()
    start(users, out, NOW)
    users.handle(topics.RECHARGES, Recharge("r", "u1", 1_000, 1, "USD", NOW), out)
    for i, ts in enumerate((0, NOW - 8 * DAY, NOW + DAY, 253_402_300_799_999)):
        users.handle(topics.GIFTS, Gift(f"g{i}", "u1", "c1", "s1", "galaxy", 1, ts), out)
        users.handle(topics.RECHARGES, Recharge(f"r{i}", "u1", 1_000, 1, "USD", ts), out)
        users.handle(topics.PAYOUTS, Payout(f"p{i}", "c1", 5_000, ts), out)
    assert [(o.event_id, o.status, o.reason, o.balance_after) for o in outcomes_of(out.effects)[1:]] == [
        (f"{kind}{i}", "rejected", "invalid_ts", 1_000) for i in range(4) for kind in "gr"]
    refused = [json.loads(m.value) for m in out.messages if m.topic == topics.CREATOR_OPS and b'"p"' in m.value]
    assert [(r["event_id"], r["r"]) for r in refused] == [(f"p{i}", "invalid_ts") for i in range(4)]
    users.end_batch(out, True, NOW)
    state = users.table.get("u1")
    assert state is not None and (state.balance, state.day_spend) == (1_000, {})
    users.changelog()
    users.commit()
    assert list(users.dedupe.ids()) == ["r|u1|r"]  # their ids stay free for an in-time copy


def test_a_stage_never_decides_without_a_clock() -> None:
    users = UserLedger(ECON, 0, 1)
    with pytest.raises(InvariantError, match="clock"):
        users.handle(topics.RECHARGES, Recharge("r", "u1", 1, 1, "USD", NOW), Output())


def test_require_holds_under_python_O() -> None:
    with pytest.raises(InvariantError, match="balance"):
        require(False, "balance >= 0")
    assert issubclass(InvariantError, AssertionError)


# --- partitioning --------------------------------------------------------------------


def test_partition_for_is_the_java_clients_murmur2() -> None:
    from aiokafka.partitioner import murmur2

    for key in (b"", b"a", b"user-1", "ü".encode(), b"x" * 100):
        assert partition_for(key, 7) == (murmur2(key) & 0x7FFFFFFF) % 7
    assert murmur2(b"21") & 0xFFFFFFFF == -973932308 & 0xFFFFFFFF  # Kafka's UtilsTest.testMurmur2


# --- quarantine ----------------------------------------------------------------------


def _failure(records: list[tuple[str, int]], cause: BaseException | None = None) -> TransactionFailed:
    return TransactionFailed(0, cause or errors.MessageSizeTooLargeError(), records)


def test_the_quarantine_halves_the_batch_down_to_the_record_and_then_answers_more_plainly() -> None:
    q = Quarantine(8)
    batch = [("gifts", o) for o in range(100, 108)]
    q.refused(_failure(batch))
    assert q.batch_limit == 4 and not q.records
    q.committed({"gifts": 104})  # the first half went through: still seeking
    q.refused(_failure(batch[4:6]))
    q.refused(_failure(batch[4:5]))
    assert q.records[("gifts", 104)][1] == WITH_PAYLOAD and "MessageSizeTooLarge" in q.records[("gifts", 104)][0]
    q.refused(_failure(batch[4:5]))
    assert q.answer("gifts", 104) == WITHOUT_PAYLOAD
    q.refused(_failure(batch[4:5]))
    q.refused(_failure(batch[4:5]))
    assert q.answer("gifts", 104) == SKIPPED  # never beyond
    q.committed({"gifts": 108})  # past the failed batches: full size again, entry dropped
    assert q.batch_limit == 8 and not q.records


def test_only_content_errors_count_against_the_batch() -> None:
    assert _failure([("gifts", 1)]).for_content
    assert _failure([("gifts", 1)], InvariantError("x")).for_content
    assert not _failure([("gifts", 1)], errors.KafkaConnectionError()).for_content
    assert not _failure([("gifts", 1)], errors.ProducerFenced()).for_content
    assert not _failure([("gifts", 1)], errors.TopicAuthorizationFailedError()).for_content


# --- signed internal records ---------------------------------------------------------


def test_a_tag_binds_topic_partition_key_and_value_and_rotates() -> None:
    from pipeline.engine.signing import HEADER, Signer

    old, new = b"o" * 32, b"n" * 32
    signer = Signer((old,))
    headers = signer.headers("t-ledger-users-changelog", 3, b"u1", b'{"b": 1}')
    assert signer.verified("t-ledger-users-changelog", 3, b"u1", b'{"b": 1}', headers)
    for other in (("t-ledger-creators-changelog", 3, b"u1", b'{"b": 1}'),
                  ("t-ledger-users-changelog", 2, b"u1", b'{"b": 1}'),
                  ("t-ledger-users-changelog", 3, b"u2", b'{"b": 1}'),
                  ("t-ledger-users-changelog", 3, b"u1", b'{"b": 2}'),
                  ("t-ledger-users-changelog", 3, None, b'{"b": 1}'),
                  ("t-ledger-users-changelog", 3, b"u1", None)):
        assert not signer.verified(*other, headers), other
    assert not signer.verified("t-ledger-users-changelog", 3, b"u1", b'{"b": 1}', [])  # unsigned
    assert not signer.verified("t-ledger-users-changelog", 3, b"u1", b'{"b": 1}', headers * 2)  # two tags
    assert not signer.verified("t-ledger-users-changelog", 3, b"u1", b'{"b": 1}', [(HEADER, b"x" * 16)])
    rotating = Signer((new, old))
    assert rotating.verified("t-ledger-users-changelog", 3, b"u1", b'{"b": 1}', headers)  # the old key still reads
    assert not Signer((new,)).verified("t-ledger-users-changelog", 3, b"u1", b'{"b": 1}', headers)
    assert Signer((new,), accept_unsigned=True).verified("t", 0, b"k", b"v", [])  # a transition only
    assert not Signer((new,), accept_unsigned=True).verified("t", 0, b"k", b"v", headers)  # a wrong tag never


def test_internal_key_settings() -> None:
    from pipeline.settings import ConfigError, load

    assert load({"PIPELINE_INTERNAL_KEY": "a" * 32}).internal_keys == ("a" * 32,)
    assert load({"PIPELINE_INTERNAL_KEY": "a" * 32 + "," + "b" * 32}).internal_keys == ("a" * 32, "b" * 32)
    for bad in ({"PIPELINE_INTERNAL_KEY": "short"}, {"PIPELINE_INTERNAL_KEY": ",".join(["a" * 32] * 3)},
                {"PIPELINE_ACCEPT_UNSIGNED": "1"},
                {"PIPELINE_INTERNAL_KEY": "a" * 32, "PIPELINE_ACCEPT_UNSIGNED": "yes"}):
        with pytest.raises(ConfigError) as err:
            load(bad)
        assert "a" * 32 not in str(err.value)
    assert "a" * 32 not in repr(load({"PIPELINE_INTERNAL_KEY": "a" * 32}))
