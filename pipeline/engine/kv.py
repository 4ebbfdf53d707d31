"""Where a partition's committed state lives: bytes keys to bytes values.

`RocksKV` keeps it on disk (RocksDB through rocksdict), so a worker's memory does not
grow with its users and event ids; `MemoryKV` is a dict, for unit tests. Neither is
durable on its own: a partition's state is rebuilt from its changelog topic whenever a
worker takes the partition on (the changelog is the source of truth), so RocksDB runs
without a write-ahead log and its directory is removed when the partition is dropped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from rocksdict import AccessType, BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

Op = tuple[bytes, bytes | None]  # (key, value); None deletes


class KV(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def write(self, ops: list[Op]) -> None: ...

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every pair whose key starts with `prefix`, in key order."""
        ...

    def memory(self) -> dict[str, int]:
        """RAM held outside Python objects, by kind."""
        ...

    def close(self) -> None: ...


class MemoryKV:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def write(self, ops: list[Op]) -> None:
        for key, value in ops:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self.data if k.startswith(prefix)):
            yield key, self.data[key]

    def memory(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self.data.clear()


# RocksDB's memory, bounded: per database at most MAX_WRITE_BUFFERS memtables of
# WRITE_BUFFER_BYTES, and one block cache of BLOCK_CACHE_BYTES shared by every database
# of the process (a worker has two per partition).
WRITE_BUFFER_BYTES = 8 * 1024 * 1024
MAX_WRITE_BUFFERS = 2
BLOCK_CACHE_BYTES = 64 * 1024 * 1024
_block_cache: Cache | None = None
MEMORY_PROPERTIES = {"memtables": "cur-size-all-mem-tables", "table_readers": "estimate-table-readers-mem"}


def block_cache_bytes() -> int:
    return 0 if _block_cache is None else int(_block_cache.get_usage())


def _table_options() -> BlockBasedOptions:
    global _block_cache
    if _block_cache is None:
        _block_cache = Cache(BLOCK_CACHE_BYTES)
    table = BlockBasedOptions()
    table.set_block_cache(_block_cache)
    table.set_bloom_filter(10, False)  # most lookups are of ids not yet seen
    return table


class RocksKV:
    def __init__(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)  # a previous owner's leftovers: rebuilt from the changelog
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(MAX_WRITE_BUFFERS)
        options.set_block_based_table_factory(_table_options())
        self.db = Rdict(str(path), options=options, access_type=AccessType.read_write())
        self._write_options = WriteOptions()
        self._write_options.disable_wal = True  # type: ignore[method-assign,assignment]  # a property in the extension
        self._open = True

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def write(self, ops: list[Op]) -> None:
        if not ops:
            return
        batch = WriteBatch(raw_mode=True)
        for key, value in ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self.db.write(batch, self._write_options)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self.db.iter()
        it.seek(prefix)
        while self._open and it.valid():  # a scan ends when its partition is dropped
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()

    def memory(self) -> dict[str, int]:
        """What this database holds in RAM, by RocksDB's own accounting (the block
        cache is shared: reported once by the caller)."""
        if not self._open:
            return {}
        return {kind: self.db.property_int_value(f"rocksdb.{prop}") or 0 for kind, prop in MEMORY_PROPERTIES.items()}

    def close(self) -> None:
        if self._open:
            self._open = False
            self.db.close()
            shutil.rmtree(self.path, ignore_errors=True)
