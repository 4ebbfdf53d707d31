"""JSON Schemas of the wire contract's topics, from the repo's `schemas/` folder.

The schema files are the contract as users read it; this module gives Python code (the
client, tests, tools) validators that apply them the way the pipeline does. Two JSON Schema rules differ
from the pipeline and no schema keyword can change them, so the validator changes them:

- "integer" means a JSON integer literal. JSON Schema counts 5.0 as an integer; the pipeline
  rejects it. Parse with `json.loads` (which keeps 5.0 a float) before validating.
- "pattern" uses ECMA-262's `$` (end of string). Python's `re` also lets `$` match before a
  trailing newline, which would accept ids like "u1\\n" that the contract excludes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.protocols import Validator

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"  # of the checkout (not in the package)


def topics() -> list[str]:
    """Topics that have a schema file (contract names, without the topic prefix)."""
    return sorted(p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.schema.json"))


def load_schema(topic: str) -> dict[str, Any]:
    """The schema of `topic`'s values; a fresh dict, so callers may modify it."""
    path = SCHEMA_DIR / f"{topic}.schema.json"
    if not path.is_file():
        raise ValueError(f"no schema for topic {topic!r}; known: {', '.join(topics())}")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _is_integer_literal(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


@lru_cache(maxsize=256)
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile `pattern` with every `$` anchor (unescaped, outside a class) as `\\Z`."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        out.append(r"\Z" if char == "$" and not in_class else char)
        i += 1
    return re.compile("".join(out))


def _pattern(
    validator: Validator, pattern: str, instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


ContractValidator = validators.extend(
    Draft202012Validator,
    validators={"pattern": _pattern},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer_literal),
)


@cache
def validator(topic: str, schema_dir: Path = SCHEMA_DIR) -> Validator:
    """A draft 2020-12 validator of `topic`'s values (no format checking: none is used)."""
    path = schema_dir / f"{topic}.schema.json"
    if schema_dir == SCHEMA_DIR:
        schema = load_schema(topic)
    elif path.is_file():
        schema = json.loads(path.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"no schema {path}")
    ContractValidator.check_schema(schema)
    return ContractValidator(schema)
