"""What the ledger's two stages share on top of the engine's Stage: a log of the
partition's latest fraud alerts, kept in its state so that an emptied read model, or
one a crashed worker did not write, gets them again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agents.fraud.alerts import Alert
from pipeline.engine.codec import dumps
from pipeline.engine.kv import KV
from pipeline.engine.stage import Output, ReadModelUpdate, Stage
from pipeline.engine.store import Store
from pipeline.invariants import require
from pipeline.topics import FRAUD_ALERTS

ALERTS_PREFIX = "#alerts"
MAX_LOGGED_ALERTS = 100


@dataclass(slots=True)
class AlertLog:
    alerts: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    seq: int = 0

    def add(self, alert: Alert) -> None:
        self.alerts.append(alert.to_json())
        del self.alerts[:-MAX_LOGGED_ALERTS]

    def to_json(self) -> dict[str, Any]:
        return {"a": self.alerts, "q": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertLog:
        require(len(data["a"]) <= MAX_LOGGED_ALERTS, "an alert log holds at most MAX_LOGGED_ALERTS alerts")
        return cls(data["a"], data["q"])


def alert_update(alert: dict[str, Any]) -> ReadModelUpdate:
    """An alert for the read model's capped feed (agents/readmodel/redis_sink.py)."""
    return ReadModelUpdate("alert", alert["alert_id"], {"json": dumps(alert).decode(), "ts": alert["ts"]}, 0)


class LedgerStage(Stage):
    def __init__(self, table: Store[Any], dedupe_window_ms: int, side: dict[str, Store[Any]] | None = None,
                 kv: KV | None = None) -> None:
        self.alert_log: Store[AlertLog] = Store(AlertLog, AlertLog.from_json)
        self._new_alerts: list[Alert] = []
        super().__init__(table, dedupe_window_ms, {**(side or {}), ALERTS_PREFIX: self.alert_log}, kv)

    def raise_alert(self, alert: Alert, out: Output) -> None:
        out.effects.append(alert)
        out.send(FRAUD_ALERTS, alert.subject_id, alert.to_json())
        self.alert_log.for_update("").add(alert)
        self._new_alerts.append(alert)

    def commit(self) -> list[ReadModelUpdate]:
        updates = super().commit()
        updates.extend(alert_update(a.to_json()) for a in self._new_alerts)
        self._new_alerts = []
        return updates

    def abort(self) -> None:
        super().abort()
        self._new_alerts = []

    def snapshot(self) -> Iterator[ReadModelUpdate]:
        """Every committed value and the latest alerts."""
        yield from super().snapshot()
        for a in (self.alert_log.get("") or AlertLog()).alerts:
            yield alert_update(a)
