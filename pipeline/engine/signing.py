"""Internal records signed by the deployment, so a forged one is told apart.

Kafka ACLs keep other principals off the internal topics (CONTRACT.md, Trust); where
they are missing or wrong, anyone who can write a changelog could set any balance at
the next restore, with content that passes every check. With a key
(PIPELINE_INTERNAL_KEY), every record the engine writes to an internal topic (the
stages' changelogs and the inputs they read from each other) carries a keyed BLAKE2b
tag over its topic, partition, key and value, and every such record read is verified:
one without a valid tag is a dead letter. Bound to topic and partition, a tag cannot be
moved elsewhere; an old record of the same key copied again by someone who can write
the topic still verifies (only ACLs stop that). Two keys while rotating: the first
signs, either verifies.
"""

from __future__ import annotations

import hashlib
import hmac

from pipeline.invariants import require

HEADER = "ledger-sig"
TAG_BYTES = 16
UNSIGNED_ERROR = ("not signed by this deployment: internal records carry a tag of PIPELINE_INTERNAL_KEY "
                  "(a forged record, or one written with another key)")


def signer_of(keys: tuple[str, ...], accept_unsigned: bool) -> Signer | None:
    return Signer(tuple(k.encode() for k in keys), accept_unsigned) if keys else None


class Signer:
    def __init__(self, keys: tuple[bytes, ...], accept_unsigned: bool = False) -> None:
        require(bool(keys), "at least one key")
        require(all(len(k) >= 32 for k in keys), 'all(len(k) >= 32 for k in keys)')
        self.keys = keys
        self.accept_unsigned = accept_unsigned  # PIPELINE_ACCEPT_UNSIGNED: a transition only

    @staticmethod
    def _tag(key: bytes, topic: str, partition: int, record_key: bytes | None, value: bytes | None) -> bytes:
        h = hashlib.blake2b(key=key[:64], digest_size=TAG_BYTES)
        for part in (topic.encode(), str(partition).encode(), b"\x00" if record_key is None else b"\x01" + record_key,
                     b"\x00" if value is None else b"\x01" + value):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()

    def headers(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
        return [(HEADER, self._tag(self.keys[0], topic, partition, key, value))]

    def verified(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
                 headers: object) -> bool:
        """`headers`: the record's, as aiokafka gives them ((name, bytes) pairs)."""
        tags = [v for name, v in (headers or ()) if name == HEADER]  # type: ignore[attr-defined]
        if not tags:
            return self.accept_unsigned
        if len(tags) != 1 or not isinstance(tags[0], bytes):
            return False
        return any(hmac.compare_digest(tags[0], self._tag(k, topic, partition, key, value)) for k in self.keys)
