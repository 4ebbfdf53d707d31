"""The wire contract's rules for the Quix Streams peer, as plain functions.

Written from /work/shared/CONTRACT.md; it imports nothing of the project (the peer runs in
its own venv) and nothing of Quix Streams, so the rules can be read and tested alone.

- `decode_value`: a raw input value -> a validated event dict, or a `Malformed` reason.
- `check_envelope`: the key and partition checks that need the Kafka message.
- `dead_letter`: the contract's dead-letter record.
- `apply_user_event` / `apply_creator_event`: the two ledgers, over a small key-value
  interface (`get(name, default)`, `set(name, value, ttl=...)`) that Quix's `State` has.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import timedelta
from functools import lru_cache
from typing import Any, Protocol

import orjson

# --- Economics (the contract's defaults) -------------------------------------------
CATALOG = {
    "rose": 1, "finger_heart": 5, "perfume": 20, "confetti": 100,
    "money_gun": 500, "galaxy": 1000, "lion": 29999, "universe": 44999,
}
CREATOR_SHARE_PERCENT = 50
PAYOUT_MILLICENTS_PER_DIAMOND = 500
MIN_PAYOUT = 2_000
PLATFORM_DAILY_LIMIT = 200_000
DAY_MS = 86_400_000
MAX_AHEAD_MS = 5 * 60_000  # in time: at most 5 minutes ahead of the clock ...
DEDUPE_WINDOW_MS = 7 * DAY_MS  # ... and at most the duplicate window behind it
# State kept under an event-time TTL: the duplicate window plus a day of margin (the
# contract asks for "at least 7 days").
SEEN_TTL = timedelta(days=8)
DAY_SPEND_TTL = timedelta(days=8)

# --- Input validation ----------------------------------------------------------------
ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # used with fullmatch: no trailing newline
CURRENCY_RE = re.compile(r"[A-Za-z]{3}")
MAX_TS = 253_402_300_799_999
MAX_VALUE_BYTES = 1_048_576
DEAD_LETTER_PAYLOAD_BYTES = 65_536

# topic (contract name) -> (outcome type, key field, (field, kind, lo, hi) ...)
_ID = ("id", None, None)
SPECS: dict[str, tuple[str, str, tuple[tuple[str, str, int | None, int | None], ...]]] = {
    "recharges": ("recharge", "user_id", (
        ("event_id", *_ID), ("user_id", *_ID), ("coins", "int", 1, 1_000_000),
        ("amount_cents", "int", 0, None), ("currency", "currency", None, None), ("ts", "int", 0, MAX_TS))),
    "gifts": ("gift", "sender_id", (
        ("event_id", *_ID), ("sender_id", *_ID), ("creator_id", *_ID), ("stream_id", *_ID),
        ("gift_id", "str", None, None), ("quantity", "int", 1, 10_000), ("ts", "int", 0, MAX_TS))),
    "payouts": ("payout", "creator_id", (
        ("event_id", *_ID), ("creator_id", *_ID), ("diamonds", "int", 1, 10**12), ("ts", "int", 0, MAX_TS))),
    "spend-limits": ("spend_limit", "user_id", (
        ("event_id", *_ID), ("user_id", *_ID), ("ts", "int", 0, MAX_TS),
        # at least one of the two (checked below); null clears, absent leaves as was
        ("daily_coin_limit", "int?opt", 0, 10**9), ("monthly_coin_limit", "int?opt", 0, 10**9))),
}
TOPIC_OF_TYPE = {spec[0]: topic for topic, spec in SPECS.items()}
KEY_FIELD = {spec[0]: spec[1] for spec in SPECS.values()}
# Topics whose messages must sit on their key's murmur2 partition (payouts are re-keyed).
PARTITION_CHECKED = ("recharges", "gifts", "spend-limits")
_INT_FIELDS = {topic: tuple(f[0] for f in spec[2] if f[1].startswith("int")) for topic, spec in SPECS.items()}


class Malformed(str):
    """A one-line reason why a value breaks the contract."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"field {name[:64]!r} is repeated")
            seen.add(name)
    return data


def _strict_loads(raw: bytes) -> Any:
    return json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_unique_pairs)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no repeated field name, integers of any size.

    orjson first (fast); the stdlib re-reads what orjson could get wrong: a name that
    may be repeated (orjson keeps the last), a number orjson cannot hold."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses numbers beyond a double (1e999) even in fields the contract
        # ignores: only those are re-read; its other refusals (a lone surrogate...) stand.
        if "number is infinity" not in str(exc):
            raise
        return _strict_loads(raw)
    if not isinstance(data, dict) or b"\\" in raw:
        return _strict_loads(raw) if isinstance(data, (dict, list)) else data
    for name, value in data.items():
        if isinstance(value, (dict, list)) or raw.count(b'"%s"' % name.encode()) != 1:
            return _strict_loads(raw)
    return data


def _field_problem(name: str, kind: str, lo: int | None, hi: int | None, value: Any) -> str | None:
    if kind == "id":
        if type(value) is not str or not ID_RE.fullmatch(value):
            return f"{name} must be a string matching ^[A-Za-z0-9_.:-]{{1,64}}$"
    elif kind == "str":
        if type(value) is not str:
            return f"{name} must be a string"
    elif kind == "currency":
        if type(value) is not str or not CURRENCY_RE.fullmatch(value):
            return f"{name} must be 3 letters"
    elif value is None and kind.startswith("int?"):
        return None
    elif type(value) is not int:
        return f"{name} must be an integer, not {type(value).__name__}"
    elif value < lo or (hi is not None and value > hi):  # type: ignore[operator]
        return f"{name} must be from {lo} to {hi}" if hi is not None else f"{name} must be at least {lo}"
    return None


# Checked on input but not needed by the ledger, so not carried on (amount_cents has no
# upper bound and Quix's JSON serializer, orjson, writes no integer beyond 64 bits).
NOT_CARRIED = frozenset({"amount_cents", "currency"})


def validate(topic: str, data: Any, internal: bool = False) -> dict[str, Any] | Malformed:
    """A parsed value of `topic` -> the event: the fields the ledger uses, plus `type`."""
    kind, _key_field, fields = SPECS[topic]
    if not isinstance(data, dict):
        return Malformed(f"value must be a JSON object, not {type(data).__name__}")
    event: dict[str, Any] = {"type": kind}
    for name, fkind, lo, hi in fields:
        if internal and name in NOT_CARRIED:
            continue
        if name not in data:
            if fkind.endswith("opt"):
                continue
            return Malformed(f"missing field {name}")
        problem = _field_problem(name, fkind, lo, hi, data[name])
        if problem:
            return Malformed(problem)
        if name not in NOT_CARRIED:
            event[name] = data[name]
    if topic == "spend-limits" and "daily_coin_limit" not in event and "monthly_coin_limit" not in event:
        return Malformed("a spend limit needs daily_coin_limit or monthly_coin_limit")
    return event


def decode_value(topic: str, raw: bytes | None) -> dict[str, Any] | Malformed:
    """Never raises: one bad message must never stop the app."""
    if not raw:
        return Malformed("empty value")
    if len(raw) > MAX_VALUE_BYTES:
        return Malformed(f"value of {len(raw)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        data = parse_json(raw)
        if isinstance(data, dict) and any(type(data.get(f)) is float for f in _INT_FIELDS[topic]):
            data = _strict_loads(raw)  # orjson widens integers beyond 64 bits to floats
    except (ValueError, RecursionError) as exc:
        return Malformed(f"not JSON: {str(exc)[:200]}")
    return validate(topic, data)


def murmur2(data: bytes) -> int:
    """Kafka's (Java client's) murmur2 hash, as an unsigned 32-bit int."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length % 4
    tail = length - rest
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@lru_cache(maxsize=1 << 17)
def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def check_envelope(topic: str, event: dict[str, Any], key: bytes | None, partition: int, partitions: int) -> str | None:
    """The checks that need the message itself: key == id field, and the partition."""
    key_field = SPECS[topic][1]
    if key is None:
        return f"message key is missing; it must equal {key_field}"
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return f"message key is not UTF-8; it must equal {key_field}"
    if key_text != event[key_field]:
        return f"message key {key_text[:80]!r} does not equal {key_field}"
    if topic in PARTITION_CHECKED:
        right = partition_for(key, partitions)
        if right != partition:
            return (f"on partition {partition}, but key {key_text[:64]!r} belongs on partition {right} "
                    f"of {partitions} (Kafka's default partitioner, murmur2)")
    return None


def dead_letter(source_topic: str, partition: int, offset: int, error: str, payload: bytes | None) -> dict[str, Any]:
    payload = payload or b""
    return {
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "error": error,
        "payload_b64": base64.b64encode(payload[:DEAD_LETTER_PAYLOAD_BYTES]).decode("ascii"),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }


# --- The ledgers ----------------------------------------------------------------------
class KV(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...
    def set(self, key: str, value: Any, ttl: timedelta | None = None) -> None: ...


def now_ms() -> int:
    return int(time.time() * 1000)


def in_time(ts: int, now: int) -> bool:
    return now - DEDUPE_WINDOW_MS <= ts <= now + MAX_AHEAD_MS


def _outcome(ev: dict[str, Any], subject: str) -> dict[str, Any]:
    return {
        "event_id": ev["event_id"], "type": ev["type"], "status": "accepted", "reason": None,
        "subject_id": subject, "coins": None, "diamonds": None, "usd_cents": None,
        "balance_after": None, "ts": ev["ts"],
    }


def gift_cost(ev: dict[str, Any]) -> int | None:
    price = CATALOG.get(ev["gift_id"])
    return None if price is None else price * ev["quantity"]


def apply_user_event(ev: dict[str, Any], state: KV, now: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A recharge, gift or spend limit of the user keyed by `state`.

    Returns the outcome and, for an accepted gift, the credit for its creator."""
    kind = ev["type"]
    subject = ev[KEY_FIELD[kind]]
    out = _outcome(ev, subject)
    coins = state.get("coins", 0)
    if not in_time(ev["ts"], now):
        out["status"], out["reason"] = "rejected", "invalid_ts"
        if kind == "recharge":
            out["coins"], out["balance_after"] = ev["coins"], coins
        elif kind == "gift":
            out["coins"], out["balance_after"] = gift_cost(ev), coins
        return out, None
    seen = f"seen:{kind}:{ev['event_id']}"  # the state is the key's: (topic, key, event_id)
    duplicate = state.get(seen) is not None
    if duplicate:
        out["status"] = "duplicate"
    else:
        state.set(seen, 1, ttl=SEEN_TTL)
    credit = None
    if kind == "recharge":
        out["coins"] = ev["coins"]
        if not duplicate:
            coins += ev["coins"]
            state.set("coins", coins)
        out["balance_after"] = coins
    elif kind == "gift":
        cost = gift_cost(ev)
        out["coins"] = cost
        if not duplicate:
            day_key = f"day:{ev['ts'] // DAY_MS}"
            own = state.get("daily_limit")
            limit = PLATFORM_DAILY_LIMIT if own is None else min(PLATFORM_DAILY_LIMIT, own)
            if cost is None:
                out["status"], out["reason"] = "rejected", "unknown_gift"
            elif subject == ev["creator_id"]:
                out["status"], out["reason"] = "rejected", "self_gift"
            elif cost > coins:
                out["status"], out["reason"] = "rejected", "insufficient_coins"
            elif (spent := state.get(day_key, 0)) + cost > limit:
                out["status"], out["reason"] = "rejected", "spend_limit_exceeded"
            else:
                diamonds = cost * CREATOR_SHARE_PERCENT // 100
                coins -= cost
                state.set("coins", coins)
                state.set(day_key, spent + cost, ttl=DAY_SPEND_TTL)
                out["diamonds"] = diamonds
                credit = {"type": "credit", "event_id": ev["event_id"], "creator_id": ev["creator_id"],
                          "diamonds": diamonds, "ts": ev["ts"]}
        out["balance_after"] = coins
    else:  # spend_limit
        if not duplicate and "daily_coin_limit" in ev:
            state.set("daily_limit", ev["daily_coin_limit"])
    return out, credit


def apply_creator_event(ev: dict[str, Any], state: KV, now: int) -> dict[str, Any] | None:
    """A credit (from an accepted gift; no outcome) or a payout of the creator keyed by `state`."""
    diamonds = state.get("diamonds", 0)
    if ev["type"] == "credit":
        state.set("diamonds", diamonds + ev["diamonds"])
        return None
    out = _outcome(ev, ev["creator_id"])
    out["diamonds"] = ev["diamonds"]
    if not in_time(ev["ts"], now):
        out["status"], out["reason"] = "rejected", "invalid_ts"
    else:
        seen = f"seen:payout:{ev['event_id']}"
        if state.get(seen) is not None:
            out["status"] = "duplicate"
        else:
            state.set(seen, 1, ttl=SEEN_TTL)
            if ev["diamonds"] < MIN_PAYOUT:
                out["status"], out["reason"] = "rejected", "below_min_payout"
            elif ev["diamonds"] > diamonds:
                out["status"], out["reason"] = "rejected", "insufficient_diamonds"
            else:
                diamonds -= ev["diamonds"]
                state.set("diamonds", diamonds)
                out["usd_cents"] = ev["diamonds"] * PAYOUT_MILLICENTS_PER_DIAMOND // 1000
    out["balance_after"] = diamonds
    return out


# --- Internal (repartition) records: untrusted too -------------------------------------
INTERNAL_SPECS = {
    "credit": (("event_id", *_ID), ("creator_id", *_ID), ("diamonds", "int", 0, None), ("ts", "int", 0, MAX_TS)),
}


def validate_internal(data: Any, allowed: tuple[str, ...]) -> dict[str, Any] | Malformed:
    """A record the app wrote itself to a repartition topic: an input event (with its
    `type`) or a credit. Anything else is malformed."""
    if not isinstance(data, dict) or data.get("type") not in allowed:
        return Malformed(f"not an internal record of type {'/'.join(allowed)}")
    kind = data["type"]
    if kind in INTERNAL_SPECS:
        for name, fkind, lo, hi in INTERNAL_SPECS[kind]:
            if name not in data:
                return Malformed(f"missing field {name}")
            problem = _field_problem(name, fkind, lo, hi, data[name])
            if problem:
                return Malformed(problem)
        return data
    return validate(TOPIC_OF_TYPE[kind], data, internal=True)
