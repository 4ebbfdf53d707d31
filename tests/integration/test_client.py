"""pipeline.client against the real stack: every input type sent with `send`, which
returns the committed outcome read from a real worker's /outcomes/{event_id}; the
example of docs/client.md; a promotion and its withdrawal seen by later recharges; and
the timeout of an event that was never produced."""

from __future__ import annotations

import runpy
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.client import (
    Client,
    Delivery,
    Gift,
    OutcomeTimeout,
    Payout,
    Promotion,
    Recharge,
    SpendLimit,
    WithdrawPromotion,
)
from pipeline.settings import PROJECT_ROOT
from tests.conftest import Cluster
from tests.support.harness import Deployment, Worker, one_worker, read_all, run

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0  # a first outcome waits for the worker's first cycle on a shared machine


@pytest.fixture(scope="module")
def live(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Worker]]:
    with one_worker(cluster.bootstrap, cluster.redis_url, tmp_path_factory.mktemp("client"), "client") as live:
        yield live


def client_of(live: tuple[Deployment, Worker]) -> Client:
    deployment, worker = live
    return Client.from_env(deployment.env(worker.port), timeout_s=TIMEOUT_S)


def fields(outcome: Any, *names: str) -> tuple[Any, ...]:
    return tuple(getattr(outcome, name) for name in names)


def test_the_example_runs(live: tuple[Deployment, Worker]) -> None:
    deployment, worker = live
    main = runpy.run_path(str(PROJECT_ROOT / "docs" / "client_example.py"))["main"]
    outcomes = run(main(deployment.env(worker.port)))
    assert [(o.type, o.status, o.reason) for o in outcomes] == [
        ("recharge", "accepted", None), ("gift", "accepted", None), ("gift", "rejected", "insufficient_coins"),
        ("spend_limit", "accepted", None)]
    assert [o.balance_after for o in outcomes] == [100, 0, 0, None]  # as docs/client.md shows


def test_every_input_type(live: tuple[Deployment, Worker]) -> None:
    tag = uuid.uuid4().hex[:8]
    viewer, creator, stream = f"v-{tag}", f"c-{tag}", f"s-{tag}"

    def gift(gift_id: str, quantity: int = 1) -> Gift:
        return Gift(sender_id=viewer, creator_id=creator, stream_id=stream, gift_id=gift_id, quantity=quantity)

    async def scenario() -> None:
        async with client_of(live) as client:
            first = Recharge(user_id=viewer, coins=5000, amount_cents=4999, currency="USD")
            recharge = await client.send(first)
            assert fields(recharge, "type", "status", "subject_id", "coins", "balance_after", "bonus_coins",
                          "promo_id") == ("recharge", "accepted", viewer, 5000, 5000, 0, None)
            assert await client.send(first) == recharge  # a retry: applied once, the first outcome returned
            paid = await client.send(gift("galaxy", 4))  # 4,000 coins: 2,000 diamonds to the creator
            assert fields(paid, "status", "coins", "diamonds", "balance_after") == ("accepted", 4000, 2000, 1000)
            too_dear = await client.send(gift("universe"))
            assert fields(too_dear, "status", "reason") == ("rejected", "insufficient_coins")

            limit = await client.send(SpendLimit(user_id=viewer, daily_coin_limit=4010))
            assert fields(limit, "type", "status", "subject_id") == ("spend_limit", "accepted", viewer)
            over = await client.send(gift("perfume"))  # 4,000 + 20 coins today > 4,010
            assert fields(over, "status", "reason") == ("rejected", "spend_limit_exceeded")
            cleared = await client.send(SpendLimit(user_id=viewer, daily_coin_limit=None))
            assert cleared.status == "accepted"
            assert fields(await client.send(gift("perfume")), "status", "balance_after") == ("accepted", 980)

            small = await client.send(Payout(creator_id=creator, diamonds=1999))
            assert fields(small, "type", "status", "reason") == ("payout", "rejected", "below_min_payout")
            payout = await client.send(Payout(creator_id=creator, diamonds=2000))
            assert fields(payout, "status", "subject_id", "diamonds", "usd_cents") == (
                "accepted", creator, 2000, 1000)
            assert payout.balance_after == 10  # the 20-coin perfume's diamonds are left

    run(scenario())


def test_a_promotion_and_its_withdrawal(live: tuple[Deployment, Worker]) -> None:
    deployment, _ = live
    tag = uuid.uuid4().hex[:8]
    now = int(time.time() * 1000)
    promo = Promotion(promo_id=f"p-{tag}", starts_ts=now - 60_000, ends_ts=now + 3_600_000, bonus_percent=10,
                      packages=(1000, 5000), max_per_user=1)

    def recharge(user: str) -> Recharge:
        return Recharge(user_id=f"{user}-{tag}", coins=1000, amount_cents=999, currency="USD")

    async def scenario() -> None:
        async with client_of(live) as client:
            published = await client.send(promo)  # acknowledged: the recharges below see it
            assert isinstance(published, Delivery) and published.topic == deployment.topic("promotions")
            bonus = await client.send(recharge("a"))
            assert fields(bonus, "status", "bonus_coins", "promo_id", "balance_after") == (
                "accepted", 100, promo.promo_id, 1100)
            withdrawn = await client.send(WithdrawPromotion(promo_id=promo.promo_id))
            assert withdrawn.offset > published.offset
            after = await client.send(recharge("b"))
            assert fields(after, "status", "bonus_coins", "promo_id", "balance_after") == ("accepted", 0, None, 1000)

    run(scenario())


def test_an_event_never_produced_times_out(live: tuple[Deployment, Worker]) -> None:
    async def scenario() -> None:
        async with client_of(live) as client:
            started = time.monotonic()
            with pytest.raises(OutcomeTimeout) as caught:
                await client.outcome(f"never-{uuid.uuid4().hex}", timeout_s=3)
            assert 3 <= time.monotonic() - started < 5
            assert caught.value.acked and "after 3s" in str(caught.value) and "404" in str(caught.value)

    run(scenario())


def test_nothing_the_client_sent_was_malformed(live: tuple[Deployment, Worker]) -> None:
    """Keys, partitions and values as the pipeline checks them: no dead letter (runs last)."""
    deployment, _ = live
    assert run(read_all(deployment.bootstrap, deployment.topic("dead-letters"), 0, 2.0, settle_s=1.0)) == []
