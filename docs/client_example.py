"""The example of docs/client.md: a viewer buys coins, sends a gift, sends one more it
cannot pay for, and sets a daily spend limit; each send returns the committed outcome.

Against `make run`'s Kafka and Redis (they keep running), with a worker:

    .venv/bin/python -m pipeline worker &
    .venv/bin/python docs/client_example.py

tests/integration/test_client.py runs `main` against the test session's stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from pipeline.client import Client, Gift, Outcome, Recharge, SpendLimit, new_event_id


async def main(env: Mapping[str, str] | None = None) -> list[Outcome]:
    tag = new_event_id()[:8]  # new ids on every run: the broker keeps the last run's events
    viewer, creator, stream = f"viewer-{tag}", f"creator-{tag}", f"stream-{tag}"
    outcomes = []
    async with Client.from_env(env) as client:  # PIPELINE_* settings, as a worker reads them
        for event in (
            Recharge(user_id=viewer, coins=100, amount_cents=99, currency="USD"),
            Gift(sender_id=viewer, creator_id=creator, stream_id=stream, gift_id="confetti"),  # 100 coins
            Gift(sender_id=viewer, creator_id=creator, stream_id=stream, gift_id="rose"),  # nothing left
            SpendLimit(user_id=viewer, daily_coin_limit=50),
        ):
            # Sent one after the other: each is applied before the next is produced.
            outcome = await client.send(event)
            print(f"{outcome.type:<12} {outcome.status:<9} {outcome.reason or '-':<20} "
                  f"balance after: {outcome.balance_after}")
            outcomes.append(outcome)
    return outcomes


if __name__ == "__main__":
    asyncio.run(main())
