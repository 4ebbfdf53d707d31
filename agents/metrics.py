"""Prometheus metrics of the ledger's decisions (docs/reference.md, "Metrics"), counted
from each committed batch's effects (the engine's `on_committed` hook): never for a
batch whose transaction failed."""

from __future__ import annotations

import collections
import time
from typing import Any

from prometheus_client import Counter, Histogram

from agents.fraud.alerts import Alert, alerts_of
from agents.outcomes import LevelUp, Outcome, credited_of, outcomes_of

EVENTS = Counter(
    "ledger_events_total", "Ledger outcomes published, by event type, status and rejection reason.",
    ["type", "status", "reason"],
)
COINS_RECHARGED = Counter("ledger_coins_recharged_total", "Coins added by accepted recharges.")
BONUS_COINS = Counter("ledger_bonus_coins_total",
                      "Bonus coins of promotions given by accepted recharges (no payment behind them).")
LEVEL_UPS = Counter("ledger_gifter_level_ups_total", "Gifter level-ups published on badges.")
COINS_SPENT = Counter("ledger_coins_spent_total", "Coins spent on accepted gifts.")
DIAMONDS_CREDITED = Counter("ledger_diamonds_credited_total", "Diamonds credited to creators.")
DIAMONDS_PAID_OUT = Counter("ledger_diamonds_paid_out_total", "Diamonds deducted by accepted payouts.")
USD_CENTS_PAID = Counter("ledger_payout_usd_cents_total", "US cents paid by accepted payouts.")
FRAUD_ALERTS = Counter("fraud_alerts_total", "Fraud alerts published, by rule and severity.", ["rule", "severity"])
OUTCOME_LATENCY = Histogram(
    "ledger_event_to_outcome_seconds", "Event time (ts) to committed outcome, per event.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def count_committed(effects: list[Any]) -> None:
    """A committed batch's effects, by kind."""
    count_outcomes(outcomes_of(effects), time.time())
    count_alerts(alerts_of(effects))
    DIAMONDS_CREDITED.inc(credited_of(effects))
    LEVEL_UPS.inc(sum(1 for e in effects if type(e) is LevelUp))


def count_outcomes(outcomes: list[Outcome], now_s: float) -> None:
    """A committed batch's outcomes: counted per label set, not per outcome (the
    per-call cost of a labelled counter is a lock and a lookup)."""
    by_label: collections.Counter[tuple[str, str, str]] = collections.Counter()
    sums = {"recharge": 0, "gift": 0, "payout": 0, "usd": 0, "bonus": 0}
    for o in outcomes:
        by_label[(o.type, o.status, o.reason or "")] += 1
        if o.status == "accepted" and o.type != "spend_limit":
            sums[o.type] += (o.diamonds if o.type == "payout" else o.coins) or 0
            sums["usd"] += o.usd_cents or 0
            sums["bonus"] += o.bonus_coins or 0
        OUTCOME_LATENCY.observe(max(0.0, now_s - o.ts / 1000))
    for labels, n in by_label.items():
        EVENTS.labels(*labels).inc(n)
    COINS_RECHARGED.inc(sums["recharge"])
    BONUS_COINS.inc(sums["bonus"])
    COINS_SPENT.inc(sums["gift"])
    DIAMONDS_PAID_OUT.inc(sums["payout"])
    USD_CENTS_PAID.inc(sums["usd"])


def count_alerts(alerts: list[Alert]) -> None:
    for (rule, severity), n in collections.Counter((a.rule, a.severity) for a in alerts).items():
        FRAUD_ALERTS.labels(rule, severity).inc(n)
