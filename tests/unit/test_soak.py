"""The soak's pure parts (tools/soak.py) and its broken builds (tools/broken.py): the
judgements must fail when the pipeline is wrong, not only pass when it is right."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.ingest.decode import decode
from pipeline import economics, topics
from pipeline.engine.stage import Malformed
from pipeline.settings import PROJECT_ROOT
from tests.support.reference import ReferenceLedger
from tools import broken, causal, soak
from tools.soak import RssSample

ECON = economics.load()


# --- RSS ---------------------------------------------------------------------------


def life(worker: int, start: int, t0: float, seconds: float, mb: Any) -> list[RssSample]:
    """Samples every 5 s; `mb(t)` is the RSS t seconds into the lifetime."""
    return [RssSample(t0 + t, worker, start, mb(t)) for t in range(0, int(seconds) + 1, 5)]


def test_flat_memory_passes() -> None:
    samples = life(0, 1, 0, 300, lambda t: 200 + (t % 20) / 4)  # a few MB of noise
    verdict = soak.judge_rss(samples)
    assert verdict["ok"] and verdict["judged"] == 1
    assert verdict["workers"][0]["flat"] and verdict["workers"][0]["growth_mb"] < 5


def test_growing_memory_fails() -> None:
    samples = life(0, 1, 0, 300, lambda t: 200 + 0.4 * t)  # 24 MB a minute: +60 MB over the second half
    verdict = soak.judge_rss(samples)
    assert not verdict["ok"]
    assert verdict["workers"][0]["growth_mb"] == 60 and not verdict["workers"][0]["flat"]


def test_the_bound_is_the_larger_of_50_mb_and_10_percent() -> None:
    big = soak.judge_rss(life(0, 1, 0, 300, lambda t: 1000 + 0.5 * t))  # +75 MB of 1,075: under 10 %
    assert big["ok"] and big["workers"][0]["bound_mb"] == pytest.approx(107.5)
    at_bound = soak.judge_rss(life(0, 1, 0, 300, lambda t: 100 + t / 3))  # exactly +50 MB: not under it
    assert at_bound["workers"][0]["growth_mb"] == 50 and not at_bound["ok"]


def test_every_long_enough_lifetime_is_judged_a_restart_starting_afresh() -> None:
    grew_then_killed = life(0, 1, 0, 300, lambda t: 100 + t)  # +150 MB over its second half, then SIGKILLed
    fresh = life(0, 2, 305, 300, lambda t: 120.0)
    other = life(1, 1, 0, 605, lambda t: 150.0)
    verdict = soak.judge_rss(sorted(grew_then_killed + fresh + other))
    assert not verdict["ok"] and verdict["judged"] == 3  # a leak before a kill is a leak
    assert [(w["worker"], w["life"], w["flat"]) for w in verdict["workers"]] == [
        (0, 1, False), (0, 2, True), (1, 1, True)]
    # Flat lifetimes pass, whatever the RSS of the one before (a new process starts low).
    assert soak.judge_rss(life(0, 1, 0, 300, lambda t: 300.0) + fresh)["ok"]


def test_a_lifetime_too_short_is_not_judged_and_nothing_judged_fails() -> None:
    samples = life(0, 1, 0, 100, lambda t: 100.0) + life(0, 2, 105, 60, lambda t: 100 + 5 * t)
    verdict = soak.judge_rss(samples)
    assert verdict["judged"] == 0 and not verdict["ok"]
    assert all("flat" not in w for w in verdict["workers"]) and verdict["workers"][1]["life"] == 2
    assert not soak.judge_rss([])["ok"]


# --- leaderboards and balances -----------------------------------------------------


BOARDS = {"lb:creators:all": {"c1": 500, "c2": 20}, "lb:stream:c1-s:gifters": {"u1": 1000, "u2": 40}}


def test_equal_boards_pass() -> None:
    got = {k: dict(v) for k, v in BOARDS.items()}
    assert soak.compare_boards(BOARDS, got) | {"examples": []} == {
        "ok": True, "boards": 2, "members": 4, "missing": 0, "extra": 0, "wrong_score": 0, "examples": []}


def test_a_missing_member_fails() -> None:
    got = {"lb:creators:all": {"c1": 500}, "lb:stream:c1-s:gifters": {"u1": 1000, "u2": 40}}
    verdict = soak.compare_boards(BOARDS, got)
    assert not verdict["ok"] and verdict["missing"] == 1 and verdict["examples"] == [["lb:creators:all", "c2", 20]]


def test_a_missing_board_fails_for_each_member() -> None:
    verdict = soak.compare_boards(BOARDS, {"lb:creators:all": {"c1": 500, "c2": 20}})
    assert not verdict["ok"] and verdict["missing"] == 2


def test_a_wrong_score_fails() -> None:
    got = {"lb:creators:all": {"c1": 500, "c2": 21}, "lb:stream:c1-s:gifters": {"u1": 1000, "u2": 40}}
    verdict = soak.compare_boards(BOARDS, got)
    assert not verdict["ok"] and verdict["wrong_score"] == 1
    assert verdict["examples"] == [["lb:creators:all", "c2", 20, 21]]


def test_an_extra_member_fails_and_a_zero_score_is_no_member() -> None:
    extra = {"lb:creators:all": {"c1": 500, "c2": 20, "c3": 1}, "lb:stream:c1-s:gifters": {"u1": 1000, "u2": 40}}
    assert soak.compare_boards(BOARDS, extra)["extra"] == 1
    zero = {"lb:creators:all": {"c1": 500, "c2": 20, "c3": 0}, "lb:stream:c1-s:gifters": {"u1": 1000, "u2": 40}}
    assert soak.compare_boards(BOARDS, zero)["ok"]


def test_the_reference_boards_come_from_its_accepted_gifts() -> None:
    reference = ReferenceLedger()
    day = 20_000 * 86_400_000  # 2024-10-04
    rounds = [[(topics.RECHARGES, {"event_id": "r1", "user_id": "u1", "coins": 100, "amount_cents": 100,
                                   "currency": "USD", "ts": day})],
              [(topics.GIFTS, {"event_id": "g1", "sender_id": "u1", "creator_id": "c1", "stream_id": "s1",
                               "gift_id": "perfume", "quantity": 3, "ts": day + 1}),
               (topics.GIFTS, {"event_id": "g2", "sender_id": "u2", "creator_id": "c1", "stream_id": "s1",
                               "gift_id": "rose", "quantity": 1, "ts": day + 1})]]  # u2 has no coins: rejected
    soak.expected_outcomes(reference, rounds)
    users, creators, boards = soak.reference_read_model(reference, rounds)
    levels = {"bonus_coins": 0, "lifetime_spent_coins": 60, "gifter_level": 1}
    assert users == {"u1": {"coins": 40, "recharged_coins": 100, "spent_coins": 60} | levels,
                     "u2": {"coins": 0, "recharged_coins": 0, "spent_coins": 0} | levels | {
                         "lifetime_spent_coins": 0, "gifter_level": 0}}
    assert creators == {"c1": {"diamonds": 30, "lifetime_diamonds": 30, "paid_out_diamonds": 0}}
    assert boards == {"lb:stream:s1:gifters": {"u1": 60}, "lb:gifters:day:2024-10-04": {"u1": 60},
                      "lb:creators:all": {"c1": 30}, "lb:creators:day:2024-10-04": {"c1": 30}}
    assert all(soak.BOARD_KEY.fullmatch(k) for k in boards)


def test_balances_compare_field_by_field_and_absent_reads_as_zero() -> None:
    want = {"u1": {"coins": 40, "recharged_coins": 100, "spent_coins": 60},
            "u2": {"coins": 0, "recharged_coins": 0, "spent_coins": 0}}
    got = {"u1": {"coins": 40, "recharged_coins": 100, "spent_coins": 60},
           "u3": {"coins": 0, "recharged_coins": 0, "spent_coins": 0}}
    assert soak.compare_balances(want, got, soak.USER_FIELDS)["ok"]
    verdict = soak.compare_balances(want, {"u1": {"coins": 40, "recharged_coins": 100, "spent_coins": 59}},
                                    soak.USER_FIELDS)
    assert not verdict["ok"] and verdict["examples"] == [{"id": "u1", "field": "spent_coins", "expected": 60,
                                                         "got": 59}]
    assert not soak.compare_balances(want, {}, soak.USER_FIELDS)["ok"]  # u1's hash never written


# --- creator share -----------------------------------------------------------------


@pytest.mark.parametrize(("coins", "diamonds"), [
    (1, 0), (2, 1), (3, 1), (99, 49), (100, 50), (29_999, 14_999), (44_999, 22_499),
    (44_999 * 10_000, 224_995_000), (2**53 + 1, 2**52),  # beyond a double's integers: exact
])
def test_contract_share_on_boundary_amounts(coins: int, diamonds: int) -> None:
    assert soak.contract_diamonds(coins) == diamonds
    assert coins - diamonds >= diamonds  # the fee, never below the share: the rounding is the platform's


def test_the_share_check_is_not_the_pipelines_formula() -> None:
    assert "creator_diamonds" not in inspect.getsource(soak)


def gift(coins: int, diamonds: int, status: str = "accepted") -> dict[str, Any]:
    return {"event_id": f"g{coins}", "type": "gift", "status": status, "coins": coins, "diamonds": diamonds}


def test_share_check() -> None:
    assert soak.share_check([gift(1, 0), gift(3, 1), gift(5, 0, "rejected")])["ok"]
    assert not soak.share_check([gift(1, 0), gift(3, 2)])["ok"]
    assert not soak.share_check([gift(5, 0, "rejected")])["ok"]  # no accepted gift: nothing shown


# --- outcomes, retries, malformed --------------------------------------------------


def rec(eid: str, status: str = "accepted", balance: int = 10) -> dict[str, Any]:
    return {"event_id": eid, "type": "recharge", "status": status, "reason": None, "balance_after": balance}


def test_outcomes_are_matched_by_event_id() -> None:
    want = {"a": [soak.canonical(rec("a"))], "b": [soak.canonical(rec("b")), soak.canonical(rec("b", "duplicate"))]}
    assert soak.match_outcomes(want, [rec("a"), rec("b"), rec("b", "duplicate")])["ok"]
    assert soak.match_outcomes(want, [rec("a"), rec("a"), rec("b"), rec("b", "duplicate")])["ok"]  # crash repeat
    # A lost event and an extra duplicate elsewhere: the counts match, the ids do not.
    lost = soak.match_outcomes(want, [rec("b"), rec("b", "duplicate"), rec("b", "duplicate", 11)])
    assert not lost["ok"] and lost["differ"] == 2 and lost["records"] == 3
    assert not soak.match_outcomes(want, [rec("a"), rec("b")])["ok"]  # the retry's record missing
    assert not soak.match_outcomes(want, [rec("a", balance=9), rec("b"), rec("b", "duplicate")])["ok"]
    assert soak.match_outcomes(want, [rec("a"), rec("b"), rec("b", "duplicate"), rec("z")])["unknown_ids"] == 1


def test_fields_the_contract_does_not_know_are_ignored_its_own_are_not() -> None:
    want = {"a": [soak.canonical(rec("a"))]}
    assert soak.match_outcomes(want, [rec("a") | {"trace": "x"}])["ok"]
    assert not soak.match_outcomes(want, [{k: v for k, v in rec("a").items() if k != "balance_after"}])["ok"]


def rounds_of(stream: causal.CausalStream) -> list[list[causal.Event]]:
    """The rounds as produce() leaves them: a tombstone learns its broker time."""
    rounds = list(stream.rounds())
    for events in rounds:
        for _, ev in events:
            if ev.get("tombstone"):
                ev["kafka_ts"] = 1_700_000_000_000
    return rounds


def config() -> causal.CausalConfig:
    return causal.CausalConfig(rounds=40, per_round=60, users=300, creators=20, rate=1e9, seed=12, id_prefix="t")


def ticking() -> Any:
    clock = itertools.count(1_700_000_000)
    return lambda: float(next(clock))


def test_retries_resend_acknowledged_events_whose_subject_is_idle() -> None:
    rounds = rounds_of(soak.RetryingStream(config(), ECON, share=0.1, clock=ticking()))
    first_seen: dict[str, int] = {}
    resent = 0
    for i, all_events in enumerate(rounds):
        events = causal.outcome_events(all_events)
        originals = [e for e in events if e[1]["event_id"] not in first_seen]
        for e in events:
            if e[1]["event_id"] in first_seen:
                resent += 1
                assert first_seen[e[1]["event_id"]] == i - 1  # acknowledged a round earlier
                assert soak.subject(e) not in soak.touched(originals)
        first_seen.update((e[1]["event_id"], i) for e in originals)
    assert resent == sum(len(causal.outcome_events(r)) for r in rounds) - len(first_seen) > 100
    want, kinds = soak.expected_outcomes(ReferenceLedger(), rounds)
    retried = [rs for rs in want.values() if len(rs) > 1]
    assert len(retried) == resent and all(json.loads(rs[1])["status"] == "duplicate" for rs in retried)
    assert kinds["payout:duplicate:None"] and kinds["gift:duplicate:None"] and kinds["recharge:duplicate:None"]


def test_retries_leave_the_causal_stream_as_it_was() -> None:
    plain = rounds_of(causal.CausalStream(config(), ECON, ticking()))
    retrying = rounds_of(soak.RetryingStream(config(), ECON, share=0.1, clock=ticking()))
    assert [r[:len(p)] for r, p in zip(retrying, plain)] == plain


def test_malformed_records_fail_decoding_and_each_has_its_own_hash() -> None:
    bad = soak.malformed_messages(25, "kx", 1_700_000_000_000)
    assert all(isinstance(decode(topic, key, value), Malformed) for topic, key, value in bad)
    assert len({hashlib.sha256(v).hexdigest() for _, _, v in bad}) == 25
    assert {t for t, _, _ in bad} == {topics.GIFTS, topics.RECHARGES, topics.PAYOUTS, topics.SPEND_LIMITS}


def test_one_dead_letter_per_malformed_record_by_hash() -> None:
    bad = soak.malformed_messages(3, "kx", 0)
    letters = [{"payload_sha256": hashlib.sha256(v).hexdigest()} for _, _, v in bad]
    assert soak.match_dead_letters(bad, letters)["ok"]
    assert soak.match_dead_letters(bad, letters[:2])["missing"] == 1
    # One lost and another letter twice: the count is right, the hashes are not.
    swapped = soak.match_dead_letters(bad, letters[:2] + letters[:1])
    assert not swapped["ok"] and swapped["missing"] == 1 and swapped["extra"] == 1


def test_coverage_names_what_the_traffic_never_reached() -> None:
    kinds = {"gift:accepted:None": 5, "gift:rejected:insufficient_coins": 2, "payout:accepted:None": 1,
             "gift:duplicate:None": 1}
    assert soak.coverage(kinds, 3)["ok"]
    assert soak.coverage({**kinds, "gift:accepted:None": 0}, 3)["missing"] == ["gift:accepted:None"]
    assert soak.coverage({k: n for k, n in kinds.items() if "duplicate" not in k}, 0)["missing"] == [
        "duplicates", "malformed"]


# --- broken builds ------------------------------------------------------------------


def files(root: Path) -> dict[str, bytes]:
    out = {}
    for name in broken.COPIED:
        paths = [root / name] if (root / name).is_file() else (root / name).rglob("*")
        out.update({str(p.relative_to(root)): p.read_bytes() for p in paths
                    if p.is_file() and "__pycache__" not in p.parts})
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    yield broken.copy_tree(tmp_path / "tree")


@pytest.mark.parametrize("name", sorted(broken.BREAKAGES))
def test_each_breakage_edits_its_target_once_and_nothing_else(tree: Path, name: str) -> None:
    b = broken.BREAKAGES[name]
    original = files(PROJECT_ROOT)
    assert files(tree) == original  # the copy is the tree as it is
    assert broken.apply(tree, name) is b
    edited = files(tree)
    assert [p for p in original if edited[p] != original[p]] == [b.path]
    before, after = original[b.path].decode(), edited[b.path].decode()
    assert before.count(b.old) == 1 and after.count(b.old) == 0 and after.count(broken.MARK) == 1
    assert after == before.replace(b.old, b.new)
    compile(after, b.path, "exec")  # still Python: the workers start, and are wrong
    with pytest.raises(broken.BreakageError, match="0 times"):
        broken.apply(tree, name)  # applied already: its target is gone


def test_a_breakage_whose_target_is_missing_raises(tree: Path) -> None:
    b = broken.BREAKAGES["rejects-gifts"]
    target = tree / b.path
    target.write_text(target.read_text().replace(b.old, b.old.replace("state.balance", "state.balance_now")))
    with pytest.raises(broken.BreakageError, match="rejects-gifts"):
        broken.apply(tree, "rejects-gifts")
    with pytest.raises(broken.BreakageError, match="unknown breakage"):
        broken.apply(tree, "no-such-thing")


def test_a_broken_tree_is_what_workers_import(tree: Path) -> None:
    broken.apply(tree, "rejects-gifts")
    env = broken.worker_env(tree, os.environ)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tree)
    broken.check_imports(tree, env)
    with pytest.raises(broken.BreakageError, match="outside the copy"):
        broken.check_imports(tree.parent, broken.worker_env(tree.parent, os.environ))  # no packages there


def test_the_soak_offers_every_breakage_and_names_its_results() -> None:
    import argparse

    p = argparse.ArgumentParser()
    soak.add_arguments(p)
    for name in broken.BREAKAGES:
        args = p.parse_args(["--broken", name])
        assert soak.stem_name(args) == f"soak-broken-{name}"
        assert soak.command(args).endswith(f"--broken {name}")
    assert soak.stem_name(p.parse_args([])) == "soak"
    assert soak.stem_name(p.parse_args(["--free"])) == "soak-free"
    assert not p.parse_args(["--causal"]).free  # the old flag still parses: causal is the default


def test_the_report_lists_the_failed_checks() -> None:
    rss = soak.judge_rss(life(0, 1, 0, 300, lambda t: 100 + t))
    result = {"date": "d", "traffic": "causal", "broken": "rejects-gifts", "workers": 1, "minutes": 5.0,
              "offered_rate": 100.0, "produced": {"well_formed": 10, "resent": 1, "malformed": 10}, "kills": [],
              "redis_outage": [], "max_lag": 0, "rss_mb_start": {"0": 100.0}, "rss_mb_end": {"0": 400.0},
              "rss_mb_peak": 400.0, "elapsed_s": 1.0, "command": "c",
              "checks": {"creator_share_per_gift": {"ok": False}, "worker_rss_flat": rss},
              "failed": ["creator_share_per_gift", "worker_rss_flat"]}
    md = soak.markdown(result)
    assert "Failed: creator_share_per_gift, worker_rss_flat." in md and "Broken build `rejects-gifts`" in md
    assert "| worker_rss_flat | **no** |" in md and "250 MB at half-life, peak 400 (+150, bound 50.0)" in md
