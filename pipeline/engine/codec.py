"""JSON encoding for everything the pipeline writes and reads back.

orjson for speed; the stdlib for integers beyond 64 bits, which orjson refuses to write
and widens to floats when reading: totals stay exact whatever their size.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Dataclasses are written as objects of their fields (orjson does it natively)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _has_float(value: Any) -> bool:
    if type(value) is float:
        return True
    if type(value) is list:
        return any(_has_float(v) for v in value)
    if type(value) is dict:
        return any(_has_float(v) for v in value.values())
    return False


def loads(raw: bytes) -> Any:
    """For the pipeline's own records, which hold no floats: one means a >64-bit int."""
    value = orjson.loads(raw)
    return json.loads(raw) if _has_float(value) else value
