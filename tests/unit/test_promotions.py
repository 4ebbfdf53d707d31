"""Promotions and gifter levels (CONTRACT.md, "Recharge", "Gift", Economics): the rules
as pure functions, every boundary the contract names."""

from __future__ import annotations

import json

import pytest

from agents.ingest.decode import decode_promotion
from agents.ingest.records import Gift, Promotion, Recharge, Withdrawal
from agents.ledger.promotions import MAX_PROMOTIONS, MAX_VERSIONS, PromotionBook, PromotionsInput
from agents.ledger.rules import apply_gift, apply_recharge
from agents.ledger.state import MAX_PROMOS, UserState
from agents.outcomes import LevelUp
from pipeline import economics
from pipeline.economics import Economics
from pipeline.engine.stage import Malformed
from pipeline.invariants import InvariantError
from pipeline.settings import ConfigError

DAY = 86_400_000
WEEK = 7 * DAY
T0 = 20_000 * DAY
NOW = T0 + DAY  # the deciding clock of the book's pruning


def promo(pid: str = "p1", percent: int = 10, packages: tuple[int, ...] = (500, 1_000), starts: int = T0,
          ends: int = T0 + DAY, max_per_user: int = 3, ts: int = T0) -> Promotion:
    return Promotion(pid, starts, ends, percent, frozenset(packages), max_per_user, ts)


def book(*records: Promotion | Withdrawal) -> PromotionBook:
    b = PromotionBook(WEEK)
    for r in records:
        assert b.publish(r, NOW) is None
    return b


def recharge(coins: int, ts: int = T0 + 1_000, eid: str = "r") -> Recharge:
    return Recharge(eid, "u1", coins, coins, "USD", ts)


def bonus_of(b: PromotionBook, coins: int, ts: int, state: UserState | None = None) -> tuple[int | None, str | None]:
    outcome = apply_recharge(state or UserState(), recharge(coins, ts), b)
    return outcome.bonus_coins, outcome.promo_id


def test_bonus_is_floor_of_percent_and_goes_to_the_balance() -> None:
    state = UserState()
    outcome = apply_recharge(state, recharge(1_000), book(promo(percent=15)))
    assert (outcome.bonus_coins, outcome.promo_id, outcome.balance_after) == (150, "p1", 1_150)
    assert (state.balance, state.recharged, state.bonus) == (1_150, 1_000, 150)
    odd = apply_recharge(UserState(), recharge(500), book(promo(percent=33)))
    assert odd.bonus_coins == 165  # floor(500 * 33 / 100)


def test_no_promotion_gives_zero_and_null() -> None:
    assert bonus_of(book(), 1_000, T0) == (0, None)


def test_only_listed_packages_qualify() -> None:
    b = book(promo(packages=(500,)))
    assert bonus_of(b, 500, T0) == (50, "p1")
    assert bonus_of(b, 501, T0) == (0, None)
    assert bonus_of(b, 1_000, T0) == (0, None)


def test_the_window_includes_its_start_and_excludes_its_end() -> None:
    b = book(promo(starts=T0 + 100, ends=T0 + 200, ts=T0))
    assert bonus_of(b, 500, T0 + 99) == (0, None)
    assert bonus_of(b, 500, T0 + 100) == (50, "p1")
    assert bonus_of(b, 500, T0 + 199) == (50, "p1")
    assert bonus_of(b, 500, T0 + 200) == (0, None)


def test_a_promotion_is_in_force_from_its_own_ts_not_before() -> None:
    """Published at T0 + 500 for a window that began earlier: a recharge dated before
    the publication gets nothing, one dated at it gets the bonus."""
    b = book(promo(starts=T0, ts=T0 + 500))
    assert bonus_of(b, 500, T0 + 499) == (0, None)
    assert bonus_of(b, 500, T0 + 500) == (50, "p1")


def test_a_changed_promotion_applies_by_the_recharge_ts() -> None:
    b = book(promo(percent=10, ts=T0), promo(percent=40, ts=T0 + 1_000))
    assert bonus_of(b, 1_000, T0 + 999) == (100, "p1")  # the first version, still in force then
    assert bonus_of(b, 1_000, T0 + 1_000) == (400, "p1")


def test_a_later_record_with_an_earlier_ts_hides_the_versions_it_predates() -> None:
    """Versions: 10 % from T0, 40 % from T0+1000; then 25 % published with ts T0+500: the
    latest record whose ts <= the recharge's is the 25 % one from T0+500 on."""
    b = book(promo(percent=10, ts=T0), promo(percent=40, ts=T0 + 1_000), promo(percent=25, ts=T0 + 500))
    assert bonus_of(b, 1_000, T0 + 499) == (100, "p1")
    assert bonus_of(b, 1_000, T0 + 500) == (250, "p1")
    assert bonus_of(b, 1_000, T0 + 5_000) == (250, "p1")
    assert len(b.versions["p1"]) == 2


def test_a_tombstone_ends_it_from_its_time_on() -> None:
    b = book(promo(ts=T0), Withdrawal("p1", T0 + 1_000))
    assert bonus_of(b, 500, T0 + 999) == (50, "p1")
    assert bonus_of(b, 500, T0 + 1_000) == (0, None)
    b.publish(promo(percent=20, ts=T0 + 2_000), NOW)  # published again
    assert bonus_of(b, 500, T0 + 1_500) == (0, None)
    assert bonus_of(b, 500, T0 + 2_000) == (100, "p1")


def test_the_highest_percent_wins_and_ties_go_to_the_smallest_id() -> None:
    b = book(promo("b", 20), promo("a", 10), promo("c", 20))
    assert bonus_of(b, 1_000, T0 + 1) == (200, "b")
    b.publish(promo("a", 30, ts=T0 + 10), NOW)
    assert bonus_of(b, 1_000, T0 + 10) == (300, "a")


def test_max_per_user_then_the_next_best() -> None:
    b = book(promo("big", 50, max_per_user=2), promo("small", 5, max_per_user=1))
    state = UserState()
    got = [apply_recharge(state, recharge(1_000, eid=f"r{i}"), b) for i in range(4)]
    assert [(o.bonus_coins, o.promo_id) for o in got] == [(500, "big"), (500, "big"), (50, "small"), (0, None)]
    assert state.promos == {"big": 2, "small": 1}
    assert state.recharged + state.bonus == state.balance + state.spent == 4_000 + 1_050


def test_a_bonus_never_changes_once_decided() -> None:
    """Publishing a promotion never changes a recharge already decided: the state holds
    the bonus; a later version changes only later recharges."""
    b = book(promo(percent=10))
    state = UserState()
    apply_recharge(state, recharge(1_000), b)
    b.publish(promo(percent=90, ts=T0 + 1), NOW)
    assert (state.balance, state.bonus) == (1_100, 100)


def test_bonus_coins_are_spent_like_any_other() -> None:
    econ = economics.load()
    state = UserState()
    apply_recharge(state, recharge(1_000), book(promo(percent=100)))
    outcome = apply_gift(state, Gift("g", "u1", "c1", "s1", "galaxy", 2, T0 + 2_000), econ).outcome
    assert (outcome.status, outcome.balance_after) == ("accepted", 0)
    assert state.recharged + state.bonus == state.balance + state.spent


def test_per_user_counts_are_bounded_and_forgotten_promotions_make_room() -> None:
    state = UserState(promos={f"old{i}": 1 for i in range(MAX_PROMOS)})
    b = book(promo("new"))
    outcome = apply_recharge(state, recharge(500), b)  # none of the old ones is known: they go
    assert outcome.promo_id == "new" and state.promos == {"new": 1}
    known = book(*[promo(f"k{i}", 1) for i in range(MAX_PROMOS)], promo("new", 50))
    full = UserState(promos={f"k{i}": 1 for i in range(MAX_PROMOS)})
    outcome = apply_recharge(full, recharge(500), known)  # all still known: no room, no bonus
    assert (outcome.bonus_coins, len(full.promos)) == (0, MAX_PROMOS)


def test_the_book_prunes_what_no_in_time_recharge_can_reach() -> None:
    b = book(promo("ended", ends=T0 + 10), promo("on", ts=T0), promo("on", percent=20, ts=T0 + 100))
    b.prune(T0 + 101 + WEEK)  # horizon T0 + 101: "ended" ended, "on" changed before it
    assert not b.known("ended")
    assert b.known("on") and len(b.versions["on"]) == 1  # the last one in force at the horizon stays
    assert 500 in b.by_package and "ended" not in b.by_package[500]


def test_the_book_is_bounded() -> None:
    b = PromotionBook(WEEK)
    for i in range(MAX_VERSIONS + 5):
        assert b.publish(promo(percent=1 + i % 100, ts=T0 + i), NOW) is None
    assert len(b.versions["p1"]) == MAX_VERSIONS
    for i in range(MAX_PROMOTIONS - 1):
        assert b.publish(promo(f"x{i}", ends=NOW + DAY), NOW) is None
    refused = b.publish(promo("one-too-many", ends=NOW + DAY), NOW)
    assert refused is not None and "1000 promotions" in refused
    assert b.publish(Withdrawal("x0", NOW), NOW) is None  # withdrawing still works


def test_an_invariant_broken_by_a_bonus_fails_loudly() -> None:
    state = UserState(balance=10, recharged=5)  # inconsistent: 5 + 0 != 10 + 0
    with pytest.raises(InvariantError):
        apply_recharge(state, recharge(500), book())


VALID = {"promo_id": "p1", "starts_ts": T0, "ends_ts": T0 + DAY, "bonus_percent": 10, "packages": [500, 1_000],
         "max_per_user": 1, "ts": T0}


@pytest.mark.parametrize(("change", "why"), [
    ({"ends_ts": T0}, "ends_ts must be greater"),
    ({"packages": []}, "packages must be a list"),
    ({"packages": list(range(1, 22))}, "packages must be a list"),
    ({"packages": [500, 500]}, "must not repeat"),
    ({"packages": [500.0]}, "packages must be a list"),
    ({"packages": [0]}, "packages must be a list"),
    ({"packages": [1_000_001]}, "packages must be a list"),
    ({"bonus_percent": 0}, "bonus_percent"),
    ({"bonus_percent": 101}, "bonus_percent"),
    ({"max_per_user": 1_001}, "max_per_user"),
    ({"max_per_user": True}, "max_per_user"),
    ({"promo_id": "p 1"}, "promo_id"),
])
def test_malformed_promotions(change: dict[str, object], why: str) -> None:
    item = decode_promotion(b"p1", json.dumps(VALID | change).encode(), 0)
    assert isinstance(item, Malformed) and why in item.error


def test_promotion_records_decode() -> None:
    item = decode_promotion(b"p1", json.dumps(VALID).encode(), 0)
    assert item == Promotion("p1", T0, T0 + DAY, 10, frozenset({500, 1_000}), 1, T0)
    assert decode_promotion(b"p1", None, 1_234) == Withdrawal("p1", 1_234)
    key_differs = decode_promotion(b"p2", json.dumps(VALID).encode(), 0)
    assert isinstance(key_differs, Malformed) and "does not equal promo_id" in key_differs.error
    assert isinstance(decode_promotion(b"bad key", None, 0), Malformed)
    assert isinstance(decode_promotion(None, None, 0), Malformed)
    assert isinstance(decode_promotion(b"p1", b"", 0), Malformed)


def test_the_broadcast_sink_answers_malformed_records_and_applies_the_rest() -> None:
    b = PromotionBook(WEEK)
    sink = PromotionsInput(b)
    assert sink.apply(b"p1", b"{not json", 0, NOW) is not None
    assert sink.apply(b"p1", json.dumps(VALID).encode(), 0, NOW) is None
    assert b.in_force("p1", T0) is not None
    assert sink.apply(b"p1", None, T0 + 5, NOW) is None
    assert b.in_force("p1", T0 + 5) is None


# -- gifter levels -------------------------------------------------------------------

@pytest.fixture(scope="module")
def econ() -> Economics:
    return economics.load()


def spend(state: UserState, econ: Economics, gift_id: str, quantity: int = 1, eid: str = "g") -> LevelUp | None:
    decided = apply_gift(state, Gift(eid, "u1", "c1", "s1", gift_id, quantity, T0), econ)
    assert decided.outcome.status == "accepted"
    return decided.level_up


def test_default_thresholds(econ: Economics) -> None:
    assert econ.gifter_levels == (1, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)
    assert [econ.gifter_level(c) for c in (0, 1, 99, 100, 499, 500, 999_999, 1_000_000, 10**9)] == [
        0, 1, 1, 2, 2, 3, 9, 10, 10]


def test_a_gift_crossing_several_levels_publishes_one_level_up(econ: Economics) -> None:
    state = UserState(balance=2_000, recharged=2_000)
    assert spend(state, econ, "rose", 1, "g1") == LevelUp("u1", 1, 0, "g1", T0)
    assert spend(state, econ, "rose", 98, "g2") is None  # 99: still level 1
    assert spend(state, econ, "rose", 1, "g3") == LevelUp("u1", 2, 1, "g3", T0)  # exactly 100
    assert spend(state, econ, "galaxy", 1, "g4") == LevelUp("u1", 4, 2, "g4", T0)  # 1,100: past 500 and 1,000
    assert LevelUp("u1", 4, 2, "g4", T0).to_json() == {
        "badge_id": "gifter_level:u1:4", "user_id": "u1", "badge": "gifter_level", "level": 4,
        "previous_level": 2, "event_id": "g4", "ts": T0}


def test_a_rejected_gift_raises_no_level(econ: Economics) -> None:
    decided = apply_gift(UserState(), Gift("g", "u1", "c1", "s1", "rose", 1, T0), econ)
    assert decided.outcome.reason == "insufficient_coins" and decided.level_up is None


@pytest.mark.parametrize("levels", [[], [0, 5], [5, 5], [10, 5], [1.5], "1,2", list(range(1, 102))])
def test_bad_level_thresholds_name_the_setting(levels: object) -> None:
    data = {**_economics_table(), "gifter_levels": levels}
    with pytest.raises(ConfigError, match="gifter_levels"):
        economics.parse(data)


def test_configured_thresholds(econ: Economics) -> None:
    custom = economics.parse({**_economics_table(), "gifter_levels": [10, 20]})
    assert [custom.gifter_level(c) for c in (9, 10, 19, 20, 10**6)] == [0, 1, 1, 2, 2]


def _economics_table() -> dict[str, object]:
    import tomllib

    with open(economics.DEFAULT_FILE, "rb") as fh:
        return tomllib.load(fh)
