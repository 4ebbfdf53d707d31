"""The benchmark's pure parts: result files, percentiles, completion time."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.benchmark import report
from pipeline.benchmark.runs import board_done_at, percentiles

MACHINE = {"cores": 2, "cpu": "x", "memory_gib": 23.5, "python": "3.11.7", "kafka": "3.9.1", "java": "17",
           "aiokafka": "0.14.0", "faust": "0.15.3", "note": "one machine"}


def _run(rate: int) -> dict:
    timeline = [{"t": t, "processed_per_s": rate, "lag": 100 - t, "cpu_pct": 90.0, "rss_mb": 100.0} for t in range(1, 5)]
    return {"events": 4 * rate, "events_per_s": rate, "gifts_per_s": rate // 2, "elapsed_s": 4.0, "cpu_avg_pct": 90.0,
            "peak_rss_mb": 100.0, "complete": True, "timeline": timeline}


def test_result_files_hold_every_figure_and_a_chart(tmp_path: Path) -> None:
    result = {"scenario": "uniform", "date": "2026-11-26T00:00:00+00:00", "machine": MACHINE, "figures": {
        "events": 40_000, "ours": _run(10_000), "naive": _run(1_000), "ceiling": {"events": 40_000, "events_per_s": 200_000},
        "ratios": {"ours_vs_naive": 10.0}}}
    paths = report.write(tmp_path / "2026-11-26-uniform", result)
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert json.loads(paths[0].read_text()) == result
    md = paths[1].read_text()
    assert "| ours | 40,000 | 10,000 | 5,000 | 4.0 | 90.0 | 100.0 | yes |" in md
    assert "| naive | 4,000 | 1,000 |" in md and "ours_vs_naive 10.0" in md
    assert paths[2].read_bytes().startswith(b"\x89PNG") and paths[2].stat().st_size > 10_000


def test_no_chart_without_a_timeline(tmp_path: Path) -> None:
    result = {"scenario": "leaderboard-read", "date": "d", "machine": MACHINE,
              "figures": {"gifters": 10, "http_limit_10": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}}}
    assert [p.suffix for p in report.write(tmp_path / "r", result)] == [".json", ".md"]
    assert "p99_ms 3.0" in (tmp_path / "r.md").read_text()


def test_percentiles_in_milliseconds() -> None:
    figures = percentiles([i / 1000 for i in range(1, 101)])
    assert (figures["p50_ms"], figures["p99_ms"], figures["max_ms"], figures["n"]) == (50.5, 99.0, 100.0, 100)
    assert percentiles([0.1]) == {"n": 1}


def test_board_is_done_when_it_first_shows_every_credited_diamond() -> None:
    samples = [(0.1, 0), (0.2, 500), (0.3, 1_000), (0.4, 1_000)]
    assert board_done_at(samples, 1_000) == 0.3
    assert board_done_at(samples, 2_000) is None
