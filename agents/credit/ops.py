"""Records of the internal creator-ops topic (key: creator_id).

`c`: the combined credit of a batch's accepted gifts to one creator; `p`: a validated
payout request; `m`: a progress mark of a user-ledger partition (key none, sent to every
partition); `l`: a gift_loop leg (agents/fraud/loop.py; key: the pair's smaller account);
`t`: a path of two legs that a third may close into a loop of three (key: the smaller of
the path's two ends), written by the creator ledger itself. Written only by this
pipeline (Kafka ACLs enforce it: `python -m pipeline acls`), yet read as untrusted
(CONTRACT.md, Trust): `decode_op` checks every field's type and range and what a record
can be checked against (a credit never exceeds what its gifts could give), and anything
else is a dead letter, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from agents.credit.rules import CreditBatch
from agents.fraud.concentration import hour
from agents.fraud.loop import Closing, parse_leg
from agents.fraud.sender import Leg
from agents.ingest.decode import ID_RE, MAX_QUANTITY, MAX_REASON_CHARS, MAX_TS, MAX_VALUE_BYTES
from agents.ingest.records import Payout
from agents.ledger.rules import Credit
from pipeline.economics import Economics
from pipeline.engine.stage import Malformed
from pipeline.invariants import require


def credit_op(creator_id: str, credits: list[Credit], new_sender_ms: int) -> dict[str, Any]:
    """Credits of gifts from senders whose first event is under `new_sender_ms` old also
    go by sender and hour (payout_concentration, agents/fraud/concentration.py)."""
    by_ts: dict[int, int] = {}
    new: dict[tuple[str, int], list[Any]] = {}
    for c in credits:
        require(c.creator_id == creator_id, 'c.creator_id == creator_id')
        by_ts[c.ts] = by_ts.get(c.ts, 0) + c.diamonds
        if c.sender_first_ts is not None and c.ts - c.sender_first_ts < new_sender_ms:
            entry = new.setdefault((c.sender_id, hour(c.ts)), [c.sender_id, c.sender_first_ts, c.ts, 0, c.event_id])
            entry[3] += c.diamonds
    return batch_op(CreditBatch(
        creator_id, sum(c.coins for c in credits), len(credits), tuple(sorted(by_ts.items())),
        tuple(tuple(e) for e in new.values() if e[3] > 0),
        tuple((c.sender_id, c.ts, c.event_id) for c in credits if c.farmed),
    ))


def batch_op(batch: CreditBatch) -> dict[str, Any]:
    op = {
        "op": "c", "creator_id": batch.creator_id, "coins": batch.coins, "gifts": batch.gifts,
        "items": [list(item) for item in batch.items], "n": [list(e) for e in batch.new_senders],
    }
    if batch.farmed:
        op["f"] = [list(f) for f in batch.farmed]
    return op


def payout_op(ev: Payout, refused: str | None = None, appended: int = 0) -> dict[str, Any]:
    """`refused`: the user ledger's reason to reject it before any other check
    (invalid_ts); the creator ledger answers it with the creator's balance.
    `appended`: when the broker wrote the payout (LogAppendTime; agents/credit/progress.py)."""
    op: dict[str, Any] = {"op": "p", "event_id": ev.event_id, "creator_id": ev.creator_id, "diamonds": ev.diamonds,
                          "ts": ev.ts}
    if refused is not None:
        op["r"] = refused
    if appended > 0:
        op["w"] = appended
    return op


@dataclass(frozen=True, slots=True)
class Mark:
    """Progress of one user-ledger partition: the offsets of its gifts and payouts
    below which it has applied everything (see agents/credit/progress.py)."""

    source: int
    gifts: int
    payouts: int
    newest: int = 0  # the newest event time it applied (in time: CONTRACT.md bounds it)

    ts = 0  # merged as early as possible: a mark is not an event


def mark_op(source: int, gifts: int, payouts: int, newest: int = 0) -> dict[str, Any]:
    return {"op": "m", "source": source, "g": gifts, "p": payouts, "t": newest}


# Bounds of a well-formed record. A batch of the user ledger holds at most 100,000 input
# records (PIPELINE_MAX_BATCH's highest value), so no credit combines more gifts.
MAX_OP_GIFTS = 100_000
MAX_OP_IDS = 100
MAX_PAYOUT_DIAMONDS = 10**12
MAX_OFFSET = 2**63 - 1
@dataclass(frozen=True, slots=True)
class Forwarded:
    """A payout as the user ledger forwards it: when the broker wrote it (0 if its topic
    does not keep the broker's time), and the reason it was refused before its
    creator's ledger looks at it (invalid_ts), if it was."""

    payout: Payout
    appended: int = 0
    refused: str | None = None

    @property
    def ts(self) -> int:
        return self.payout.ts

    @property
    def creator_id(self) -> str:
        return self.payout.creator_id


Op = CreditBatch | Payout | Forwarded | Mark | Leg | Closing
REFUSALS = ("invalid_ts",)


class BadOp(ValueError):
    """A creator-ops record that this pipeline could not have written."""


def _id(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if type(value) is not str or not ID_RE.fullmatch(value):
        raise BadOp(f"{name} must be an id")
    return value


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise BadOp(f"{name} must be an integer from {lo} to {hi}")
    return value


def _list(value: Any, name: str, most: int) -> list[Any]:
    if type(value) is not list or len(value) > most:
        raise BadOp(f"{name} must be a list of at most {most}")
    return value


def decode_op(key: bytes | None, value: bytes | None, econ: Economics, partitions: int) -> Op | Malformed:
    """A creator-ops record as an op, or Malformed with the reason."""
    if not value:
        return Malformed("empty value")
    if len(value) > MAX_VALUE_BYTES:
        return Malformed(f"value of {len(value)} bytes exceeds {MAX_VALUE_BYTES}")
    try:
        data = orjson.loads(value)  # integers beyond 64 bits are refused
        if type(data) is not dict:
            raise BadOp("value must be a JSON object")
        op = _checked(data, econ, partitions)
    except BadOp as exc:
        return Malformed(f"creator-ops record: {exc}")
    except (ValueError, RecursionError) as exc:
        return Malformed(f"not JSON: {str(exc)[:MAX_REASON_CHARS]}")
    want = None if isinstance(op, Mark) else (op.meeting_key if isinstance(op, (Leg, Closing)) else op.creator_id)
    if (None if key is None else key.decode("utf-8", "replace")) != want:
        return Malformed(f"creator-ops record: key must be {want!r}")
    return op


def _checked(data: dict[str, Any], econ: Economics, partitions: int) -> Op:
    kind = data.get("op")
    if kind == "m":
        return Mark(_int(data.get("source"), "source", 0, partitions - 1), _int(data.get("g"), "g", 0, MAX_OFFSET),
                    _int(data.get("p"), "p", 0, MAX_OFFSET), _int(data.get("t", 0), "t", 0, MAX_TS))
    if kind == "p":
        payout = Payout(_id(data, "event_id"), _id(data, "creator_id"),
                        _int(data.get("diamonds"), "diamonds", 1, MAX_PAYOUT_DIAMONDS),
                        _int(data.get("ts"), "ts", 0, MAX_TS))
        if "r" in data and data["r"] not in REFUSALS:
            raise BadOp(f"r must be one of {', '.join(REFUSALS)}")
        if "r" not in data and "w" not in data:
            return payout
        return Forwarded(payout, _int(data["w"], "w", 1, MAX_TS) if "w" in data else 0, data.get("r"))
    if kind == "l":
        return _leg(data)
    if kind == "t":
        return _closing(data)
    if kind == "c":
        return _credit(data, econ)
    raise BadOp("op must be one of c, p, m, l, t")


def _leg(data: Any) -> Leg:
    if type(data) is not dict:
        raise BadOp("a leg must be an object")
    ids = _list(data.get("ids"), "ids", MAX_OP_IDS)
    if not all(type(i) is str and ID_RE.fullmatch(i) for i in ids):
        raise BadOp("ids must be event ids")
    start, end = _int(data.get("s"), "s", 0, MAX_TS), _int(data.get("t"), "t", 0, MAX_TS)
    if start > end:
        raise BadOp("s must not be after t")
    leg = Leg(_id(data, "a"), _id(data, "b"), start, end, _int(data.get("c"), "c", 1, 10**18), tuple(ids))
    if leg.sender == leg.recipient:
        raise BadOp("a leg joins two accounts")
    return leg


def _closing(data: dict[str, Any]) -> Closing:
    """A path X -> A -> Y, as only the meeting point of A could have sent it: A is the
    smaller of each pair, and X is not Y."""
    closing = Closing(_leg(data.get("i")), _leg(data.get("o")))
    x, a, y = closing.into.sender, closing.into.recipient, closing.out.recipient
    if closing.out.sender != a or not (a < x and a < y) or x == y:
        raise BadOp("a closing is two legs X -> A -> Y, A the smallest of three accounts")
    return closing


def _credit(data: dict[str, Any], econ: Economics) -> CreditBatch:
    """A credit can never exceed what its gifts could give: each gift costs at most the
    dearest gift times 10,000 and at most the platform's daily limit, and credits
    floor(coins * share / 100) diamonds, so the credit is at most that of its coins."""
    gifts = _int(data.get("gifts"), "gifts", 1, MAX_OP_GIFTS)
    most_per_gift = min(max(econ.gifts.values()) * MAX_QUANTITY, econ.platform_daily_coin_limit)
    coins = _int(data.get("coins"), "coins", 1, gifts * most_per_gift)
    items: list[tuple[int, int]] = []
    for item in _list(data.get("items"), "items", gifts):
        if type(item) is not list or len(item) != 2:
            raise BadOp("items must be [ts, diamonds] pairs")
        items.append((_int(item[0], "item ts", 0, MAX_TS), _int(item[1], "item diamonds", 0, coins)))
    if not items or any(a[0] >= b[0] for a, b in zip(items, items[1:])):
        raise BadOp("items must be one or more, by rising ts")
    diamonds = sum(d for _, d in items)
    if diamonds > econ.creator_diamonds(coins):
        raise BadOp(f"credits {diamonds} diamonds for {coins} coins, over the creator share")
    new: list[tuple[Any, ...]] = []
    for e in _list(data.get("n", []), "n", gifts):
        if type(e) is not list or len(e) != 5:
            raise BadOp("n must be [sender, first ts, ts, diamonds, event id] entries")
        sender = _id({"s": e[0]}, "s")
        _int(e[1], "first ts", 0, MAX_TS), _int(e[2], "ts", 0, MAX_TS), _int(e[3], "diamonds", 1, diamonds)
        new.append((sender, e[1], e[2], e[3], _id({"e": e[4]}, "e")))
    if sum(e[3] for e in new) > diamonds:
        raise BadOp("new senders' diamonds exceed the credit")
    farmed: list[tuple[str, int, str]] = []
    for f in _list(data.get("f", []), "f", gifts):
        if type(f) is not list or len(f) != 3:
            raise BadOp("f must be [sender, ts, event id] entries")
        farmed.append((_id({"s": f[0]}, "s"), _int(f[1], "farmed ts", 0, MAX_TS), _id({"e": f[2]}, "e")))
    return CreditBatch(_id(data, "creator_id"), coins, gifts, tuple(items), tuple(new), tuple(farmed))


def parse_op(data: dict[str, Any]) -> CreditBatch | Payout | Mark | Leg:
    if data["op"] == "l":
        return parse_leg(data)
    if data["op"] == "m":
        return Mark(data["source"], data["g"], data["p"], data.get("t", 0))
    if data["op"] == "c":
        return CreditBatch(data["creator_id"], data["coins"], data["gifts"], tuple((t, d) for t, d in data["items"]),
                           tuple(tuple(e) for e in data.get("n", ())),
                           tuple((s, t, e) for s, t, e in data.get("f", ())))
    require(data["op"] == "p", 'data["op"] == "p"')
    return Payout(data["event_id"], data["creator_id"], data["diamonds"], data["ts"])
