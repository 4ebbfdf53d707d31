"""Memory of the dedupe index over days of batches, in compressed time.

`run` starts a subprocess (so the RSS it reads is the index's alone) that drives the
real DedupeIndex over the RocksDB KV a worker uses (kv.RocksKV, in a temporary
directory; the window from economics.toml) with a simulated clock: `days` of batches at
`batches_per_s`, each of `ids_per_batch` new event ids (event times up to a minute
late, every 100th batch also a duplicate of a recent id), fed through `changelog()`
(values encoded as the stage does) and `commit()` like a stage. One event dated in the
year 9999 comes a quarter of the way in: the ids held must not drop. Every
1/`samples` of the run it samples VmRSS (/proc/self/status), the entries the index
holds in memory (buckets; segments in the old implementation) and its ids.

What is measured is the process: Python, the index and RocksDB (its memtables and
table readers, and the block cache, bounded in kv.py; `rocksdb_mb` in the timeline),
so the index's own memory is what grows beside that base. The window is 8 days: a run
of 10 days shows the index fill up, then hold steady while it expires as much as it
adds. The number of segments (one per batch) is what the in-memory index used to grow
with; the ids, in RocksDB, are the same whatever the split. The defaults (5 batches/s
of 4 ids: 4.3 M batches, the same 13.8 M ids in the window) run in about 8 minutes on
2 cores; 20 batches/s of 1 id (17.3 M batches) takes about 19 minutes.

Measured once (2 cores, seed 1, 10 simulated days):
- buckets, 5 batches/s x 4 ids: 193 entries from day 8 on; RSS 146 MB at day 1,
  211 MB at day 5, 215 MB at the end, at most 235 MB over the last half; 472 s.
- buckets, 20 batches/s x 1 id: 193 entries; RSS 163 MB at day 1, 202 MB at day 5,
  245 MB at the end, at most 264 MB over the last half; 1,128 s.
- one entry per segment (store.py before buckets, run with impl="<a copy>:DedupeIndex"),
  20 batches/s x 1 id: 1.73 M entries and 511 MB at day 1, 9.85 M entries and
  2,029 MB at day 5.7 (about 190 bytes per segment beside the same base), about 3 GB
  once the window is full (3.06 GB seen near day 8). Not measured to the end: its
  expiry also walks its dict from the front, and after the front segments are popped
  CPython iterates over their empty slots (2.7 ms per batch with a million of them),
  which makes the expiring phase slow in compressed time.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DAY_S = 86_400
FAR_FUTURE_MS = 253_402_300_799_999  # 9999-12-31
START_MS = 1_700_000_000_000
DEFAULT_IMPL = "pipeline.engine.dedupe:DedupeIndex"

def run(args_seed: int, days: float = 10.0, batches_per_s: float = 5.0, ids_per_batch: int = 4,
        samples: int = 200, impl: str = DEFAULT_IMPL, timeout_s: float = 3 * 3_600) -> dict[str, Any]:
    """The figures of one run, measured in a subprocess. `impl` is "module:Class" or
    "path/to/file.py:Class" (the index class to drive, DedupeIndex's interface)."""
    params = {"seed": args_seed, "days": days, "batches_per_s": batches_per_s, "ids_per_batch": ids_per_batch,
              "samples": samples, "impl": impl}
    done = subprocess.run([sys.executable, "-m", "tools.benchmark.dedupe", "--child", json.dumps(params)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dedupe benchmark failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _index_class(impl: str) -> Any:
    where, _, name = impl.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location("dedupe_bench_impl", where)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _entries(index: Any) -> int:
    """Entries in memory: buckets, or segments (the old implementation)."""
    held = getattr(index, "buckets", None)
    return len(index.segments if held is None else held)


def _measure(seed: int, days: float, batches_per_s: float, ids_per_batch: int, samples: int,
             impl: str) -> dict[str, Any]:
    from pipeline import economics
    from pipeline.engine import kv as kv_module
    from pipeline.engine.codec import dumps

    window_ms = economics.load().dedupe_keep_ms
    rng = random.Random(seed)
    total = int(days * DAY_S * batches_per_s)
    every = max(1, total // samples)
    future_at = total // 4
    step_s = 1 / batches_per_s
    now = [START_MS / 1000]
    timeline: list[dict[str, Any]] = []
    records = tombstones = duplicates = 0
    recent: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dedupe-bench-") as tmp:
        kv = kv_module.RocksKV(Path(tmp) / "db")
        index = _index_class(impl)(window_ms, clock=lambda: now[0], kv=kv, prefix=b"i:")
        for i in range(total):
            now[0] = START_MS / 1000 + i * step_s
            now_ms = int(now[0] * 1000)
            late = int(rng.random() * 60_000)
            keys = [f"g|u{(i * 7919 + j) % 1_000_000}|{seed}-{i}-{j}" for j in range(ids_per_batch)]
            if i % 100 == 99 and recent:
                keys.append(recent[rng.randrange(len(recent))])
            for key in keys:
                ts = FAR_FUTURE_MS if i == future_at else now_ms - late
                index.observe(ts)
                if index.seen(key):
                    duplicates += 1
                else:
                    index.add(key, ts)
            if i % 1000 == 0:
                recent = keys[:1] + recent[:99]
            for _, value in index.changelog():  # encoded like Stage.changelog
                records += 1
                if value is None:
                    tombstones += 1
                else:
                    dumps(value)
            index.commit()
            if i % every == 0 or i == total - 1:
                timeline.append({"day": round(i * step_s / DAY_S, 3), "rss_mb": round(_rss_mb(), 1),
                                 "entries": _entries(index), "ids": len(index),
                                 "rocksdb_mb": round((sum(kv.memory().values()) + kv_module.block_cache_bytes())
                                                     / 2**20, 1),
                                 "wall_s": round(time.monotonic() - started, 1)})
                print(json.dumps(timeline[-1]), file=sys.stderr, flush=True)  # progress
        entries_end = _entries(index)
        kv.close()
    wall_s = time.monotonic() - started

    def at(share: float) -> float:
        return float(timeline[min(len(timeline) - 1, int(share * (len(timeline) - 1)))]["rss_mb"])

    half = timeline[len(timeline) // 2:]
    return {
        "implementation": impl, "seed": seed, "window_days": window_ms / 86_400_000,
        "batches": total, "batches_per_s": batches_per_s, "ids_per_batch": ids_per_batch,
        "simulated_days": round(total * step_s / DAY_S, 3), "wall_s": round(wall_s, 1),
        "batches_per_wall_s": round(total / max(wall_s, 1e-9)),
        "rss_mb_at_10pct": at(0.1), "rss_mb_at_50pct": at(0.5), "rss_mb_end": at(1.0),
        "rss_mb_max_last_half": max(s["rss_mb"] for s in half),
        "entries_end": entries_end, "entries_max": max(s["entries"] for s in timeline),
        "ids_end": timeline[-1]["ids"], "changelog_records": records, "tombstones": tombstones,
        "duplicates_seen": duplicates, "timeline": timeline,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(json.dumps(_measure(**json.loads(argv[1]))))
        return 0
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.benchmark.dedupe")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=float, default=10.0)
    parser.add_argument("--batches-per-s", type=float, default=5.0)
    parser.add_argument("--ids-per-batch", type=int, default=4)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--impl", default=DEFAULT_IMPL)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.seed, args.days, args.batches_per_s, args.ids_per_batch, args.samples, args.impl),
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
