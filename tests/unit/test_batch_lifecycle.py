"""The batch transaction of a stage, asserted at each step (pipeline/engine/stage.py):
IDLE -> OPEN (begin) -> PREPARED (changelog) -> IDLE (commit, or abort from any)."""

from __future__ import annotations

import pytest

from agents.ingest.records import Recharge
from agents.ledger.agent import UserLedger
from pipeline import economics, topics
from pipeline.engine.stage import BatchState, Output
from pipeline.engine.testing import restored, run_batch, start
from pipeline.invariants import InvariantError

T0 = 1_800_000_000_000


def ledger() -> UserLedger:
    return UserLedger(economics.load(), 0, 1)


def recharge(eid: str, coins: int = 100) -> tuple[str, Recharge]:
    return topics.RECHARGES, Recharge(eid, "u1", coins, 0, "USD", T0)


def test_a_batch_goes_open_prepared_idle() -> None:
    stage, out = ledger(), Output()
    assert stage.batch is BatchState.IDLE
    start(stage, out, T0)
    assert stage.batch is BatchState.OPEN
    stage.handle(*recharge("r"), out)
    stage.end_batch(out, True, T0)
    stage.changelog()
    assert stage.batch is BatchState.PREPARED
    stage.commit()
    assert stage.batch is BatchState.IDLE


def test_a_changelog_needs_an_open_batch_and_is_taken_once() -> None:
    stage = ledger()
    with pytest.raises(InvariantError, match="after begin"):
        stage.changelog()
    start(stage, Output(), T0)
    stage.changelog()
    with pytest.raises(InvariantError, match="once per batch"):
        stage.changelog()


def test_a_commit_needs_the_changelog_first() -> None:
    stage = ledger()
    start(stage, Output(), T0)
    with pytest.raises(InvariantError, match="what changelog\\(\\) decided"):
        stage.commit()


def test_no_input_after_the_changelog_until_commit_or_abort() -> None:
    stage = ledger()
    start(stage, Output(), T0)
    stage.changelog()
    with pytest.raises(InvariantError, match="no input after changelog"):
        stage.begin(T0)
    stage.abort()
    start(stage, Output(), T0)  # aborted: a new batch may begin


def test_a_restore_needs_no_batch_open_and_a_clock() -> None:
    stage = ledger()
    with pytest.raises(InvariantError, match="clock"):
        stage.restore("#dd:0", b'{"t":1,"w":1,"k":["x"]}')
    start(stage, Output(), T0)
    with pytest.raises(InvariantError, match="no batch open"):
        stage.start_restore(T0)


def test_the_harness_restores_what_a_batch_committed() -> None:
    stage = ledger()
    first = run_batch(stage, [recharge("r1", 300)], T0)
    second = run_batch(stage, [recharge("r2", 200), recharge("r1", 300)], T0)
    again = restored(ledger, first.raw_changelog + second.raw_changelog, T0)
    assert again.table.as_dict() == stage.table.as_dict()
    assert again.dedupe.ids() == stage.dedupe.ids()
    aborted = run_batch(stage, [recharge("r3", 1)], T0, commit=False)
    assert aborted.updates == [] and stage.batch is BatchState.IDLE
    assert stage.table.get("u1") is not None and stage.table.get("u1").balance == 500
