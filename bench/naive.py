"""The naive reference of the benchmark: the contract as a first Faust tutorial writes it.

One event at a time: an agent per side, a Faust table read and write per event, a
Redis round trip per event, an outcome sent per event, at-least-once. It shares the
pure rules of the real ledger (agents/*/rules.py), so the two differ only in how they
process, which is what the benchmark compares. Payouts are decided on the creator's
diamonds when they arrive (no cross-partition ordering), and Faust's start-up trap
(../shared/FAUST_NOTES.md) is left as a tutorial leaves it.

Run: `python -m bench.naive` with the PIPELINE_* settings of the run; it reads the
contract topics and writes `naive-outcomes` and Redis keys under "naive:".
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import faust
import redis.asyncio as aioredis

from agents.credit.rules import CreditBatch, apply_credit, apply_payout, duplicate_payout
from agents.credit.state import CreatorState
from agents.ingest.decode import Malformed, decode
from agents.ingest.records import Payout
from agents.ledger.promotions import PromotionBook
from agents.ledger.rules import apply_user_event, duplicate_outcome
from agents.ledger.state import UserState
from agents.readmodel import leaderboards
from pipeline import economics, settings, topics
from pipeline.engine.codec import dumps, loads

OUTCOMES = "naive-outcomes"
CREDITS = "naive-credits"
USER_TOPICS = {topics.RECHARGES: "r", topics.GIFTS: "g", topics.SPEND_LIMITS: "l"}


def create_app() -> faust.App:
    s = settings.load()
    econ = economics.load(s.economics_file)
    s.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        s.topic("naive"), broker=[f"kafka://{b}" for b in s.bootstrap_list], store="memory://",
        topic_partitions=s.partitions, web_enabled=False, datadir=str(s.data_dir / "naive"),
        stream_wait_empty=False, producer_linger_ms=5,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    user_events = app.topic(*(s.topic(t) for t in USER_TOPICS), **raw)
    creator_events = app.topic(s.topic(CREDITS), s.topic(topics.PAYOUTS), **raw)
    credits = app.topic(s.topic(CREDITS), partitions=s.partitions, internal=True, **raw)
    outcomes = app.topic(s.topic(OUTCOMES), partitions=s.partitions, internal=True, **raw)
    users = app.Table("naive-users", partitions=s.partitions)
    creators = app.Table("naive-creators", partitions=s.partitions)
    seen = app.Table("naive-seen", default=bool, partitions=s.partitions)
    redis = aioredis.from_url(s.redis_url)
    prefix = s.redis_prefix + "naive:"

    @app.agent(user_events, concurrency=1)
    async def user_ledger(stream: Any) -> None:
        async for event in stream.events():
            topic = event.message.topic[len(s.topic_prefix):]
            ev = decode(topic, event.key, event.value)
            if isinstance(ev, Malformed):
                continue
            dedupe = f"{USER_TOPICS[topic]}|{ev.key}|{ev.event_id}"
            state = UserState.from_json(users[ev.key]) if ev.key in users else UserState()
            if seen[dedupe]:
                outcome = duplicate_outcome(state, ev, econ)
            else:
                seen[dedupe] = True
                decided = apply_user_event(state, ev, econ, NO_PROMOTIONS)  # the naive app reads no promotions
                outcome, credit = decided.outcome, decided.credit
                users[ev.key] = state.to_json()
                if credit is not None:
                    await credits.send(key=credit.creator_id.encode(), value=dumps(
                        {"c": credit.creator_id, "coins": credit.coins, "d": credit.diamonds, "ts": credit.ts}))
                    stream_id = ev.stream_id
                    await redis.zadd(prefix + leaderboards.stream_key(stream_id), {ev.key: state.streams[stream_id][0]})
            await redis.hset(prefix + "user:" + ev.key, mapping={"coins": state.balance, "spent_coins": state.spent})
            await outcomes.send(key=ev.event_id.encode(), value=dumps(outcome))

    @app.agent(creator_events, concurrency=1)
    async def creator_ledger(stream: Any) -> None:
        async for event in stream.events():
            if event.message.topic == s.topic(CREDITS):
                op = loads(event.value)
                state = CreatorState.from_json(creators[op["c"]]) if op["c"] in creators else CreatorState()
                # not remembered
                apply_credit(state, CreditBatch(op["c"], op["coins"], 1, ((op["ts"], op["d"]),)), 0, 0)
                creators[op["c"]] = state.to_json()
                await redis.zadd(prefix + leaderboards.CREATORS_ALL, {op["c"]: state.lifetime})
                continue
            ev = decode(topics.PAYOUTS, event.key, event.value)
            if not isinstance(ev, Payout):
                continue
            state = CreatorState.from_json(creators[ev.key]) if ev.key in creators else CreatorState()
            dedupe = f"p|{ev.key}|{ev.event_id}"
            if seen[dedupe]:
                outcome = duplicate_payout(state, ev)
            else:
                seen[dedupe] = True
                outcome = apply_payout(state, ev, econ)
                creators[ev.key] = state.to_json()
            await redis.hset(prefix + "creator:" + ev.key, mapping={"diamonds": state.available})
            await outcomes.send(key=ev.event_id.encode(), value=dumps(outcome))

    return app


NO_PROMOTIONS = PromotionBook(7 * 86_400_000)


def main() -> None:
    from faust.worker import Worker

    asyncio.run(topics.ensure_topics(settings.load(), extra=(OUTCOMES, CREDITS)))
    app = create_app()
    Worker(app, loglevel=os.environ.get("PIPELINE_LOG_LEVEL", "warn"), quiet=True,
           redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
