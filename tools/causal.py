"""A causal live stream: producers that wait for Kafka's acknowledgements.

Messages go in rounds; a round is sent only once every message of the one before was
acknowledged (`acks=all`), and event times rise from round to round (one time per
round, kept to the clock). So whenever an
event follows another of the same user, or a payout follows gifts to its creator, the
earlier one was acknowledged before the later one was produced, and the contract's
causal-order rule fixes the outcome of every event: applying the rounds in order, each
round's events in any order, gives them all. Within a round a user has at most one
event and a creator paid out receives no gift, so nothing in a round depends on
another event of it. Many gifts come right after their sender's recharge (the round
after it) and many cost more than the sender has; daily limits and payouts are mixed in.

Promotions change every few rounds (`CausalConfig.promotions`): a version published in
a round is in force from the round's time + 1, so only later rounds' recharges (produced
after its acknowledgement) can see it, and they must. A withdrawal (tombstone) is in
force from its broker time, known only once acknowledged: it goes in a round of its own,
and `produce` records that time in the event (`kafka_ts`) for the reference. Only while
the producers' clock is the broker's (skew_ms <= 0): dated ahead, events produced before
the tombstone would be dated after its broker time, and whether it ends their bonus
would depend on whether they were decided before it was published (the contract:
publishing never changes a recharge already decided), which no reference can know.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline import topics
from pipeline.economics import Economics
from pipeline.settings import Settings
from tools.simulate import message, spend_limit

Event = tuple[str, dict[str, Any]]  # topic (no prefix), contract value

KEY_FIELDS = {topics.RECHARGES: "user_id", topics.GIFTS: "sender_id", topics.SPEND_LIMITS: "user_id",
              topics.PAYOUTS: "creator_id"}
MAX_ROUND = 10_000
PROMOTIONS = 3  # promotions a stream keeps changing


@dataclass(frozen=True)
class CausalConfig:
    rounds: int = 100
    per_round: int = 300  # messages; at most one per user
    users: int = 2_000
    creators: int = 200
    rate: float = 3_000.0  # messages per second, at most (acknowledgements permitting)
    seed: int = 11
    id_prefix: str = "k"
    # The producers' clock against the machine's (CONTRACT.md allows up to 5 minutes
    # ahead): a stream dated ahead, then one dated by the clock, makes the second's
    # events earlier than the first's though produced after them.
    skew_ms: int = 0
    # A promotion changes every this many rounds (a new version, or every third time a
    # withdrawal); 0: no promotions.
    promotions: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.per_round <= min(MAX_ROUND, self.users):
            raise ValueError(f"per_round must be from 1 to min({MAX_ROUND}, users)")
        if self.rounds < 1 or self.creators < 2 or self.rate <= 0:
            raise ValueError("rounds >= 1, creators >= 2 and rate > 0")


class CausalStream:
    """Builds each round when it is due, dated by the clock (never earlier than the
    round before); keeps its own rough idea of balances only to aim gifts near them."""

    def __init__(self, cfg: CausalConfig, econ: Economics, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.econ = econ
        self.clock = clock
        self.rng = random.Random(cfg.seed)
        self.promo_rng = random.Random(cfg.seed + 2)  # its own: the rest of the stream stays as it was
        self.rounds_made = 0
        self.balance: dict[str, int] = {}
        self.recharged_last: list[str] = []  # they gift in the next round
        self.last_ts = 0
        self.n = 0
        self.gifts = sorted(econ.gifts.items(), key=lambda kv: kv[1])

    def _ts(self) -> int:
        return self.last_ts

    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{self.cfg.id_prefix}{kind}{self.n}"

    def rounds(self) -> Iterator[list[Event]]:
        for _ in range(self.cfg.rounds):
            yield self.round()

    def round(self) -> list[Event]:
        cfg, rng, p = self.cfg, self.rng, self.cfg.id_prefix
        # One time for the round, rising from round to round and keeping to the clock.
        self.last_ts = max(self.last_ts + 1, int(self.clock() * 1000) + cfg.skew_ms)
        i = self.rounds_made
        self.rounds_made += 1
        every = cfg.promotions
        if every and i % every == every - 1 and (i // every) % 3 == 2 and cfg.skew_ms <= 0:
            return [(topics.PROMOTIONS, {"promo_id": f"{p}promo{(i // every) % PROMOTIONS}", "tombstone": True})]
        promotions = self._promotions(i) if every and (i == 0 or i % every == every - 1) else []
        eager = self.recharged_last[: cfg.per_round // 3]
        chosen = set(eager)
        others = [u for u in (f"{p}u{i}" for i in rng.sample(range(cfg.users), cfg.per_round)) if u not in chosen]
        users = (eager + others)[: cfg.per_round]
        paid = {f"{p}c{i}" for i in rng.sample(range(cfg.creators), max(1, cfg.per_round // 100))}
        open_creators = [f"{p}c{i}" for i in range(cfg.creators) if f"{p}c{i}" not in paid]
        out: list[Event] = []
        recharged: list[str] = []
        for creator in sorted(paid):
            out.append((topics.PAYOUTS, {"event_id": self._id("p"), "creator_id": creator,
                                         "diamonds": rng.choice((1_000, 2_000, 5_000, 20_000, 100_000)),
                                         "ts": self._ts()}))
        for user in users:
            roll = rng.random()
            if user in eager or (roll < 0.45 and self.balance.get(user, 0) > 0):
                out.append((topics.GIFTS, self._gift(user, rng.choice(open_creators))))
            elif roll < 0.93:
                coins = rng.choice(self.econ.recharge_packages)
                self.balance[user] = self.balance.get(user, 0) + coins
                recharged.append(user)
                out.append((topics.RECHARGES, {"event_id": self._id("r"), "user_id": user, "coins": coins,
                                               "amount_cents": coins, "currency": "USD", "ts": self._ts()}))
            else:
                limit = rng.choice((None, 0, 500, 5_000, 50_000))
                eid = self._id("l")
                out.append((topics.SPEND_LIMITS, spend_limit(eid, user, limit, self._ts(), self.n)))
        self.recharged_last = recharged
        return out + promotions

    def _promotions(self, i: int) -> list[Event]:
        """Round 0: every promotion; later: a new version of one. Each in force from the
        next round on, for a day; packages that the stream's recharges use."""
        rng, since = self.promo_rng, self.last_ts + 1
        ids = range(PROMOTIONS) if i == 0 else [(i // self.cfg.promotions) % PROMOTIONS]
        packages = list(self.econ.recharge_packages)
        return [(topics.PROMOTIONS, {
            "promo_id": f"{self.cfg.id_prefix}promo{j}", "starts_ts": since, "ends_ts": since + 86_400_000,
            "bonus_percent": rng.choice((5, 10, 10, 20, 50, 100)),
            "packages": sorted(rng.sample(packages, rng.randint(1, len(packages)))),
            "max_per_user": rng.choice((1, 2, 5)), "ts": since,
        }) for j in ids]

    def _gift(self, sender: str, creator: str) -> dict[str, Any]:
        """Aimed at 40-130 % of what the sender has (by this stream's estimate)."""
        rng = self.rng
        target = max(1, int(self.balance.get(sender, 0) * rng.uniform(0.4, 1.3)))
        affordable = [g for g in self.gifts if g[1] <= target] or self.gifts[:1]
        gift_id, price = rng.choice(affordable[-3:])
        quantity = max(1, min(10_000, target // price))
        if quantity * price <= self.balance.get(sender, 0):
            self.balance[sender] -= quantity * price
        return {"event_id": self._id("g"), "sender_id": sender, "creator_id": creator, "stream_id": f"{creator}-s",
                "gift_id": gift_id, "quantity": quantity, "ts": self._ts()}


def encode(event: Event) -> tuple[str, bytes | None, bytes | None]:
    topic, value = event
    if topic == topics.PROMOTIONS:
        body = None if value.get("tombstone") else message(topic, value, "promo_id")[2]
        return topic, value["promo_id"].encode(), body
    return message(topic, value, KEY_FIELDS[topic])


def outcome_events(events: list[Event]) -> list[Event]:
    """The events of a round that get an outcome (all but promotions)."""
    return [e for e in events if e[0] != topics.PROMOTIONS]


async def produce(settings: Settings, stream: CausalStream,
                  on_round: Callable[[int, list[Event]], Any] | None = None) -> tuple[list[list[Event]], float]:
    """Send the stream round by round, each only after the previous one was
    acknowledged; paced to at most `rate` messages per second. Returns the rounds as
    sent (the order the reference applies) and the seconds it took."""
    producer = AIOKafkaProducer(**settings.kafka_options(), acks="all", enable_idempotence=True, linger_ms=1)
    await producer.start()
    sent: list[list[Event]] = []
    started = time.monotonic()
    try:
        messages = 0
        for i, events in enumerate(stream.rounds()):
            futures = []
            for topic, key, value in map(encode, events):
                futures.append(await producer.send(settings.topic(topic), value, key=key))
            acks = await asyncio.gather(*futures)  # every acknowledgement before the next round
            for (_, ev), ack in zip(events, acks):
                if ev.get("tombstone"):
                    ev["kafka_ts"] = ack.timestamp  # the broker's: promotions are LogAppendTime
            sent.append(events)
            messages += len(events)
            if on_round is not None:
                on_round(i, events)
            ahead = messages / stream.cfg.rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return sent, time.monotonic() - started
