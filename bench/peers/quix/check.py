"""Agreement of the Quix peer with the reference ledger, with differences told by cause.

    .venv/bin/python bench/peers/quix/check.py [--events 10000] [--env PEER_QUIX_ORDER=append]

Runs tests/peers/check_peer.py's check (fresh topics under a unique prefix, the
simulator's stream, the reference applied in an event-time merge of partitions) with
the peer writing a trace of the order in which its two ledger steps applied events
(PEER_QUIX_TRACE). The reference is then replayed in the peer's own order: a difference
that the replay reproduces is caused by the order alone, and is counted by stage:

- user order: the user stage applied a user's recharges, gifts and spend limits in
  another order than the event-time merge (concat aligns only the records already
  fetched and committed upstream; see README.md);
- creator order: a payout was decided before (or after) a credit that the merge puts on
  the other side of it (the credits are asynchronous: another hop);
- not order: anything the replay does not reproduce (a bug).

Run from the project root with the project's venv (the checker needs aiokafka and the
project's simulator; the peer itself runs in its own venv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from pipeline import economics  # noqa: E402
from pipeline import settings as pipeline_settings  # noqa: E402
from tests.peers import check_peer as cp  # noqa: E402
from tests.support.reference import KEY_FIELD, ReferenceLedger  # noqa: E402
from tools.simulate import SimConfig, generate  # noqa: E402

TOPIC_OF = {"recharge": "recharges", "gift": "gifts", "spend_limit": "spend-limits", "payout": "payouts"}


def replay(
    trace: list[tuple[str, str, str]], sent: list[cp.Sent], partitions: int, now_ms: int
) -> list[dict[str, Any]]:
    """The reference's outcomes with events applied in the peer's order."""
    copies: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for m in sorted(sent, key=lambda m: (m.topic, m.partition, m.offset)):
        if cp.malformed_reason(m, partitions) is None:
            ev = json.loads(m.value)
            copies[(m.topic, ev["event_id"])].append(ev)
    used: Counter[tuple[str, str]] = Counter()
    users, creators = ReferenceLedger(), ReferenceLedger()
    credited: dict[str, tuple[str, int]] = {}
    outcomes = []
    for stage, kind, eid in trace:
        if kind == "credit":
            creator, diamonds = credited[eid]
            creators.diamonds[creator] += diamonds
            continue
        topic = TOPIC_OF[kind]
        ev = copies[(topic, eid)][used[(topic, eid)]]
        used[(topic, eid)] += 1
        if topic == "spend-limits" and "daily_coin_limit" not in ev:
            ev = {**ev, "daily_coin_limit": users.own_limit.get(ev[KEY_FIELD[topic]])}
        out = (creators if stage == "creator" else users).apply(topic, ev, now_ms=now_ms)
        if kind == "gift" and out["status"] == "accepted":
            credited[eid] = (ev["creator_id"], out["diamonds"])
        outcomes.append(out)
    return outcomes


def misordered(trace: list[tuple[str, str, str]], sent: list[cp.Sent], partitions: int, now_ms: int) -> dict[str, int]:
    """Root causes, before their consequences: events a ledger step applied ahead of an
    event of the same key that the reference merge puts first (one such event changes
    the outcome of every later event of that user or creator)."""
    place: dict[tuple[str, str, int], tuple[int, str]] = {}  # (kind, event_id, copy) -> (merge place, key)
    seen: Counter[tuple[str, str]] = Counter()
    gift_creator: dict[str, str] = {}
    for i, m in enumerate(cp.merge_order(sent, now_ms)):
        if cp.malformed_reason(m, partitions) is not None:
            continue
        ev = json.loads(m.value)
        kind = {v: k for k, v in TOPIC_OF.items()}[m.topic]
        n = seen[(kind, ev["event_id"])]
        seen[(kind, ev["event_id"])] += 1
        place[(kind, ev["event_id"], n)] = (i, ev[KEY_FIELD[m.topic]])
        if kind == "gift":
            gift_creator[ev["event_id"]] = ev["creator_id"]
            place[("credit", ev["event_id"], n)] = (i, ev["creator_id"])
    seen.clear()
    sequences: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for stage, kind, eid in trace:
        n = seen[(kind, eid)]
        seen[(kind, eid)] += 1
        i, key = place[(kind, eid, n)]
        sequences[(stage, key)].append((i, kind))
    out: Counter[str] = Counter()
    for (stage, _key), seq in sequences.items():
        if stage == "user":
            later_min = float("inf")
            early = 0
            for i, _kind in reversed(seq):
                if i > later_min:
                    early += 1
                later_min = min(later_min, i)
            if early:
                out["users with events applied early"] += 1
                out["user events applied early"] += early
        else:  # credits commute with each other: only their order with the payouts counts
            for j, (i, kind) in enumerate(seq):
                if kind != "payout":
                    continue
                before = sum(1 for k, kd in seq[:j] if kd == "credit" and k > i)
                after = sum(1 for k, kd in seq[j + 1:] if kd == "credit" and k < i)
                if after:
                    out["payouts decided before earlier credits"] += 1
                    out["earlier credits applied after their payout"] += after
                if before:
                    out["payouts decided after later credits"] += 1
    return dict(out)


def by_id(records: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        out[str(r.get("event_id"))][json.dumps(r, sort_keys=True)] += 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--creators", type=int, default=50)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    prefix = f"peercheck-quix-{os.urandom(4).hex()}-"
    work = Path(tempfile.mkdtemp(prefix="quix-check-"))
    trace_path = work / "trace.txt"
    s = pipeline_settings.load()
    econ = economics.load(s.economics_file)
    cfg = SimConfig(events=args.events, users=args.users, creators=args.creators, duplicate_share=0.02,
                    malformed_share=0.01, spend_limit_share=0.01, payout_share=0.01, seed=args.seed)
    messages: list = list(generate(cfg, econ))
    step = max(1, len(messages) // 30)  # the checker's hostile records, spread the same way
    for n, (topic, key, value, part) in enumerate(cp.hostile_messages(0, args.partitions)):
        at = min(len(messages), (n + 1) * step)
        prev_ts = cp._extracted_ts(messages[at - 1][2], int(time.time() * 1000) + cp.MAX_AHEAD_MS) or 0
        value = value.replace(b'"ts": 0', b'"ts": %d' % prev_ts).replace(b'"ts":0', b'"ts":%d' % prev_ts)
        messages.insert(at, (topic, key, value, part))
    proc: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(cp.create_topics(args.bootstrap, prefix, args.partitions))
        sent = asyncio.run(cp.produce(args.bootstrap, prefix, messages))
        now_ms = int(time.time() * 1000)
        want, malformed = cp.expected_outcomes(sent, args.partitions, now_ms)
        print(f"produced {len(sent)} messages under {prefix}: {len(want)} outcomes, "
              f"{len(malformed)} dead letters expected", flush=True)
        env = {**os.environ, "PEER_BOOTSTRAP": args.bootstrap, "PEER_INPUT_PREFIX": prefix,
               "PEER_OUTPUT_PREFIX": prefix, "PEER_APP_ID": prefix + "app", "PEER_PARTITIONS": str(args.partitions),
               "PEER_STATE_DIR": str(work / "state"), "PEER_QUIX_TRACE": str(trace_path),
               **dict(e.split("=", 1) for e in args.env)}
        with open(work / "peer.log", "wb") as log:
            started = time.perf_counter()

            def start() -> subprocess.Popen[bytes]:
                nonlocal proc
                proc = subprocess.Popen([str(ROOT / "bench/peers/quix/run.sh")], cwd=ROOT, env=env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
                return proc

            outcomes, letters, done_at, _ = asyncio.run(cp._collect(args.bootstrap, prefix, len(want), len(malformed),
                                                                    start, args.timeout, settle_s=3.0))
            assert proc is not None
            exit_code = cp._stop(proc)
        counts, examples = cp.compare(want, outcomes.records)
        n_letters, letter_problems = cp.check_letters(malformed, letters.records, prefix)
        print(json.dumps(counts))
        print(f"dead letters: {len(letters.records)} seen, {n_letters} of {len(malformed)} matching, "
              f"{len(letter_problems)} problems; exit on SIGTERM: {exit_code}")
        if outcomes.first_at and done_at:
            print(f"all outcomes {done_at - started:.1f}s after start; "
                  f"first to last {done_at - outcomes.first_at:.1f}s "
                  f"({len(want) / max(done_at - outcomes.first_at, 1e-9):.0f} outcomes/s)")
        trace = [tuple(line.split()[:3]) for line in trace_path.read_text().splitlines() if line.strip()]
        replayed = replay(trace, sent, args.partitions, now_ms)  # type: ignore[arg-type]
        want_by, got_by, replay_by = by_id(want), by_id(outcomes.records), by_id(replayed)
        causes: Counter[str] = Counter()
        shown = 0
        for eid, w in want_by.items():
            g = got_by.get(eid, Counter())
            if set(g) == set(w):
                continue
            kind = json.loads(next(iter(w)))["type"]
            if set(replay_by.get(eid, Counter())) == set(g):
                cause = "creator order" if kind == "payout" else "user order"
            else:
                cause = "not order"
            causes[f"{cause}: {kind}"] += 1
            if cause == "not order" and shown < 5:
                shown += 1
                print(f"  not order {eid}: want {sorted(w)} got {sorted(g)} replay {sorted(replay_by.get(eid, {}))}")
        print("differences by cause:", json.dumps(dict(sorted(causes.items()))))
        print("root causes:", json.dumps(misordered(trace, sent, args.partitions, now_ms)))  # type: ignore[arg-type]
        for e in examples[:4]:
            print("  ", e[:400])
        print(f"peer log and trace: {work}")
        return 0 if not causes and not letter_problems else 1
    finally:
        if proc is not None and proc.poll() is None:
            cp._stop(proc)
        asyncio.run(cp.delete_topics(args.bootstrap, prefix))
        shutil.rmtree(work / "state", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
