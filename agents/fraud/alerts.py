"""The `fraud-alerts` record (contract) and how an alert is named.

An alert is a pure function of the events that triggered it: its id is
`{rule}:{subject_id}:{window start}`, so a batch processed again after a crash
produces the same alert, never a second one, and readers can deduplicate on the id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipeline.invariants import require

MAX_EVIDENCE = 100  # event ids carried by one alert (the newest, if more)


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    rule: str
    severity: Literal["low", "medium", "high"]
    subject_type: Literal["user", "creator"]
    subject_id: str
    event_ids: tuple[str, ...]
    details: dict[str, Any]
    ts: int  # event time of the triggering event

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id, "rule": self.rule, "severity": self.severity,
            "subject_type": self.subject_type, "subject_id": self.subject_id,
            "event_ids": list(self.event_ids), "details": self.details, "ts": self.ts,
        }


def alert(rule: str, severity: str, subject_type: Literal["user", "creator"], subject_id: str,
          window_start: int, event_ids: list[str], trigger_event_id: str, ts: int, **figures: Any) -> Alert:
    """`event_ids`: the triggering events, oldest first; the trigger is the event that
    crossed the threshold (it is also in `details`, for detection-delay measurements)."""
    require(severity in ("low", "medium", "high"), 'severity in ("low", "medium", "high")')
    require(bool(event_ids), "an alert has evidence")
    require(trigger_event_id in event_ids, 'trigger_event_id in event_ids')
    ids = tuple(event_ids[-MAX_EVIDENCE:])
    if trigger_event_id not in ids:
        ids = (*ids[1:], trigger_event_id)
    details = {"window_start": window_start, "trigger_event_id": trigger_event_id, **figures}
    return Alert(f"{rule}:{subject_id}:{window_start}", rule, severity, subject_type, subject_id, ids,  # type: ignore[arg-type]
                 details, ts)


def alerts_of(effects: list[Any]) -> list[Alert]:
    """The alerts among a batch's effects (Output.effects), in order."""
    return [e for e in effects if type(e) is Alert]
