"""The creator ledger: diamonds credited from gifts, and payouts, per creator.

A payout is decided on the diamonds available at its event time, counting every credit
of an earlier gift whichever user partition it comes from (agents/credit/progress.py):
a payout that some partition may still precede with a credit waits in its creator's
`held` list, persisted with the creator's state, and credits of gifts later than a
payout that are already in are left out of its decision (`recent`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from agents.credit.ops import Forwarded, Mark, Op, decode_op, parse_op, payout_op
from agents.credit.progress import Progress
from agents.credit.rules import HELD, CreditBatch, apply_credit, apply_payout, duplicate_payout, refused_payout
from agents.credit.state import MAX_HELD, CreatorState
from agents.fraud import concentration, farming, loop
from agents.fraud.loop import Pairs
from agents.fraud.sender import Leg
from agents.ingest.records import Payout
from agents.outcomes import Credited, publish
from agents.readmodel import leaderboards
from agents.stage import LedgerStage
from pipeline import topics
from pipeline.economics import Economics
from pipeline.engine.codec import loads
from pipeline.engine.kv import KV
from pipeline.engine.stage import Malformed, Output, ReadModelUpdate
from pipeline.engine.store import Store
from pipeline.invariants import require

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "#progress"
LOOP_PREFIX = "#loop"  # gift_loop legs, by the pair's smaller account (agents/fraud/loop.py)
# Longest a payout waits for a user partition that sends no progress, in real time,
# counted from its arrival or from this partition's start (a restart is not a reason to
# give up); one that keeps progressing is waited for (CreatorLedger._stalled). The
# worker's is PIPELINE_PAYOUT_MAX_WAIT_S: 30 s was shorter than a SIGKILLed worker's
# recovery, and a soak caught payouts decided without credits acknowledged before them.
MAX_HOLD_MS = 600_000
MAX_TIME_CUTS = 64


class CreatorLedger(LedgerStage):
    inputs = (topics.CREATOR_OPS,)
    keyed_inputs = frozenset(inputs)  # by creator (marks are unkeyed, sent to each partition)
    watched_inputs = (topics.GIFTS, topics.PAYOUTS)  # their cuts (agents/credit/progress.py)
    internal_inputs = inputs  # written by the user ledger
    changelog_topic = topics.CREATORS_CHANGELOG
    table_name = "creators"
    index_name = "payout_event_ids"

    def __init__(self, econ: Economics, sources: int, max_hold_ms: int = MAX_HOLD_MS, kv: KV | None = None,
                 hold_suspicious: bool = True) -> None:
        self.progress_table: Store[Progress] = Store(Progress, Progress.from_json)
        self.pairs: Store[Pairs] = Store(Pairs, Pairs.from_json)
        super().__init__(
            Store(CreatorState, CreatorState.from_json), econ.dedupe_keep_ms,
            side={PROGRESS_PREFIX: self.progress_table, LOOP_PREFIX: self.pairs}, kv=kv,
        )
        self.econ = econ
        self.rules = econ.fraud
        self.hold_suspicious = hold_suspicious  # PIPELINE_HOLD_SUSPICIOUS_PAYOUTS
        self.sources = sources
        self.max_hold_ms = max_hold_ms
        self.holding: set[str] = set()  # creators with held records, as committed
        self._started_ms: float | None = None  # first tick of this instance
        # Causal cuts (agents/credit/progress.py), in memory: the cuts not yet covered
        # and the cycle counters, ahead of what is persisted.
        self._cuts: deque[tuple[int, dict[int, tuple[int, int]]]] = deque()
        self._cycle, self._covered = 1, 0
        self._cut: dict[int, tuple[int, int]] | None = None  # this cycle's, if known
        # Cuts at broker times (watch_time), the latest MAX_TIME_CUTS; lost on a restart,
        # when held payouts fall back to cycle cuts until they are asked again.
        self._time_cuts: list[tuple[int, dict[int, tuple[int, int]]]] = []
        self._marked_at: dict[int, float] = {}  # source -> when its offsets last moved (this instance's clock)
        self._want: int | None = None
        self._committed_covered = 0

    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[Op | Malformed, int | None]:
        item = decode_op(key, value, self.econ, self.sources)  # untrusted, though our own
        return item, None if isinstance(item, Malformed) else item.ts

    def watch(self, ends: dict[tuple[str, int], int]) -> None:
        """This cycle's cut: the ends of gifts and payouts on every partition, asked
        after the cycle's fetch (empty: unknown this cycle)."""
        cut = None
        if ends:
            cut = {q: (ends[(topics.GIFTS, q)], ends[(topics.PAYOUTS, q)]) for q in range(self.sources)}
        self._cut = cut
        p = self._progress()
        p.cut(cut)
        self._sync(p)

    def handle(self, topic: str, item: Any, out: Output, appended: int = 0) -> None:
        if isinstance(item, Mark):
            if self._cut is not None:
                # A source applied what it had fetched, all below the ends asked after
                # this mark was fetched: a mark beyond them was not written by a source.
                gifts, payouts = self._cut[item.source]
                require(item.gifts <= gifts, "a progress mark within the gifts' end")
                require(item.payouts <= payouts, "a progress mark within the payouts' end")
            p = self._progress()
            if (item.gifts, item.payouts) != p.applied.get(item.source):
                self._marked_at[item.source] = self.clock_ms()  # progress, for _stalled
            p.record(item.source, (item.gifts, item.payouts), item.newest)
            self._sync(p)
            self._release_all(out)
        elif isinstance(item, CreditBatch):
            self._credit(item, out)
        elif isinstance(item, Forwarded) and item.refused is not None:
            publish(out, refused_payout(self.table.get(item.creator_id) or CreatorState(), item.payout, item.refused))
        elif isinstance(item, Leg):
            pairs = self.pairs.for_update(item.meeting_key)
            alerts, closings = loop.meet(pairs, item, self.rules.gift_loop)
            for alert in alerts:
                self.raise_alert(alert, out)
            for closing in closings:  # to the meeting point of the path's two ends (agents/fraud/loop.py)
                out.send(topics.CREATOR_OPS, closing.meeting_key, closing.to_op())
            pairs.check()
        elif isinstance(item, loop.Closing):
            pairs = self.pairs.for_update(item.meeting_key)
            for alert in loop.close(pairs, item, self.rules.gift_loop):
                self.raise_alert(alert, out)
            pairs.check()
        else:
            payout, written = (item.payout, item.appended) if isinstance(item, Forwarded) else (item, 0)
            op = dict(payout_op(payout, appended=written), cycle=self._stamp(), at=self.clock_ms())
            current = self.table.get(payout.creator_id)
            if (current is None or not current.held) and self._decidable(op):
                self._payout(payout, out)
                return
            item = payout
            if current is not None and len(current.held) >= MAX_HELD:
                self._release(item.creator_id, out, force=1)  # bounded: the oldest goes now
            state = self.table.for_update(item.creator_id)
            state.held.append(op)
            state.check()

    def tick(self, out: Output, now_ms: float) -> None:
        if self._started_ms is None:
            self._started_ms = now_ms
        self._release_all(out)

    def _progress(self) -> Progress:
        """This batch's progress, with the cuts and counters this instance keeps in
        memory across batches (the store decodes a fresh value per batch; cuts are not
        persisted, and a quiet cycle is not written): they only grow while it runs."""
        p = self.progress_table.for_update("")
        if p.cuts is not self._cuts:
            p.cuts = self._cuts
            p.cycle, p.covered = max(p.cycle, self._cycle), max(p.covered, self._covered)
        return p

    def _sync(self, p: Progress) -> None:
        self._cycle, self._covered = p.cycle, p.covered

    def _stamp(self) -> int:
        p = self._progress()
        cycle = p.stamp()
        self._sync(p)
        return cycle

    def _decidable(self, payout: dict[str, Any]) -> bool:
        """Every credit of a gift acknowledged before it was produced is in: the cycle
        it was read in is covered, or (sooner, in a backlog) a cut at the broker time
        it was written is reached; or it has waited the longest hold."""
        started = self.clock_ms() if self._started_ms is None else self._started_ms
        waited = self.clock_ms() - max(payout["at"], started)
        if payout.get("cycle", 0) <= self._covered:
            return True
        read_in = next((cut for cycle, cut in self._cuts if cycle == payout.get("cycle")), None)
        if waited >= self.max_hold_ms and self._stalled(read_in, started):
            log.warning("payout %s decided after waiting %.0f s for a source that sends no progress (no worker?): "
                        "credits it has not applied are not counted", payout["event_id"], waited / 1000)
            return True
        written = payout.get("w", 0)
        if not written:
            return False
        p = self._progress()
        if any(at > written and p.reached(cut) for at, cut in self._time_cuts):
            # Causally complete; and, as in a backlog replayed in event-time order, every
            # source is past the payout's time or has nothing more that was there when
            # it was read.
            return p.passed(payout["ts"], read_in, self.sources)
        self._want = max(self._want or 0, written + 1)
        return False

    def _stalled(self, cut: dict[int, tuple[int, int]] | None, started: float) -> bool:
        """Every source still short of `cut` (any, if unknown) has sent no progress mark
        for the longest hold: it has no worker, or is stuck. A source that is merely
        behind (a backlog) keeps marking, and the payout keeps waiting for it."""
        p = self._progress()
        short = [q for q in range(self.sources) if cut is None or q not in cut or q not in p.applied
                 or p.applied[q][0] < cut[q][0] or p.applied[q][1] < cut[q][1]]
        return all(self.clock_ms() - self._marked_at.get(q, started) >= self.max_hold_ms for q in short)

    def wanted_time(self) -> int | None:
        """A cut at the broker time just after a held payout was written: everything
        acknowledged before it was produced lies below (agents/credit/progress.py)."""
        want, self._want = self._want, None
        return want

    def watch_time(self, at: int, offsets: dict[tuple[str, int], int]) -> None:
        cut = {q: (offsets[(topics.GIFTS, q)], offsets[(topics.PAYOUTS, q)]) for q in range(self.sources)}
        self._time_cuts.append((at, cut))
        del self._time_cuts[:-MAX_TIME_CUTS]

    def _release_all(self, out: Output) -> None:
        waiting = self.holding | {k for k, v in self.table.taken() if v.held}
        for creator_id in sorted(waiting):
            self._release(creator_id, out)

    def _release(self, creator_id: str, out: Output, force: int = 0) -> None:
        """Decide held payouts in arrival order, up to the first not yet decidable (the
        first `force` ones in any case)."""
        current = self.table.get(creator_id)
        if current is None or not current.held:
            return
        ready = min(force, len(current.held))
        while ready < len(current.held) and self._decidable(current.held[ready]):
            ready += 1
        if ready == 0:
            return
        state = self.table.for_update(creator_id)
        released, state.held = state.held[:ready], state.held[ready:]
        for op in released:
            payout = parse_op(op)
            assert isinstance(payout, Payout)
            self._payout(payout, out)
        state.forget_recent(self._covered)

    def _credit(self, item: CreditBatch, out: Output) -> None:
        state = self.table.for_update(item.creator_id)
        apply_credit(state, item, self._stamp(), self._covered)
        if item.new_senders:
            concentration.record(state.senders, item.new_senders, self.rules.payout_concentration)
        if item.farmed:
            found = farming.observe(state.farmers, item.creator_id, item.farmed, self.rules.bonus_farming)
            if found is not None:
                self.raise_alert(found, out)
        out.effects.append(Credited(item.diamonds))

    def _payout(self, item: Payout, out: Output) -> None:
        self.dedupe.observe(item.ts)
        dkey = f"p|{item.creator_id}|{item.event_id}"
        if self.dedupe.seen(dkey):
            outcome = duplicate_payout(self.table.get(item.creator_id) or CreatorState(), item)
        else:
            self.dedupe.add(dkey, item.ts)
            state = self.table.for_update(item.creator_id)
            rule = self.rules.payout_concentration
            finding = concentration.check(state.senders, state.windows.get("1h", {}), item, rule)
            outcome = apply_payout(state, item, self.econ, hold=finding is not None and self.hold_suspicious)
            if finding is not None:
                alert = concentration.raise_alert(state.senders, finding, item, outcome.reason == HELD, rule)
                if alert is not None:
                    self.raise_alert(alert, out)
                    state.check()
        publish(out, outcome)

    def commit(self) -> list[ReadModelUpdate]:
        for key, value in self.table.changes():
            (self.holding.add if value.held else self.holding.discard)(key)
        self._committed_covered = self._covered
        return super().commit()

    def abort(self) -> None:
        """The batch's marks are gone: so is what they covered, and the cuts (dropping a
        cut only delays; the cycle counter keeps growing, so no number is reused)."""
        super().abort()
        self._cuts.clear()
        self._covered = self._committed_covered

    def end_restore(self) -> None:
        super().end_restore()
        p = self.progress_table.get("")
        if p is not None:
            self._cycle, self._covered = max(self._cycle, p.cycle), max(self._covered, p.covered)
            self._committed_covered = self._covered

    def restore(self, key: str, raw: bytes | None) -> None:
        super().restore(key, raw)
        if not key.startswith("#"):
            state = None if raw is None else CreatorState.from_json(loads(raw))
            (self.holding.add if state is not None and state.held else self.holding.discard)(key)

    def read_model(self, key: str, value: CreatorState, full: bool = False) -> ReadModelUpdate:
        if full:
            touched = {("day", d) for d in value.day_diamonds}
            touched |= {(name, start) for name, w in value.windows.items() for start in w}
        else:  # told once: the value lives on in the store's cache
            touched, value.touched = value.touched, set()
        scores: list[tuple[str, str, int]] = [(leaderboards.CREATORS_ALL, key, value.lifetime)] if touched else []
        for kind, at in sorted(touched):
            if kind == "day" and at in value.day_diamonds:
                scores.append((leaderboards.creators_day_key(at), key, value.day_diamonds[at]))
            elif at in value.windows.get(kind, {}):
                scores.append((leaderboards.windows_key(key, kind), str(at), value.windows[kind][at]))
        return ReadModelUpdate("creator", key, {
            "diamonds": value.available,
            "lifetime_diamonds": value.lifetime,
            "paid_out_diamonds": value.paid_out,
        }, value.seq, tuple(scores))

    def sizes(self) -> dict[str, int]:
        return dict(super().sizes(), held_creators=len(self.holding))
