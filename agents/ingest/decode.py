"""Decode and validate raw input messages against the wire contract.

A message is either a typed event or a `Malformed` with a one-line reason; decoding
never raises, so one bad message can never stop a worker. The same rules are written
as JSON Schema in `schemas/` and a test holds the two in agreement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

from agents.ingest.records import Event, Gift, Payout, Promotion, Recharge, SpendLimit, Withdrawal
from pipeline.engine.stage import Malformed  # the decoders' answer for bad content

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
CURRENCY_RE = re.compile(r"^[A-Za-z]{3}$")
MAX_TS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_VALUE_BYTES = 1_048_576
MAX_REASON_CHARS = 300
MAX_QUANTITY = 10_000


# (field, kind, low, high): kinds are "id", "int", "int?" (int or null), "int?-" (int, null
# or absent: ABSENT), "str", "currency", "ints" (a list of lo..hi distinct ints, high each).
FieldSpec = tuple[str, str, int, int | None]
_ID = 0, 0
ABSENT: Any = object()  # an optional field not on the wire (not null: absent leaves a limit as it was)


def _spend_limit(event_id: str, user_id: str, daily: Any, monthly: Any, ts: int) -> SpendLimit | Malformed:
    if daily is ABSENT and monthly is ABSENT:
        return Malformed("needs at least one of daily_coin_limit and monthly_coin_limit")
    return SpendLimit(event_id, user_id, None if daily is ABSENT else daily, ts,
                      None if monthly is ABSENT else monthly, daily is not ABSENT, monthly is not ABSENT)


MAX_PACKAGES = 20
MAX_PACKAGE_COINS = 1_000_000


def _promotion(promo_id: str, starts_ts: int, ends_ts: int, bonus_percent: int, packages: list[int],
               max_per_user: int, ts: int) -> Promotion | Malformed:
    if ends_ts <= starts_ts:
        return Malformed("ends_ts must be greater than starts_ts")
    return Promotion(promo_id, starts_ts, ends_ts, bonus_percent, frozenset(packages), max_per_user, ts)


SPECS: dict[str, tuple[str, tuple[FieldSpec, ...], Callable[..., Any]]] = {
    "recharges": ("user_id", (
        ("event_id", "id", *_ID), ("user_id", "id", *_ID), ("coins", "int", 1, 1_000_000),
        ("amount_cents", "int", 0, None), ("currency", "currency", *_ID), ("ts", "int", 0, MAX_TS),
    ), Recharge),
    "gifts": ("sender_id", (
        ("event_id", "id", *_ID), ("sender_id", "id", *_ID), ("creator_id", "id", *_ID),
        ("stream_id", "id", *_ID), ("gift_id", "str", *_ID), ("quantity", "int", 1, MAX_QUANTITY),
        ("ts", "int", 0, MAX_TS),
    ), Gift),
    "payouts": ("creator_id", (
        ("event_id", "id", *_ID), ("creator_id", "id", *_ID), ("diamonds", "int", 1, 10**12),
        ("ts", "int", 0, MAX_TS),
    ), Payout),
    "spend-limits": ("user_id", (
        ("event_id", "id", *_ID), ("user_id", "id", *_ID), ("daily_coin_limit", "int?-", 0, 10**9),
        ("monthly_coin_limit", "int?-", 0, 10**9), ("ts", "int", 0, MAX_TS),
    ), _spend_limit),
    "promotions": ("promo_id", (
        ("promo_id", "id", *_ID), ("starts_ts", "int", 0, MAX_TS), ("ends_ts", "int", 0, MAX_TS),
        ("bonus_percent", "int", 1, 100), ("packages", "ints", 1, MAX_PACKAGES), ("max_per_user", "int", 1, 1_000),
        ("ts", "int", 0, MAX_TS),
    ), _promotion),
}


INT_FIELDS = {topic: tuple(f[0] for f in spec[1] if f[1].startswith("int")) for topic, spec in SPECS.items()}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"field {repeated[:64]!r} is repeated")
    return data


def parse_json(raw: bytes, exact: bool = False) -> Any:
    """Strict JSON (no NaN or Infinity, no repeated field name at any depth). orjson for
    speed; `exact` re-reads with the stdlib, whose integers have no 64-bit limit (orjson
    turns larger ones into floats) and which sees every repeated name."""
    if exact:
        return json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_unique_pairs)
    data = orjson.loads(raw)
    if _may_repeat_a_name(raw, data):
        return json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_unique_pairs)
    return data


def _may_repeat_a_name(raw: bytes, data: Any) -> bool:
    """orjson keeps the last of repeated names (`"coins": 5, "coins": 1000000`), so the
    stdlib re-reads whatever could hide one: nested containers, escapes (a name can be
    spelt two ways), or a name whose quoted form occurs twice in the bytes. A flat
    object without escapes whose names each occur once cannot repeat one."""
    if type(data) is not dict or b"\\" in raw:
        return True
    quoted = _QUOTED
    for name, value in data.items():
        kind = type(value)
        if kind is dict or kind is list:
            return True
        q = quoted.get(name)
        if q is None:
            q = b'"%s"' % name.encode()
            if len(quoted) < MAX_QUOTED_NAMES:  # names come from the wire: a bounded cache
                quoted[name] = q
        if raw.count(q) != 1:
            return True
    return False


MAX_QUOTED_NAMES = 1_000
_QUOTED: dict[str, bytes] = {}


def _check(spec: FieldSpec, value: Any) -> str | None:
    name, kind, lo, hi = spec
    if kind == "id":
        if type(value) is not str or not ID_RE.fullmatch(value):
            return f"{name} must be a string matching ^[A-Za-z0-9_.:-]{{1,64}}$"
    elif kind == "str":
        if type(value) is not str:
            return f"{name} must be a string"
    elif kind == "ints":
        if (type(value) is not list or not lo <= len(value) <= (hi or 0)
                or any(type(v) is not int or not 1 <= v <= MAX_PACKAGE_COINS for v in value)):
            return f"{name} must be a list of {lo} to {hi} integers from 1 to {MAX_PACKAGE_COINS}"
        if len(set(value)) != len(value):
            return f"{name} must not repeat a value"
    elif kind == "currency":
        if type(value) is not str or not CURRENCY_RE.fullmatch(value):
            return f"{name} must be 3 letters"
    elif value is None and kind in ("int?", "int?-"):
        return None
    elif type(value) is not int:
        return f"{name} must be an integer{' or null' if kind != 'int' else ''}, not {type(value).__name__}"
    elif value < lo or (hi is not None and value > hi):
        return f"{name} must be from {lo} to {hi}" if hi is not None else f"{name} must be at least {lo}"
    return None


def decode_promotion(key: bytes | None, value: bytes | None, timestamp: int) -> Promotion | Withdrawal | Malformed:
    """A `promotions` record; `timestamp`: its Kafka timestamp, a tombstone's time."""
    if value is None:
        promo_id = _key_text(key)
        if promo_id is None or not ID_RE.fullmatch(promo_id):
            return Malformed("a tombstone's key must be the promo_id it withdraws")
        return Withdrawal(promo_id, timestamp)
    return _decode("promotions", key, value)  # type: ignore[no-any-return]


def _key_text(key: bytes | None) -> str | None:
    try:
        return None if key is None else key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def decode(topic: str, key: bytes | None, value: bytes | None) -> Event | Malformed:
    """`topic` is the contract name (without prefix); for `promotions` (whose records
    are a Promotion, and a tombstone a Withdrawal) use decode_promotion."""
    return _decode(topic, key, value)  # type: ignore[no-any-return]


def _decode(topic: str, key: bytes | None, value: bytes | None) -> Any:
    key_field, fields, make = SPECS[topic]
    if value is None or not value:
        return Malformed("empty value")
    if len(value) > MAX_VALUE_BYTES:
        return Malformed(f"value of {len(value)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        try:
            data = parse_json(value)
        except ValueError as exc:
            # orjson refuses numbers beyond a double (1e999) even in fields the contract
            # ignores: only then the stdlib reads it (orjson's other refusals stand).
            if "number is infinity" not in str(exc):
                raise
            data = parse_json(value, exact=True)
        else:
            if isinstance(data, dict) and any(type(data.get(name)) is float for name in INT_FIELDS[topic]):
                data = parse_json(value, exact=True)
    except (ValueError, RecursionError) as exc:
        return Malformed(f"not JSON: {str(exc)[:MAX_REASON_CHARS]}")
    if not isinstance(data, dict):
        return Malformed(f"value must be a JSON object, not {type(data).__name__}")
    args = []
    for spec in fields:
        if spec[0] not in data:
            if spec[1] == "int?-":
                args.append(ABSENT)
                continue
            return Malformed(f"missing field {spec[0]}")
        value_ = data[spec[0]]
        problem = _check(spec, value_)
        if problem is not None:
            return Malformed(problem)
        args.append(value_)
    if key is None:
        return Malformed(f"message key is missing; it must equal {key_field}")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed(f"message key is not UTF-8; it must equal {key_field}")
    if key_text != data[key_field]:
        return Malformed(f"message key {key_text[:80]!r} does not equal {key_field}")
    return make(*args)
