"""The fraud rules at their thresholds (just under and just over each), run through the
user and creator ledger stages as the engine runs them, without Kafka: user events go
to the user ledger, its creator-ops records to the creator ledger."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agents.credit.agent import CreatorLedger
from agents.fraud.alerts import Alert, alerts_of
from agents.fraud.thresholds import FraudRules, GiftVelocity
from agents.fraud.window import Burst
from agents.ingest.records import Gift, Payout, Recharge
from agents.ledger.agent import UserLedger
from agents.outcomes import Outcome, outcomes_of
from pipeline import economics, topics
from pipeline.economics import Economics
from pipeline.engine.stage import Output
from pipeline.engine.testing import run_batch

T0 = 1_780_000_000_000
SEC, MIN, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000


class Mini:
    """One user partition and one creator partition; each `send` is one batch."""

    def __init__(self, econ: Economics, hold: bool = True) -> None:
        self.users = UserLedger(econ, 0, 1)
        self.creators = CreatorLedger(econ, sources=1, max_hold_ms=0, hold_suspicious=hold)
        self.alerts: list[Alert] = []
        self.outcomes: list[Outcome] = []
        self.n = 0

    def _id(self) -> str:
        self.n += 1
        return f"e{self.n}"

    def recharge(self, user: str, coins: int, ts: int) -> str:
        eid = self._id()
        self.send([(topics.RECHARGES, Recharge(eid, user, coins, 0, "USD", ts))])
        return eid

    def gift(self, sender: str, creator: str, gift_id: str, ts: int, quantity: int = 1) -> str:
        eid = self._id()
        self.send([(topics.GIFTS, Gift(eid, sender, creator, f"{creator}-s", gift_id, quantity, ts))])
        return eid

    def payout(self, creator: str, diamonds: int, ts: int) -> Outcome:
        eid = self._id()
        self.send([(topics.PAYOUTS, Payout(eid, creator, diamonds, ts))])
        [outcome] = [o for o in self.outcomes if o.event_id == eid]
        return outcome

    def send(self, events: list[tuple[str, Any]]) -> None:
        """Then what the user ledger wrote to creator-ops, and what the creator ledger
        writes there itself (gift_loop's closings), until nothing more is written."""
        out = self._batch(self.users, events)
        for _ in range(3):
            ops = [self.creators.decode(m.topic, m.key, m.value)[0] for m in out.messages
                   if m.topic == topics.CREATOR_OPS]
            if not ops:
                return
            out = self._batch(self.creators, [(topics.CREATOR_OPS, op) for op in ops])
        raise AssertionError("the creator ledger keeps writing to itself")

    def _batch(self, stage: Any, events: list[tuple[str, Any]]) -> Output:
        # decided live: the clock is the latest event's time
        out = run_batch(stage, events, max((item.ts for _, item in events), default=0)).out
        self.alerts += alerts_of(out.effects)
        self.outcomes += outcomes_of(out.effects)
        return out

    def fired(self, rule: str) -> list[Alert]:
        return [a for a in self.alerts if a.rule == rule]


@pytest.fixture(scope="module")
def econ() -> Economics:
    return economics.load()


@pytest.fixture
def mini(econ: Economics) -> Mini:
    return Mini(econ)


def test_defaults_are_the_issue_thresholds(econ: Economics) -> None:
    r = econ.fraud
    assert (r.gift_velocity.window_ms, r.gift_velocity.gifts, r.gift_velocity.coins) == (MIN, 50, 20_000)
    assert (r.recharge_burn.window_ms, r.recharge_burn.spent_percent, r.recharge_burn.min_coins,
            r.recharge_burn.max_creators) == (10 * MIN, 90, 5_000, 2)
    assert (r.gift_loop.window_ms, r.gift_loop.min_coins) == (DAY, 1_000)
    c = r.payout_concentration
    assert (c.min_diamonds, c.window_ms, c.percent, c.max_senders, c.new_sender_ms) == (10_000, DAY, 80, 3, DAY)
    assert (r.rejection_probe.window_ms, r.rejection_probe.rejections) == (MIN, 20)
    assert r == FraudRules()


# --- the window ------------------------------------------------------------------------


@pytest.mark.parametrize("span, fires", [(MIN - 1, True), (MIN, False)])
def test_window_holds_events_less_than_its_length_apart(span: int, fires: bool) -> None:
    burst = Burst()
    hits = [burst.observe(T0 + span * i // 49, 1, f"e{i}", MIN, 50) for i in range(50)]
    assert [h is not None for h in hits] == [False] * 49 + [fires]


def test_window_one_crossing_per_window_and_evidence() -> None:
    burst = Burst()
    hits = [burst.observe(T0 + i * SEC, 1, f"e{i}", MIN, 50) for i in range(150)]
    crossings = [h for h in hits if h is not None]
    # 0..49 cross at 49 s; quiet until 60 s; 60..109 cross at 109 s; quiet until 120 s.
    assert [(c.start, c.end, c.count) for c in crossings] == [
        (T0, T0 + 49 * SEC, 50), (T0 + 60 * SEC, T0 + 109 * SEC, 50)]
    assert crossings[0].event_ids == [f"e{i}" for i in range(50)]
    assert len(burst.entries) < 50


def test_window_out_of_order_and_too_old_events() -> None:
    burst = Burst()
    assert burst.observe(T0 + 30 * SEC, 15_000, "late", MIN, 50, 20_000) is None
    assert burst.observe(T0 - 40 * SEC, 9_000, "older", MIN, 50, 20_000) is None  # 70 s before the newest
    hit = burst.observe(T0, 5_000, "early", MIN, 50, 20_000)  # arrives after a later one
    assert hit is not None and (hit.start, hit.end, hit.amount, hit.event_ids) == (
        T0, T0 + 30 * SEC, 20_000, ["early", "late"])


# --- gift_velocity and rejection_probe ----------------------------------------------------------


@pytest.mark.parametrize("gifts, fires", [(49, False), (50, True)])
def test_gift_velocity_count(mini: Mini, gifts: int, fires: bool) -> None:
    mini.recharge("u", 10_000, T0)
    ids = [mini.gift("u", "c", "confetti", T0 + SEC + i * 1_200) for i in range(gifts)]  # 58.8 s for 50
    found = mini.fired("gift_velocity")
    assert len(found) == fires
    if fires:
        a = found[0]
        assert (a.subject_type, a.subject_id, a.severity, a.ts) == ("user", "u", "medium", T0 + SEC + 49 * 1_200)
        assert list(a.event_ids) == ids and a.details["gifts"] == 50 and a.details["coins"] == 5_000
        assert a.details["trigger_event_id"] == ids[-1] and a.alert_id == f"gift_velocity:u:{T0 + SEC}"


@pytest.mark.parametrize("coins, fires", [(19_999, False), (20_000, True)])
def test_gift_velocity_coins(mini: Mini, coins: int, fires: bool) -> None:
    mini.recharge("u", 50_000, T0)
    mini.gift("u", "c", "galaxy", T0 + SEC, quantity=10)  # 10,000
    mini.gift("u", "c", "rose", T0 + SEC + MIN - 1, quantity=coins - 10_000)
    assert len(mini.fired("gift_velocity")) == fires


def test_gift_velocity_counts_accepted_gifts_only(mini: Mini) -> None:
    mini.recharge("u", 100, T0)
    for i in range(60):
        mini.gift("u", "c", "confetti" if i == 0 else "lion", T0 + i * 100)  # 59 rejected
    assert mini.fired("gift_velocity") == [] and len(mini.fired("rejection_probe")) == 1


@pytest.mark.parametrize("rejected, fires", [(19, False), (20, True)])
def test_rejection_probe(mini: Mini, rejected: int, fires: bool) -> None:
    for i in range(rejected):  # an account with no coins at all
        mini.gift("p", "c", "lion", T0 + i * 3_000)  # 57 s for 20
    found = mini.fired("rejection_probe")
    assert len(found) == fires
    if fires:
        assert found[0].severity == "low" and found[0].details["rejected_gifts"] == 20


def test_rejection_probe_window_length(mini: Mini) -> None:
    for i in range(20):
        mini.gift("p", "c", "lion", T0 + i * MIN // 19)  # first and last exactly 60 s apart
    assert mini.fired("rejection_probe") == []


# --- recharge_burn ---------------------------------------------------------------------


def burn(mini: Mini, recharged: list[int], spends: list[tuple[int, str, int]]) -> list[Alert]:
    """Recharges at T0, T0+1, ...; spends: (ms after the first recharge, creator, coins in
    perfume of 20)."""
    for i, coins in enumerate(recharged):
        mini.recharge("b", coins, T0 + i)
    for at, creator, coins in spends:
        assert coins % 20 == 0
        mini.gift("b", creator, "perfume", T0 + at, quantity=coins // 20)
    return mini.fired("recharge_burn")


@pytest.mark.parametrize("spent, fires", [(8_980, False), (9_000, True)])
def test_recharge_burn_share(mini: Mini, spent: int, fires: bool) -> None:
    found = burn(mini, [10_000], [(MIN, "c1", 4_000), (2 * MIN, "c2", spent - 4_000)])
    assert len(found) == fires
    if fires:
        assert found[0].severity == "high" and found[0].details["spent_coins"] == 9_000
        assert found[0].details["recharged_coins"] == 10_000 and found[0].details["creators"] == ["c1", "c2"]


@pytest.mark.parametrize("recharged, fires", [(4_980, False), (5_000, True)])
def test_recharge_burn_minimum_coins(mini: Mini, recharged: int, fires: bool) -> None:
    assert len(burn(mini, [recharged], [(MIN, "c1", recharged)])) == fires


@pytest.mark.parametrize("at, fires", [(10 * MIN - 1, True), (10 * MIN, False)])
def test_recharge_burn_window(mini: Mini, at: int, fires: bool) -> None:
    assert len(burn(mini, [10_000], [(MIN, "c1", 5_000), (at, "c1", 4_000)])) == fires


@pytest.mark.parametrize("creators, fires", [(2, True), (3, False)])
def test_recharge_burn_creators(mini: Mini, creators: int, fires: bool) -> None:
    spends = [(MIN + i, f"c{i}", 9_000 // creators // 20 * 20) for i in range(creators)]
    assert len(burn(mini, [9_000 + 9_000 % creators], spends)) == fires


def test_recharge_burn_counts_every_recharge_of_the_window_and_fires_once(mini: Mini) -> None:
    # 9,000 of a first 10,000 is 90 %, but a second recharge makes it 60 %.
    assert burn(mini, [10_000, 5_000], [(MIN, "c1", 9_000)]) == []
    mini.gift("b", "c1", "perfume", T0 + 2 * MIN, quantity=225)  # 13,500 of 15,000
    mini.gift("b", "c1", "perfume", T0 + 3 * MIN, quantity=10)
    assert len(mini.fired("recharge_burn")) == 1


# --- gift_loop -------------------------------------------------------------------------


@pytest.mark.parametrize("back, fires", [(999, False), (1_000, True)])
def test_gift_loop_amount(mini: Mini, back: int, fires: bool) -> None:
    mini.recharge("a", 5_000, T0)
    mini.recharge("b", 5_000, T0)
    mini.gift("a", "b", "galaxy", T0 + HOUR)
    mini.gift("b", "a", "rose", T0 + 2 * HOUR, quantity=back)
    found = mini.fired("gift_loop")
    assert [a.subject_id for a in found] == (["a", "b"] if fires else [])
    if fires:
        assert found[0].details["accounts"] == ["a", "b"] and found[0].ts == T0 + 2 * HOUR
        assert [(leg["from"], leg["coins"]) for leg in found[0].details["legs"]] == [("a", 1_000), ("b", 1_000)]


@pytest.mark.parametrize("apart, fires", [(DAY - 1, True), (DAY, False)])
def test_gift_loop_window(mini: Mini, apart: int, fires: bool) -> None:
    mini.recharge("a", 5_000, T0)
    mini.recharge("z", 5_000, T0)
    mini.gift("z", "a", "money_gun", T0 + HOUR, quantity=2)  # the larger id gives first
    mini.gift("a", "z", "galaxy", T0 + HOUR + apart)
    assert len(mini.fired("gift_loop")) == 2 * fires


@pytest.mark.parametrize("at, fires", [(DAY - 1, True), (DAY, False)])
def test_gift_loop_window_counts_from_the_first_gift_of_a_leg(mini: Mini, at: int, fires: bool) -> None:
    mini.recharge("a", 5_000, T0)
    mini.recharge("z", 5_000, T0)
    mini.gift("z", "a", "money_gun", T0)
    mini.gift("z", "a", "money_gun", T0 + 10 * HOUR)  # the leg z -> a spans T0 .. T0 + 10 h
    mini.gift("a", "z", "galaxy", T0 + at)
    assert len(mini.fired("gift_loop")) == 2 * fires


def test_gift_loop_sums_small_gifts_and_alerts_once_per_window(mini: Mini) -> None:
    mini.recharge("a", 50_000, T0)
    mini.recharge("b", 50_000, T0)
    for i in range(10):
        mini.gift("a", "b", "confetti", T0 + i * MIN)  # 1,000 in ten gifts
    mini.gift("b", "a", "galaxy", T0 + HOUR)
    mini.gift("b", "a", "galaxy", T0 + 2 * HOUR)  # same window: no second alert
    mini.gift("a", "b", "galaxy", T0 + 3 * HOUR)
    found = mini.fired("gift_loop")
    assert len(found) == 2 and len(found[0].event_ids) == 5  # the latest 4 of a leg, and the gift back


TRIANGLE = [("a", "b"), ("b", "c"), ("c", "a")]


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2)])
def test_gift_loop_of_three_accounts_in_any_order(mini: Mini, order: tuple[int, int, int]) -> None:
    """No pair gifts both ways: the smallest account's two legs make a path, and the
    third leg closes it wherever it meets, before or after the path arrives."""
    for who in "abc":
        mini.recharge(who, 5_000, T0)
    for n, i in enumerate(order):
        sender, recipient = TRIANGLE[i]
        mini.gift(sender, recipient, "confetti", T0 + (n + 1) * HOUR, quantity=10)
    found = mini.fired("gift_loop")
    assert sorted(a.subject_id for a in found) == ["a", "b", "c"]
    assert {a.details["shape"] for a in found} == {"triangle"} and found[0].ts == T0 + 3 * HOUR
    assert sorted((leg["from"], leg["to"]) for leg in found[0].details["legs"]) == sorted(TRIANGLE)
    assert len(set(found[0].event_ids)) == 3


@pytest.mark.parametrize("last_at, coins, fires", [
    (DAY - 1, 1_000, True), (DAY, 1_000, False), (HOUR, 999, False),
])
def test_gift_loop_of_three_needs_every_leg_within_one_window(mini: Mini, last_at: int, coins: int,
                                                               fires: bool) -> None:
    for who in "abc":
        mini.recharge(who, 5_000, T0)
    mini.gift("a", "b", "confetti", T0, quantity=10)
    mini.gift("b", "c", "confetti", T0 + MIN, quantity=10)
    mini.gift("c", "a", "rose", T0 + last_at, quantity=coins)
    assert len(mini.fired("gift_loop")) == 3 * fires


def test_gift_loop_of_three_alerts_once_per_window(mini: Mini) -> None:
    for who in "abc":
        mini.recharge(who, 50_000, T0)
    for k in range(3):  # legs sent again an hour apart (LEG_REFRESH_MS), the loop the same
        for sender, recipient in TRIANGLE:
            mini.gift(sender, recipient, "confetti", T0 + k * 2 * HOUR + HOUR, quantity=10)
    assert len(mini.fired("gift_loop")) == 3


# --- payout_concentration --------------------------------------------------------------


def concentrate(mini: Mini, shares: list[int], payout: int = 15_000, first_age: int = HOUR,
                old_fan: int = 0) -> Outcome:
    """New senders (first recharge `first_age` before their gifts) give the creator
    `shares` diamonds (in lion gifts of 14,999 diamonds plus roses), an old fan `old_fan`."""
    t = T0 + 2 * DAY
    if old_fan:
        mini.recharge("old", 2 * old_fan, T0)
        mini.gift("old", "k", "rose", t, quantity=2 * old_fan)
    for i, diamonds in enumerate(shares):
        sender = f"s{i}"
        mini.recharge(sender, 2 * diamonds + 10, t - first_age)
        mini.gift(sender, "k", "rose", t + i, quantity=2 * diamonds)
    return mini.payout("k", payout, t + HOUR)


@pytest.mark.parametrize("old, fires", [(5_001, False), (5_000, True)])
def test_payout_concentration_share(mini: Mini, old: int, fires: bool) -> None:
    # 3 new senders give 20,000; an old fan `old`: 80 % exactly at 5,000.
    outcome = concentrate(mini, [10_000, 6_000, 4_000], old_fan=old)
    found = mini.fired("payout_concentration")
    assert len(found) == fires
    assert (outcome.status, outcome.reason) == (("rejected", "held_for_review") if fires else ("accepted", None))
    if fires:
        a = found[0]
        assert (a.subject_type, a.subject_id, a.severity) == ("creator", "k", "high")
        assert a.details["held"] is True and a.details["diamonds_in_window"] == 25_000
        assert [s["sender_id"] for s in a.details["top_senders"]] == ["s0", "s1", "s2"]
        assert a.event_ids[-1] == outcome.event_id


@pytest.mark.parametrize("senders, fires", [(3, True), (4, False)])
def test_payout_concentration_senders(mini: Mini, senders: int, fires: bool) -> None:
    concentrate(mini, [20_000 // senders] * senders)
    assert len(mini.fired("payout_concentration")) == fires


@pytest.mark.parametrize("payout, fires", [(9_999, False), (10_000, True)])
def test_payout_concentration_amount(mini: Mini, payout: int, fires: bool) -> None:
    concentrate(mini, [20_000], payout=payout)
    assert len(mini.fired("payout_concentration")) == fires


@pytest.mark.parametrize("age, fires", [(DAY - HOUR - 1, True), (DAY - HOUR, False)])
def test_payout_concentration_new_senders(mini: Mini, age: int, fires: bool) -> None:
    # The payout is an hour after the gifts: a sender first seen `age` before them is
    # under 24 h old at the payout only below DAY - HOUR.
    concentrate(mini, [20_000], first_age=age)
    assert len(mini.fired("payout_concentration")) == fires


def test_payout_concentration_insufficient_diamonds_alerts_without_hold(mini: Mini) -> None:
    outcome = concentrate(mini, [6_000], payout=12_000)
    assert (outcome.status, outcome.reason) == ("rejected", "insufficient_diamonds")  # contract reason first
    assert mini.fired("payout_concentration")[0].details["held"] is False


def test_payout_concentration_without_hold(econ: Economics) -> None:
    mini = Mini(econ, hold=False)
    outcome = concentrate(mini, [20_000])
    assert outcome.status == "accepted" and len(mini.fired("payout_concentration")) == 1
    assert mini.creators.table.get("k").available == 5_000


def test_held_payout_keeps_the_diamonds_and_one_alert_per_window(mini: Mini) -> None:
    outcome = concentrate(mini, [20_000])
    assert outcome.reason == "held_for_review"
    assert mini.creators.table.get("k").available == 20_000
    second = mini.payout("k", 12_000, T0 + 2 * DAY + 2 * HOUR)
    assert second.reason == "held_for_review" and len(mini.fired("payout_concentration")) == 1


# --- configuration -------------------------------------------------------------------------


def test_thresholds_come_from_the_economics_file(tmp_path: Any) -> None:
    text = (economics.DEFAULT_FILE.read_text()
            .replace("gifts = 50\n", "gifts = 5\n"))
    path = tmp_path / "e.toml"
    path.write_text(text)
    econ = economics.load(path)
    assert econ.fraud.gift_velocity == dataclasses.replace(GiftVelocity(), gifts=5)
    mini = Mini(econ)
    mini.recharge("u", 1_000, T0)
    for i in range(5):
        mini.gift("u", "c", "rose", T0 + i)
    assert len(mini.fired("gift_velocity")) == 1


@pytest.mark.parametrize("table, message", [
    ({"gift_velocity": {"gifts": 0}}, "`fraud.gift_velocity.gifts` = 0"),
    ({"gift_velocity": {"speed": 1}}, "[fraud.gift_velocity] may hold only"),
    ({"loops": {}}, "[fraud] may hold only"),
    ({"rejection_probe": {"severity": "urgent"}}, "one of ['low', 'medium', 'high']"),
    ({"payout_concentration": {"window_ms": 90 * MIN}}, "whole hours"),
])
def test_bad_thresholds_name_the_key(table: dict[str, Any], message: str) -> None:
    from agents.fraud.thresholds import parse
    from pipeline.settings import ConfigError

    with pytest.raises(ConfigError) as exc:
        parse(table, "x.toml")
    assert message in str(exc.value)


def test_gift_loop_meeting_point_is_bounded() -> None:
    """A popular creator's heavy fans: the least recent legs go first, the recent ones
    still make a loop."""
    from agents.fraud.loop import MAX_CLOSINGS_PER_LEG, MAX_PARTNERS, Pairs, meet
    from agents.fraud.sender import Leg
    from agents.fraud.thresholds import GiftLoop

    pairs, rules = Pairs(), GiftLoop()
    for i in range(MAX_PARTNERS + 50):
        assert meet(pairs, Leg(f"u{i:04d}", "c", T0 + i, T0 + i, 1_000, (f"g{i}",)), rules) == ([], [])
        pairs.check()
    assert len(pairs.partners) == MAX_PARTNERS and "u0000" not in pairs.partners
    found, closings = meet(pairs, Leg("c", f"u{MAX_PARTNERS + 49:04d}", T0 + HOUR, T0 + HOUR, 1_000, ("back",)),
                           rules)
    assert [a.subject_id for a in found] == ["c", f"u{MAX_PARTNERS + 49:04d}"]
    # The leg back to one fan is a path from each other fan: bounded, the latest first.
    assert len(closings) == MAX_CLOSINGS_PER_LEG
    assert [c.into.sender for c in closings[:2]] == [f"u{MAX_PARTNERS + 48:04d}", f"u{MAX_PARTNERS + 47:04d}"]


def test_a_lowered_threshold_applies_to_state_written_under_the_old_one() -> None:
    burst = Burst()
    for i in range(30):
        assert burst.observe(T0 + i, 1, f"e{i}", MIN, 50) is None
    hit = burst.observe(T0 + 30, 1, "e30", MIN, 5)  # restarted with gifts = 5
    assert hit is not None and hit.event_ids == ["e26", "e27", "e28", "e29", "e30"] and burst.entries == []
