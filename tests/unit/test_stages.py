"""The two stages driven directly, batch by batch, as the engine's PartitionTask does:
tick -> handle* -> end_batch -> changelog -> commit (or abort). No Kafka: messages stay
in Output. The creator ledger here has one source and no hold, so a payout is decided
as it arrives: the plain rules (payout ordering: test_payout_order.py).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from agents.credit.agent import CreatorLedger
from agents.credit.ops import Mark
from agents.credit.rules import CreditBatch
from agents.credit.state import CreatorState
from agents.fraud.concentration import NewSenders
from agents.fraud.sender import SenderWatch
from agents.ingest.records import Gift, Payout, Recharge, SpendLimit
from agents.ledger.agent import UserLedger
from agents.ledger.state import UserState, utc_month
from agents.outcomes import credited_of, outcomes_of
from agents.readmodel import leaderboards
from pipeline import economics, topics
from pipeline.economics import Economics
from pipeline.engine.codec import dumps, loads
from pipeline.engine.stage import Output, Stage
from pipeline.engine.testing import run_batch, start

DAY = 86_400_000
T0 = 20_000 * DAY
RECHARGES, GIFTS, LIMITS, PAYOUTS, OPS = (
    topics.RECHARGES, topics.GIFTS, topics.SPEND_LIMITS, topics.PAYOUTS, topics.CREATOR_OPS)

Changelog = list[tuple[str, dict[str, Any] | None]]


@pytest.fixture(scope="module")
def econ() -> Economics:
    return economics.load()


@pytest.fixture
def users(econ: Economics) -> UserLedger:
    return UserLedger(econ, 0, 1)


@pytest.fixture
def creators(econ: Economics) -> CreatorLedger:
    return CreatorLedger(econ, sources=1, max_hold_ms=0)


def recharge(eid: str, coins: int, user: str = "u1", ts: int = T0) -> tuple[str, Recharge]:
    return RECHARGES, Recharge(eid, user, coins, 0, "USD", ts)


def gift(eid: str, gift_id: str = "galaxy", sender: str = "u1", creator: str = "c1", ts: int = T0) -> tuple[str, Gift]:
    return GIFTS, Gift(eid, sender, creator, "s1", gift_id, 1, ts)


def limit(eid: str, value: int | None, user: str = "u1", ts: int = T0) -> tuple[str, SpendLimit]:
    return LIMITS, SpendLimit(eid, user, value, ts)


def payout(eid: str, diamonds: int, creator: str = "c1", ts: int = T0) -> tuple[str, Payout]:
    return PAYOUTS, Payout(eid, creator, diamonds, ts)


@dataclass
class Batch:
    out: Output
    changelog: Changelog

    @property
    def statuses(self) -> list[tuple[str, str, str | None]]:
        return [(o.event_id, o.status, o.reason) for o in outcomes_of(self.out.effects)]

    def ops(self) -> list[tuple[str, dict[str, Any]]]:
        """Keyed creator-ops messages of the ledger (credits, payouts) in order, as (key,
        value); not gift_loop legs (test_fraud_stages.py)."""
        return [(m.key.decode(), op) for m in self.out.messages
                if m.topic == OPS and m.key and m.value and (op := loads(m.value))["op"] != "l"]

    def marks(self) -> list[tuple[int | None, dict[str, Any]]]:
        """Progress marks in order, as (partition, value)."""
        return [(m.partition, loads(m.value)) for m in self.out.messages if m.topic == OPS and m.key is None]


def run(stage: Stage, events: list[tuple[str, Any]], commit: bool = True, clock: int | None = None) -> Batch:
    """One batch through the engine's harness (pipeline/engine/testing.py), at `clock`
    (default: its latest event's time); uncommitted batches are left PREPARED, as a
    transaction in flight, for the test to commit or abort."""
    if not commit:
        out = Output()
        start(stage, out, batch_clock(events) if clock is None else clock)
        for topic, item in events:
            stage.handle(topic, item, out)
        stage.end_batch(out, True, 0)
        return Batch(out, [(k, None if v is None else loads(v)) for k, v in stage.changelog()])
    result = run_batch(stage, events, batch_clock(events) if clock is None else clock)
    return Batch(result.out, result.changelog)


def batch_clock(events: list[tuple[str, Any]]) -> int:
    """The clock a batch is decided at: its latest event's time, as live (in time)."""
    return max((item.ts for _, item in events), default=0)


def credit(items: list[tuple[int, int]], coins: int, gifts: int = 1, creator: str = "c1") -> tuple[str, CreditBatch]:
    return OPS, CreditBatch(creator, coins, gifts, tuple(items))


def ledger(state: Any) -> Any:
    """A user's or creator's ledger fields, without what the fraud rules remember of it
    (test_fraud_*.py)."""
    if isinstance(state, UserState):
        return dataclasses.replace(state, first_ts=None, watch=SenderWatch())
    return dataclasses.replace(state, senders=NewSenders())


def balance(stage: UserLedger, user: str = "u1") -> int:
    state = stage.table.get(user)
    return 0 if state is None else state.balance


# --- duplicates -----------------------------------------------------------------------


def test_same_event_id_on_other_topics_is_not_a_duplicate(users: UserLedger) -> None:
    batch = run(users, [recharge("x", 5_000), gift("x"), limit("x", 100_000)])
    assert batch.statuses == [("x", "accepted", None)] * 3
    assert ledger(users.table.get("u1")) == UserState(
        4_000, 5_000, 1_000, 100_000, {T0 // DAY: 1_000}, 1, {"s1": [1_000, T0 // DAY]},
        month_spend={utc_month(T0): 1_000})


def test_same_event_id_for_another_user_is_not_a_duplicate(users: UserLedger) -> None:
    batch = run(users, [recharge("x", 10, "u1"), recharge("x", 20, "u2"),
                        gift("g", "rose", "u1"), gift("g", "rose", "u2")])
    assert [o.status for o in outcomes_of(batch.out.effects)] == ["accepted"] * 4
    assert (balance(users, "u1"), balance(users, "u2")) == (9, 19)


def test_same_event_id_topic_and_key_is_a_duplicate(users: UserLedger) -> None:
    first = run(users, [recharge("r", 10), recharge("r", 10)])
    second = run(users, [recharge("r", 999)])  # a later batch; the copy's fields do not matter
    assert first.statuses == [("r", "accepted", None), ("r", "duplicate", None)]
    assert second.statuses == [("r", "duplicate", None)]
    assert [o.balance_after for o in outcomes_of(first.out.effects) + outcomes_of(second.out.effects)] == [10, 10, 10]
    assert balance(users) == 10


def test_copy_of_a_rejected_event_is_duplicate(users: UserLedger) -> None:
    batch = run(users, [gift("g"), recharge("r", 5_000), gift("g")])
    assert batch.statuses == [
        ("g", "rejected", "insufficient_coins"), ("r", "accepted", None), ("g", "duplicate", None)]
    assert outcomes_of(batch.out.effects)[2].balance_after == 5_000
    assert batch.ops() == []


def test_duplicate_of_unknown_user_reports_zero_balance(users: UserLedger) -> None:
    batch = run(users, [gift("g", "rose", sender="u7"), gift("g", "rose", sender="u7")])
    assert [(o.status, o.balance_after) for o in outcomes_of(batch.out.effects)] == [("rejected", 0), ("duplicate", 0)]


def test_outcome_messages_are_keyed_by_event_id(users: UserLedger) -> None:
    batch = run(users, [recharge("r-1", 10)])
    [msg] = [m for m in batch.out.messages if m.topic == topics.OUTCOMES]
    assert (msg.topic, msg.key) == (topics.OUTCOMES, b"r-1")
    assert loads(msg.value) == {
        "event_id": "r-1", "type": "recharge", "status": "accepted", "reason": None, "subject_id": "u1",
        "coins": 10, "diamonds": None, "usd_cents": None, "balance_after": 10, "ts": T0,
            "bonus_coins": 0, "promo_id": None,
    }


# --- credits and payouts on creator-ops -------------------------------------------------


def test_credits_to_one_creator_are_combined_per_batch(users: UserLedger) -> None:
    batch = run(users, [
        recharge("r", 100_000),
        gift("g1", "lion"), gift("g2", "rose", creator="c2"), gift("g3", "rose", ts=T0 + DAY), gift("g4", "perfume"),
    ])
    ops = dict(batch.ops())
    assert len(batch.ops()) == 2
    # lion (14,999) and perfume (10) at T0 share one item; the rose a day later credits 0.
    # u1's first event is at T0: its diamonds within a day of that also go by sender and
    # hour (payout_concentration), with the first gift's id.
    assert ops["c1"] == {
        "op": "c", "creator_id": "c1", "coins": 29_999 + 1 + 20, "gifts": 3,
        "items": [[T0, 14_999 + 10], [T0 + DAY, 0]], "n": [["u1", T0, T0, 14_999 + 10, "g1"]],
    }
    assert ops["c2"] == {"op": "c", "creator_id": "c2", "coins": 1, "gifts": 1, "items": [[T0, 0]], "n": []}
    assert outcomes_of(batch.out.effects)[1].diamonds == 14_999


def test_end_batch_writes_a_progress_mark_to_every_creator_ops_partition(econ: Economics) -> None:
    stage = UserLedger(econ, 2, 3)

    def batch(events: list[tuple[str, Any]], applied: dict[str, int] | None) -> Batch:
        out = Output()
        start(stage, out, T0 + 1_000)  # the clock as the events', for their time bounds
        for topic, item in events:
            stage.handle(topic, item, out)
        stage.end_batch(out, False, T0 + 1_000, applied)
        stage.changelog()
        stage.commit()
        return Batch(out, [])

    def marks(gifts: int, payouts: int) -> list[tuple[int | None, dict[str, Any]]]:
        return [(q, {"op": "m", "source": 2, "g": gifts, "p": payouts, "t": T0 + 9}) for q in range(3)]

    offsets = {RECHARGES: 7, GIFTS: 4, LIMITS: 0, PAYOUTS: 2}
    first = batch([recharge("r", 5_000, ts=T0 + 9), gift("g", "galaxy", ts=T0 + 4)], offsets)
    assert first.marks() == marks(4, 2)  # what is applied of gifts and payouts, and the newest time
    # The mark comes after the batch's credits (and its gift_loop leg: 1,000 coins to one
    # creator), so a creator partition sees them first.
    assert [loads(m.value)["op"] for m in first.out.messages if m.topic == OPS] == ["c", "l", "m", "m", "m"]
    assert all(m.key is None for m in first.out.messages if m.topic == OPS and loads(m.value)["op"] == "m")
    assert batch([], offsets).marks() == []  # no news: no mark
    assert batch([], {**offsets, RECHARGES: 9}).marks() == []  # recharges credit nobody: not news
    assert batch([], {**offsets, PAYOUTS: 3}).marks() == marks(4, 3)
    assert batch([], None).marks() == []  # nothing known of the offsets: nothing claimed


def test_marks_of_an_aborted_batch_are_written_again(econ: Economics) -> None:
    stage = UserLedger(econ, 0, 2)
    applied = {RECHARGES: 1, GIFTS: 0, LIMITS: 0, PAYOUTS: 0}
    out = Output()
    start(stage, out, T0)
    stage.handle(*recharge("r", 5, ts=T0), out)
    stage.end_batch(out, False, 0, applied)
    assert len([m for m in out.messages if m.key is None]) == 2
    stage.abort()
    again = Output()
    start(stage, again, T0)
    stage.handle(*recharge("r", 5, ts=T0), again)
    stage.end_batch(again, False, 0, applied)
    assert [(m.partition, loads(m.value)) for m in again.messages if m.key is None] == [
        (q, {"op": "m", "source": 0, "g": 0, "p": 0, "t": T0}) for q in range(2)]


def test_creator_ledger_applies_marks_to_its_progress(creators: CreatorLedger) -> None:
    batch = run(creators, [(OPS, Mark(0, 5, 3)), (OPS, Mark(0, 4, 9))])
    assert outcomes_of(batch.out.effects) == [] and batch.out.messages == []
    progress = creators.progress_table.get("")
    assert progress is not None and progress.applied == {0: (5, 9)}  # a mark never moves a source back
    assert [k for k, _ in batch.changelog] == ["#progress"]

def test_rejected_gifts_credit_nothing(users: UserLedger) -> None:
    batch = run(users, [recharge("r", 10), gift("g1", "galaxy"), gift("g2", "rose", creator="u1")])
    assert batch.ops() == []


def test_payout_comes_after_the_credits_that_preceded_it(users: UserLedger) -> None:
    batch = run(users, [
        recharge("r", 100_000),
        gift("g1", "galaxy", creator="c1"),
        gift("g2", "galaxy", creator="c2"),
        payout("p1", 2_000, creator="c1"),
        gift("g3", "confetti", creator="c1"),
        payout("p2", 2_000, creator="c3"),
    ])
    ops = batch.ops()

    def diamonds(v: dict[str, Any]) -> int:
        return sum(d for _, d in v["items"]) if v["op"] == "c" else v["diamonds"]

    by_creator = {c: [(v["op"], diamonds(v)) for k, v in ops if k == c] for c in ("c1", "c2", "c3")}
    assert by_creator == {"c1": [("c", 500), ("p", 2_000), ("c", 50)], "c2": [("c", 500)], "c3": [("p", 2_000)]}
    assert len(ops) == 5
    # The payout is validated by the creator ledger, not here: no outcome for it yet.
    assert [o.event_id for o in outcomes_of(batch.out.effects)] == ["r", "g1", "g2", "g3"]
    # Each message's position: the credit of g1 precedes p1 in the output itself.
    positions = [i for i, m in enumerate(batch.out.messages) if m.topic == OPS and m.key == b"c1"]
    assert [loads(batch.out.messages[i].value)["op"] for i in positions] == ["c", "p", "c", "l"]  # l: a gift_loop leg


def test_payout_is_forwarded_as_is_and_not_deduplicated_by_the_user_ledger(users: UserLedger) -> None:
    batch = run(users, [payout("p", 1, creator="c5", ts=T0 + 1), payout("p", 1, creator="c5", ts=T0 + 1)])
    op = {"op": "p", "event_id": "p", "creator_id": "c5", "diamonds": 1, "ts": T0 + 1}
    assert batch.ops() == [("c5", op), ("c5", op)]
    assert batch.changelog == []


def test_user_then_creator_ledger_end_to_end(users: UserLedger, creators: CreatorLedger) -> None:
    """The payout is accepted because the credits that preceded it reach the creator first."""
    gifts = [gift(f"g{i}", "galaxy") for i in range(4)]  # 4,000 coins -> 2,000 diamonds
    batch = run(users, [recharge("r", 10_000), *gifts, payout("p1", 2_000), payout("p2", 2_000)])
    items = [creators.decode(m.topic, m.key, m.value) for m in batch.out.messages if m.topic == OPS]
    assert [type(item).__name__ for item, _ in items] == ["CreditBatch", "Payout", "Payout", "Leg"]
    assert [ts for _, ts in items] == [T0] * 4
    second = run(creators, [(OPS, item) for item, _ in items])
    decided = outcomes_of(second.out.effects)
    assert [(o.event_id, o.status, o.reason, o.usd_cents, o.balance_after) for o in decided] == [
        ("p1", "accepted", None, 1000, 0), ("p2", "rejected", "insufficient_diamonds", None, 0)]
    # No cycle is covered yet: the credit is remembered with its time and cycle.
    assert ledger(creators.table.get("c1")) == CreatorState(
        0, 2_000, 2_000, {T0 // DAY: 2_000}, 1, [], [[T0, 2_000, 1]], windows={"1m": {T0: 2_000}, "1h": {T0: 2_000}}
    )
    assert credited_of(second.out.effects) == 2_000
    progress = creators.progress_table.get("")
    assert progress is not None and (progress.cycle, progress.covered) == (1, 0)


# --- creator ledger -----------------------------------------------------------------


def test_creator_payout_duplicates_are_per_creator(creators: CreatorLedger) -> None:
    batch = run(creators, [
        credit([(T0, 5_000)], 10_000), credit([(T0, 5_000)], 10_000, creator="c2"),
        payout("p", 2_000, "c1"), payout("p", 2_000, "c2"), payout("p", 2_000, "c1"), payout("q", 100, "c1"),
    ])
    assert batch.statuses == [
        ("p", "accepted", None), ("p", "accepted", None), ("p", "duplicate", None),
        ("q", "rejected", "below_min_payout")]
    assert [o.balance_after for o in outcomes_of(batch.out.effects)] == [3_000, 3_000, 3_000, 3_000]
    again = run(creators, [payout("q", 100, "c1")])
    assert again.statuses == [("q", "duplicate", None)]
    assert credited_of(batch.out.effects) == 10_000


def test_creator_duplicate_for_unknown_creator(creators: CreatorLedger) -> None:
    batch = run(creators, [payout("p", 5_000, "c9"), payout("p", 5_000, "c9")])
    assert [(o.status, o.reason, o.balance_after) for o in outcomes_of(batch.out.effects)] == [
        ("rejected", "insufficient_diamonds", 0), ("duplicate", None, 0)]
    assert [k for k, _ in batch.changelog] == ["#progress", "#dd:0"]  # no state for c9 (the cycle number stamped)


# --- abort, changelog, restore --------------------------------------------------------


def test_abort_discards_state_dedupe_and_pending_credits(users: UserLedger) -> None:
    run(users, [recharge("r0", 5_000)])
    committed = copy.deepcopy(users.table.get("u1"))  # get() shares the cached value
    out = Output()
    start(users, out, T0)
    for topic, item in [recharge("r1", 100), gift("g1"), limit("l1", 0)]:
        users.handle(topic, item, out)
    users.abort()
    assert users.table.get("u1") == committed
    assert ledger(committed) == UserState(5_000, 5_000, 0, None, {}, 1)
    start(users, Output(), T0)
    assert users.changelog() == []
    users.abort()
    replay = run(users, [recharge("r1", 100), gift("g1", "rose", creator="c2")])
    assert replay.statuses == [("r1", "accepted", None), ("g1", "accepted", None)]
    assert [k for k, _ in replay.ops()] == ["c2"]  # the aborted credit to c1 is gone


def test_creator_abort(creators: CreatorLedger) -> None:
    run(creators, [credit([(T0, 3_000)], 6_000)])
    out = Output()
    start(creators, out, T0)
    creators.handle(*payout("p", 2_000), out)
    creators.handle(*credit([(T0 + 1, 1)], 2), out)
    creators.handle(OPS, Mark(0, 5, 5), out)
    creators.abort()
    assert creators.table.get("c1") == CreatorState(3_000, 3_000, 0, {20_000: 3_000}, 1, [], [[T0, 3_000, 1]],
                                                    windows={"1m": {T0: 3_000}, "1h": {T0: 3_000}})
    progress = creators.progress_table.get("")
    assert progress is not None and progress.applied == {}  # the aborted mark is gone too
    start(creators, Output(), T0)
    assert creators.changelog() == []
    creators.abort()
    assert run(creators, [payout("p", 2_000)]).statuses == [("p", "accepted", None)]


def restored(stage: Stage, fresh: Stage, batches: list[Batch]) -> Stage:
    fresh.start_restore(T0 + 30 * DAY)  # after every batch
    for b in batches:
        for key, value in b.changelog:
            fresh.restore(key, None if value is None else dumps(value))
    fresh.end_restore()
    assert fresh.table.as_dict() == stage.table.as_dict()
    assert fresh.dedupe.ids() == stage.dedupe.ids()
    assert fresh.dedupe.buckets == stage.dedupe.buckets
    return fresh


def test_user_changelog_restore_reproduces_state_and_dedupe(users: UserLedger, econ: Economics) -> None:
    batches = [
        run(users, [recharge("r1", 50_000), gift("g1", "lion"), limit("l1", 30_000), recharge("r1", 1, "u2")]),
        run(users, [gift("g2", "galaxy"), gift("g3", "rose", ts=T0 + DAY), gift("g4", "lion", "u2")]),
        run(users, [limit("l2", None), recharge("r1", 7)]),
    ]
    fresh = restored(users, UserLedger(econ, 0, 1), batches)
    assert ledger(fresh.table.as_dict()["u1"]) == UserState(
        # seq 3: each of the three batches changed it
        20_000, 50_000, 30_000, None, {T0 // DAY: 29_999, T0 // DAY + 1: 1}, 3, {"s1": [30_000, T0 // DAY + 1]},
        month_spend={utc_month(T0): 30_000},
    )
    # The restored stage decides as the original would.
    events = [recharge("r1", 5), gift("g2"), gift("g9", "rose"), recharge("r1", 1, "u2")]
    assert run(fresh, events).statuses == run(users, events).statuses == [
        ("r1", "duplicate", None), ("g2", "duplicate", None), ("g9", "accepted", None), ("r1", "duplicate", None)]


def test_creator_changelog_restore(creators: CreatorLedger, econ: Economics) -> None:
    batches = [
        run(creators, [credit([(T0, 5_000)], 10_000), payout("p1", 2_000), credit([(T0, 9)], 18, creator="c2")]),
        run(creators, [payout("p2", 2_500), payout("p1", 2_000), (OPS, Mark(0, 3, 1))]),
        run(creators, [credit([(T0 - 1, 3), (T0 + 1, 4)], 14, 2, creator="c2")]),
    ]
    fresh = restored(creators, CreatorLedger(econ, sources=1, max_hold_ms=0), batches)
    assert fresh.table.as_dict()["c1"] == CreatorState(500, 5_000, 4_500, {20_000: 5_000}, 2, [], [[T0, 5_000, 1]],
                                                       windows={"1m": {T0: 5_000}, "1h": {T0: 5_000}})
    # No cut was ever covered (no cycle was watched): every credit is remembered.
    assert fresh.table.as_dict()["c2"] == CreatorState(
        16, 16, 0, {19_999: 3, 20_000: 13}, 2, [], [[T0 - 1, 3, 1], [T0, 9, 1], [T0 + 1, 4, 1]],
        windows={"1m": {T0: 13, T0 - 60_000: 3}, "1h": {T0: 13, T0 - 3_600_000: 3}},
    )
    assert fresh.progress_table.as_dict() == creators.progress_table.as_dict()
    assert fresh.progress_table.get("").applied == {0: (3, 1)}
    assert run(fresh, [payout("p2", 2_000)]).statuses == [("p2", "duplicate", None)]


def test_read_only_keys_are_not_written(users: UserLedger) -> None:
    run(users, [recharge("r", 10), recharge("r", 10, "u2")])
    batch = run(users, [recharge("r", 10), gift("g1", "rose", sender="u2"), gift("g1", "rose", sender="u2")])
    assert [s for _, s, _ in batch.statuses] == ["duplicate", "accepted", "duplicate"]
    keys = [k for k, _ in batch.changelog]
    assert keys == ["u2", "#dd:1"]  # u1 only read


def test_rejected_gifts_are_remembered_for_the_fraud_rules(users: UserLedger) -> None:
    """A rejected gift changes no balance, but rejection_probe counts it, even for a
    user the ledger has never seen (card testing starts with nothing)."""
    run(users, [recharge("r", 10)])
    batch = run(users, [gift("g1", "galaxy"), gift("g2", "rose", sender="u9")])
    assert [s for _, s, _ in batch.statuses] == ["rejected", "rejected"]
    assert [k for k, _ in batch.changelog] == ["u1", "u9", "#dd:1"]
    u9 = users.table.get("u9")
    assert u9 is not None and ledger(u9) == UserState(seq=1) and u9.first_ts == T0
    assert [e.event_id for e in u9.watch.rejections.entries] == ["g2"]


def test_each_changed_key_is_written_once_per_batch(users: UserLedger) -> None:
    batch = run(users, [recharge("a", 1), recharge("b", 2), recharge("c", 3)])
    assert [(k, v["b"] if v else None) for k, v in batch.changelog if not k.startswith("#")] == [("u1", 6)]


def test_commit_returns_read_model_updates_of_changed_keys(users: UserLedger) -> None:
    run(users, [recharge("r", 1_000, "u2")])
    out = Output()
    start(users, out, T0)
    for topic, item in [recharge("r", 300), gift("g", "confetti"), gift("h", "rose", sender="u2", creator="u2")]:
        users.handle(topic, item, out)
    users.end_batch(out, True, 0)
    users.changelog()
    updates = {u.id: u for u in users.commit()}
    assert updates["u2"].fields["coins"] == 1_000  # its self gift was rejected: only the watch changed
    update = updates["u1"]
    assert (update.kind, update.id, update.seq) == ("user", "u1", 1)  # its first change
    assert update.fields == {
        "coins": 200, "recharged_coins": 300, "spent_coins": 100, "daily_coin_limit": -1,
        "last_spend_day": T0 // DAY, "last_spend_day_coins": 100,
        "monthly_coin_limit": -1, "last_spend_month": utc_month(T0), "last_spend_month_coins": 100,
            "bonus_coins": 0, "lifetime_spent_coins": 100, "gifter_level": 2,
    }


FAR_FUTURE = 253_402_300_799_999  # the largest ts the contract's validator accepts


def test_far_future_event_of_another_user_does_not_disable_dedupe(users: UserLedger) -> None:
    """The clock is the engine's (not the events'): an event dated far ahead is refused,
    and moves no duplicate window (the index's own guard: test_dedupe.py)."""
    run(users, [recharge("r", 100, "u1")])
    far = run(users, [recharge("z", 1, "u2", ts=FAR_FUTURE)], clock=T0)
    assert far.statuses == [("z", "rejected", "invalid_ts")]
    assert run(users, [recharge("r", 100, "u1")]).statuses == [("r", "duplicate", None)]
    assert balance(users, "u1") == 100


def test_abort_takes_back_the_progress_of_the_aborted_batch(users: UserLedger) -> None:
    """After an abort the next mark is written again: the aborted one never was."""
    applied = {RECHARGES: 1, GIFTS: 0, LIMITS: 0, PAYOUTS: 0}
    out = Output()
    start(users, out, T0)
    users.end_batch(out, False, T0, applied)
    assert [m for m in out.messages if m.topic == OPS]
    users.abort()
    again = Output()
    users.end_batch(again, False, T0, applied)
    marks = [loads(m.value) for m in again.messages if m.topic == OPS]
    assert marks == [{"op": "m", "source": 0, "g": 0, "p": 0, "t": 0}]  # nothing applied: the aborted time is gone


def test_a_cached_value_tells_the_read_model_its_boards_once(users: UserLedger) -> None:
    """The store's cache keeps the value object across batches: the boards a batch
    touched must not be written again by the next batch, which touched others."""
    run(users, [recharge("r", 10_000)])
    first = run_batch(users, [gift("g1", "rose", ts=T0)], T0)
    second = run_batch(users, [gift("g2", "rose", ts=T0 + DAY)], T0 + DAY)
    boards = [{key for key, _, _ in u.scores} for u in (*first.updates, *second.updates) if u.id == "u1"]
    day, next_day = leaderboards.gifters_day_key(T0 // DAY), leaderboards.gifters_day_key(T0 // DAY + 1)
    assert len(boards) == 2
    assert day in boards[0] and next_day not in boards[0]
    assert next_day in boards[1] and day not in boards[1]
