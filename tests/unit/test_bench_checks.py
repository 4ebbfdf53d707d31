"""The benchmark's judging, without a broker: completion by event id, the end of a run
at the read of its last expected outcome, CPU of a process tree from its start, the
spread of repeated runs, and the harness's offset wait failing loudly."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tools.benchmark as benchmark
from pipeline.settings import Settings
from pipeline.settings import load as load_settings
from tests.support.harness import await_offsets
from tools.benchmark import backlog, index, probes, report, runs, spread
from tools.benchmark.probes import Answered, ProcStats, family
from tools.infra import dev

# --- completion by event id ---------------------------------------------------------


def test_an_engine_is_complete_when_every_expected_id_is_read_once() -> None:
    """A repeat (an at-least-once resend) or a stray id cannot stand in for a missing
    outcome: four records of three events, one missing, is not complete."""
    answered = Answered.of([b"a", b"b", b"c"])
    answered.add([b"a", b"a", b"x", b"b"], now=1.0)
    assert (answered.count, answered.records, answered.done) == (2, 4, False)
    answered.add([None, b"c"], now=2.5)
    assert answered.done and (answered.first, answered.first_count, answered.last) == (1.0, 2, 2.5)


def test_without_known_ids_distinct_ids_count_or_with_distinct_off_every_record() -> None:
    by_id = Answered(3)
    by_id.add([b"a", b"a", b"b"], now=1.0)
    assert (by_id.count, by_id.done) == (2, False)
    by_record = Answered(3, distinct=False)
    by_record.add([b"a", b"a", b"b"], now=1.0)
    assert by_record.done


def test_a_read_without_a_new_outcome_moves_no_time() -> None:
    answered = Answered.of([b"a", b"b"])
    answered.add([b"a"], now=1.0)
    answered.add([b"a", b"z"], now=5.0)
    assert answered.last == 1.0


def test_the_rate_leaves_out_the_first_read_whose_work_came_before_the_span() -> None:
    answered = Answered(1_000, distinct=False)
    answered.add([b"e"] * 100, now=10.0)
    answered.add([b"e"] * 200, now=12.0)
    assert answered.rate() == 100.0
    assert Answered(5).rate() == 0.0


def test_a_run_gives_up_at_its_limit_or_after_a_quiet_spell() -> None:
    answered = Answered(2)
    assert not answered.given_up(now=50.0, started=0.0, until_s=60.0)
    assert answered.given_up(now=61.0, started=0.0, until_s=60.0)
    answered.add([b"a"], now=10.0)
    assert not answered.given_up(now=10.0 + probes.QUIET_S, started=0.0, until_s=10_000.0)
    assert answered.given_up(now=10.1 + probes.QUIET_S, started=0.0, until_s=10_000.0)


def test_the_naive_reference_owes_an_outcome_to_each_well_formed_input_only() -> None:
    messages: list[tuple[str, bytes | None, bytes]] = [
        ("spend-limits", b"u1", b'{"event_id":"e1","user_id":"u1","daily_coin_limit":null,"ts":1}'),
        ("gifts", b"u1", b'{"event_id":"e2","sender_id":"u1"}'),  # fields missing: malformed
        ("recharges", b"u2", b"not json"),
        ("payouts", b"c1", b'{"event_id":"e3","creator_id":"c1","diamonds":5000,"ts":1}'),
    ]
    assert runs.well_formed_ids(messages) == {b"e1", b"e3"}


def test_the_naive_topics_named_here_are_the_reference_s() -> None:
    import bench.naive

    assert (runs.NAIVE_OUTCOMES, runs.NAIVE_CREDITS) == (bench.naive.OUTCOMES, bench.naive.CREDITS)


# --- the end of a run, read from a fake outcome topic -----------------------------


class Clock:
    """perf_counter and monotonic of the probes, moved by the fake consumer's reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@dataclass
class Record:
    key: bytes | None
    value: bytes


class FakeConsumer:
    """Answers getmany with the scripted reads, each at its time; then nothing, each
    empty poll taking its timeout."""

    reads: list[tuple[float, list[Record]]] = []
    clock = Clock()
    ends = 0

    def __init__(self, **_: Any) -> None:
        self.tps: list[Any] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[Any]) -> None:
        self.tps = tps

    async def seek_to_beginning(self, *_: Any) -> None:
        pass

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.ends for tp in tps[:1]} | {tp: 0 for tp in tps[1:]}

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[Record]]:
        if self.reads:
            at, records = self.reads.pop(0)
            self.clock.now = at
            return {self.tps[0]: records}
        self.clock.now += timeout_ms / 1000
        return {}


def _outcome(eid: str) -> Record:
    value = {"event_id": eid, "type": "recharge", "status": "accepted", "reason": None, "subject_id": "u",
             "coins": 5, "diamonds": None, "usd_cents": None, "balance_after": 5, "ts": 1}
    return Record(eid.encode(), json.dumps(value).encode())


@pytest.fixture
def fake_topic(monkeypatch: pytest.MonkeyPatch) -> type[FakeConsumer]:
    clock = Clock()
    FakeConsumer.clock, FakeConsumer.reads, FakeConsumer.ends = clock, [], 0
    monkeypatch.setattr(probes, "AIOKafkaConsumer", FakeConsumer)
    monkeypatch.setattr(probes, "time", clock)
    monkeypatch.setattr(runs, "time", clock)
    return FakeConsumer


def _settings() -> Settings:
    return load_settings({"PIPELINE_PARTITIONS": "1", "PIPELINE_TOPIC_PREFIX": "t-"})


def test_a_run_ends_at_the_read_of_its_last_expected_outcome(fake_topic: type[FakeConsumer]) -> None:
    """Not at the next second's sample, nor at an earlier count that repeats filled."""
    a, b, c = _outcome("a"), _outcome("b"), _outcome("c")
    fake_topic.reads = [(0.3, [a]), (0.8, [a, b]), (2.45, [c]), (2.9, [c])]
    answered = Answered.of([b"a", b"b", b"c"])
    rows, values = asyncio.run(probes.read_outcomes(
        _settings(), "t-out", answered, 0.0, ProcStats([os.getpid()]), alive=lambda: True, until_s=60.0, keep=True))
    assert answered.done and answered.last == 2.45 and fake_topic.clock.now == 2.45
    assert [(r["t"], r["processed_per_s"], r["lag"]) for r in rows] == [(1.0, 2, 1), (2.0, 0, 1)]
    assert values == [a.value, a.value, b.value, c.value]


def test_measure_times_an_engine_from_its_start_to_its_last_outcome(fake_topic: type[FakeConsumer]) -> None:
    expected = {e: json.loads(_outcome(e).value) for e in ("a", "b", "c", "d")}
    fake_topic.reads = [(2.0, [_outcome("a"), _outcome("b")]), (3.0, [_outcome("b")]), (4.0, [_outcome("c"),
                                                                                               _outcome("d")])]
    figures = asyncio.run(backlog.measure(_settings(), "t-out", [os.getpid()], 0.0, expected, lambda: True))
    assert (figures["elapsed_s"], figures["events_per_s"], figures["first_outcome_s"]) == (4.0, 1, 2.0)
    assert (figures["events"], figures["outcome_records"], figures["first_to_last_per_s"]) == (4, 5, 1)
    assert figures["complete"] and figures["agreement"]["identical"] == 4


def test_measure_of_an_engine_that_never_answers_one_event(fake_topic: type[FakeConsumer],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "QUIET_S", 5.0)
    expected = {e: json.loads(_outcome(e).value) for e in ("a", "b")}
    fake_topic.reads = [(1.5, [_outcome("a"), _outcome("a")])]
    figures = asyncio.run(backlog.measure(_settings(), "t-out", [os.getpid()], 0.0, expected, lambda: True))
    assert not figures["complete"] and figures["elapsed_s"] is None and figures["events_per_s"] == 0
    assert figures["agreement"]["missing"] == 1 and fake_topic.clock.now < 8.0  # quiet: given up


def test_a_budgeted_watch_rates_what_was_read_over_first_to_last(fake_topic: type[FakeConsumer]) -> None:
    """The naive reference's shape: incomplete at its budget, its rate from its outputs."""
    fake_topic.reads = [(5.0, [_outcome("a")]), (6.0, [_outcome("b"), _outcome("b")]), (7.0, [_outcome("c")])]
    figures = asyncio.run(runs.watch(_settings(), "t-naive-outcomes", Answered(10), [os.getpid()],
                                     started=0.0, budget_s=10.0))
    assert (figures["events"], figures["outcome_records"], figures["complete"]) == (3, 4, False)
    assert figures["events_per_s"] == 1 and figures["first_outcome_s"] == 5.0
    assert 10.0 <= figures["elapsed_s"] <= 10.2  # watched to the budget's end
    # Expected outcomes missing at the end of each second: a read at a second's end is the next's.
    assert [row["lag"] for row in figures["timeline"]][3:8] == [10, 10, 9, 8, 7]


def test_a_watch_with_inputs_lags_by_input_records_not_answered(fake_topic: type[FakeConsumer]) -> None:
    fake_topic.ends = 10
    fake_topic.reads = [(0.5, [_outcome("a")]), (1.5, [_outcome("b")])]
    figures = asyncio.run(runs.watch(_settings(), "t-out", Answered(2, distinct=False), [os.getpid()],
                                     inputs=["gifts"]))
    assert figures["complete"] and figures["elapsed_s"] == 1.5
    assert [row["lag"] for row in figures["timeline"]] == [9]


# --- CPU of a process tree, from its start ------------------------------------------

BUSY = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_a_tree_s_cpu_includes_its_waited_for_children() -> None:
    """A launcher's children's CPU is the engine's, even after they exited."""
    own = ProcStats([os.getpid()])
    tree = ProcStats([os.getpid()], tree=True)
    before = tree.cpu_seconds() - own.cpu_seconds()
    subprocess.run([sys.executable, "-c", BUSY], check=True)
    assert tree.cpu_seconds() - own.cpu_seconds() - before >= 0.25


def test_a_tree_holds_descendants_started_after_it() -> None:
    launcher = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                                 "subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"])
    try:
        for _ in range(100):
            members = family([launcher.pid])
            if len(members) == 2:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert members[0] == launcher.pid and len(members) == 2
        assert ProcStats([launcher.pid], tree=True).rss_mb() > ProcStats([launcher.pid]).rss_mb()
    finally:
        for pid in family([launcher.pid])[1:]:
            os.kill(pid, 9)
        launcher.kill()
        launcher.wait()


# --- repeated runs --------------------------------------------------------------------


def _run(rate: int, cpu_rate: int, complete: bool = True) -> dict[str, Any]:
    return {"events": 100, "events_per_s": rate, "events_per_cpu_s": cpu_rate, "complete": complete,
            "elapsed_s": 1.0, "peak_rss_mb": 1.0, "timeline": [{"t": 1.0, "processed_per_s": rate, "lag": 0}]}


def test_one_run_is_reported_as_it_was() -> None:
    run = _run(100, 50)
    assert spread.combine([run]) is run and spread.rate(run) == 100.0


def test_repeats_are_reported_by_their_median_run_with_the_spread() -> None:
    combined = spread.combine([_run(120, 60), _run(90, 40, complete=False), _run(100, 70)])
    assert combined["events_per_s"] == 100 and combined["events_per_cpu_s"] == 70  # the median run's own
    assert combined["spread"] == {
        "runs": 3, "complete_runs": 2, "median_run": 3,
        "events_per_s": {"median": 100, "min": 90, "max": 120, "values": [120, 90, 100]},
        "events_per_cpu_s": {"median": 60, "min": 40, "max": 70, "values": [60, 40, 70]}}
    even = spread.combine([_run(100, 1), _run(200, 1)])
    assert even["events_per_s"] == 100 and spread.rate(even) == 150.0  # a real run; the true median


def test_ratios_of_repeated_runs_are_ratios_of_medians() -> None:
    figures = {"ours": spread.combine([_run(300, 30), _run(200, 20), _run(100, 10)]),
               "kstreams": spread.combine([_run(400, 80), _run(800, 40), _run(100, 60)]),
               "naive": _run(50, 5), "ours_two_workers": _run(300, 10)}
    ratios = benchmark._compared(figures, 0.5)["ratios"]
    assert ratios == {"ours_vs_kstreams": 0.5, "ours_vs_kstreams_per_cpu_s": 0.33, "ours_vs_naive": 4.0,
                      "ours_vs_naive_per_cpu_s": 4.0, "two_workers_vs_one": 1.5}
    assert figures["ours"]["gifts_per_s"] == 100  # of the run shown


MACHINE = {"cores": 2, "cpu": "x", "memory_gib": 1.0, "python": "3.11", "kafka": "k", "java": "j"}


def test_the_report_and_the_index_show_the_spread(tmp_path: Path) -> None:
    figures = {"events": 100, "repeat": 3, "ours": spread.combine([_run(120, 60), _run(90, 40), _run(100, 70)]),
               "ratios": {"ours_vs_naive": 2.0}}
    md = report.markdown({"scenario": "uniform", "date": "d", "machine": MACHINE, "figures": figures})
    assert "interleaved (ours, then each peer, 3 rounds)" in md
    assert "| ours | 3 | 3 | 3 | 100 | 90 | 120 | 60 | 40 | 70 |" in md and "ours.spread" not in md
    (tmp_path / "2026-01-02-uniform.json").write_text(json.dumps({"scenario": "uniform", "figures": figures}))
    assert "ours: 100 events per s (median of 3, 90-120), 60 events per cpu s (median of 3, 40-70), 1.0 peak" \
        in index.table(tmp_path)


def test_repeat_is_refused_where_runs_are_not_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_infra(_: Any) -> list[str]:
        raise AssertionError("started the infrastructure")

    monkeypatch.setattr(dev, "up", no_infra)
    with pytest.raises(SystemExit, match="--repeat is for the backlog scenarios"):
        benchmark.main(argparse.Namespace(scenario="latency", repeat=3))
    assert benchmark.repeat_of(argparse.Namespace()) == 1


# --- the harness's wait for end offsets -------------------------------------------------


def _offsets(values: list[int]) -> Any:
    async def read() -> int:
        return values.pop(0) if len(values) > 1 else values[0]

    return read


def test_the_offset_wait_returns_what_it_reached() -> None:
    assert asyncio.run(await_offsets(_offsets([1, 5, 12]), 10, 5.0, "t-outcomes", poll_s=0)) == 12


def test_the_offset_wait_raises_naming_the_topic_and_both_offsets() -> None:
    with pytest.raises(TimeoutError, match=r"t-outcomes: end offsets reached 7 after 0.05s, awaiting 1,000"):
        asyncio.run(await_offsets(_offsets([3, 7]), 1_000, 0.05, "t-outcomes", poll_s=0.01))


def test_a_fast_wrong_run_is_a_failed_run() -> None:
    from tools.benchmark.backlog import verdict

    right = {"complete": True, "board_exact": True,
             "agreement": {"identical": 10, "different": 0, "missing": 0, "held_for_review": 1}}
    assert verdict({"ours": right, "ours_two_workers": right})["ok"]
    wrong = {**right, "agreement": {**right["agreement"], "different": 3}}
    judged = verdict({"ours": right, "ours_two_workers": wrong})
    assert not judged["ok"] and judged["failed"] == ["ours_two_workers_equals_the_reference"]
    assert verdict({"ours": {**right, "board_exact": False}})["failed"] == ["ours_board_exact"]
    assert not verdict({})["ok"]  # nothing judged proves nothing
