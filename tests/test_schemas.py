"""The JSON Schemas in `schemas/` and the worker's validator (`decode`) must agree.

Users read the schemas; the worker runs decode.py. For every sample value whose key equals
its id field, decode returns Malformed exactly when the schema (applied by
`pipeline.schemas.validator`, on `json.loads` output so 5.0 stays a float) rejects it. The
field table below is written from CONTRACT.md, not from decode.py, so the test checks both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agents.ingest.decode import Malformed, decode
from pipeline.schemas import SCHEMA_DIR, load_schema, topics, validator

INPUTS = ("recharges", "gifts", "payouts", "spend-limits", "promotions")
OUTPUTS = ("ledger-outcomes", "dead-letters", "fraud-alerts", "badges")
MAX_TS = 253_402_300_799_999
BIG = 2**64 + 1  # orjson reads integers past 64 bits as floats; the contract has no such limit


@dataclass(frozen=True)
class Raw:
    """JSON text put into a value as is (5.0, 1e0, NaN: things json.dumps would not write)."""

    text: str


# CONTRACT.md input topics: key field, then (field, kind, low, high) in the contract's order.
CONTRACT: dict[str, tuple[str, list[tuple[str, str, int, int | None]]]] = {
    "recharges": ("user_id", [
        ("event_id", "id", 0, 0), ("user_id", "id", 0, 0), ("coins", "int", 1, 1_000_000),
        ("amount_cents", "int", 0, None), ("currency", "currency", 0, 0), ("ts", "int", 0, MAX_TS),
    ]),
    "gifts": ("sender_id", [
        ("event_id", "id", 0, 0), ("sender_id", "id", 0, 0), ("creator_id", "id", 0, 0),
        ("stream_id", "id", 0, 0), ("gift_id", "str", 0, 0), ("quantity", "int", 1, 10_000),
        ("ts", "int", 0, MAX_TS),
    ]),
    "payouts": ("creator_id", [
        ("event_id", "id", 0, 0), ("creator_id", "id", 0, 0), ("diamonds", "int", 1, 10**12),
        ("ts", "int", 0, MAX_TS),
    ]),
    "spend-limits": ("user_id", [
        ("event_id", "id", 0, 0), ("user_id", "id", 0, 0), ("daily_coin_limit", "int?", 0, 10**9),
        ("monthly_coin_limit", "int?", 0, 10**9), ("ts", "int", 0, MAX_TS),
    ]),
    "promotions": ("promo_id", [
        ("promo_id", "id", 0, 0), ("starts_ts", "int", 0, MAX_TS), ("ends_ts", "int", 0, MAX_TS),
        ("bonus_percent", "int", 1, 100), ("packages", "ints", 1, 20), ("max_per_user", "int", 1, 1_000),
        ("ts", "int", 0, MAX_TS),
    ]),
}

BASE: dict[str, dict[str, Any]] = {
    "recharges": {"event_id": "e-1", "user_id": "u.1", "coins": 500, "amount_cents": 499,
                  "currency": "USD", "ts": 1_700_000_000_000},
    "gifts": {"event_id": "e:2", "sender_id": "u_1", "creator_id": "c-1", "stream_id": "s1",
              "gift_id": "rose", "quantity": 3, "ts": 1_700_000_000_000},
    "payouts": {"event_id": "e3", "creator_id": "c-1", "diamonds": 2_000, "ts": 1_700_000_000_000},
    "spend-limits": {"event_id": "e4", "user_id": "u.1", "daily_coin_limit": 1_000,
                     "ts": 1_700_000_000_000},
    "promotions": {"promo_id": "p-1", "starts_ts": 1_700_000_000_000, "ends_ts": 1_700_086_400_000,
                   "bonus_percent": 10, "packages": [500, 1_000], "max_per_user": 1, "ts": 1_700_000_000_000},
}


def encode(value: dict[str, Any]) -> bytes:
    parts = (f"{json.dumps(k)}: {v.text if isinstance(v, Raw) else json.dumps(v)}" for k, v in value.items())
    return ("{" + ", ".join(parts) + "}").encode()


def changed(topic: str, **fields: Any) -> bytes:
    return encode({**BASE[topic], **fields})


def without(topic: str, field: str) -> bytes:
    return encode({k: v for k, v in BASE[topic].items() if k != field})


def field_cases(topic: str) -> list[tuple[str, bytes]]:
    """Valid and invalid values, field by field, from the contract's field kinds."""
    cases: list[tuple[str, bytes]] = [("base", encode(BASE[topic]))]
    for name, kind, lo, hi in CONTRACT[topic][1]:
        cases += [(f"{name} missing", without(topic, name)), (f"{name} list", changed(topic, **{name: []})),
                  (f"{name} object", changed(topic, **{name: {}}))]
        if kind == "id":
            cases += [
                (f"{name} 64 chars", changed(topic, **{name: "A" * 63 + "-"})),
                (f"{name} 65 chars", changed(topic, **{name: "a" * 65})),
                (f"{name} all allowed chars", changed(topic, **{name: "Az09_.:-"})),
                (f"{name} empty", changed(topic, **{name: ""})),
                (f"{name} space", changed(topic, **{name: "a b"})),
                (f"{name} slash", changed(topic, **{name: "a/b"})),
                (f"{name} non-ascii", changed(topic, **{name: "é"})),
                (f"{name} leading newline", changed(topic, **{name: "\nab"})),
                (f"{name} int", changed(topic, **{name: 7})),
                (f"{name} null", changed(topic, **{name: None})),
            ]
        elif kind == "str":
            cases += [
                (f"{name} any string", changed(topic, **{name: "not in catalog / ü \n"})),
                (f"{name} empty string", changed(topic, **{name: ""})),
                (f"{name} int", changed(topic, **{name: 1})),
                (f"{name} null", changed(topic, **{name: None})),
            ]
        elif kind == "currency":
            cases += [
                (f"{name} lower", changed(topic, **{name: "eur"})),
                (f"{name} 2 letters", changed(topic, **{name: "US"})),
                (f"{name} 4 letters", changed(topic, **{name: "USDT"})),
                (f"{name} digit", changed(topic, **{name: "US1"})),
                (f"{name} non-ascii letter", changed(topic, **{name: "USÉ"})),
                (f"{name} null", changed(topic, **{name: None})),
            ]
        else:  # int, int?
            top = hi if hi is not None else BIG
            cases += [
                (f"{name} low", changed(topic, **{name: lo})),
                (f"{name} below low", changed(topic, **{name: lo - 1})),
                (f"{name} high", changed(topic, **{name: top})),
                (f"{name} float {lo}.0", changed(topic, **{name: Raw(f"{lo}.0")})),
                (f"{name} float 5.0", changed(topic, **{name: Raw("5.0")})),
                (f"{name} exponent 1e1", changed(topic, **{name: Raw("1e1")})),
                (f"{name} fraction", changed(topic, **{name: Raw("5.5")})),
                (f"{name} true", changed(topic, **{name: True})),
                (f"{name} false", changed(topic, **{name: False})),
                (f"{name} string", changed(topic, **{name: "5"})),
                (f"{name} NaN", changed(topic, **{name: Raw("NaN")})),
                (f"{name} null", changed(topic, **{name: None})),
                (f"{name} -2^64", changed(topic, **{name: -BIG})),
                (f"{name} 2^64+1", changed(topic, **{name: BIG})),
                (f"{name} -0", changed(topic, **{name: Raw("-0")})),
            ]
            if hi is not None:
                cases.append((f"{name} above high", changed(topic, **{name: hi + 1})))
    return cases


def shape_cases(topic: str) -> list[tuple[str, bytes]]:
    """Values that are not a well-formed object, and objects with extra fields."""
    extra = {"note": "x", "nested": {"a": [1, 2.5, None]}, "coins_f": 5.0, "huge": BIG, "ok": True}
    return [
        ("extra fields ignored", encode({**BASE[topic], **extra})),
        ("extra field NaN", changed(topic, extra=Raw("NaN"))),
        ("duplicate field, last valid", encode(BASE[topic])[:-1] + b', "ts": 1}'),
        ("duplicate field spelt with an escape", encode(BASE[topic])[:-1] + b', "t\\u0073": 1}'),
        ("duplicate field in a nested extra", encode({**BASE[topic], "x": {"a": 1}})[:-2] + b', "a": 2}}'),
        ("a field's name inside a string value", encode({**BASE[topic], "note": '"ts": 5, "event_id"'})),
        ("escaped names, none repeated", encode({**BASE[topic], "n\u00f6te": 1})),
        ("whitespace around", b" \n" + encode(BASE[topic]) + b"\n "),
        ("array", b"[" + encode(BASE[topic]) + b"]"),
        ("string", b'"hello"'),
        ("number", b"5"),
        ("null", b"null"),
        ("empty object", b"{}"),
        ("empty bytes", b""),
        ("not JSON", b"{not json"),
        ("truncated", encode(BASE[topic])[:-1]),
        ("trailing garbage", encode(BASE[topic]) + b"x"),
        ("invalid UTF-8", encode(BASE[topic])[:-1] + b', "x": "\xff"}'),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + encode(BASE[topic])),
    ]


SPECIFIC: dict[str, list[tuple[str, bytes]]] = {
    "recharges": [
        ("amount_cents > 64 bits is valid", changed("recharges", amount_cents=10**30)),
        ("amount_cents 2^64", changed("recharges", amount_cents=2**64)),
        ("amount_cents 2^64 with coins 5.0", changed("recharges", amount_cents=2**64, coins=Raw("5.0"))),
        ("coins > 64 bits", changed("recharges", coins=10**30)),
        ("bad currency", changed("recharges", currency="US$")),
    ],
    "gifts": [
        ("self gift is well-formed", changed("gifts", creator_id=BASE["gifts"]["sender_id"])),
        ("unknown gift is well-formed", changed("gifts", gift_id="dragon")),
        ("quantity 1.5e3", changed("gifts", quantity=Raw("1.5e3"))),
    ],
    "payouts": [
        ("below min payout is well-formed", changed("payouts", diamonds=1)),
        ("diamonds 10^12 + 0.0", changed("payouts", diamonds=Raw("1000000000000.0"))),
    ],
    "spend-limits": [
        ("null daily_coin_limit clears", changed("spend-limits", daily_coin_limit=None)),
        ("zero daily_coin_limit", changed("spend-limits", daily_coin_limit=0)),
        ("monthly_coin_limit only", encode({**{k: v for k, v in BASE["spend-limits"].items()
                                               if k != "daily_coin_limit"}, "monthly_coin_limit": 5_000})),
        ("null monthly_coin_limit only clears", encode({**{k: v for k, v in BASE["spend-limits"].items()
                                                          if k != "daily_coin_limit"}, "monthly_coin_limit": None})),
        ("neither limit", without("spend-limits", "daily_coin_limit")),
    ],
    "promotions": [
        ("one package", changed("promotions", packages=[1_000_000])),
        ("twenty packages", changed("promotions", packages=list(range(1, 21)))),
        ("no package", changed("promotions", packages=[])),
        ("21 packages", changed("promotions", packages=list(range(1, 22)))),
        ("a repeated package", changed("promotions", packages=[500, 500])),
        ("a package 500.0", changed("promotions", packages=Raw("[500.0]"))),
        ("a package 0", changed("promotions", packages=[0])),
        ("a package over 10^6", changed("promotions", packages=[1_000_001])),
        ("a package as a string", changed("promotions", packages=["500"])),
        ("a package true", changed("promotions", packages=[True])),
        ("ends_ts equal to starts_ts", changed("promotions", ends_ts=1_700_000_000_000)),
        ("ends_ts before starts_ts", changed("promotions", ends_ts=1)),
        ("starts_ts 0", changed("promotions", starts_ts=0)),
    ],
}

# Python's `$` also matches before a trailing "\n"; the contract's pattern does not.
NEWLINE_CASES: dict[str, list[tuple[str, bytes]]] = {
    topic: [
        (f"{name} trailing newline", changed(topic, **{name: ("USD" if kind == "currency" else "ab") + "\n"}))
        for name, kind, _, _ in CONTRACT[topic][1]
        if kind in ("id", "currency")
    ]
    for topic in INPUTS
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("a name is repeated")  # CONTRACT.md: a value that repeats a field name is malformed
    return dict(pairs)


def schema_accepts(topic: str, raw: bytes) -> bool:
    """Strict UTF-8 (no BOM) JSON (no NaN/Infinity, no repeated name at any depth) parsed
    by json.loads, then the schema."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_repeated_names)
    except (ValueError, RecursionError):
        return False
    return validator(topic).is_valid(data)


def key_for(topic: str, raw: bytes) -> bytes:
    """The key a producer would send: the value's key field, or the base one if it has none."""
    key_field = CONTRACT[topic][0]
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get(key_field), str):
        return data[key_field].encode()
    return BASE[topic][key_field].encode()


AGREEMENT = [
    pytest.param(topic, name, raw, id=f"{topic}: {name}")
    for topic in INPUTS
    for name, raw in field_cases(topic) + shape_cases(topic) + SPECIFIC[topic] + NEWLINE_CASES[topic]
]


def contract_accepts(topic: str, raw: bytes) -> bool:
    """The schema, and the one rule between two fields the contract states that no
    schema can: a promotion's ends_ts is greater than its starts_ts."""
    if not schema_accepts(topic, raw):
        return False
    data = json.loads(raw)
    return topic != "promotions" or data["ends_ts"] > data["starts_ts"]


@pytest.mark.parametrize(("topic", "name", "raw"), AGREEMENT)
def test_decode_agrees_with_schema(topic: str, name: str, raw: bytes) -> None:
    decoded = decode(topic, key_for(topic, raw), raw)
    assert isinstance(decoded, Malformed) == (not contract_accepts(topic, raw)), decoded


def test_the_promotion_rule_between_two_fields_is_the_one_exception() -> None:
    raw = changed("promotions", ends_ts=1)
    assert schema_accepts("promotions", raw) and not contract_accepts("promotions", raw)
    assert "greater than starts_ts" in load_schema("promotions")["properties"]["ends_ts"]["description"]


def test_samples_cover_both_outcomes() -> None:
    """Guard against a vacuous agreement test: each topic has valid and invalid samples."""
    for topic in INPUTS:
        verdicts = {schema_accepts(topic, raw) for _, raw in field_cases(topic) + shape_cases(topic)}
        assert verdicts == {True, False}, topic


def test_amount_cents_has_no_upper_bound_but_coins_has() -> None:
    ok = decode("recharges", b"u.1", changed("recharges", amount_cents=10**30))
    assert not isinstance(ok, Malformed) and ok.amount_cents == 10**30
    assert isinstance(decode("recharges", b"u.1", changed("recharges", coins=10**30)), Malformed)


@pytest.mark.parametrize("topic", INPUTS)
def test_key_must_equal_id_field(topic: str) -> None:
    """The key check is outside the schema: a schema-valid value with a wrong key is malformed."""
    key_field = CONTRACT[topic][0]
    raw = encode(BASE[topic])
    good = BASE[topic][key_field]
    assert schema_accepts(topic, raw)
    assert not isinstance(decode(topic, good.encode(), raw), Malformed)
    wrong = (None, b"", b"other", good.upper().encode(), f" {good}".encode(), f"{good}\n".encode(), b"\xff")
    for key in wrong:
        assert isinstance(decode(topic, key, raw), Malformed), key
    assert isinstance(decode(topic, good.encode(), None), Malformed)  # tombstone


@pytest.mark.parametrize("topic", INPUTS)
def test_parser_limits_outside_schema(topic: str) -> None:
    """decode.py rejects some values the schema accepts, by limits no schema can state:
    values over 1 MiB and lone UTF-16 surrogate escapes (not encodable as UTF-8).
    Documented so a change is noticed. A number beyond a double (1e400) in an ignored
    field is ignored like any other extra field."""
    samples = [
        changed(topic, padding="x" * 1_048_576),
        changed(topic, extra=Raw('"\\ud800"')),
    ]
    key = BASE[topic][CONTRACT[topic][0]].encode()
    for raw in samples:
        assert schema_accepts(topic, raw)
        assert isinstance(decode(topic, key, raw), Malformed)
    beyond = changed(topic, extra=Raw("1e400"))
    assert schema_accepts(topic, beyond) and not isinstance(decode(topic, key, beyond), Malformed)


def test_integer_guard_is_needed() -> None:
    """Plain draft 2020-12 counts 5.0 as an integer; the contract's validator must not."""
    schema = load_schema("payouts")
    value = json.loads(changed("payouts", diamonds=Raw("2000.0")))
    assert Draft202012Validator(schema).is_valid(value)
    assert not validator("payouts").is_valid(value)


OUTPUT_SAMPLES: dict[str, tuple[dict[str, Any], list[tuple[str, Any]]]] = {
    "ledger-outcomes": (
        {"event_id": "e:2", "type": "gift", "status": "accepted", "reason": None, "subject_id": "u_1",
         "coins": 3, "diamonds": 1, "usd_cents": None, "balance_after": 497, "ts": 1_700_000_000_000},
        [("type", "refund"), ("status", "ok"), ("reason", "too_rich"), ("coins", 1.5), ("event_id", None)],
    ),
    "dead-letters": (
        {"source_topic": "gifts", "partition": 3, "offset": 1234, "error": "missing field ts",
         "payload_b64": "eyJldmVudF9pZCI6ICJlMSJ9", "payload_bytes": 17,
         "payload_sha256": "0b6c1e6d1b8e4a5f1d2c3b4a59687766554433221100ffeeddccbbaa99887766"},
        [("payload_b64", "not base64!"), ("partition", -1), ("offset", "12"), ("error", None),
         ("payload_bytes", -1), ("payload_sha256", "ABC")],
    ),
    "fraud-alerts": (
        {"alert_id": "a-1", "rule": "gift_burst", "severity": "high", "subject_type": "user",
         "subject_id": "u_1", "event_ids": ["e:2", "e:3"], "details": {"gifts": 40, "window_s": 10},
         "ts": 1_700_000_000_000},
        [("severity", "critical"), ("subject_type", "stream"), ("event_ids", "e:2"), ("details", [])],
    ),
    "badges": (
        {"badge_id": "gifter_level:u_1:4", "user_id": "u_1", "badge": "gifter_level", "level": 4,
         "previous_level": 2, "event_id": "e:2", "ts": 1_700_000_000_000},
        [("badge", "top_gifter"), ("level", 0), ("previous_level", -1), ("user_id", "u 1"), ("ts", 1.5)],
    ),
}


@pytest.mark.parametrize("topic", OUTPUTS)
def test_output_schema_accepts_contract_record(topic: str) -> None:
    record, _ = OUTPUT_SAMPLES[topic]
    v = validator(topic)
    assert v.is_valid(record), [e.message for e in v.iter_errors(record)]
    assert v.is_valid({**record, "added_later": 1})  # consumers must ignore new fields
    for field in record:
        assert not v.is_valid({k: x for k, x in record.items() if k != field}), f"{field} not required"


@pytest.mark.parametrize("topic", OUTPUTS)
def test_output_schema_rejects_bad_field(topic: str) -> None:
    record, bad = OUTPUT_SAMPLES[topic]
    for field, value in bad:
        assert not validator(topic).is_valid({**record, field: value}), (field, value)


REASONS = [None, "invalid_ts", "unknown_gift", "self_gift", "insufficient_coins", "spend_limit_exceeded",
           "monthly_limit_exceeded", "below_min_payout", "insufficient_diamonds", "held_for_review"]


@pytest.mark.parametrize("reason", REASONS)
def test_outcome_reasons(reason: str | None) -> None:
    record = {**OUTPUT_SAMPLES["ledger-outcomes"][0], "status": "rejected", "reason": reason,
              "diamonds": None, "balance_after": None}
    assert validator("ledger-outcomes").is_valid(record)


def test_schema_files_are_documented() -> None:
    """One schema per contract topic, each saying its Kafka key and describing every field."""
    assert topics() == sorted(INPUTS + OUTPUTS)
    assert not (SCHEMA_DIR / "__init__.py").exists()  # a data folder, not a package
    for topic in topics():
        schema = load_schema(topic)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(f"/{topic}.schema.json") and schema["title"]
        assert "Kafka key" in schema["description"]
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{topic}.{name}"
        if topic in INPUTS:
            either = [r["required"][0] for r in schema.get("anyOf", ())]  # at least one of these
            fields = [name for name, *_ in CONTRACT[topic][1]]
            assert schema["required"] + either == [name for name in fields if name not in either] + either
            assert set(either) == ({"daily_coin_limit", "monthly_coin_limit"} if topic == "spend-limits" else set())
            assert f"`{CONTRACT[topic][0]}`" in schema["description"]
