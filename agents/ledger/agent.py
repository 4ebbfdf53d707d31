"""The user ledger: recharges, gifts and spend limits of the users of one partition.

Accepted gifts become credits to their creators, combined per creator within a batch
and repartitioned by creator on the internal creator-ops topic; payouts are validated
here and forwarded on the same topic, so the creator ledger sees one ordered stream per
creator whatever partitioner the producers of `payouts` used.
"""

from __future__ import annotations

from typing import Any

from agents.credit.ops import credit_op, mark_op, payout_op
from agents.fraud import sender
from agents.fraud.sender import Leg
from agents.ingest.decode import decode
from agents.ingest.records import Event, Payout, UserEvent
from agents.ledger.promotions import PromotionBook
from agents.ledger.rules import INVALID_TS, Credit, TimeBounds, apply_user_event, duplicate_outcome, out_of_time
from agents.ledger.state import UserState
from agents.outcomes import Outcome, publish, publish_level_up
from agents.readmodel import leaderboards
from agents.stage import LedgerStage
from pipeline import topics
from pipeline.economics import DAY_MS, Economics
from pipeline.engine.kv import KV
from pipeline.engine.stage import Malformed, Output, ReadModelUpdate
from pipeline.engine.store import Store
from pipeline.settings import DEFAULT_MAX_CLOCK_SKEW_MS

_TOPIC_CODE = {topics.RECHARGES: "r", topics.GIFTS: "g", topics.SPEND_LIMITS: "l"}


class CreditCombiner:
    """Sums a batch's credits per creator; `pop` releases one creator's sum early so a
    payout forwarded in the same batch stays behind the credits that preceded it."""

    def __init__(self, new_sender_ms: int) -> None:
        self._pending: dict[str, list[Credit]] = {}
        self.new_sender_ms = new_sender_ms

    def add(self, credit: Credit) -> None:
        self._pending.setdefault(credit.creator_id, []).append(credit)

    def pop(self, creator_id: str, out: Output) -> None:
        credits = self._pending.pop(creator_id, None)
        if credits:
            out.send(topics.CREATOR_OPS, creator_id, credit_op(creator_id, credits, self.new_sender_ms))

    def flush(self, out: Output) -> None:
        for creator_id in list(self._pending):
            self.pop(creator_id, out)


class UserLedger(LedgerStage):
    inputs = (topics.RECHARGES, topics.GIFTS, topics.SPEND_LIMITS, topics.PAYOUTS)
    keyed_inputs = frozenset((topics.RECHARGES, topics.GIFTS, topics.SPEND_LIMITS))  # payouts: re-keyed here
    changelog_topic = topics.USERS_CHANGELOG
    table_name = "users"
    index_name = "user_event_ids"

    def __init__(self, econ: Economics, partition: int, partitions: int, kv: KV | None = None,
                 max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS, promotions: PromotionBook | None = None) -> None:
        super().__init__(Store(UserState, UserState.from_json), econ.dedupe_keep_ms, kv=kv)
        self.econ = econ
        self.in_time = TimeBounds(max_clock_skew_ms, econ.dedupe_window_days * DAY_MS)
        # The worker's promotions, shared by its partitions (the engine's broadcast input).
        self.promotions = promotions or PromotionBook(self.in_time.behind_ms)
        self.rules = econ.fraud
        self.partition = partition
        self.partitions = partitions
        self.credits = CreditCombiner(self.rules.payout_concentration.new_sender_ms)
        self.legs: dict[tuple[str, str], Leg] = {}  # gift_loop legs of the batch, the latest per pair
        self._marked: tuple[int, int, int] | None = None  # the last progress mark (agents/credit/progress.py)
        self.newest_ts = 0  # the newest event time applied (in time), for the marks
        self._committed_newest_ts = 0

    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[Event | Malformed, int | None]:
        item = decode(topic, key, value)
        return item, None if isinstance(item, Malformed) else item.ts

    def handle(self, topic: str, item: Any, out: Output, appended: int = 0) -> None:
        now_ms = self.clock_ms()
        if not self.in_time.admits(item.ts, now_ms):
            # Nothing moves: no balance, limit, duplicate window or payout progress.
            if isinstance(item, Payout):  # answered by the creator's ledger, with its balance
                out.send(topics.CREATOR_OPS, item.creator_id, payout_op(item, refused=INVALID_TS))
            else:
                publish(out, out_of_time(self.table.get(item.key) or UserState(), item, self.econ))
            return
        self.newest_ts = max(self.newest_ts, item.ts)
        if isinstance(item, Payout):
            self.credits.pop(item.creator_id, out)
            out.send(topics.CREATOR_OPS, item.creator_id, payout_op(item, appended=appended))
            return
        self.dedupe.observe(item.ts)
        dkey = f"{_TOPIC_CODE[topic]}|{item.key}|{item.event_id}"
        outcome: Outcome
        if self.dedupe.seen(dkey):
            outcome = duplicate_outcome(self.table.get(item.key) or UserState(), item, self.econ)
        else:
            self.dedupe.add(dkey, item.ts)
            state = self.table.for_update(item.key)
            decided = apply_user_event(state, item, self.econ, self.promotions)
            outcome = decided.outcome
            if decided.credit is not None:
                self.credits.add(decided.credit)
            if decided.level_up is not None:
                publish_level_up(out, decided.level_up)
            self._watch(state, item, outcome, out)
        publish(out, outcome)

    def _watch(self, state: UserState, item: UserEvent, outcome: Outcome, out: Output) -> None:
        """The sender-side fraud rules; after the outcome is decided, never changing it."""
        alerts, leg = sender.observe(state.watch, item, outcome, self.rules)
        for alert in alerts:
            self.raise_alert(alert, out)
        if leg is not None:
            self.legs[(leg.sender, leg.recipient)] = leg

    def end_batch(self, out: Output, idle: bool, now_ms: float, applied: dict[str, int] | None = None) -> None:
        """Credits, gift_loop legs, then the progress mark: the offsets of gifts and
        payouts below which everything is applied, sent to every creator-ops partition
        after what they cover (agents/credit/progress.py)."""
        self.credits.flush(out)
        for leg in self.legs.values():
            out.send(topics.CREATOR_OPS, leg.meeting_key, leg.to_op())
        self.legs.clear()
        if applied is None or topics.GIFTS not in applied or topics.PAYOUTS not in applied:
            return
        mark = (applied[topics.GIFTS], applied[topics.PAYOUTS], self.newest_ts)
        if mark != self._marked:
            for q in range(self.partitions):
                out.send(topics.CREATOR_OPS, None, mark_op(self.partition, *mark), partition=q)
            self._marked = mark

    def abort(self) -> None:
        super().abort()
        self.credits = CreditCombiner(self.rules.payout_concentration.new_sender_ms)
        self.legs.clear()
        self._marked = None  # the marks of the aborted batch were not written
        self.newest_ts = self._committed_newest_ts

    def commit(self) -> list[ReadModelUpdate]:
        self._committed_newest_ts = self.newest_ts
        return super().commit()

    def read_model(self, key: str, value: UserState, full: bool = False) -> ReadModelUpdate:
        today = max(value.day_spend, default=None)
        month = max(value.month_spend, default=None)
        if full:
            touched = {("day", d) for d in value.day_spend} | {("stream", s) for s in value.streams}
        else:  # told once: the value lives on in the store's cache
            touched, value.touched = value.touched, set()
        scores = []
        for kind, what in sorted(touched, key=str):
            if kind == "day" and what in value.day_spend:
                scores.append((leaderboards.gifters_day_key(what), key, value.day_spend[what]))
            elif kind == "stream" and what in value.streams:
                scores.append((leaderboards.stream_key(what), key, value.streams[what][0]))
        return ReadModelUpdate("user", key, {
            "coins": value.balance,
            "recharged_coins": value.recharged,
            "spent_coins": value.spent,
            "daily_coin_limit": -1 if value.own_limit is None else value.own_limit,
            "last_spend_day": -1 if today is None else today,
            "last_spend_day_coins": 0 if today is None else value.day_spend[today],
            "monthly_coin_limit": -1 if value.own_monthly is None else value.own_monthly,
            "last_spend_month": -1 if month is None else month,
            "last_spend_month_coins": 0 if month is None else value.month_spend[month],
            "bonus_coins": value.bonus,
            "lifetime_spent_coins": value.spent,
            "gifter_level": self.econ.gifter_level(value.spent),
        }, value.seq, tuple(scores))
