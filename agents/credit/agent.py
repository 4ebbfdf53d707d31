"""The creator ledger: diamonds credited from gifts, and payouts, per creator."""

from __future__ import annotations

from typing import Any

from agents.credit.ops import parse_op
from agents.credit.rules import CreditBatch, apply_credit, apply_payout, duplicate_payout
from agents.credit.state import CreatorState
from agents.ingest.records import Payout
from agents.ledger.state import DAY_MS
from pipeline import topics
from pipeline.economics import Economics
from pipeline.engine.codec import loads
from pipeline.engine.stage import Output, ReadModelUpdate, Stage
from pipeline.engine.store import Store


class CreatorLedger(Stage):
    inputs = (topics.CREATOR_OPS,)
    changelog_topic = topics.CREATORS_CHANGELOG
    table_name = "creators"
    index_name = "payout_event_ids"

    def __init__(self, econ: Economics) -> None:
        super().__init__(Store(CreatorState, CreatorState.from_json), (econ.dedupe_window_days + 1) * DAY_MS)
        self.econ = econ

    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[CreditBatch | Payout, int | None]:
        assert value is not None, "creator-ops records are written by the pipeline and never empty"
        item = parse_op(loads(value))
        return item, item.ts

    def handle(self, topic: str, item: Any, out: Output) -> None:
        if isinstance(item, CreditBatch):
            apply_credit(self.table.for_update(item.creator_id), item)
            out.diamonds_credited += item.diamonds
            return
        self.dedupe.observe(item.ts)
        dkey = f"p|{item.creator_id}|{item.event_id}"
        if self.dedupe.seen(dkey):
            outcome = duplicate_payout(self.table.get(item.creator_id) or CreatorState(), item)
        else:
            self.dedupe.add(dkey, item.ts)
            outcome = apply_payout(self.table.for_update(item.creator_id), item, self.econ)
        out.outcome(outcome)

    def read_model(self, key: str, value: CreatorState) -> ReadModelUpdate:
        return ReadModelUpdate("creator", key, {
            "diamonds": value.available,
            "lifetime_diamonds": value.lifetime,
            "paid_out_diamonds": value.paid_out,
        }, value.seq)
