"""bonus_farming (agents/fraud/farming.py): the farmed-gift test on the sender's state,
the creator's window of distinct farmers, one alert per window, the bound, and the
credit op that carries farmed gifts (read as untrusted)."""

from __future__ import annotations

import orjson
import pytest

from agents.credit.ops import credit_op, decode_op
from agents.credit.rules import CreditBatch
from agents.fraud.farming import Farmers, drained, observe
from agents.fraud.thresholds import HOUR_MS, MAX_COUNT, BonusFarming
from agents.ingest.records import Gift, Recharge
from agents.ledger.promotions import PromotionBook
from agents.ledger.rules import Credit, apply_gift, apply_recharge
from agents.ledger.state import UserState
from pipeline import economics
from pipeline.engine.stage import Malformed

RULE = BonusFarming()
DAY = 86_400_000
T0 = 20_000 * DAY
ECON = economics.load()


def test_a_new_account_drained_of_its_bonus_is_farmed() -> None:
    assert drained(balance=20, recharged=100, bonus=100, first_ts=T0, ts=T0 + 1, rule=RULE)  # 20 <= 10 % of 200
    assert not drained(balance=21, recharged=100, bonus=100, first_ts=T0, ts=T0 + 1, rule=RULE)
    assert not drained(balance=0, recharged=100, bonus=0, first_ts=T0, ts=T0 + 1, rule=RULE)  # no bonus
    assert not drained(balance=0, recharged=100, bonus=100, first_ts=T0, ts=T0 + DAY, rule=RULE)  # a day old
    assert drained(balance=0, recharged=100, bonus=100, first_ts=T0, ts=T0 + DAY - 1, rule=RULE)
    assert not drained(balance=0, recharged=100, bonus=100, first_ts=None, ts=T0, rule=RULE)


def test_the_ledger_marks_the_credit_of_a_farmed_gift() -> None:
    book = PromotionBook(7 * DAY)
    from agents.ingest.records import Promotion

    book.publish(Promotion("welcome", T0, T0 + DAY, 100, frozenset({100}), 1, T0), T0)
    state = UserState()
    state.note_event(T0 + 1)
    apply_recharge(state, Recharge("r", "farm1", 100, 99, "USD", T0 + 1), book)
    first = apply_gift(state, Gift("g1", "farm1", "c1", "s1", "confetti", 1, T0 + 2), ECON)  # 100 of 200
    assert first.credit is not None and not first.credit.farmed
    second = apply_gift(state, Gift("g2", "farm1", "c1", "s1", "finger_heart", 17, T0 + 3), ECON)  # 85 more: 15 left
    assert second.credit is not None and second.credit.farmed


def farmed(n: int, start: int = T0, step: int = 1_000) -> list[tuple[str, int, str]]:
    return [(f"f{i}", start + i * step, f"g{i}") for i in range(n)]


def test_ten_farmers_within_the_hour_alert_once() -> None:
    farmers = Farmers()
    assert observe(farmers, "c1", farmed(9), RULE) is None
    found = observe(farmers, "c1", [("f9", T0 + 9_500, "g9")], RULE)
    assert found is not None and found.rule == "bonus_farming" and found.subject_id == "c1"
    assert found.details["accounts"] == 10 and found.details["trigger_event_id"] == "g9"
    assert found.alert_id == f"bonus_farming:c1:{T0 + 9_500 - HOUR_MS}"
    assert observe(farmers, "c1", [("f10", T0 + 20_000, "g10")], RULE) is None  # one per window
    later = observe(farmers, "c1", [(f"h{i}", T0 + HOUR_MS + 10_000 + i, f"h{i}") for i in range(10)], RULE)
    assert later is not None  # a new window, ten new farmers


def test_the_same_sender_counts_once_and_old_ones_leave_the_window() -> None:
    farmers = Farmers()
    assert observe(farmers, "c1", [("f0", T0 + i, f"g{i}") for i in range(20)], RULE) is None  # one account
    spread = farmed(10, step=HOUR_MS // 9)  # the tenth comes just over an hour after the first
    assert observe(Farmers(), "c1", spread, RULE) is None


def test_farmers_are_bounded_and_persist() -> None:
    farmers = Farmers()
    observe(farmers, "c1", farmed(MAX_COUNT + 50, step=1), BonusFarming(accounts=MAX_COUNT))
    assert len(farmers.senders) <= MAX_COUNT
    again = Farmers.from_json(orjson.loads(orjson.dumps(farmers.to_json())))
    assert again == farmers


def test_a_credit_op_carries_farmed_gifts_and_a_forged_one_is_malformed() -> None:
    credits = [Credit("c1", "s1", f"f{i}", 200, 100, T0 + i, f"g{i}", T0, farmed=i % 2 == 0) for i in range(4)]
    op = credit_op("c1", credits, DAY)
    assert op["f"] == [["f0", T0, "g0"], ["f2", T0 + 2, "g2"]]
    decoded = decode_op(b"c1", orjson.dumps(op), ECON, 4)
    assert isinstance(decoded, CreditBatch) and decoded.farmed == (("f0", T0, "g0"), ("f2", T0 + 2, "g2"))
    assert "f" not in credit_op("c1", [credits[1]], DAY)  # none farmed: nothing more on the wire
    for bad in (["f0", T0], ["bad id", T0, "g0"], ["f0", -1, "g0"], ["f0", T0, 5]):
        assert isinstance(decode_op(b"c1", orjson.dumps({**op, "f": [bad]}), ECON, 4), Malformed), bad
    too_many = {**op, "f": [["f0", T0, "g0"]] * 5}  # more farmed gifts than the credit's 4 gifts
    assert isinstance(decode_op(b"c1", orjson.dumps(too_many), ECON, 4), Malformed)


@pytest.mark.parametrize(("key", "value"), [("accounts", 0), ("accounts", MAX_COUNT + 1), ("spent_percent", 101)])
def test_thresholds_are_checked(key: str, value: int) -> None:
    from agents.fraud.thresholds import parse
    from pipeline.settings import ConfigError

    with pytest.raises(ConfigError, match=f"bonus_farming.{key}"):
        parse({"bonus_farming": {key: value}}, "test")
