"""Hostile input, generated: whatever bytes arrive, the decoder returns an event or a
`Malformed` with a short reason, never raises, and never reads more than its limit.
Which of the two is checked against the topic's JSON Schema (an independent statement
of the contract), so a value is refused exactly when the contract refuses it."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.ingest.decode import MAX_REASON_CHARS, MAX_VALUE_BYTES, SPECS, Malformed, decode
from agents.outcomes import outcomes_of
from pipeline.engine.testing import start
from pipeline.schemas import validator

TOPICS = tuple(SPECS)
VALID: dict[str, dict[str, Any]] = {
    "recharges": {"event_id": "e1", "user_id": "u1", "coins": 100, "amount_cents": 99, "currency": "USD", "ts": 1},
    "gifts": {"event_id": "e1", "sender_id": "u1", "creator_id": "c1", "stream_id": "s1", "gift_id": "rose",
              "quantity": 1, "ts": 1},
    "payouts": {"event_id": "e1", "creator_id": "c1", "diamonds": 2_000, "ts": 1},
    "spend-limits": {"event_id": "e1", "user_id": "u1", "daily_coin_limit": None, "ts": 1},
    "promotions": {"promo_id": "e1", "starts_ts": 1, "ends_ts": 2, "bonus_percent": 10, "packages": [100],
                   "max_per_user": 1, "ts": 1},
}
SCHEMAS = {t: validator(t) for t in TOPICS}  # integers are integer literals: 1.0 is not one
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
# What a hostile producer puts in a field: wrong types, edge numbers, huge or odd text.
hostile = st.one_of(
    json_values,
    st.integers(min_value=2**53 - 2, max_value=2**53 + 2), st.integers(min_value=2**63, max_value=2**200),
    st.integers(max_value=-1), st.floats(), st.just(1.0), st.just(-0.0), st.booleans(),
    st.text(min_size=60, max_size=70), st.text(alphabet="\x00\u202e\ud7ff\U0001f600 ", max_size=20),
    st.sampled_from(["", " ", "u 1", "a" * 65, "a" * 100_000, "NaN", "1", "USD "]),
)


def well_keyed(topic: str, value: dict[str, Any]) -> bytes:
    key_field = SPECS[topic][0]
    key = value.get(key_field)
    return key.encode("utf-8", "surrogatepass") if isinstance(key, str) else b"k"


def assert_decoded(topic: str, key: bytes | None, raw: bytes) -> Any:
    started = time.perf_counter()
    result = decode(topic, key, raw)  # never raises
    assert time.perf_counter() - started < 1.0
    if isinstance(result, Malformed):
        assert 0 < len(result.error) <= MAX_REASON_CHARS + 100, result.error
    return result


@FAST
@given(topic=st.sampled_from(TOPICS), key=st.none() | st.binary(max_size=80), raw=st.binary(max_size=2_000))
def test_random_bytes(topic: str, key: bytes | None, raw: bytes) -> None:
    assert_decoded(topic, key, raw)


@FAST
@given(topic=st.sampled_from(TOPICS), data=json_values)
def test_random_json(topic: str, data: Any) -> None:
    result = assert_decoded(topic, b"u1", json.dumps(data).encode())
    assert isinstance(result, Malformed) or SCHEMAS[topic].is_valid(data)


@FAST
@given(topic=st.sampled_from(TOPICS), data=st.data(), replacement=hostile)
def test_one_hostile_field_is_refused_exactly_when_the_contract_refuses_it(
    topic: str, data: Any, replacement: Any
) -> None:
    value = dict(VALID[topic])
    field = data.draw(st.sampled_from([*value, "extra"]))
    value[field] = replacement
    raw = json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    key_field = SPECS[topic][0]
    key = well_keyed(topic, value)
    result = assert_decoded(topic, key, raw)
    finite = not (isinstance(replacement, float) and not math.isfinite(replacement))  # NaN/Infinity are not JSON
    key_ok = isinstance(value[key_field], str) and value[key_field].encode("utf-8", "surrogatepass") == key
    try:
        reread = json.loads(raw)
    except ValueError:
        reread = None
    contract_ok = finite and key_ok and reread is not None and SCHEMAS[topic].is_valid(reread)
    assert isinstance(result, Malformed) != contract_ok, (field, replacement, result)


def test_limits_of_size_depth_and_numbers() -> None:
    value = dict(VALID["payouts"])
    big = json.dumps({**value, "pad": "x" * MAX_VALUE_BYTES}).encode()
    assert "exceeds" in assert_decoded("payouts", b"c1", big).error  # refused unread
    deep = b'{"event_id":"e1","creator_id":"c1","diamonds":2000,"ts":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "not JSON" in assert_decoded("payouts", b"c1", deep).error
    beyond_double = json.dumps(value)[:-1].encode() + b',"x":1e999}'
    assert assert_decoded("payouts", b"c1", beyond_double) == decode("payouts", b"c1", json.dumps(value).encode())
    for text in (b"1e999", b"2.5", b"true", b"NaN", b"Infinity", b"-1", b"1000000000001", b"2000.0"):
        raw = json.dumps(value)[:-1].encode().replace(b'"diamonds": 2000', b'"diamonds": ' + text) + b"}"
        assert isinstance(assert_decoded("payouts", b"c1", raw), Malformed), text
    huge = json.dumps({**value, "diamonds": 10**12}).encode()  # the largest payout, exact
    assert assert_decoded("payouts", b"c1", huge).diamonds == 10**12


# --- abuse through the ledger stages ----------------------------------------------------


def test_a_flood_of_one_event_id_changes_nothing() -> None:
    from agents.ingest.records import Recharge
    from agents.ledger.agent import UserLedger
    from pipeline import economics, topics
    from pipeline.engine.stage import Output

    users = UserLedger(economics.load(), 0, 1)
    statuses: list[str] = []
    written: list[list[str]] = []
    for _ in range(10):  # 10 batches of 1,000 copies
        out = Output()
        start(users, out, 1_795_000_000_000)
        for _ in range(1_000):
            users.handle(topics.RECHARGES, Recharge("same", "u1", 500, 500, "USD", 1_795_000_000_000), out)
        users.end_batch(out, True, 0)
        written.append([k for k, _ in users.changelog() if not k.startswith("#")])
        users.commit()
        statuses += [o.status for o in outcomes_of(out.effects)]
    assert statuses.count("accepted") == 1 and statuses.count("duplicate") == 9_999
    state = users.table.get("u1")
    assert state is not None and (state.balance, state.recharged, state.seq) == (500, 500, 1)
    assert written[0] == ["u1"] and all(w == [] for w in written[1:])  # copies write nothing
    assert list(users.dedupe.ids()) == ["r|u1|same"]


def test_totals_beyond_2_53_stay_exact_in_state_changelog_and_read_model() -> None:
    from agents.credit.agent import CreatorLedger
    from agents.credit.rules import CreditBatch
    from agents.ingest.records import Recharge
    from agents.ledger.agent import UserLedger
    from agents.readmodel.redis_sink import RedisReadModel
    from pipeline import economics, topics
    from pipeline.engine.codec import dumps, loads
    from pipeline.engine.stage import Output

    big = 2**53
    econ = economics.load()
    users, creators = UserLedger(econ, 0, 1), CreatorLedger(econ, sources=1, max_hold_ms=0)
    users.start_restore(1)
    creators.start_restore(1)
    users.restore("u1", dumps({"b": big, "r": big, "s": 0, "l": None, "d": [], "q": 1}))
    creators.restore("c1", dumps({"a": big, "l": big, "p": 0, "d": [], "q": 1}))
    users.end_restore()
    creators.end_restore()
    out = Output()
    start(users, out, 1)
    start(creators, out, 1)
    users.handle(topics.RECHARGES, Recharge("r", "u1", 1, 1, "USD", 1), out)
    creators.handle(topics.CREATOR_OPS, CreditBatch("c1", 6, 1, ((1, 3),)), out)
    assert outcomes_of(out.effects)[0].balance_after == big + 1
    changelog = dict(users.changelog()) | dict(creators.changelog())
    assert loads(changelog["u1"])["b"] == big + 1 and loads(changelog["c1"])["lt"] == big + 3
    updates = users.commit() + creators.commit()
    entries = [RedisReadModel._entry(u) for u in updates]
    assert str(big + 1) in entries[0][1] and str(big + 3) in entries[1][1]  # Redis gets exact strings
    assert users.table.get("u1").balance == big + 1 and creators.table.get("c1").lifetime == big + 3
