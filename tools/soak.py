"""`python -m pipeline soak --minutes N`: a live event against several workers, one of
them SIGKILLed and restarted, or removed and added back, every `--kill-every` seconds
(alternately), and the local Redis stopped for `--redis-outage` seconds halfway
(restarted empty, for the pipeline to refill), then everything the pipeline published
checked against an independent account of what it should have published.

Traffic (default): the causal producer (tools/causal.py), which waits for each round's
acknowledgements, so the contract fixes every outcome; plus producer retries (resends
of events acknowledged a round earlier) and malformed records, neither of which the
causal stream makes itself. Checked at the end, against the reference ledger
(tests/support/reference.py, written from CONTRACT.md alone) applying the rounds in
order, never against the pipeline's own code or state:
- per event id, exactly the reference's outcome records (a crash may repeat one,
  identical); a retry's record is `duplicate`;
- per malformed record (by its SHA-256), exactly one dead letter;
- per accepted gift, diamonds = floor(coins x 50 / 100), CONTRACT.md's numbers;
- after Redis came back empty: every user's and creator's read-model hash, field by
  field, and every leaderboard of the contract, member by member, equal the reference's;
- the traffic reached the rules it is meant to test (accepted and refused gifts,
  payouts, duplicates, dead letters): a soak that exercised nothing proves nothing;
- worker memory flat over the second half of each worker's last lifetime.

`--free`: the simulator's non-causal traffic (outcomes depend on timing, so there is no
reference): counts and sums only. `--broken NAME`: the workers run from a copy of the
tree with one deliberate fault (tools/broken.py); the run must fail.

Results go to bench/results/<date>-soak[-free][-broken-NAME].json and .md; exit 1 if a
check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from agents.ingest.decode import decode
from pipeline import economics, redis_client, settings, topics
from pipeline.engine.stage import Malformed
from pipeline.settings import ConfigError, Settings
from tools import broken, causal
from tools.benchmark import RESULTS, cleanup, deployment, free_stem, machine, runs
from tools.benchmark.probes import Lag, ProcStats
from tools.infra import dev
from tools.local_worker import get
from tools.simulate import Message, SimConfig, generate

if TYPE_CHECKING:
    from tests.support.reference import ReferenceLedger

SAMPLE_S = 5.0
DRAIN_TIMEOUT_S = 600.0
CONVERGE_TIMEOUT_S = 180.0
OUTCOMES_TIMEOUT_S = 120.0  # payouts are decided after a repartition: their outcomes may trail the inputs' commit
CAUSAL_ROUND = 300  # messages per acknowledged round
HEALTH_TIMEOUT_S = 180.0
RETRY_SHARE = 0.01  # resends per round, of its size
MALFORMED_SHARE = 0.001  # of the messages
MIN_MALFORMED = 10

# CONTRACT.md, Economics: "a gift of `c` coins credits the creator floor(c * 50 / 100)
# diamonds". Written here, not read from pipeline.economics: the check must not share
# the pipeline's formula or its configuration (the soak refuses PIPELINE_ECONOMICS_FILE).
CONTRACT_SHARE_PERCENT = 50

# Memory is "flat" when, over the second half of a worker's lifetime, its peak RSS stays
# less than this above the RSS at the half-way mark: room for a batch's garbage, a
# refill after the Redis outage or a rebalance, while a leak of 10 MB a minute fails a
# 10-minute lifetime; 10 % scales the room to a bigger worker. Growth that stops is not
# a leak, but this cannot tell them apart: the state cache (PIPELINE_STATE_CACHE_MB,
# 128) fills as users arrive, so a run shorter than its filling fails (past timelines:
# +50 and +62 MB over the second half of 10-minute runs, +124 MB in a 3-minute one).
RSS_FLAT_MB = 50.0
RSS_FLAT_SHARE = 0.10
# A shorter lifetime is restore and warm-up only (its second half under a minute).
RSS_MIN_LIFETIME_S = 120.0

USER_FIELDS = ("coins", "recharged_coins", "spent_coins")
CREATOR_FIELDS = ("diamonds", "lifetime_diamonds", "paid_out_diamonds")
# CONTRACT.md, Read model: the leaderboards' Redis keys (under the key prefix).
BOARD_KEY = re.compile(r"lb:(stream:.+:gifters|gifters:day:\d{4}-\d{2}-\d{2}|creators:all"
                       r"|creators:day:\d{4}-\d{2}-\d{2})")
EXAMPLES = 5

Balances = Mapping[str, Mapping[str, int]]  # id -> field -> value
Boards = Mapping[str, Mapping[str, int]]  # board key -> member -> score


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=10.0, help="minutes of traffic (default 10)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--rate", type=float, default=2_000, help="events produced per second (default 2000)")
    p.add_argument("--kill-every", type=float, default=60.0, help="seconds between SIGKILLs (default 60)")
    p.add_argument("--redis-outage", type=float, default=30.0, metavar="SECONDS",
                   help="stop the local Redis this long halfway through, restart it empty (default 30; 0: none)")
    p.add_argument("--seed", type=int, default=5, help="random seed (default 5)")
    p.add_argument("--free", action="store_true",
                   help="the simulator's non-causal traffic instead: outcomes depend on timing, so only counts and "
                        "sums are checked, not each outcome against the reference ledger")
    p.add_argument("--broken", choices=sorted(broken.BREAKAGES), metavar="NAME",
                   help="run the workers from a copy of the tree with this deliberate fault (tools/broken.py: "
                        f"{', '.join(sorted(broken.BREAKAGES))}); the soak must fail")
    p.add_argument("--causal", action="store_true", help=argparse.SUPPRESS)  # the default now; old commands run


class RssSample(NamedTuple):
    t: float
    worker: int
    life: int  # the worker's start count: a restarted worker is a new process, judged afresh
    mb: float


class Fleet:
    """Worker processes on ports PIPELINE_WEB_PORT + i, killed and restarted at will;
    run from `root` (a broken copy) when given."""

    def __init__(self, s: Settings, n: int, log_dir: Path, root: Path | None = None) -> None:
        self.s, self.n, self.log_dir, self.root = s, n, log_dir, root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.lives: Counter[int] = Counter()

    def settings_of(self, i: int) -> Settings:
        return Settings(**{**self.s.__dict__, "web_port": self.s.web_port + i})

    def env(self, i: int) -> dict[str, str]:
        env = {**os.environ, **runs.worker_env(self.s, self.s.web_port + i)}
        return env if self.root is None else broken.worker_env(self.root, env)

    def start(self, i: int) -> None:
        with open(self.log_dir / f"soak-worker-{i}.log", "ab") as log:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker"], stdout=log, stderr=subprocess.STDOUT,
                cwd=self.root, env=self.env(i))
        self.lives[i] += 1

    async def healthy(self, i: int) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.procs[i].poll() is not None:
                raise SystemExit(f"worker {i} exited with {self.procs[i].returncode}; see {self.log_dir}")
            try:
                if get(self.settings_of(i), "/health").get("status") == "ok":
                    return
            except (OSError, ValueError):
                pass
            await asyncio.sleep(0.5)
        raise SystemExit(f"worker {i} not healthy after {HEALTH_TIMEOUT_S:.0f}s; see {self.log_dir}")

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop_one(self, i: int) -> None:
        """A graceful scale-down: SIGTERM, the worker leaves the group."""
        self.procs[i].terminate()
        self.procs[i].wait(timeout=60)

    def rss(self, t: float) -> list[RssSample]:
        """Live workers only (0 MB: gone between the two looks): a removed one has no
        memory to judge."""
        live = [(i, round(ProcStats([p.pid]).rss_mb(), 1)) for i, p in sorted(self.procs.items()) if p.poll() is None]
        return [RssSample(t, i, self.lives[i], mb) for i, mb in live if mb > 0]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


# --- traffic ----------------------------------------------------------------------


def subject(event: causal.Event) -> str:
    topic, ev = event
    return str(ev[causal.KEY_FIELDS[topic]])


def touched(events: Iterable[causal.Event]) -> set[str]:
    """Every user and creator whose state or outcome a round's events may change or read."""
    out: set[str] = set()
    for topic, ev in causal.outcome_events(list(events)):
        out.add(subject((topic, ev)))
        if topic == topics.GIFTS:
            out.add(ev["creator_id"])
    return out


class RetryingStream(causal.CausalStream):
    """The causal stream plus producer retries: each round also resends some events of
    the round before, already acknowledged. Only events whose subject (user, or paid
    creator) nothing in the new round touches: the copy's outcome (`duplicate`, with
    the balance at that point) is then fixed by causal order like any other, since
    everything of its subject before it was acknowledged first and everything after is
    produced later and dated later."""

    def __init__(self, cfg: causal.CausalConfig, econ: economics.Economics, share: float = RETRY_SHARE,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(cfg, econ, clock)
        self.share = share
        self.retry_rng = random.Random(cfg.seed + 1)  # its own: the stream without retries stays the same
        self.previous: list[causal.Event] = []
        self.resent = 0

    def round(self) -> list[causal.Event]:
        events = super().round()
        busy = touched(events)
        free = [e for e in causal.outcome_events(self.previous) if subject(e) not in busy]
        again = self.retry_rng.sample(free, min(len(free), int(len(causal.outcome_events(events)) * self.share)))
        self.previous = events
        self.resent += len(again)
        return events + again


def malformed_messages(n: int, prefix: str, ts: int) -> list[Message]:
    """`n` distinct malformed records (each its own payload, so its own SHA-256), of the
    contract's kinds: not JSON, out of range, key unequal to its id field, a field
    missing, a field name repeated. Keys are ids no causal event uses."""
    out: list[Message] = []
    for i in range(n):
        eid, user = f"{prefix}{i}", f"{prefix}u{i}"
        kind = i % 5
        if kind == 0:
            out.append((topics.GIFTS, user.encode(), b'{"event_id":"%s","sender_id":oops' % eid.encode()))
        elif kind == 1:
            out.append((topics.RECHARGES, user.encode(), json.dumps(
                {"event_id": eid, "user_id": user, "coins": -5, "amount_cents": 0, "currency": "USD",
                 "ts": ts}).encode()))
        elif kind == 2:
            out.append((topics.GIFTS, f"{user}-other".encode(), json.dumps(
                {"event_id": eid, "sender_id": user, "creator_id": f"{prefix}c", "stream_id": f"{prefix}s",
                 "gift_id": "rose", "quantity": 1, "ts": ts}).encode()))
        elif kind == 3:
            out.append((topics.PAYOUTS, f"{prefix}c{i}".encode(), json.dumps(
                {"event_id": eid, "creator_id": f"{prefix}c{i}", "ts": ts}).encode()))
        else:
            out.append((topics.SPEND_LIMITS, user.encode(), b'{"event_id":"%s","event_id":"%s-2","user_id":"%s",'
                        b'"daily_coin_limit":5,"ts":%d}' % (eid.encode(), eid.encode(), user.encode(), ts)))
    return out


async def send_spread(s: Settings, messages: Sequence[Message], seconds: float) -> int:
    """The malformed records on a producer of their own, spread over the run so some
    land in every phase (kills, the outage): having no effect, they need no place in
    the causal rounds."""
    producer = AIOKafkaProducer(**s.kafka_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(s.topic(topic), value, key=key)
            await asyncio.sleep(seconds / max(1, len(messages)))
    finally:
        await producer.stop()
    return len(messages)


class Traffic(Protocol):
    """What a run drives: each kind of traffic knows what its outcomes can be checked
    against (the reference for causal traffic, only counts and sums for free)."""

    def start(self, s: Settings) -> None: ...
    def producing(self) -> bool: ...
    async def finish(self) -> None: ...
    def cancel(self) -> None: ...
    def produced(self) -> dict[str, int]: ...
    async def checks(self, s: Settings) -> dict[str, dict[str, Any]]: ...


class _Tasks:
    """Producer tasks watched from the sampling loop, which must stop on their failure
    rather than wait out the drain timeout."""

    tasks: list[asyncio.Future[Any]]

    def producing(self) -> bool:
        """True while a task runs; re-raises a task's failure at once."""
        for t in self.tasks:
            if t.done() and not t.cancelled() and (exc := t.exception()) is not None:
                raise exc
        return not all(t.done() for t in self.tasks)

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()


class CausalTraffic(_Tasks):
    """The default: every outcome fixed, each compared with the reference's."""

    def __init__(self, args: argparse.Namespace, econ: economics.Economics) -> None:
        total = int(args.rate * args.minutes * 60)
        self.stream = RetryingStream(causal.CausalConfig(
            rounds=max(1, total // CAUSAL_ROUND), per_round=CAUSAL_ROUND, users=50_000, creators=2_000,
            rate=args.rate, seed=args.seed, id_prefix="k"), econ)
        self.malformed = malformed_messages(max(MIN_MALFORMED, int(total * MALFORMED_SHARE)), "kx",
                                            int(time.time() * 1000))
        self.seconds = args.minutes * 60
        self.rounds: list[list[causal.Event]] = []
        self.tasks = []

    def start(self, s: Settings) -> None:
        self.tasks = [asyncio.ensure_future(causal.produce(s, self.stream)),
                      asyncio.ensure_future(send_spread(s, self.malformed, self.seconds))]

    async def finish(self) -> None:
        self.rounds, _ = await self.tasks[0]
        await self.tasks[1]

    def produced(self) -> dict[str, int]:
        return {"well_formed": sum(len(r) for r in self.rounds), "resent": self.stream.resent,
                "malformed": len(self.malformed)}

    async def checks(self, s: Settings) -> dict[str, dict[str, Any]]:
        from tests.support.reference import ReferenceLedger  # independent of the pipeline: written from CONTRACT.md

        reference = ReferenceLedger()
        want, kinds = expected_outcomes(reference, self.rounds)
        checks = await read_model_checks(s, *reference_read_model(reference, self.rounds))
        outcomes = await committed_outcomes(s, want.keys())
        dead = await topics.read_values(s, topics.DEAD_LETTERS)
        return {
            "every_outcome_equals_the_reference": match_outcomes(want, outcomes),
            "one_dead_letter_per_malformed": match_dead_letters(self.malformed, dead),
            "creator_share_per_gift": share_check(outcomes),
            **checks,
            "traffic_exercises_the_rules": coverage(kinds, len(self.malformed)),
        }


class FreeTraffic(_Tasks):
    """The simulator's live event: 1 % producer-retry duplicates, 0.1 % malformed;
    not causal, so only counts and sums can be checked."""

    def __init__(self, args: argparse.Namespace, econ: economics.Economics) -> None:
        self.args, self.econ = args, econ
        self.expected: Counter[str] = Counter()
        self.tasks = []

    def _messages(self) -> Iterator[Message]:
        """Counts what it yields (well-formed by decoding, as the worker will)."""
        cfg = SimConfig(events=int(self.args.rate * self.args.minutes * 60), users=50_000, creators=2_000,
                        seed=self.args.seed, duplicate_share=0.01, malformed_share=0.001, payout_share=0.002,
                        id_prefix="s",
                        # Live: event time keeps to the clock from the first message on.
                        start_ts=int(time.time() * 1000), tick_ms=1000 / self.args.rate)
        for topic, key, value in generate(cfg, self.econ):
            self.expected["malformed" if isinstance(decode(topic, key, value), Malformed) else "well_formed"] += 1
            yield topic, key, value

    def start(self, s: Settings) -> None:
        self.tasks = [asyncio.ensure_future(runs.produce(s, self._messages(), self.args.rate))]

    async def finish(self) -> None:
        await self.tasks[0]

    def produced(self) -> dict[str, int]:
        return dict(self.expected)

    async def checks(self, s: Settings) -> dict[str, dict[str, Any]]:
        outcomes = await topics.read_values(s, topics.OUTCOMES)
        dead = await topics.read_values(s, topics.DEAD_LETTERS)
        return {**counted(self.expected, outcomes, dead), "creator_share_per_gift": share_check(outcomes),
                **await conserved(s, outcomes)}


# --- expectations, from the reference ledger ---------------------------------------


# CONTRACT.md, Output topics: the fields of a `ledger-outcomes` record. "Extra fields may
# be added; consumers ignore fields they do not know": so does the comparison.
OUTCOME_FIELDS = frozenset({"event_id", "type", "status", "reason", "subject_id", "coins", "diamonds", "usd_cents",
                            "balance_after", "ts", "bonus_coins", "promo_id"})


def canonical(record: Mapping[str, Any]) -> str:
    """The record's contract fields as JSON, the form outcomes are compared in."""
    return json.dumps({k: v for k, v in record.items() if k in OUTCOME_FIELDS}, sort_keys=True)


def expected_outcomes(reference: ReferenceLedger,
                      rounds: Iterable[Iterable[causal.Event]]) -> tuple[dict[str, list[str]], Counter[str]]:
    """Each event id's expected records in order (a retried one has two), as canonical
    JSON; and how many of each type:status:reason."""
    want: dict[str, list[str]] = {}
    kinds: Counter[str] = Counter()
    for events in rounds:
        for topic, ev in events:
            found = reference.feed(topic, ev)
            if found is None:  # a promotion: no outcome
                continue
            record = found
            want.setdefault(ev["event_id"], []).append(canonical(record))
            kinds[f"{record['type']}:{record['status']}:{record['reason']}"] += 1
    return want, kinds


def reference_read_model(reference: ReferenceLedger,
                         rounds: Iterable[Iterable[causal.Event]]) -> tuple[Balances, Balances, Boards]:
    """Users', creators' and boards' contents per the reference, for everyone the
    traffic named (a hash the pipeline has beyond them must be all zeros)."""
    users: set[str] = set()
    creators: set[str] = set()
    for events in rounds:
        for topic, ev in causal.outcome_events(list(events)):
            (creators if topic == topics.PAYOUTS else users).add(subject((topic, ev)))
            if topic == topics.GIFTS:
                creators.add(ev["creator_id"])
    boards = {key: dict(entries) for key, entries in reference.boards().items()}
    return ({u: reference.user(u) for u in users}, {c: reference.creator(c) for c in creators}, boards)


def contract_diamonds(coins: int) -> int:
    """CONTRACT.md, Economics: floor(c * 50 / 100), in integers (no float rounding)."""
    return coins * CONTRACT_SHARE_PERCENT // 100


# --- checks (pure) -----------------------------------------------------------------


def match_outcomes(want: Mapping[str, Sequence[str]], outcomes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """By event id: each id exactly the distinct records the reference gives it (a crash
    may repeat one, identical; an original and its retry differ in status), and no
    record for an id the traffic never sent. Matched per id, a lost event and an extra
    copy of another cannot cancel out as they do in counts."""
    got: dict[str, set[str]] = {}
    records = 0
    for o in outcomes:
        got.setdefault(o["event_id"], set()).add(canonical(o))
        records += 1
    wrong = [eid for eid, rs in want.items() if got.get(eid) != set(rs)]
    unknown = [eid for eid in got if eid not in want]
    return {"ok": not wrong and not unknown, "events": len(want), "records": records,
            "resent": sum(1 for rs in want.values() if len(rs) > 1), "differ": len(wrong), "unknown_ids": len(unknown),
            "examples": [{"event_id": e, "expected": [json.loads(r) for r in want[e]],
                          "got": [json.loads(r) for r in sorted(got.get(e, ()))]} for e in wrong[:EXAMPLES]]
            + [{"event_id": e, "expected": None, "got": sorted(got[e])} for e in unknown[:EXAMPLES]]}


def match_dead_letters(malformed: Sequence[Message], dead: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One dead letter per malformed record, matched by the payload's SHA-256."""
    want: Counter[str] = Counter(hashlib.sha256(value).hexdigest() for _, _, value in malformed)
    got: Counter[str] = Counter(str(d.get("payload_sha256")) for d in dead)
    missing, extra = (want - got).total(), (got - want).total()
    return {"ok": not missing and not extra, "malformed": len(malformed), "dead_letters": got.total(),
            "missing": missing, "extra": extra}


def share_check(outcomes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Every accepted gift credited the contract's share; with no accepted gift at all
    the check fails: nothing was shown."""
    gifts = wrong = 0
    example: Mapping[str, Any] | None = None
    for o in outcomes:
        if o["type"] == "gift" and o["status"] == "accepted":
            gifts += 1
            if o["diamonds"] != contract_diamonds(o["coins"]):
                wrong += 1
                example = example or o
    return {"ok": gifts > 0 and not wrong, "accepted_gifts": gifts, "wrong": wrong, "example": example}


def compare_balances(want: Balances, got: Balances, fields: Sequence[str]) -> dict[str, Any]:
    """Field by field, for every id either side has; an absent hash or field reads as
    zero (the HTTP read model answers zeros for an unknown id)."""
    wrong = [(i, f, want.get(i, {}).get(f, 0), got.get(i, {}).get(f, 0))
             for i in sorted(set(want) | set(got)) for f in fields
             if want.get(i, {}).get(f, 0) != got.get(i, {}).get(f, 0)]
    return {"ok": not wrong, "ids": len(set(want) | set(got)), "in_redis": len(got), "wrong_fields": len(wrong),
            "examples": [{"id": i, "field": f, "expected": w, "got": g} for i, f, w, g in wrong[:EXAMPLES]]}


def compare_boards(want: Boards, got: Boards) -> dict[str, Any]:
    """Members and scores of every board either side has. A zero score counts as
    absent: a 1-coin gift credits 0 diamonds, which may or may not make a member."""
    missing: list[tuple[str, str, int]] = []
    extra: list[tuple[str, str, int]] = []
    wrong: list[tuple[str, str, int, int]] = []
    for key in sorted(set(want) | set(got)):
        w = {m: s for m, s in want.get(key, {}).items() if s}
        g = {m: s for m, s in got.get(key, {}).items() if s}
        missing += [(key, m, w[m]) for m in sorted(w.keys() - g.keys())]
        extra += [(key, m, g[m]) for m in sorted(g.keys() - w.keys())]
        wrong += [(key, m, w[m], g[m]) for m in sorted(w.keys() & g.keys()) if w[m] != g[m]]
    return {"ok": not (missing or extra or wrong), "boards": len(set(want) | set(got)),
            "members": sum(1 for b in want.values() for s in b.values() if s),
            "missing": len(missing), "extra": len(extra), "wrong_score": len(wrong),
            "examples": [list(x) for x in (missing[:EXAMPLES] + extra[:EXAMPLES] + wrong[:EXAMPLES])]}


REQUIRED_KINDS = ("gift:accepted:None", "gift:rejected:insufficient_coins", "payout:accepted:None")


def coverage(kinds: Mapping[str, int], malformed: int) -> dict[str, Any]:
    """The traffic reached what the other checks are meant to test."""
    duplicates = sum(n for k, n in kinds.items() if ":duplicate:" in k)
    missing = [k for k in REQUIRED_KINDS if not kinds.get(k)] + ([] if duplicates else ["duplicates"]) \
        + ([] if malformed else ["malformed"])
    return {"ok": not missing, "missing": missing, "outcomes": dict(sorted(kinds.items()))}


def judge_rss(samples: Iterable[RssSample]) -> dict[str, Any]:
    """Every worker lifetime (a restart starts a fresh process) at least
    RSS_MIN_LIFETIME_S long: the peak over its second half minus the RSS at its
    half-way mark must stay under max(RSS_FLAT_MB, RSS_FLAT_SHARE of that RSS). With
    no lifetime long enough, memory was not judged, and the check says so by failing."""
    lives: dict[tuple[int, int], list[RssSample]] = {}
    for x in samples:
        lives.setdefault((x.worker, x.life), []).append(x)
    workers: list[dict[str, Any]] = []
    for (worker, _), life in sorted(lives.items()):
        span = life[-1].t - life[0].t
        row: dict[str, Any] = {"worker": worker, "life": life[0].life, "seconds": round(span, 1)}
        if span >= RSS_MIN_LIFETIME_S:
            second = [x for x in life if x.t >= life[0].t + span / 2]
            at_half, peak = second[0].mb, max(x.mb for x in second)
            bound = max(RSS_FLAT_MB, RSS_FLAT_SHARE * at_half)
            row.update(at_half_mb=at_half, peak_mb=peak, growth_mb=round(peak - at_half, 1), bound_mb=round(bound, 1),
                       flat=peak - at_half < bound)
        workers.append(row)
    judged = [w for w in workers if "flat" in w]
    return {"ok": bool(judged) and all(w["flat"] for w in judged), "judged": len(judged), "workers": workers,
            "rule": f"peak - RSS at half-life < max({RSS_FLAT_MB:.0f} MB, {RSS_FLAT_SHARE:.0%}); "
                    f"lifetimes >= {RSS_MIN_LIFETIME_S:.0f} s"}


def counted(expected: Counter[str], outcomes: Sequence[Mapping[str, Any]],
            dead: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """--free: counts only (which events a timing-dependent run accepts is not fixed)."""
    decided: Counter[str] = Counter(o["event_id"] for o in outcomes if o["status"] != "duplicate")
    seen: Counter[str] = Counter(o["event_id"] for o in outcomes)
    return {
        "one_outcome_per_message": {"ok": len(outcomes) == expected["well_formed"],
                                    "outcomes": len(outcomes), "well_formed_messages": expected["well_formed"]},
        "one_dead_letter_per_malformed": {"ok": len(dead) == expected["malformed"], "dead_letters": len(dead),
                                          "malformed_messages": expected["malformed"]},
        "one_decision_per_event_id": {"ok": set(decided) == set(seen) and max(decided.values(), default=1) == 1,
                                      "event_ids": len(seen),
                                      "decided_twice": sum(1 for n in decided.values() if n > 1)},
    }


# --- reading what the pipeline published -------------------------------------------


async def committed_outcomes(s: Settings, ids: Collection[str]) -> list[dict[str, Any]]:
    """Every committed outcome, once each of `ids` has one (or the timeout passed)."""
    deadline = time.monotonic() + OUTCOMES_TIMEOUT_S
    while True:
        outcomes: list[dict[str, Any]] = await topics.read_values(s, topics.OUTCOMES)
        if set(ids) <= {o["event_id"] for o in outcomes} or time.monotonic() > deadline:
            return outcomes
        await asyncio.sleep(5)


async def read_hashes(client: Redis, s: Settings, kind: str, fields: Sequence[str]) -> dict[str, dict[str, int]]:
    prefix = s.redis_key(f"{kind}:")
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=5_000)]
    async with client.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.hmget(k, *fields)
        rows = await pipe.execute()
    return {k[len(prefix):]: {f: int(v or 0) for f, v in zip(fields, row)} for k, row in zip(keys, rows)}


async def read_boards(client: Redis, s: Settings) -> dict[str, dict[str, int]]:
    """The contract's leaderboards in Redis, by key without the prefix."""
    prefix = s.redis_key("")
    keys = [k async for k in client.scan_iter(match=s.redis_key("lb:*"), count=5_000)
            if BOARD_KEY.fullmatch(k[len(prefix):])]
    async with client.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.zrange(k, 0, -1, withscores=True)
        rows = await pipe.execute()
    return {k[len(prefix):]: {m: int(score) for m, score in row} for k, row in zip(keys, rows)}


async def read_model_checks(s: Settings, users: Balances, creators: Balances,
                            boards: Boards) -> dict[str, dict[str, Any]]:
    """Hashes and boards against the reference, polled until equal or the timeout: the
    read model is written after each commit and refilled after Redis came back empty."""
    client = redis_client.connect(s, decode_responses=True)
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    try:
        while True:
            checks = {
                "users_equal_the_reference": compare_balances(
                    users, await read_hashes(client, s, "user", USER_FIELDS), USER_FIELDS),
                "creators_equal_the_reference": compare_balances(
                    creators, await read_hashes(client, s, "creator", CREATOR_FIELDS), CREATOR_FIELDS),
                "leaderboards_equal_the_reference": compare_boards(boards, await read_boards(client, s)),
            }
            if all(c["ok"] for c in checks.values()) or time.monotonic() > deadline:
                return checks
            await asyncio.sleep(2)
    finally:
        await client.aclose()


async def _read_model_sums(s: Settings) -> dict[str, int]:
    client = redis_client.connect(s, decode_responses=True)
    sums: Counter[str] = Counter()
    try:
        for kind, fields in (("user", USER_FIELDS), ("creator", CREATOR_FIELDS)):
            for row in (await read_hashes(client, s, kind, fields)).values():
                for name, value in row.items():
                    sums[f"{kind}.{name}"] += value
    finally:
        await client.aclose()
    return dict(sums)


async def conserved(s: Settings, outcomes: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """--free: outcome sums against the read model's, polled until they agree."""
    total: Counter[str] = Counter()
    for o in outcomes:
        if o["status"] == "accepted":
            total[o["type"]] += o["diamonds"] if o["type"] == "payout" else (o["coins"] or 0)
            if o["type"] == "gift":
                total["gift_diamonds"] += o["diamonds"]
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        rm = await _read_model_sums(s)
        ledger = {
            "recharged_equals_read_model": total["recharge"] == rm.get("user.recharged_coins", 0),
            "coins_conserved": (rm.get("user.recharged_coins", 0)
                                == rm.get("user.coins", 0) + rm.get("user.spent_coins", 0)),
            "spent_equals_read_model": total["gift"] == rm.get("user.spent_coins", 0),
            "credited_equals_lifetime": total["gift_diamonds"] == rm.get("creator.lifetime_diamonds", 0),
            "diamonds_conserved": (rm.get("creator.lifetime_diamonds", 0)
                                   == rm.get("creator.diamonds", 0) + rm.get("creator.paid_out_diamonds", 0)),
            "paid_out_equals_read_model": total["payout"] == rm.get("creator.paid_out_diamonds", 0),
        }
        if all(ledger.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    checks: dict[str, dict[str, Any]] = {name: {"ok": ok} for name, ok in ledger.items()}
    checks["coins_conserved"].update({"outcomes": dict(total), "read_model": rm,
                                      "fees": total["gift"] - total["gift_diamonds"]})
    return checks


# --- the run ------------------------------------------------------------------------


async def redis_outage(base: Settings, after_s: float, seconds: float, log: list[dict[str, Any]]) -> None:
    """Stop the local Redis (`dev up`'s) halfway through, and start it again empty."""
    server = dev.local_redis(base)
    await asyncio.sleep(after_s)
    started = time.monotonic()
    await asyncio.to_thread(server.stop)
    log.append({"event": "redis stopped"})
    await asyncio.sleep(seconds)
    await asyncio.to_thread(server.start)
    log.append({"event": "redis started empty", "down_s": round(time.monotonic() - started, 1)})


async def disturb(fleet: Fleet, args: argparse.Namespace, rng: random.Random, kills: list[dict[str, Any]],
                  t: float) -> None:
    """Alternately a crash (SIGKILL, back at once) and a scale-down and up (SIGTERM, a
    third of the interval with one worker fewer, then added). Worker 0 is spared when
    there are others: it lives through the run, so its memory over the run's second
    half can be judged (judge_rss)."""
    victim = rng.randrange(1, args.workers) if args.workers > 1 else 0
    graceful = len(kills) % 2 == 1
    if graceful:
        fleet.stop_one(victim)
    else:
        fleet.kill(victim)
    kills.append({"t": round(t, 1), "worker": victim, "how": "removed" if graceful else "SIGKILL"})
    if graceful:
        await asyncio.sleep(args.kill_every / 3)
    fleet.start(victim)
    await fleet.healthy(victim)


async def run(s: Settings, args: argparse.Namespace, log_dir: Path, base: Settings,
              root: Path | None) -> dict[str, Any]:
    econ = economics.load(None)  # the contract's defaults, which the reference ledger has too
    traffic: Traffic = FreeTraffic(args, econ) if args.free else CausalTraffic(args, econ)
    fleet = Fleet(s, args.workers, log_dir, root)
    rng = random.Random(args.seed)
    kills: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    samples: list[RssSample] = []
    outages: list[dict[str, Any]] = []
    for i in range(args.workers):
        fleet.start(i)
    try:
        await asyncio.gather(*(fleet.healthy(i) for i in range(args.workers)))
        lag = Lag(s, s.group_id, list(topics.PARTITIONED_INPUTS))
        await lag.start()
        started = time.monotonic()
        traffic.start(s)
        outage = asyncio.ensure_future(redis_outage(base, args.minutes * 30, args.redis_outage, outages)
                                       if args.redis_outage > 0 else asyncio.sleep(0))
        next_kill = started + args.kill_every
        try:
            while True:
                await asyncio.sleep(SAMPLE_S)
                now = time.monotonic()
                ends, done = await lag.read()
                rss = fleet.rss(now - started)
                samples += rss
                timeline.append({"t": round(now - started, 1), "lag": ends - done, "committed": done,
                                 "rss_mb": {str(x.worker): x.mb for x in rss}})
                if not traffic.producing() and done >= ends:
                    break
                if traffic.producing() and now >= next_kill:
                    await disturb(fleet, args, rng, kills, now - started)
                    next_kill = time.monotonic() + args.kill_every
                if now - started > args.minutes * 60 + DRAIN_TIMEOUT_S:
                    raise SystemExit("the workers did not catch up within the drain timeout")
            await traffic.finish()
            await outage
        finally:
            traffic.cancel()
            await lag.stop()
        elapsed = time.monotonic() - started
        checks = await traffic.checks(s)
        checks["worker_rss_flat"] = judge_rss(samples)
    finally:
        fleet.stop()
    warm = next((row for row in timeline if row["t"] >= 30), timeline[0] if timeline else None)
    return {"traffic": "free" if args.free else "causal", "broken": args.broken,
            "minutes": args.minutes, "workers": args.workers, "offered_rate": args.rate,
            "elapsed_s": round(elapsed, 1), "produced": traffic.produced(), "kills": kills, "redis_outage": outages,
            "max_lag": max((r["lag"] for r in timeline), default=0),
            "rss_mb_start": warm["rss_mb"] if warm else None,
            "rss_mb_end": timeline[-1]["rss_mb"] if timeline else None,
            "rss_mb_peak": max((x.mb for x in samples), default=None),
            "checks": checks, "failed": [n for n, c in checks.items() if not c["ok"]],
            "ok": all(c["ok"] for c in checks.values()), "timeline": timeline}


def _per_worker(mb: Mapping[str, float] | None) -> str:
    return "(none)" if not mb else "[" + ", ".join(f"worker {w}: {v}" for w, v in mb.items()) + "]"


def _rss_line(rss: Mapping[str, Any]) -> str:
    parts = [f"worker {w['worker']} (start {w['life']}, {w['seconds']:.0f} s): "
             + (f"{w['at_half_mb']} MB at half-life, peak {w['peak_mb']} (+{w['growth_mb']}, bound {w['bound_mb']})"
                if "flat" in w else "too short to judge") for w in rss.get("workers", [])]
    return "; ".join(parts) or "no samples"


def markdown(result: dict[str, Any]) -> str:
    produced = result["produced"]
    broken_note = (f" **Broken build `{result['broken']}`** (tools/broken.py): the soak must fail."
                   if result.get("broken") else "")
    retries = f" ({produced['resent']:,} of them retries of acknowledged events)" if "resent" in produced else ""
    lines = [f"# Soak, {result['date']}", "",
             f"{result['traffic'].capitalize()} traffic.{broken_note} {result['workers']} workers, "
             f"{result['minutes']} min at {result['offered_rate']:.0f} events/s offered; "
             f"{produced.get('well_formed', 0):,} well-formed messages{retries} and "
             f"{produced.get('malformed', 0)} malformed; "
             f"{sum(k['how'] == 'SIGKILL' for k in result['kills'])} SIGKILLs and "
             f"{sum(k['how'] == 'removed' for k in result['kills'])} workers removed and added back; Redis down "
             f"{next((e['down_s'] for e in result['redis_outage'] if 'down_s' in e), 0)} s "
             f"(restarted empty); max lag {result['max_lag']:,}; worker RSS MB at 30 s "
             f"{_per_worker(result['rss_mb_start'])}, at the end {_per_worker(result['rss_mb_end'])}, "
             f"peak {result['rss_mb_peak']}; done in {result['elapsed_s']} s.", "",
             f"Memory ({result['checks']['worker_rss_flat']['rule']}): "
             f"{_rss_line(result['checks']['worker_rss_flat'])}.", "",
             "| check | ok |", "|---|---|"]
    lines += [f"| {name} | {'yes' if c['ok'] else '**no**'} |" for name, c in result["checks"].items()]
    lines += ["", f"Failed: {', '.join(result['failed'])}." if result["failed"] else "Every check holds.",
              "", f"Command: `{result['command']}`."]
    return "\n".join(lines)


def command(args: argparse.Namespace) -> str:
    return (f"python -m pipeline soak --minutes {args.minutes} --workers {args.workers} "
            f"--rate {args.rate:.0f} --kill-every {args.kill_every:.0f} "
            f"--redis-outage {args.redis_outage:.0f} --seed {args.seed}"
            + (" --free" if args.free else "") + (f" --broken {args.broken}" if args.broken else ""))


def stem_name(args: argparse.Namespace) -> str:
    """Without the date: free_stem adds it, and -2, -3... so a run never overwrites another."""
    return "soak" + ("-free" if args.free else "") + (f"-broken-{args.broken}" if args.broken else "")


def main(args: argparse.Namespace) -> int:
    base = settings.load()
    if base.economics_file is not None:
        raise ConfigError("the soak checks against the contract's default economics (the reference ledger has them); "
                          "unset PIPELINE_ECONOMICS_FILE")
    with ExitStack() as stack:
        root = None
        if args.broken:  # before anything starts: a breakage that no longer applies fails here
            root = stack.enter_context(broken.broken_tree(args.broken))
            broken.check_imports(root, broken.worker_env(root, os.environ))
            print(f"broken build {args.broken!r} in {root}: {broken.BREAKAGES[args.broken].caught_by}")
        print("\n".join(dev.up(base)))
        log_dir = base.data_dir / "soak"
        log_dir.mkdir(parents=True, exist_ok=True)
        s = deployment(base, "soak")
        try:
            result = asyncio.run(run(s, args, log_dir, base, root))
        finally:
            cleanup(s)
    result = {"scenario": f"soak-broken-{args.broken}" if args.broken else "soak",
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": machine(), "command": command(args), **result}
    stem = free_stem(RESULTS, stem_name(args), dt.date.today().isoformat())
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    print(f"written {stem}.json and .md")
    if args.broken and result["ok"]:
        print(f"the broken build {args.broken!r} passed every check: the soak does not catch it", file=sys.stderr)
    return 0 if result["ok"] else 1
