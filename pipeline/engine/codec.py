"""JSON encoding for everything the pipeline writes and reads back.

orjson for speed; the stdlib for integers beyond 64 bits, which orjson refuses to write
and widens to floats when reading: totals stay exact whatever their size.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Dataclasses are written as objects of their fields (orjson does it natively)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# orjson reads an integer beyond 64 bits as a float; one has at least 19 digits.
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def loads(raw: bytes) -> Any:
    """For the pipeline's own records, which hold no floats: integers of any size stay
    exact (a run of 19 digits, rare, takes the stdlib's slower exact path)."""
    return json.loads(raw) if _LONG_NUMBER.search(raw) else orjson.loads(raw)
