"""The benchmark's pure parts: result files, percentiles, completion time."""

from __future__ import annotations

import json
from pathlib import Path

from tools.benchmark import report
from tools.benchmark.backlog import agreement, stalls
from tools.benchmark.runs import percentiles

MACHINE = {"cores": 2, "cpu": "x", "memory_gib": 23.5, "python": "3.11.7", "kafka": "3.9.1", "java": "17",
           "aiokafka": "0.14.0", "faust": "0.15.3", "note": "one machine"}


def _run(rate: int) -> dict:
    timeline = [{"t": t, "processed_per_s": rate, "lag": 100 - t, "cpu_pct": 90.0, "rss_mb": 100.0}
                for t in range(1, 5)]
    return {"events": 4 * rate, "events_per_s": rate, "first_to_last_per_s": rate * 2, "gifts_per_s": rate // 2,
            "elapsed_s": 4.0, "cpu_avg_pct": 90.0, "events_per_cpu_s": rate, "peak_rss_mb": 100.0, "complete": True,
            "timeline": timeline}


def test_result_files_hold_every_figure_and_a_chart(tmp_path: Path) -> None:
    result = {"scenario": "uniform", "date": "2026-11-26T00:00:00+00:00", "machine": MACHINE, "figures": {
        "events": 40_000, "ours": _run(10_000), "naive": _run(1_000),
        "ceiling": {"events": 40_000, "events_per_s": 200_000}, "ratios": {"ours_vs_naive": 10.0}}}
    paths = report.write(tmp_path / "2026-11-26-uniform", result)
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert json.loads(paths[0].read_text()) == result
    md = paths[1].read_text()
    assert "| ours | 40,000 | 10,000 | 20,000 | 5,000 | 4.0 | 90.0 | 10,000 | 100.0 | yes |" in md
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


def _outcome(eid: str, status: str = "accepted", reason: str | None = None, kind: str = "gift") -> dict:
    return {"event_id": eid, "type": kind, "status": status, "reason": reason, "subject_id": "u", "coins": 5,
            "diamonds": 2, "usd_cents": None, "balance_after": 0, "ts": 1}


def test_agreement_matches_outcomes_by_event_id_not_by_count() -> None:
    expected = {e: _outcome(e) for e in ("a", "b", "c")}
    expected["p"] = _outcome("p", kind="payout")
    records = [json.dumps(o).encode() for o in (_outcome("a"), _outcome("a"), _outcome("b", "rejected", "self_gift"),
                                                _outcome("x"), _outcome("p", "rejected", "held_for_review", "payout"))]
    # a twice (identical: a repeat after a crash), b contradicts, x is extra, c missing:
    # four records for four events, yet two differences and one missing.
    got = agreement(records, expected)
    assert (got["identical"], got["different"], got["missing"], got["held_for_review"]) == (1, 2, 1, 1)
    assert sorted(got["examples"]) == ["b", "x"]
    repeat = [json.dumps(_outcome("a")).encode(), json.dumps(_outcome("a", "duplicate")).encode()]
    assert agreement(repeat, {"a": _outcome("a")})["different"] == 1  # a contradicting repeat


def test_stalls_are_seconds_below_a_share_of_the_median_between_first_and_last() -> None:
    rates = [0, 900, 1_000, 1_100, 200, 1_000, 0, 1_000, 50]
    timeline = [{"t": float(t), "processed_per_s": r} for t, r in enumerate(rates, start=1)]
    got = stalls(timeline, first=1.0, last=8.0)  # the seconds from 2 to 8
    assert got == {"median_per_s": 1_000, "stalled_seconds": 2, "at": [5.0, 7.0]}
    assert stalls([], None, None)["stalled_seconds"] == 0


def test_the_committed_results_index_is_what_the_files_give() -> None:
    """docs/benchmarks.md lists every file of bench/results/ with its figures: regenerate
    it with `python -m pipeline bench index` after adding a result."""
    from tools.benchmark import DOCUMENT, RESULTS, index

    document = DOCUMENT.read_text()
    assert index.render(document, RESULTS) == document, "run: python -m pipeline bench index"


def test_the_index_lists_a_new_file_and_a_second_run_of_a_day_gets_its_own_name(tmp_path: Path) -> None:
    from tools.benchmark import free_stem, index

    (tmp_path / "2026-01-02-uniform.json").write_text(json.dumps(
        {"scenario": "uniform", "figures": {"ours": {"events_per_s": 1234, "peak_rss_mb": 5.0}}}))
    assert free_stem(tmp_path, "uniform", "2026-01-02") == tmp_path / "2026-01-02-uniform-2"
    assert free_stem(tmp_path, "state", "2026-01-02") == tmp_path / "2026-01-02-state"
    doc = f"intro\n{index.BEGIN}\nold\n{index.END}\n"
    rendered = index.render(doc, tmp_path)
    assert "ours: 1,234 events per s, 5.0 peak rss mb" in rendered and "old" not in rendered
