"""Repeated runs of an engine in one invocation, summed up. On a shared two-core machine
one run's rate varies by tens of percent; runs interleaved with the other engines' (so
the machine's noise hits every engine alike) give each a median, its min and max, and
ratios of medians that one lucky or unlucky run cannot move."""

from __future__ import annotations

import statistics
from typing import Any

KEYS = ("events_per_s", "events_per_cpu_s")  # the figures summed up, where every run has them


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min and max of `values`, and the values in run order (a drift shows)."""
    return {"median": round(statistics.median(values)), "min": min(values), "max": max(values), "values": values}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run: itself, unchanged (a single run's result format). Several: the run of
    median rate (the lower middle one for an even count: a run that happened, whose
    figures and timeline agree), with the spread of them all under `spread`."""
    if len(runs) == 1:
        return runs[0]
    rates = [run["events_per_s"] for run in runs]
    pick = rates.index(statistics.median_low(rates))
    spread: dict[str, Any] = {"runs": len(runs), "complete_runs": sum(bool(run.get("complete")) for run in runs),
                              "median_run": pick + 1}
    for key in KEYS:
        values = [v for v in (run.get(key) for run in runs) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(values) == len(runs):
            spread[key] = summary(values)
    return {**runs[pick], "spread": spread}


def rate(run: dict[str, Any], key: str = "events_per_s") -> float:
    """A run's figure: the median of its repeats, if it was repeated."""
    summed = run.get("spread", {}).get(key)
    value = summed["median"] if isinstance(summed, dict) else run.get(key)
    return float(value) if isinstance(value, (int, float)) else 0.0
