"""An independent reference ledger, written from CONTRACT.md alone (imports nothing of
the pipeline), that the integration tests compare the real pipeline against.

It applies events one at a time in the order given: the tests feed it the global
event-time order, which the pipeline reproduces per key.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from typing import Any

CATALOG = {
    "rose": 1, "finger_heart": 5, "perfume": 20, "confetti": 100,
    "money_gun": 500, "galaxy": 1000, "lion": 29999, "universe": 44999,
}
PLATFORM_LIMIT = 200_000
PLATFORM_MONTHLY_LIMIT: int | None = None  # "none from the platform by default"
MIN_PAYOUT = 2_000
DAY = 86_400_000
MAX_AHEAD_MS = 5 * 60_000  # the default PIPELINE_MAX_CLOCK_SKEW_MS
MAX_BEHIND_MS = 7 * DAY  # the duplicate window
LEVELS = (1, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)
TYPES = {"recharges": "recharge", "gifts": "gift", "payouts": "payout", "spend-limits": "spend_limit"}
KEY_FIELD = {"recharges": "user_id", "gifts": "sender_id", "payouts": "creator_id", "spend-limits": "user_id"}


class ReferenceLedger:
    def __init__(self) -> None:
        self.coins: dict[str, int] = defaultdict(int)
        self.recharged: dict[str, int] = defaultdict(int)
        self.spent: dict[str, int] = defaultdict(int)
        self.day_spent: dict[tuple[str, int], int] = defaultdict(int)
        self.own_limit: dict[str, int | None] = {}
        self.own_monthly: dict[str, int | None] = {}
        self.month_spent: dict[tuple[str, int, int], int] = defaultdict(int)  # (user, year, month)
        self.diamonds: dict[str, int] = defaultdict(int)
        self.lifetime: dict[str, int] = defaultdict(int)
        self.paid_out: dict[str, int] = defaultdict(int)
        self.fees = 0
        self.stream_coins: dict[tuple[str, str], int] = defaultdict(int)  # (stream, user)
        self.creator_day: dict[tuple[int, str], int] = defaultdict(int)  # (day, creator)
        self.windows: dict[tuple[str, str, int], int] = defaultdict(int)  # (creator, size, start)
        self.seen: set[tuple[str, str, str]] = set()
        self.outcomes: list[dict[str, Any]] = []
        # promo_id -> every record in publication order: (in force from, value or None).
        self.promotions: dict[str, list[tuple[int, dict[str, Any] | None]]] = defaultdict(list)
        self.bonus: dict[str, int] = defaultdict(int)
        self.bonuses_received: dict[tuple[str, str], int] = defaultdict(int)  # (user, promo_id)
        self.badges: list[dict[str, Any]] = []

    def publish_promotion(self, promo_id: str, value: dict[str, Any] | None, kafka_ts: int) -> None:
        """A `promotions` record: a version in force from its `ts`, or a tombstone (None)
        from its Kafka timestamp on."""
        self.promotions[promo_id].append((kafka_ts if value is None else value["ts"], value))

    def feed(self, topic: str, ev: dict[str, Any]) -> dict[str, Any] | None:
        """An event of any input topic; its outcome, or None for a promotion (which has
        none). A tombstone is {"promo_id", "tombstone": true, "kafka_ts"} (tools/causal.py)."""
        if topic == "promotions":
            tombstone = bool(ev.get("tombstone"))
            self.publish_promotion(ev["promo_id"], None if tombstone else ev, ev["kafka_ts"] if tombstone else 0)
            return None
        return self.apply(topic, ev)

    def _bonus(self, user: str, coins: int, ts: int) -> tuple[int, str | None]:
        best: dict[str, Any] | None = None
        for promo_id, records in self.promotions.items():
            in_force = [v for since, v in records if since <= ts]  # publication order
            p = in_force[-1] if in_force else None
            if (p is None or coins not in p["packages"] or not p["starts_ts"] <= ts < p["ends_ts"]
                    or self.bonuses_received[(user, promo_id)] >= p["max_per_user"]):
                continue
            if best is None or p["bonus_percent"] > best["bonus_percent"] or (
                    p["bonus_percent"] == best["bonus_percent"] and promo_id < best["promo_id"]):
                best = p
        if best is None:
            return 0, None
        return coins * best["bonus_percent"] // 100, best["promo_id"]

    @staticmethod
    def level(spent: int) -> int:
        return sum(1 for t in LEVELS if spent >= t)

    def apply(self, topic: str, ev: dict[str, Any], now_ms: float | None = None) -> dict[str, Any]:
        """`now_ms`: the deciding clock; an event more than 5 minutes ahead of it or more
        than 7 days behind is rejected invalid_ts before anything else (None: the
        caller knows every event is in time)."""
        kind = TYPES[topic]
        subject = ev[KEY_FIELD[topic]]
        out: dict[str, Any] = {
            "event_id": ev["event_id"], "type": kind, "status": "accepted", "reason": None,
            "subject_id": subject, "coins": None, "diamonds": None, "usd_cents": None,
            "balance_after": None, "ts": ev["ts"], "bonus_coins": None, "promo_id": None,
        }
        if now_ms is not None and not now_ms - MAX_BEHIND_MS <= ev["ts"] <= now_ms + MAX_AHEAD_MS:
            out["status"], out["reason"] = "rejected", "invalid_ts"
            if kind == "recharge":
                out["coins"], out["balance_after"] = ev["coins"], self.coins[subject]
            elif kind == "gift":
                price = CATALOG.get(ev["gift_id"])
                out["coins"] = None if price is None else price * ev["quantity"]
                out["balance_after"] = self.coins[subject]
            elif kind == "payout":
                out["diamonds"], out["balance_after"] = ev["diamonds"], self.diamonds[subject]
            self.outcomes.append(out)
            return out
        duplicate = (topic, subject, ev["event_id"]) in self.seen
        self.seen.add((topic, subject, ev["event_id"]))
        if duplicate:
            out["status"] = "duplicate"
        if kind == "recharge":
            out["coins"] = ev["coins"]
            if not duplicate:
                bonus, promo_id = self._bonus(subject, ev["coins"], ev["ts"])
                self.coins[subject] += ev["coins"] + bonus
                self.recharged[subject] += ev["coins"]
                self.bonus[subject] += bonus
                if promo_id is not None:
                    self.bonuses_received[(subject, promo_id)] += 1
                out["bonus_coins"], out["promo_id"] = bonus, promo_id
            out["balance_after"] = self.coins[subject]
        elif kind == "gift":
            price = CATALOG.get(ev["gift_id"])
            cost = None if price is None else price * ev["quantity"]
            out["coins"] = cost
            if not duplicate:
                own = self.own_limit.get(subject)
                limit = PLATFORM_LIMIT if own is None else min(PLATFORM_LIMIT, own)
                day = (subject, ev["ts"] // DAY)
                when = datetime.datetime.fromtimestamp(ev["ts"] / 1000, datetime.UTC)
                month = (subject, when.year, when.month)
                if cost is None:
                    out["status"], out["reason"] = "rejected", "unknown_gift"
                elif subject == ev["creator_id"]:
                    out["status"], out["reason"] = "rejected", "self_gift"
                elif cost > self.coins[subject]:
                    out["status"], out["reason"] = "rejected", "insufficient_coins"
                elif self.day_spent[day] + cost > limit:
                    out["status"], out["reason"] = "rejected", "spend_limit_exceeded"
                elif (budget := self._monthly_budget(subject)) is not None and (
                        self.month_spent[month] + cost > budget):
                    out["status"], out["reason"] = "rejected", "monthly_limit_exceeded"
                else:
                    credited = cost // 2
                    before = self.level(self.spent[subject])
                    after = self.level(self.spent[subject] + cost)
                    if after > before:
                        self.badges.append({
                            "badge_id": f"gifter_level:{subject}:{after}", "user_id": subject,
                            "badge": "gifter_level", "level": after, "previous_level": before,
                            "event_id": ev["event_id"], "ts": ev["ts"]})
                    self.coins[subject] -= cost
                    self.spent[subject] += cost
                    self.day_spent[day] += cost
                    self.month_spent[month] += cost
                    self.diamonds[ev["creator_id"]] += credited
                    self.lifetime[ev["creator_id"]] += credited
                    self.stream_coins[(ev["stream_id"], subject)] += cost
                    self.creator_day[(ev["ts"] // DAY, ev["creator_id"])] += credited
                    for size, span in (("1m", 60_000), ("1h", 3_600_000)):
                        self.windows[(ev["creator_id"], size, ev["ts"] - ev["ts"] % span)] += credited
                    self.fees += cost - credited
                    out["diamonds"] = credited
            out["balance_after"] = self.coins[subject]
        elif kind == "payout":
            out["diamonds"] = ev["diamonds"]
            if not duplicate:
                if ev["diamonds"] < MIN_PAYOUT:
                    out["status"], out["reason"] = "rejected", "below_min_payout"
                elif ev["diamonds"] > self.diamonds[subject]:
                    out["status"], out["reason"] = "rejected", "insufficient_diamonds"
                else:
                    self.diamonds[subject] -= ev["diamonds"]
                    self.paid_out[subject] += ev["diamonds"]
                    out["usd_cents"] = ev["diamonds"] * 500 // 1000
            out["balance_after"] = self.diamonds[subject]
        else:
            if not duplicate:  # a field absent leaves that limit as it was
                if "daily_coin_limit" in ev:
                    self.own_limit[subject] = ev["daily_coin_limit"]
                if "monthly_coin_limit" in ev:
                    self.own_monthly[subject] = ev["monthly_coin_limit"]
        self.outcomes.append(out)
        return out

    def _monthly_budget(self, user_id: str) -> int | None:
        own = self.own_monthly.get(user_id)
        budgets = [b for b in (PLATFORM_MONTHLY_LIMIT, own) if b is not None]
        return min(budgets) if budgets else None

    def user(self, user_id: str) -> dict[str, int]:
        return {"coins": self.coins[user_id], "recharged_coins": self.recharged[user_id],
                "spent_coins": self.spent[user_id], "bonus_coins": self.bonus[user_id],
                "lifetime_spent_coins": self.spent[user_id], "gifter_level": self.level(self.spent[user_id])}

    def budget_fields(self, user_id: str) -> dict[str, Any]:
        """The read model's monthly fields (CONTRACT.md, Read model): the own budget, the
        latest month with accepted gifts (YYYY-MM) and its coins."""
        months = [(y, m) for (u, y, m), coins in self.month_spent.items() if u == user_id and coins > 0]
        last = max(months, default=None)
        return {"monthly_coin_limit": self.own_monthly.get(user_id),
                "last_spend_month": None if last is None else f"{last[0]:04d}-{last[1]:02d}",
                "last_spend_month_coins": 0 if last is None else self.month_spent[(user_id, *last)]}

    def creator(self, creator_id: str) -> dict[str, int]:
        return {
            "diamonds": self.diamonds[creator_id],
            "lifetime_diamonds": self.lifetime[creator_id],
            "paid_out_diamonds": self.paid_out[creator_id],
        }

    def boards(self) -> dict[str, list[tuple[str, int]]]:
        """Every leaderboard, by contract key: (member, score), best first, ties by id."""
        out: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for (stream, user), coins in self.stream_coins.items():
            out[f"lb:stream:{stream}:gifters"].append((user, coins))
        for (user, day), coins in self.day_spent.items():
            out[f"lb:gifters:day:{_date(day)}"].append((user, coins))
        for creator, diamonds in self.lifetime.items():
            if diamonds:
                out["lb:creators:all"].append((creator, diamonds))
        for (day, creator), diamonds in self.creator_day.items():
            out[f"lb:creators:day:{_date(day)}"].append((creator, diamonds))
        return {k: sorted((e for e in v if e[1] > 0), key=lambda e: (-e[1], e[0])) for k, v in out.items()}


def _date(day: int) -> str:
    import datetime as dt

    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()
