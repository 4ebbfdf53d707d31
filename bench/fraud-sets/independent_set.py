#!/usr/bin/env python3
"""Independent labelled test set for the gift-ledger fraud detector.

Written only from the written specification (the fraud issue and the wire contract),
by a separate author who did not read the system under test; kept here so that its
measurement (bench/results/*-fraud-eval-independent.*) can be repeated:

    python bench/fraud-sets/independent_set.py var/fraud-sets/independent
    python -m pipeline fraud-eval --events var/fraud-sets/independent/events.jsonl \
        --labels var/fraud-sets/independent/labels.jsonl --out bench/results/<date>-fraud-eval-independent

Writes DIR/events.jsonl and DIR/labels.jsonl (+ labels_meta.jsonl, a side file with
variant names and measured metrics, for humans).

Python 3 stdlib only. Deterministic (seeded).

Design notes
------------
* Every injected instance uses its own private accounts, so instances can be
  simulated in isolation and the union equals the global simulation.
* A small independent ledger simulator (simulate()) computes acceptance of every
  gift / payout by the spec rules, then five rule detectors are evaluated twice:
    - STRICT  : the instance must cross the rule even under the least favourable
                reading of boundaries (windows shortened, thresholds raised a bit);
                used to assert that fraud instances fire.
    - LENIENT : a rule *might* fire under the most favourable reading (windows
                lengthened, thresholds lowered by >=1 %, "gift" counted either as an
                event or as quantity, ...); used to assert that near-misses and
                background traffic fire nothing and that fraud instances fire
                nothing except their own rule.
"""
import bisect
import json
import math
import os
import random
import re
import sys
from collections import Counter, defaultdict, deque

SEED = 20240513
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join("var", "fraud-sets", "independent")

PRICES = {"rose": 1, "finger_heart": 5, "perfume": 20, "confetti": 100,
          "money_gun": 500, "galaxy": 1000, "lion": 29999, "universe": 44999}
SMALL_GIFTS = ["galaxy", "money_gun", "confetti", "perfume", "finger_heart", "rose"]
BOGUS_GIFTS = ["dragon", "rocket", "sports_car", "castle", "diamond_ring", "gold_bar",
               "phoenix", "yacht", "crown", "meteor_shower", "unicorn", "love_bomb",
               "gift_9999", "superstar", "planet_x"]

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
W0 = 1715558400000            # 2024-05-13T00:00:00Z (UTC midnight)
WSTART = W0 + 2 * HOUR        # background window: 2024-05-13 02:00Z ..
WEND = W0 + 48 * HOUR         # .. 2024-05-15 00:00Z  (46 h, spans 2 UTC days)
DAILY_CAP = 200000

FX = {"USD": 1.0, "EUR": 0.93, "GBP": 0.80, "BRL": 5.2, "MXN": 17.0, "CAD": 1.37, "AUD": 1.52}
PACKS = [70, 350, 700, 1400, 3500, 7000, 17500]

N_PER = 25  # instances per (pattern, label)


class Retry(Exception):
    pass


# ----------------------------------------------------------------------------
# ids / emitter
# ----------------------------------------------------------------------------
class IdGen:
    def __init__(self, rng):
        self.rng = rng
        self.used = set()

    def _new(self, prefix, bits):
        while True:
            s = "%s%0*x" % (prefix, bits // 4, self.rng.getrandbits(bits))
            if s not in self.used:
                self.used.add(s)
                return s

    def acct(self):
        return self._new("a_", 48)

    def event(self):
        return self._new("ev_", 64)


class Emitter:
    def __init__(self, ids, rng):
        self.ids, self.rng, self.events = ids, rng, []

    def _add(self, topic, body):
        v = {"event_id": self.ids.event()}
        v.update(body)
        self.events.append({"topic": topic, "value": v})
        return v["event_id"]

    def recharge(self, ts, user, coins):
        cur = self.rng.choice(list(FX))
        cents = int(round(coins * 1.4286 * FX[cur]))
        if self.rng.random() < 0.01:
            cents = 0  # promotional top-up
        return self._add("recharges", {"user_id": user, "coins": int(coins),
                                       "amount_cents": cents, "currency": cur, "ts": int(ts)})

    def gift(self, ts, sender, creator, gid, q):
        stream = "s_%s_%d" % (creator[2:], (ts - W0) // (6 * HOUR))
        return self._add("gifts", {"sender_id": sender, "creator_id": creator, "stream_id": stream,
                                   "gift_id": gid, "quantity": int(q), "ts": int(ts)})

    def payout(self, ts, creator, d):
        return self._add("payouts", {"creator_id": creator, "diamonds": int(d), "ts": int(ts)})

    def limit(self, ts, user, lim):
        return self._add("spend-limits", {"user_id": user, "daily_coin_limit": lim, "ts": int(ts)})


# ----------------------------------------------------------------------------
# contract validation
# ----------------------------------------------------------------------------
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
KEYS = {"recharges": {"event_id", "user_id", "coins", "amount_cents", "currency", "ts"},
        "gifts": {"event_id", "sender_id", "creator_id", "stream_id", "gift_id", "quantity", "ts"},
        "payouts": {"event_id", "creator_id", "diamonds", "ts"},
        "spend-limits": {"event_id", "user_id", "daily_coin_limit", "ts"}}


def isint(x):
    return isinstance(x, int) and not isinstance(x, bool)


def validate_event(ev):
    t, v = ev["topic"], ev["value"]
    assert t in KEYS, t
    assert set(v) == KEYS[t], (t, v)
    assert isint(v["ts"]) and v["ts"] > 0
    for k in ("event_id", "user_id", "sender_id", "creator_id", "stream_id"):
        if k in v:
            assert isinstance(v[k], str) and ID_RE.match(v[k]), (k, v)
    if t == "recharges":
        assert isint(v["coins"]) and 1 <= v["coins"] <= 1000000, v
        assert isint(v["amount_cents"]) and v["amount_cents"] >= 0, v
        assert isinstance(v["currency"], str) and re.match(r"^[A-Z]{3}$", v["currency"]), v
    elif t == "gifts":
        assert isinstance(v["gift_id"], str) and v["gift_id"], v
        assert isint(v["quantity"]) and 1 <= v["quantity"] <= 10000, v
    elif t == "payouts":
        assert isint(v["diamonds"]) and 1 <= v["diamonds"] <= 10 ** 12, v
    else:
        assert v["daily_coin_limit"] is None or (isint(v["daily_coin_limit"]) and v["daily_coin_limit"] >= 0)


# ----------------------------------------------------------------------------
# independent ledger simulator
# ----------------------------------------------------------------------------
class SimResult:
    pass


def simulate(events, honor_limits=False):
    """events: list in processing order (already sorted by ts for the final file;
    for isolated instances we sort here with a stable sort)."""
    order = sorted(range(len(events)), key=lambda i: (events[i]["value"]["ts"], i))
    bal = defaultdict(int)
    dayspend = defaultdict(int)
    avail = defaultdict(int)
    limits = {}
    first_any, first_user = {}, {}
    recharges = defaultdict(list)
    gifts = []
    credits = defaultdict(list)
    payouts = []

    def seen(acct, ts, as_user):
        if acct not in first_any:
            first_any[acct] = ts
        if as_user and acct not in first_user:
            first_user[acct] = ts

    for i in order:
        ev = events[i]
        t, v = ev["topic"], ev["value"]
        ts = v["ts"]
        if t == "recharges":
            u = v["user_id"]
            seen(u, ts, True)
            bal[u] += v["coins"]
            recharges[u].append((ts, v["coins"]))
        elif t == "spend-limits":
            seen(v["user_id"], ts, True)
            limits[v["user_id"]] = v["daily_coin_limit"]
        elif t == "gifts":
            s, c, gid, q = v["sender_id"], v["creator_id"], v["gift_id"], v["quantity"]
            seen(s, ts, True)
            seen(c, ts, False)
            price = PRICES.get(gid)
            coins = price * q if price is not None else None
            reason = None
            if price is None:
                reason = "unknown_gift"
            elif s == c:
                reason = "self_gift"
            elif bal[s] < coins:
                reason = "insufficient"
            else:
                cap = DAILY_CAP
                if honor_limits and limits.get(s) is not None:
                    cap = min(cap, limits[s])
                if dayspend[(s, ts // DAY)] + coins > cap:
                    reason = "daily_cap"
            acc = reason is None
            if acc:
                bal[s] -= coins
                dayspend[(s, ts // DAY)] += coins
                d = coins * 50 // 100
                avail[c] += d
                credits[c].append((ts, s, d))
            gifts.append({"ts": ts, "eid": v["event_id"], "s": s, "c": c, "gid": gid, "q": q,
                          "coins": coins, "acc": acc, "reason": reason})
        elif t == "payouts":
            c, d = v["creator_id"], v["diamonds"]
            seen(c, ts, False)
            acc = 2000 <= d <= avail[c]
            if acc:
                avail[c] -= d
            payouts.append({"ts": ts, "eid": v["event_id"], "c": c, "d": d, "acc": acc})
    r = SimResult()
    r.recharges, r.gifts, r.credits, r.payouts = recharges, gifts, credits, payouts
    r.first_any, r.first_user, r.dayspend = first_any, first_user, dayspend
    return r


# ----------------------------------------------------------------------------
# rule detectors
# ----------------------------------------------------------------------------
def sliding_max(tss, vals, W):
    """max over windows with ts_j - ts_i <= W of the component-wise sums."""
    if not tss:
        return [0] * (len(vals[0]) if vals else 3)
    k = len(vals[0])
    best, cur, i = [0] * k, [0] * k, 0
    for j in range(len(tss)):
        for c in range(k):
            cur[c] += vals[j][c]
        while tss[j] - tss[i] > W:
            for c in range(k):
                cur[c] -= vals[i][c]
            i += 1
        for c in range(k):
            best[c] = max(best[c], cur[c])
    return best


def metrics(sim):
    """Compute per-subject metrics at several window readings."""
    M = {"vel": {}, "probe": {}, "burn": {}, "loop": {}, "conc": []}
    acc_by = defaultdict(list)
    rej_by = defaultdict(list)
    for g in sim.gifts:
        (acc_by if g["acc"] else rej_by)[g["s"]].append(g)
    # velocity
    for s, gl in acc_by.items():
        tss = [g["ts"] for g in gl]
        vals = [(1, g["q"], g["coins"]) for g in gl]
        M["vel"][s] = {W: sliding_max(tss, vals, W * SEC) for W in (57, 60, 63)}
    # probe
    for s, gl in rej_by.items():
        tss = [g["ts"] for g in gl]
        vals = [(1, g["q"]) for g in gl]
        M["probe"][s] = {W: sliding_max(tss, vals, W * SEC) for W in (57, 60, 63)}
    # recharge burn
    for u, rl in sim.recharges.items():
        rl = sorted(rl)
        T0 = rl[0][0]
        gl = [g for g in acc_by.get(u, []) if g["ts"] >= T0]

        def R(upto, rl=rl, T0=T0):
            return sum(c for t, c in rl if t <= T0 + upto)

        def spend(upto, gl=gl, T0=T0):
            per = defaultdict(int)
            for g in gl:
                if g["ts"] <= T0 + upto:
                    per[g["c"]] += g["coins"]
            return per
        per95, per10, per11 = spend(9.5 * MIN), spend(10 * MIN), spend(11 * MIN)
        # prefix (streaming) evaluation inside 11 min
        pref_fire = False
        per = defaultdict(int)
        S = 0
        for g in gl:
            if g["ts"] > T0 + 11 * MIN:
                break
            S += g["coins"]
            per[g["c"]] += g["coins"]
            Rt = sum(c for t, c in rl if t <= min(g["ts"], T0 + 10 * MIN))
            top2 = sum(sorted(per.values(), reverse=True)[:2])
            if S >= 4950 and top2 >= 0.88 * Rt:
                pref_fire = True
        top2_11 = sum(sorted(per11.values(), reverse=True)[:2])
        S11 = sum(per11.values())
        creators_105 = {g["c"] for g in gl if g["ts"] <= T0 + 10.5 * MIN}
        M["burn"][u] = {
            "T0": T0, "R10": R(10 * MIN), "S10": sum(per10.values()),
            "ncre10": len(per10),
            "strict": (sum(per95.values()) >= 5100 and sum(per95.values()) >= 0.915 * R(10.5 * MIN)
                       and len(creators_105) <= 2),
            "lenient": pref_fire or (S11 >= 4950 and top2_11 >= 0.88 * R(9.5 * MIN)),
        }
    # gift loop
    dirs = defaultdict(list)
    for s, gl in acc_by.items():
        for g in gl:
            dirs[(s, g["c"])].append((g["ts"], g["coins"]))
    for (a, b) in list(dirs):
        if a < b and (b, a) in dirs:
            ab, ba = sorted(dirs[(a, b)]), sorted(dirs[(b, a)])
            tab, tba = [t for t, _ in ab], [t for t, _ in ba]
            pab, pba = [0], [0]
            for _, c in ab:
                pab.append(pab[-1] + c)
            for _, c in ba:
                pba.append(pba[-1] + c)
            res = {}
            for Wh in (23, 24, 25):
                W = Wh * HOUR
                best = 0
                for s0 in tab + tba:
                    x = pab[bisect.bisect_right(tab, s0 + W)] - pab[bisect.bisect_left(tab, s0)]
                    y = pba[bisect.bisect_right(tba, s0 + W)] - pba[bisect.bisect_left(tba, s0)]
                    best = max(best, min(x, y))
                res[Wh] = best
            M["loop"][frozenset((a, b))] = res
    # payout concentration
    for p in sim.payouts:
        P, C = p["ts"], p["c"]
        cl = sim.credits.get(C, [])
        shares = {}
        for mode in ("strict", "lenient", "exact"):
            for Wh in (23, 24, 25):
                W = Wh * HOUR
                win = [x for x in cl if P - W <= x[0] <= P]
                tot = sum(d for _, _, d in win)
                per = defaultdict(int)
                for _, s, d in win:
                    if mode == "strict":
                        new = sim.first_any[s] > P - 23 * HOUR
                    elif mode == "lenient":
                        new = sim.first_user[s] > P - 25 * HOUR
                    else:
                        new = sim.first_any[s] > P - 24 * HOUR
                    if new:
                        per[s] += d
                top3 = sum(sorted(per.values(), reverse=True)[:3])
                shares[(mode, Wh)] = (top3 / tot) if tot else 0.0
        M["conc"].append({"p": p, "shares": shares})
    return M


def fires(M):
    strict, lenient = set(), set()
    for s, m in M["vel"].items():
        if m[57][0] >= 50 or m[57][2] >= 20200:
            strict.add(("gift_velocity", s))
        if m[63][0] >= 49 or m[63][1] >= 49 or m[63][2] >= 19800:
            lenient.add(("gift_velocity", s))
    for s, m in M["probe"].items():
        if m[57][0] >= 20:
            strict.add(("rejection_probe", s))
        if m[63][0] >= 19 or m[63][1] >= 19:
            lenient.add(("rejection_probe", s))
    for u, m in M["burn"].items():
        if m["strict"]:
            strict.add(("recharge_burn", u))
        if m["lenient"]:
            lenient.add(("recharge_burn", u))
    for pair, m in M["loop"].items():
        if m[23] >= 1010:
            strict.add(("gift_loop", pair))
        if m[25] >= 990:
            lenient.add(("gift_loop", pair))
    for x in M["conc"]:
        p, sh = x["p"], x["shares"]
        if p["acc"] and p["d"] >= 10100 and all(sh[("strict", W)] >= 0.82 for W in (23, 24, 25)):
            strict.add(("payout_concentration", p["c"]))
        if p["d"] >= 9900 and any(sh[("lenient", W)] >= 0.79 for W in (23, 24, 25)):
            lenient.add(("payout_concentration", p["c"]))
    return strict, lenient


def subj_accounts(subj):
    return set(subj) if isinstance(subj, frozenset) else {subj}


# ----------------------------------------------------------------------------
# generation helpers
# ----------------------------------------------------------------------------
def times(rng, n, start, end, min_gap):
    """n sorted integer timestamps in [start, end] with pairwise gap >= min_gap."""
    start, end = int(start), int(end)
    slack = (end - start) - (n - 1) * min_gap
    if n <= 0:
        return []
    if slack < 0:
        raise Retry("times")
    pts = sorted(rng.randint(0, slack) for _ in range(n))
    return [start + p + i * min_gap for i, p in enumerate(pts)]


def decompose(rng, total, max_gift=5000, allowed=None, max_qty=10, big_bias=0.6):
    """list of (gift_id, qty) whose coin sum is exactly `total`, each <= max_gift coins."""
    allowed = allowed or SMALL_GIFTS
    out, rem = [], total
    while rem > 0:
        lim = min(rem, max_gift)
        cands = [g for g in allowed if PRICES[g] <= lim]
        if not cands:
            cands = [g for g in ("perfume", "finger_heart", "rose") if PRICES[g] <= lim]
        big = max(cands, key=PRICES.get)
        g = big if rng.random() < big_bias else rng.choice(cands)
        maxq = max(1, min(max_qty, lim // PRICES[g]))
        q = rng.randint(max(1, maxq // 2) if g == big else 1, maxq)
        out.append((g, q))
        rem -= PRICES[g] * q
    rng.shuffle(out)
    return out


def coins_of(parts):
    return sum(PRICES[g] * q for g, q in parts)


def assign_creators(rng, parts, creators, shares):
    """assign gifts to creators approximating target shares (largest deficit first)."""
    total = coins_of(parts)
    target = [total * s for s in shares]
    cur = [0] * len(creators)
    out = []
    for g, q in sorted(parts, key=lambda x: -PRICES[x[0]] * x[1]):
        k = max(range(len(creators)), key=lambda i: target[i] - cur[i])
        cur[k] += PRICES[g] * q
        out.append((creators[k], g, q))
    rng.shuffle(out)
    return out


def single_gift_for(rng, lo, hi):
    """one (gid, q) with coins in [lo, hi], qty <= 30."""
    opts = []
    for g, qmax in (("galaxy", 15), ("money_gun", 30), ("confetti", 30)):
        qlo = -(-lo // PRICES[g])
        qhi = min(qmax, hi // PRICES[g])
        if qlo <= qhi:
            opts.append((g, qlo, qhi))
    if not opts:
        raise Retry("single_gift_for")
    g, qlo, qhi = rng.choice(opts)
    return g, rng.randint(qlo, qhi)


def T_in(rng, lo=HOUR, hi=HOUR):
    return rng.randint(WSTART + lo, WEND - hi)


def small_gift(rng, maxc=500):
    while True:
        g = rng.choice(["rose", "finger_heart", "perfume", "confetti", "money_gun"])
        q = rng.randint(1, 3)
        if PRICES[g] * q <= maxc:
            return g, q


# ----------------------------------------------------------------------------
# background traffic
# ----------------------------------------------------------------------------
def pick_bg_gift(rng, whale):
    if whale:
        g = rng.choices(["rose", "finger_heart", "perfume", "confetti", "money_gun", "galaxy"],
                        [15, 15, 20, 25, 15, 10])[0]
        q = {"rose": rng.randint(1, 10), "finger_heart": rng.randint(1, 5), "perfume": rng.randint(1, 5),
             "confetti": rng.randint(1, 5), "money_gun": rng.randint(1, 3), "galaxy": rng.randint(1, 5)}[g]
    else:
        g = rng.choices(["rose", "finger_heart", "perfume", "confetti", "money_gun", "galaxy"],
                        [40, 25, 17, 11, 5, 2])[0]
        q = {"rose": rng.choices([1, rng.randint(2, 5), 10], [60, 30, 10])[0],
             "finger_heart": rng.randint(1, 3), "perfume": rng.randint(1, 3),
             "confetti": rng.randint(1, 2), "money_gun": 1, "galaxy": 1}[g]
    return g, q


def gen_background(rng, ids, NV=1700, NC=140):
    E = Emitter(ids, rng)
    creators = [ids.acct() for _ in range(NC)]
    cw = [1.0 / (i + 1) ** 0.9 for i in range(NC)]
    viewers = [ids.acct() for _ in range(NV)]
    for v in viewers:
        whale = rng.random() < 0.05
        t_first = WSTART - rng.randint(2 * DAY + HOUR, 14 * DAY)
        bal = rng.choice(PACKS[4:] if whale else PACKS[1:5])
        E.recharge(t_first, v, bal)
        if rng.random() < 0.4:
            c2 = rng.choice(PACKS)
            E.recharge(rng.randint(t_first + HOUR, WSTART - DAY), v, c2)
            bal += c2
        nsess = rng.choices([1, 2, 3, 4, 5, 6], [35, 28, 17, 10, 6, 4])[0] + (2 if whale else 0)
        starts = sorted(rng.randint(WSTART, WEND - 50 * MIN) for _ in range(nsess))
        fav = rng.choices(creators, cw, k=3)
        gap_mean = rng.uniform(20, 90) * SEC if whale else rng.uniform(40, 220) * SEC
        recent = deque()
        dayspend = defaultdict(int)
        last_end = -10 ** 15
        last_gift = -10 ** 15
        last_reject = -10 ** 15
        for st in starts:
            st = max(st, last_end + 10 * MIN)
            end = min(st + rng.randint(3 * MIN, 45 * MIN), WEND - MIN)
            c = rng.choice(fav) if rng.random() < 0.85 else rng.choices(creators, cw)[0]
            t = st
            while True:
                t += max(6 * SEC, int(rng.expovariate(1.0 / gap_mean)))
                if t > end:
                    break
                g, q = pick_bg_gift(rng, whale)
                cost = PRICES[g] * q
                while recent and recent[0][0] < t - 65 * SEC:
                    recent.popleft()
                if (len(recent) >= 12 or sum(x[2] for x in recent) + q > 30
                        or sum(x[1] for x in recent) + cost > 8000
                        or dayspend[t // DAY] + cost > 120000):
                    continue
                if bal < cost:
                    if rng.random() < 0.02 and t - last_reject > HOUR and q <= 5:
                        E.gift(t, v, c, g, q)  # will be rejected (insufficient coins)
                        last_reject = t
                        last_gift = t
                        continue
                    need = cost - bal
                    pk = min(p for p in PACKS if p >= need) if need <= PACKS[-1] else need
                    if rng.random() < 0.3:
                        pk = rng.choice([p for p in PACKS if p >= pk] or [pk])
                    hi_gap = min(90 * SEC, t - last_gift - SEC)
                    rt = t - rng.randint(3 * SEC, max(3 * SEC, hi_gap))
                    E.recharge(rt, v, pk)
                    bal += pk
                bal -= cost
                dayspend[t // DAY] += cost
                E.gift(t, v, c, g, q)
                recent.append((t, cost, q))
                last_gift = t
            last_end = end
    # a few creators also gift other creators, tiny amounts (shared namespace)
    for c in rng.sample(creators, 30):
        E.recharge(WSTART - rng.randint(2 * DAY + HOUR, 14 * DAY), c, rng.choice([700, 1400, 3500]))
        for tgt in rng.sample([x for x in creators if x != c], rng.randint(1, 3)):
            for t in times(rng, rng.randint(1, 3), WSTART + HOUR, WEND - HOUR, 10 * MIN):
                E.gift(t, c, tgt, rng.choice(["rose", "finger_heart", "perfume"]), rng.randint(1, 3))

    # a few creator pairs support each other with tiny gifts both ways (<= ~300 coins each way)
    for _ in range(10):
        a, b = rng.sample(creators, 2)
        for s, r in ((a, b), (b, a)):
            E.recharge(WSTART - rng.randint(2 * DAY + HOUR, 14 * DAY), s, rng.choice([700, 1400]))
            for t in times(rng, rng.randint(1, 3), WSTART + HOUR, WEND - HOUR, 10 * MIN):
                E.gift(t, s, r, rng.choice(["rose", "finger_heart", "perfume", "confetti"]), 1)
    # payouts, from a simulation of the background so far
    sim = simulate(E.events)
    totals = {c: sum(d for _, _, d in sim.credits.get(c, [])) for c in creators}
    big = set(sorted(creators, key=lambda c: -totals[c])[:6])
    for c in creators:
        cl = sorted(sim.credits.get(c, []))
        if not cl:
            continue
        paid = 0
        req_t = sorted(rng.randint(WSTART + 4 * HOUR, WEND - 4 * HOUR)
                       for _ in range(rng.choice([0, 1, 1, 2, 3])))
        for t in req_t:
            av = sum(d for ts, _, d in cl if ts < t - SEC) - paid
            r = rng.random()
            if r < 0.06:
                E.payout(t, c, rng.randint(100, 1999))  # below minimum -> rejected
            elif av >= 2000 and r < 0.94:
                d = rng.randint(2000, min(9999, av))
                E.payout(t, c, d)
                paid += d
            elif av + 1 <= 9999:
                E.payout(t, c, rng.randint(max(2000, av + 1), 9999))  # more than available -> rejected
        if c in big:
            t = rng.randint(WEND - 3 * HOUR, WEND - 10 * MIN)
            av = sum(d for ts, _, d in cl if ts < t - SEC) - paid
            if av >= 11000:
                E.payout(t, c, rng.randint(10500, av))  # large payout funded by many old viewers
    # spend limits (kept non-binding: >= 2x the user's max daily spend, or null)
    maxday = defaultdict(int)
    for (u, _day), sp in sim.dayspend.items():
        maxday[u] = max(maxday[u], sp)
    for v in rng.sample(viewers, 90):
        lim = None if rng.random() < 0.35 else min(200000, max(2 * maxday[v], 1000) + rng.randint(0, 50) * 1000)
        E.limit(rng.randint(WSTART, WEND - MIN), v, lim)
    return E


# ----------------------------------------------------------------------------
# instance builders.  Each returns (Emitter, subject_id, subject_type)
# ----------------------------------------------------------------------------
def old_recharge(E, rng, u, before, coins, lo=30 * HOUR, hi=6 * DAY):
    E.recharge(before - rng.randint(lo, hi), u, coins)


# ---- gift_velocity ---------------------------------------------------------
def burst_count(rng, T, cs, n=None, span_max=55 * SEC):
    n = n or rng.randint(50, 90)
    span = rng.randint(max(15 * SEC, n * 300), span_max)
    c = rng.choice(cs)
    return [(t, c, rng.choice(["rose", "rose", "finger_heart", "perfume"]), 1)
            for t in times(rng, n, T, T + span, 250)]


def burst_coins(rng, T, cs):
    target = rng.randint(205, 600) * 100
    parts = decompose(rng, target, 15000, ["galaxy", "money_gun", "confetti"], 15, 0.8)
    span = rng.randint(max(5 * SEC, len(parts) * 800), 50 * SEC)
    c = rng.choice(cs)
    return [(t, c, g, q) for t, (g, q) in zip(times(rng, len(parts), T, T + span, 500), parts)]


def normal_gifts(rng, n, start, end, cs, min_gap=20 * SEC, maxc=500):
    return [(t, rng.choice(cs)) + small_gift(rng, maxc) for t in times(rng, n, start, end, min_gap)]


def fund_old(E, rng, u, gl, extra_lo=500, extra_hi=20000, exact=False):
    need = sum(PRICES.get(g, 0) * q for _, _, g, q in gl)
    first_ts = min(x[0] for x in gl)
    coins = need if exact else need + rng.randint(extra_lo, extra_hi)
    if not exact and rng.random() < 0.4 and coins > 1000:
        a = rng.randint(coins // 4, coins // 2)
        old_recharge(E, rng, u, first_ts, coins - a, 30 * HOUR, 6 * DAY)
        E.recharge(first_ts - rng.randint(HOUR, 20 * HOUR), u, a)
    else:
        old_recharge(E, rng, u, first_ts, coins, 30 * HOUR, 6 * DAY)


def emit_gifts(E, s, gl):
    for t, c, g, q in gl:
        E.gift(t, s, c, g, q)


def b_velocity(rng, ids, label, var):
    E = Emitter(ids, rng)
    s = ids.acct()
    cs = [ids.acct() for _ in range(rng.randint(1, 3))]
    T = T_in(rng, HOUR, HOUR)
    gl = []
    if label == "fraud":
        if var == "count":
            gl = burst_count(rng, T, cs)
        elif var == "coins":
            gl = burst_coins(rng, T, cs)
        elif var == "single":
            g, q = rng.choice([("lion", 1), ("universe", 1), ("galaxy", rng.randint(21, 40)),
                               ("money_gun", rng.randint(42, 60))])
            gl = [(T, rng.choice(cs), g, q)]
            gl += normal_gifts(rng, rng.randint(0, 6), T + 3 * MIN, T + 25 * MIN, cs)
        elif var == "prelude":
            gl = normal_gifts(rng, rng.randint(10, 30), T - rng.randint(10, 25) * MIN, T - 2 * MIN, cs)
            gl += burst_count(rng, T, cs) if rng.random() < 0.5 else burst_coins(rng, T, cs)
        elif var == "count_coins":
            n = rng.randint(50, 70)
            span = rng.randint(max(20 * SEC, n * 300), 55 * SEC)
            c = rng.choice(cs)
            gl = [(t, c, "confetti", rng.randint(3, 6)) for t in times(rng, n, T, T + span, 250)]
        fund_old(E, rng, s, gl)
    else:
        exact = False
        if var == "count":
            n = rng.randint(38, 48)
            gl = burst_count(rng, T, cs, n=n, span_max=58 * SEC)
        elif var == "coins":
            target = rng.randint(140, 197) * 100
            parts = decompose(rng, target, 10000, ["galaxy", "money_gun", "confetti"], 10, 0.7)
            span = rng.randint(max(8 * SEC, len(parts) * 800), 58 * SEC)
            c = rng.choice(cs)
            gl = [(t, c, g, q) for t, (g, q) in zip(times(rng, len(parts), T, T + span, 500), parts)]
        elif var == "spread_count":
            n = rng.randint(55, 110)
            t = T
            c = rng.choice(cs)
            for _ in range(n):
                gl.append((t, c, rng.choice(["rose", "finger_heart", "perfume"]), 1))
                t += rng.randint(1350, 1900)
        elif var == "spread_coins":
            target = rng.randint(250, 450) * 100
            parts = decompose(rng, target, 6000, ["galaxy", "money_gun", "confetti"], 6, 0.8)
            t = T
            c = rng.choice(cs)
            for g, q in parts:
                gl.append((t, c, g, q))
                t += rng.randint(22 * SEC, 40 * SEC)
        elif var == "rejected_tail":
            n_acc = rng.randint(38, 46)
            n_att = n_acc + rng.randint(6, 14)
            span = rng.randint(max(25 * SEC, n_att * 300), 58 * SEC)
            c = rng.choice(cs)
            gl = [(t, c, "finger_heart", 1) for t in times(rng, n_att, T, T + span, 250)]
            # balance covers exactly n_acc finger hearts -> the tail is rejected
            old_recharge(E, rng, s, T, 5 * n_acc, 30 * HOUR, 6 * DAY)
            exact = True
        if not exact:
            fund_old(E, rng, s, gl)
    emit_gifts(E, s, gl)
    return E, s, "user"


# ---- recharge_burn ---------------------------------------------------------
def spend_plan(rng, S, creators, shares, start, end, max_gift=5000):
    parts = decompose(rng, S, max_gift, SMALL_GIFTS, 10, 0.7)
    asg = assign_creators(rng, parts, creators, shares)
    n = len(asg)
    mg = max(4 * SEC, int((end - start) / (n * 1.6))) if n > 1 else 4 * SEC
    return [(t, c, g, q) for t, (c, g, q) in zip(times(rng, n, start, end, mg), asg)]


def rand_shares(rng, k, lo=0.2):
    while True:
        w = [rng.random() for _ in range(k)]
        tot = sum(w)
        sh = [x / tot for x in w]
        if min(sh) >= lo:
            return sh


def burn_spend(rng, S, cs, sh, start, min_dur, cap_end, rate=6000):
    """spend S coins from `start`, over at least min_dur and at ~rate coins/min at most."""
    end = start + max(min_dur, int(S * MIN / rate))
    if end > cap_end:
        raise Retry("burn duration")
    return spend_plan(rng, S, cs, sh, start, end)


def b_burn(rng, ids, label, var):
    E = Emitter(ids, rng)
    u = ids.acct()
    T0 = T_in(rng, 30 * MIN, 2 * HOUR)
    gl = []
    st = T0 + rng.randint(20, 90) * SEC
    if label == "fraud":
        if var in ("one", "two_creators"):
            R = int(math.exp(rng.uniform(math.log(5600), math.log(45000)))) // 100 * 100
            S = min(R, int(R * rng.uniform(0.925, 1.0)) // 10 * 10)
            k = 1 if var == "one" else 2
            cs = [ids.acct() for _ in range(k)]
            sh = [1.0] if k == 1 else [rng.uniform(0.3, 0.8)]
            if k == 2:
                sh.append(1 - sh[0])
            E.recharge(T0, u, R)
            gl = burn_spend(rng, S, cs, sh, st, rng.randint(100, 420) * SEC, T0 + 9 * MIN)
        elif var == "two_recharges":
            R1 = rng.randint(30, 150) * 100
            R2 = rng.randint(30, 200) * 100
            t2 = T0 + rng.randint(90, 200) * SEC
            E.recharge(T0, u, R1)
            E.recharge(t2, u, R2)
            S = min(R1 + R2, int((R1 + R2) * rng.uniform(0.93, 1.0)) // 10 * 10)
            S1 = int(R1 * rng.uniform(0.5, 0.9)) // 10 * 10
            k = rng.randint(1, 2)
            cs = [ids.acct() for _ in range(k)]
            sh = [1.0] if k == 1 else [0.5, 0.5]
            gl = burn_spend(rng, S1, cs, sh, T0 + 20 * SEC, 30 * SEC, t2 - 10 * SEC)
            gl += burn_spend(rng, S - S1, cs, sh, t2 + 10 * SEC, rng.randint(60, 300) * SEC, T0 + 9 * MIN)
        elif var == "fast":
            q = rng.randint(6, 19)
            R = q * 1000 + rng.choice([0, 0, 100, 300, 450])
            c = ids.acct()
            E.recharge(T0, u, R)
            t = T0 + rng.randint(20, 180) * SEC
            gl = [(t, c, "galaxy", q)]
            rest = R - q * 1000
            if rest >= 100 and rng.random() < 0.5:
                gl.append((t + rng.randint(20, 90) * SEC, c, "confetti", rest // 100))
    else:
        if var == "under_frac":
            R = rng.randint(80, 400) * 100
            S = int(R * rng.uniform(0.70, 0.87)) // 10 * 10
            k = rng.randint(1, 2)
            cs = [ids.acct() for _ in range(k)]
            sh = [1.0] if k == 1 else [0.5, 0.5]
            E.recharge(T0, u, R)
            gl = burn_spend(rng, S, cs, sh, st, rng.randint(100, 420) * SEC, T0 + 9 * MIN + 30 * SEC)
        elif var == "three_creators":
            R = rng.randint(60, 400) * 100
            S = min(R, int(R * rng.uniform(0.93, 1.0)) // 10 * 10)
            k = rng.randint(3, 4)
            cs = [ids.acct() for _ in range(k)]
            while True:
                sh = rand_shares(rng, k, 0.22 if k == 3 else 0.15)
                if sum(sorted(sh, reverse=True)[:2]) <= 0.76:
                    break
            E.recharge(T0, u, R)
            gl = burn_spend(rng, S, cs, sh, st, rng.randint(100, 420) * SEC, T0 + 9 * MIN + 30 * SEC)
        elif var == "small":
            R = rng.randint(20, 49) * 100
            S = min(R, int(R * rng.uniform(0.95, 1.0)) // 10 * 10, 4850)
            cs = [ids.acct() for _ in range(rng.randint(1, 2))]
            sh = [1.0] if len(cs) == 1 else [0.6, 0.4]
            E.recharge(T0, u, R)
            gl = burn_spend(rng, S, cs, sh, st, rng.randint(60, 420) * SEC, T0 + 9 * MIN)
        elif var == "slow":
            R = rng.randint(60, 400) * 100
            S = min(R, int(R * rng.uniform(0.93, 1.0)) // 10 * 10)
            S1 = int(R * rng.uniform(0.5, 0.8)) // 10 * 10
            cs = [ids.acct() for _ in range(rng.randint(1, 2))]
            sh = [1.0] if len(cs) == 1 else [0.5, 0.5]
            E.recharge(T0, u, R)
            gl = burn_spend(rng, S1, cs, sh, st, rng.randint(100, 420) * SEC, T0 + 9 * MIN + 30 * SEC)
            t2 = T0 + rng.randint(14, 40) * MIN
            gl += burn_spend(rng, S - S1, cs, sh, t2, rng.randint(3, 10) * MIN, t2 + 30 * MIN)
        elif var == "old_account":
            E.recharge(T0 - rng.randint(2 * DAY, 6 * DAY), u, rng.randint(5, 50) * 100)
            R2 = rng.randint(60, 300) * 100
            S = min(R2, int(R2 * rng.uniform(0.95, 1.0)) // 10 * 10)
            cs = [ids.acct()]
            E.recharge(T0, u, R2)
            gl = burn_spend(rng, S, cs, [1.0], st, rng.randint(100, 420) * SEC, T0 + 9 * MIN)
    emit_gifts(E, u, gl)
    return E, u, "user"


# ---- gift_loop -------------------------------------------------------------
def fund_accounts(E, rng, flows, extra_max=3000):
    """flows: (ts, sender, receiver, gid, q); each sender gets a recharge covering its
    accepted outflow, at least 15 min before its first gift (or days before)."""
    by = defaultdict(list)
    for f in flows:
        by[f[1]].append(f)
    for s, fl in by.items():
        need = sum(PRICES.get(f[3], 0) * f[4] for f in fl)
        first = min(f[0] for f in fl)
        if rng.random() < 0.5:
            rt = first - rng.randint(30 * HOUR, 5 * DAY)
        else:
            rt = first - rng.randint(15 * MIN, 6 * HOUR)
        E.recharge(rt, s, need + rng.randint(0, extra_max))


def flows_for(rng, s, r, total, start, end, max_gift, allowed, max_qty, min_gap):
    parts = decompose(rng, total, max_gift, allowed, max_qty, 0.6)
    return [(t, s, r, g, q) for t, (g, q) in zip(times(rng, len(parts), start, end, min_gap), parts)]


def b_loop(rng, ids, label, var):
    E = Emitter(ids, rng)
    A, B = ids.acct(), ids.acct()
    flows = []
    funded = True
    if label == "fraud":
        T = rng.randint(WSTART + 30 * MIN, WEND - 22 * HOUR)
        if var == "big_each":
            g1 = single_gift_for(rng, 1010, 15000)
            g2 = single_gift_for(rng, 1010, 15000)
            flows = [(T, A, B) + g1, (T + rng.randint(2 * MIN, 20 * HOUR), B, A) + g2]
        elif var == "many_small":
            span = rng.randint(1, 12) * HOUR
            for s, r in ((A, B), (B, A)):
                tot = rng.randint(51, 300) * 20
                flows += flows_for(rng, s, r, tot, T, T + span, 300,
                                   ["money_gun", "confetti", "perfume"], 5, 30 * SEC)
        elif var == "asym":
            x = rng.randint(50, 150) * 100
            flows = flows_for(rng, A, B, x, T, T + rng.randint(1, 20) * MIN, 8000,
                              ["galaxy", "money_gun", "confetti"], 8, 70 * SEC)
            t0 = max(f[0] for f in flows) + rng.randint(5 * MIN, 18 * HOUR)
            y = rng.randint(1050, 1800) // 10 * 10
            flows += flows_for(rng, B, A, y, t0, t0 + rng.randint(1, 30) * MIN, 1000,
                               ["galaxy", "money_gun", "confetti", "perfume"], 5, 20 * SEC)
        elif var == "chain":
            m = rng.randint(6, 12)
            ts = times(rng, m, T, T + rng.randint(4, 20) * HOUR, 10 * MIN)
            for i, t in enumerate(ts):
                s, r = (A, B) if i % 2 == 0 else (B, A)
                flows.append((t, s, r) + single_gift_for(rng, 200, 1500) if rng.random() < 0.5
                             else (t, s, r, "confetti", rng.randint(2, 15)))
    else:
        T = rng.randint(WSTART + 30 * MIN, WEND - 22 * HOUR)
        if var == "short_back":
            x = rng.randint(110, 800) * 10
            flows = flows_for(rng, A, B, x, T, T + rng.randint(1, 60) * MIN, 5000,
                              ["galaxy", "money_gun", "confetti", "perfume"], 8, 30 * SEC)
            t0 = T + rng.randint(1, 18) * HOUR
            y = rng.randint(70, 98) * 10
            flows += flows_for(rng, B, A, y, t0, t0 + rng.randint(1, 60) * MIN, 500,
                               ["confetti", "perfume", "finger_heart"], 5, 20 * SEC)
        elif var == "late_back":
            T = rng.randint(WSTART + 30 * MIN, WSTART + 17 * HOUR)
            x = rng.randint(110, 600) * 10
            y = rng.randint(110, 600) * 10
            flows = flows_for(rng, A, B, x, T, T + HOUR, 5000, ["galaxy", "money_gun", "confetti", "perfume"],
                              8, 30 * SEC)
            t1 = T + 27 * HOUR + rng.randint(0, 60) * MIN
            flows += flows_for(rng, B, A, y, t1, t1 + HOUR, 5000, ["galaxy", "money_gun", "confetti", "perfume"],
                               8, 30 * SEC)
        elif var == "triangle":
            C = ids.acct()
            t = T
            for s, r in ((A, B), (B, C), (C, A)):
                x = rng.randint(110, 800) * 10
                flows += flows_for(rng, s, r, x, t, t + rng.randint(1, 60) * MIN, 5000,
                                   ["galaxy", "money_gun", "confetti", "perfume"], 8, 30 * SEC)
                t += rng.randint(1, 8) * HOUR
        elif var == "rejected_back":
            x = rng.randint(150, 1000) * 10
            flows = flows_for(rng, A, B, x, T, T + rng.randint(1, 30) * MIN, 5000,
                              ["galaxy", "money_gun", "confetti"], 8, 30 * SEC)
            fund_accounts(E, rng, flows)
            for f in flows:
                E.gift(f[0], f[1], f[2], f[3], f[4])
            rb = rng.randint(10, 90) * 10
            t0 = T + rng.randint(1, 10) * HOUR
            E.recharge(t0 - rng.randint(20, 120) * MIN, B, rb)
            tt = t0
            for _ in range(rng.randint(1, 3)):
                E.gift(tt, B, A, "galaxy", rng.randint(2, 5))  # rejected: insufficient coins
                tt += rng.randint(10, 60) * SEC
            back = flows_for(rng, B, A, rb - rng.randint(0, min(rb - 10, 80)) // 10 * 10, tt + 30 * SEC,
                             tt + 20 * MIN, 500, ["confetti", "perfume"], 5, 20 * SEC)
            for f in back:
                E.gift(f[0], f[1], f[2], f[3], f[4])
            funded = False
        elif var == "split_across_days":
            T = rng.randint(WSTART + 30 * MIN, WSTART + 18 * HOUR)
            a1 = rng.randint(40, 90) * 10
            a2 = rng.randint(max(30, 110 - a1 // 10), 90) * 10
            y = rng.randint(110, 400) * 10
            flows = flows_for(rng, A, B, a1, T, T + 10 * MIN, 500, ["money_gun", "confetti", "perfume"],
                              5, 30 * SEC)
            t1 = T + rng.randint(1, 20) * HOUR
            flows += flows_for(rng, B, A, y, t1, t1 + 30 * MIN, 5000, ["galaxy", "money_gun", "confetti"],
                               8, 30 * SEC)
            t2 = T + 26 * HOUR + rng.randint(0, 60) * MIN
            flows += flows_for(rng, A, B, a2, t2, t2 + 10 * MIN, 500, ["money_gun", "confetti", "perfume"],
                               5, 30 * SEC)
    if funded:
        fund_accounts(E, rng, flows)
        for f in flows:
            E.gift(f[0], f[1], f[2], f[3], f[4])
    return E, A, "user"


# ---- payout_concentration --------------------------------------------------
def conc_sender(E, rng, s, C, coins, first_ts, g_lo, g_hi, early_gift=False):
    """recharge at first_ts, then spread gifts to creator C inside [g_lo, g_hi].
    early_gift: also one small gift shortly after the (old) first recharge, so the
    sender is old under a 'first gift' reading as well as the 'first event' reading."""
    parts = decompose(rng, coins, 5000, SMALL_GIFTS, 10, 0.7)
    n = len(parts)
    span_need = (n - 1) * 25 * SEC
    if g_hi - g_lo < span_need:
        raise Retry("conc span")
    g_start = rng.randint(g_lo, g_hi - span_need)
    g_end = rng.randint(g_start + span_need, g_hi)
    extra = 0
    if early_gift:
        g, q = small_gift(rng, 300)
        extra = PRICES[g] * q
        E.gift(first_ts + rng.randint(20, 60) * MIN, s, C, g, q)
    E.recharge(first_ts, s, coins + extra + rng.randint(0, 20) * 100)
    for t, (g, q) in zip(times(rng, n, g_start, g_end, 25 * SEC), parts):
        E.gift(t, s, C, g, q)


def b_conc(rng, ids, label, var):
    E = Emitter(ids, rng)
    C = ids.acct()
    P = rng.randint(WSTART + 23 * HOUR, WEND - 20 * MIN)
    # senders: list of (kind, weight)
    small_payout_first = False
    if label == "fraud":
        TD = rng.randint(10800, 60000)
        if var == "one":
            groups = [("new", 1.0)]
        elif var == "two":
            w = rng.uniform(0.3, 0.8)
            groups = [("new", w), ("new", 1 - w)]
        elif var == "three":
            groups = [("new", x) for x in rand_shares(rng, 3, 0.1)]
        elif var == "with_old":
            k = rng.randint(1, 3)
            m = rng.randint(2, 5)
            snew = rng.uniform(0.86, 0.95)
            groups = [("new", snew * x) for x in rand_shares(rng, k, 0.15)] if k > 1 else [("new", snew)]
            groups += [("old", (1 - snew) * x) for x in rand_shares(rng, m, 0.05)]
        small_payout_first = var in ("one", "two", "three") and rng.random() < 0.2
        if small_payout_first:
            TD += 8000
    else:
        TD = rng.randint(11000, 50000)
        if var == "small_payout":
            TD = rng.randint(9000, 30000)
            k = rng.randint(1, 3)
            groups = [("new", x) for x in rand_shares(rng, k, 0.1)] if k > 1 else [("new", 1.0)]
        elif var == "many_senders":
            k = rng.randint(4, 6)
            while True:
                sh = rand_shares(rng, k, 0.05)
                if sum(sorted(sh, reverse=True)[:3]) <= 0.76:
                    break
            groups = [("new", x) for x in sh]
        elif var == "old_senders":
            k = rng.randint(1, 3)
            groups = [("aged", x) for x in rand_shares(rng, k, 0.1)] if k > 1 else [("aged", 1.0)]
        elif var == "diluted":
            k = rng.randint(1, 3)
            m = rng.randint(3, 8)
            snew = rng.uniform(0.50, 0.76)
            groups = [("new", snew * x) for x in rand_shares(rng, k, 0.15)] if k > 1 else [("new", snew)]
            groups += [("old", (1 - snew) * x) for x in rand_shares(rng, m, 0.04)]
    for kind, w in groups:
        s = ids.acct()
        coins = max(100, int(round(2 * TD * w / 100.0)) * 100)
        if kind == "new":
            first = P - rng.randint(90, 21 * 60) * MIN
            g_lo = first + rng.randint(15, 60) * MIN
        elif kind == "aged":
            first = P - rng.randint(27 * 60, 60 * 60) * MIN
            g_lo = P - rng.randint(4 * 60, 22 * 60) * MIN
        else:
            first = P - rng.randint(2 * DAY, 5 * DAY)
            g_lo = P - rng.randint(3 * 60, 22 * 60) * MIN
        conc_sender(E, rng, s, C, coins, first, g_lo, P - 2 * MIN,
                    early_gift=(kind != "new" and rng.random() < 0.5))
    # decide payout from simulated credits
    sim = simulate(E.events)
    cl = sorted(sim.credits[C])
    total = sum(d for _, _, d in cl)
    paid = 0
    if small_payout_first:
        tp = P - rng.randint(60, 180) * MIN
        av = sum(d for t, _, d in cl if t < tp - SEC)
        if av >= 2500:
            paid = rng.randint(2000, min(6000, av))
            E.payout(tp, C, paid)
    av = total - paid
    if label == "near_miss" and var == "small_payout":
        if av < 6000:
            raise Retry("avail")
        D = rng.randint(6000, min(9700, av))
    else:
        if av < 10300:
            raise Retry("avail")
        D = rng.randint(10300, av) if rng.random() < 0.6 else av
    E.payout(P, C, D)
    return E, C, "creator"


# ---- rejection_probe -------------------------------------------------------
def b_probe(rng, ids, label, var):
    E = Emitter(ids, rng)
    s = ids.acct()
    cs = [ids.acct() for _ in range(rng.randint(1, 2))]
    T = T_in(rng, 4 * HOUR, HOUR)
    bal = 0

    def fund(b, lo=2 * MIN, hi=5 * HOUR):
        nonlocal bal
        if b > 0:
            E.recharge(T - rng.randint(lo, hi), s, b)
        bal = b

    def attempt(t, reason, qty1):
        nonlocal bal
        if reason == "insufficient":
            opts = [("universe", 1), ("lion", 1)]
            if bal < 1000:
                opts.append(("galaxy", 1 if qty1 else rng.randint(1, 5)))
            if bal < 500:
                opts.append(("money_gun", 1 if qty1 else rng.randint(1, 3)))
            g, q = rng.choice(opts)
            E.gift(t, s, rng.choice(cs), g, q)
        elif reason == "unknown":
            E.gift(t, s, rng.choice(cs), rng.choice(BOGUS_GIFTS), 1 if qty1 else rng.randint(1, 3))
        elif reason == "self":
            E.gift(t, s, s, rng.choice(["rose", "perfume", "finger_heart"]), 1)

    if label == "fraud":
        if var == "daily_cap":
            day = rng.choice([W0, W0 + DAY])
            st = day + rng.randint(3 * 60, 12 * 60) * MIN
            if st < WSTART:
                st = WSTART + 30 * MIN
            E.recharge(st - rng.randint(2 * DAY, 5 * DAY), s, rng.randint(250, 400) * 1000)
            rem = rng.randint(6, 40) * 100
            parts = decompose(rng, DAILY_CAP - rem, 5000, SMALL_GIFTS, 10, 0.9)
            cs2 = [ids.acct() for _ in range(rng.randint(2, 4))]
            ts = times(rng, len(parts), st, st + rng.randint(70, 120) * MIN, 45 * SEC)
            for t, (g, q) in zip(ts, parts):
                E.gift(t, s, rng.choice(cs2), g, q)
            tb = ts[-1] + rng.randint(30, 300) * SEC
            n = rng.randint(20, 28)
            for t in times(rng, n, tb, tb + rng.randint(max(10, n // 2), 50) * SEC, 300):
                g = rng.choice(["galaxy", "money_gun"])
                q = rem // PRICES[g] + rng.randint(1, 3)
                E.gift(t, s, rng.choice(cs2), g, q)
            if (tb + 60 * SEC) // DAY != st // DAY:
                raise Retry("day boundary")
            return E, s, "user"
        n = rng.randint(20, 40)
        span = rng.randint(max(8 * SEC, n * 250), 55 * SEC)
        tl = times(rng, n, T, T + span, 200)
        if var == "insufficient":
            fund(rng.choice([0, rng.randint(1, 40) * 10]))
            reasons = ["insufficient"] * n
        elif var == "unknown":
            fund(rng.randint(5, 30) * 100)
            reasons = ["unknown"] * n
        elif var == "self":
            fund(rng.randint(10, 50) * 100)
            reasons = ["self"] * n
        else:  # mixed
            fund(rng.randint(5, 30) * 10)
            reasons = [rng.choice(["insufficient", "unknown", "self"]) for _ in range(n)]
        for t, r in zip(tl, reasons):
            attempt(t, r, qty1=False)
        # a couple of accepted cheap gifts interleaved for realism
        if bal >= 10 and rng.random() < 0.5:
            for t in times(rng, rng.randint(1, 3), T - 5 * MIN, T + span, 5 * SEC):
                if all(abs(t - x) >= 100 for x in tl):
                    E.gift(t, s, cs[0], "rose", 1)
    else:
        def mixed():
            return rng.choice(["insufficient", "unknown", "self"])
        if var == "few":
            fund(rng.randint(0, 30) * 10)
            n = rng.randint(10, 18)
            kind = rng.choice(["insufficient", "unknown", "self", "mixed"])
            span = rng.randint(max(10 * SEC, n * 300), 58 * SEC)
            for t in times(rng, n, T, T + span, 200):
                attempt(t, mixed() if kind == "mixed" else kind, qty1=True)
        elif var == "spread":
            fund(rng.randint(0, 30) * 10)
            n = rng.randint(25, 45)
            kind = rng.choice(["insufficient", "unknown", "self", "mixed"])
            t = T
            for _ in range(n):
                attempt(t, mixed() if kind == "mixed" else kind, qty1=True)
                t += rng.randint(4600, 9000)
        elif var == "half_accepted":
            k_acc = rng.randint(12, 25)
            n_rej = rng.randint(10, 17)
            fund(20 * k_acc + rng.randint(0, 19))
            span = rng.randint(20 * SEC, 58 * SEC)
            c = cs[0]
            for t in times(rng, k_acc + n_rej, T, T + span, 300):
                E.gift(t, s, c, "perfume", 1)
        elif var == "two_bursts":
            fund(rng.randint(0, 30) * 10)
            n1 = rng.randint(10, 15)
            n2 = rng.randint(max(20 - n1, 8), 15)
            kind = rng.choice(["insufficient", "unknown", "self", "mixed"])
            t1 = times(rng, n1, T, T + rng.randint(10, 40) * SEC, 300)
            tb = t1[-1] + rng.randint(90, 300) * SEC
            t2 = times(rng, n2, tb, tb + rng.randint(10, 40) * SEC, 300)
            for t in t1 + t2:
                attempt(t, mixed() if kind == "mixed" else kind, qty1=True)
    return E, s, "user"


BUILDERS = {"gift_velocity": b_velocity, "recharge_burn": b_burn, "gift_loop": b_loop,
            "payout_concentration": b_conc, "rejection_probe": b_probe}

VARIANTS = {
    "gift_velocity": {"fraud": [("count", 8), ("coins", 6), ("single", 4), ("prelude", 4), ("count_coins", 3)],
                      "near_miss": [("count", 7), ("coins", 6), ("spread_count", 4), ("spread_coins", 4),
                                    ("rejected_tail", 4)]},
    "recharge_burn": {"fraud": [("one", 8), ("two_creators", 7), ("two_recharges", 5), ("fast", 5)],
                      "near_miss": [("under_frac", 7), ("three_creators", 6), ("small", 5), ("slow", 4),
                                    ("old_account", 3)]},
    "gift_loop": {"fraud": [("big_each", 8), ("many_small", 8), ("asym", 6), ("chain", 3)],
                  "near_miss": [("short_back", 7), ("late_back", 6), ("triangle", 6), ("rejected_back", 3),
                                ("split_across_days", 3)]},
    "payout_concentration": {"fraud": [("one", 8), ("two", 7), ("three", 6), ("with_old", 4)],
                             "near_miss": [("small_payout", 7), ("many_senders", 6), ("old_senders", 5),
                                           ("diluted", 7)]},
    "rejection_probe": {"fraud": [("insufficient", 8), ("unknown", 6), ("self", 5), ("mixed", 4),
                                  ("daily_cap", 2)],
                        "near_miss": [("few", 10), ("spread", 8), ("half_accepted", 4), ("two_bursts", 3)]},
}


def instance_ok(pattern, label, subject, events):
    for ev in events:
        validate_event(ev)
    sim = simulate(events)
    strict, lenient = fires(metrics(sim))
    if label == "fraud":
        own = [k for k in strict if k[0] == pattern and subject in subj_accounts(k[1])]
        if not own:
            return False, "own rule not strictly crossed"
        other = [k for k in lenient if k[0] != pattern]
        if other:
            return False, "crosses other rule %s" % (other,)
        return True, ""
    if lenient:
        return False, "near miss may fire %s" % (lenient,)
    return True, ""


def build(pattern, label, var, rng, ids):
    last = None
    for attempt in range(300):
        try:
            E, subj, stype = BUILDERS[pattern](rng, ids, label, var)
        except Retry as e:
            last = str(e)
            continue
        ok, why = instance_ok(pattern, label, subj, E.events)
        if ok:
            return E, subj, stype, attempt
        last = why
    raise RuntimeError("cannot build %s/%s/%s: %s" % (pattern, label, var, last))


# ----------------------------------------------------------------------------
def main():
    rng = random.Random(SEED)
    ids = IdGen(random.Random(SEED + 1))
    print("generating background ...")
    bg = gen_background(rng, ids)
    instances = []
    retries = Counter()
    for pattern in BUILDERS:
        for label in ("fraud", "near_miss"):
            vl = [v for v, n in VARIANTS[pattern][label] for _ in range(n)]
            assert len(vl) == N_PER, (pattern, label, len(vl))
            for var in vl:
                E, subj, stype, att = build(pattern, label, var, rng, ids)
                retries[(pattern, label)] += att
                instances.append({"pattern": pattern, "label": label, "variant": var, "subject": subj,
                                  "subject_type": stype, "events": E.events})

    # merge & sort
    allev = []
    for ev in bg.events:
        allev.append((ev["value"]["ts"], len(allev), ev, -1))
    for i, inst in enumerate(instances):
        for ev in inst["events"]:
            allev.append((ev["value"]["ts"], len(allev), ev, i))
    allev.sort(key=lambda x: (x[0], x[1]))
    events = [x[2] for x in allev]
    owner_of_event = [x[3] for x in allev]

    # ---------------- global checks ----------------
    print("validating contract ...")
    eids = set()
    for ev in events:
        validate_event(ev)
        assert ev["value"]["event_id"] not in eids
        eids.add(ev["value"]["event_id"])
    # account ownership must be disjoint between background and every instance
    acct_owner = {}

    def accts(v):
        return {v[k] for k in ("user_id", "sender_id", "creator_id") if k in v}
    for ev, own in zip(events, owner_of_event):
        for a in accts(ev["value"]):
            prev = acct_owner.setdefault(a, own)
            assert prev == own, ("account shared between instances", a, prev, own)
    # no exact ts tie between a recharge and a gift of the same sender (cross-topic ordering)
    rts = defaultdict(set)
    for ev in events:
        if ev["topic"] == "recharges":
            rts[ev["value"]["user_id"]].add(ev["value"]["ts"])
    ties = sum(1 for ev in events if ev["topic"] == "gifts" and ev["value"]["ts"] in rts[ev["value"]["sender_id"]])
    print("  recharge/gift exact-ts ties for same account:", ties)
    assert ties == 0

    print("simulating full set ...")
    sim = simulate(events)
    sim_l = simulate(events, honor_limits=True)
    assert [g["acc"] for g in sim.gifts] == [g["acc"] for g in sim_l.gifts], "spend-limits would bind"
    print("  spend-limit events are non-binding: OK")
    M = metrics(sim)
    strict, lenient = fires(M)

    problems = []
    # expected: each fraud instance's own key in strict
    for i, inst in enumerate(instances):
        if inst["label"] == "fraud" and not any(
            k[0] == inst["pattern"] and inst["subject"] in subj_accounts(k[1]) for k in strict
        ):
            problems.append("fraud instance %d (%s/%s) does not strictly fire" % (i, inst["pattern"], inst["variant"]))
    fired_by_owner = defaultdict(set)
    for k in lenient:
        owners = {acct_owner[a] for a in subj_accounts(k[1])}
        for o in owners:
            fired_by_owner[o].add(k[0])
    bg_fires = fired_by_owner.get(-1, set())
    if bg_fires:
        problems.append("background may fire: %s" % bg_fires)
    for o, rules in fired_by_owner.items():
        if o == -1:
            continue
        inst = instances[o]
        if inst["label"] == "near_miss":
            problems.append("near miss %d (%s/%s) may fire %s" % (o, inst["pattern"], inst["variant"], rules))
        elif rules != {inst["pattern"]}:
            problems.append("fraud %d (%s/%s) may fire %s" % (o, inst["pattern"], inst["variant"], rules))

    # ---------------- write ----------------
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "events.jsonl"), "w") as f:
        for ev in events:
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    with open(os.path.join(OUT, "labels.jsonl"), "w") as f, open(os.path.join(OUT, "labels_meta.jsonl"), "w") as fm:
        for i, inst in enumerate(instances):
            ids_ = [e["value"]["event_id"] for e in sorted(inst["events"], key=lambda e: e["value"]["ts"])]
            rec = {"label": inst["label"], "pattern": inst["pattern"], "subject_type": inst["subject_type"],
                   "subject_id": inst["subject"], "event_ids": ids_}
            f.write(json.dumps(rec) + "\n")
            fm.write(json.dumps({"index": i, "label": inst["label"], "pattern": inst["pattern"],
                                 "variant": inst["variant"], "subject_id": inst["subject"],
                                 "n_events": len(ids_),
                                 "t_first": inst["events"] and min(e["value"]["ts"] for e in inst["events"]),
                                 }) + "\n")

    # ---------------- report ----------------
    topic_cnt = Counter(ev["topic"] for ev in events)
    bg_cnt = Counter(ev["topic"] for ev, o in zip(events, owner_of_event) if o == -1)
    print("\n== events ==")
    print("  total %d  (background %d, injected %d)" % (len(events), sum(bg_cnt.values()),
                                                       len(events) - sum(bg_cnt.values())))
    print("  by topic:", dict(topic_cnt))
    print("  background by topic:", dict(bg_cnt))
    rej = Counter(g["reason"] for g in sim.gifts if not g["acc"])
    print("  gifts accepted %d, rejected %d %s" % (sum(1 for g in sim.gifts if g["acc"]),
                                                  sum(rej.values()), dict(rej)))
    bgrej = Counter()
    for g in sim.gifts:
        if not g["acc"] and acct_owner[g["s"]] == -1:
            bgrej[g["reason"]] += 1
    print("  background rejected gifts:", dict(bgrej))
    print("  payouts accepted %d / %d" % (sum(p["acc"] for p in sim.payouts), len(sim.payouts)))
    print("  ts range: %d .. %d" % (events[0]["value"]["ts"], events[-1]["value"]["ts"]))

    print("\n== instances (label counts per pattern; retries during generation) ==")
    cnt = Counter((i["pattern"], i["label"]) for i in instances)
    for p in BUILDERS:
        print("  %-22s fraud=%d near_miss=%d   retries fraud=%d near=%d" % (
            p, cnt[(p, "fraud")], cnt[(p, "near_miss")], retries[(p, "fraud")], retries[(p, "near_miss")]))
    vc = Counter((i["pattern"], i["label"], i["variant"]) for i in instances)
    for k in sorted(vc):
        print("    %-22s %-9s %-18s %d" % (k + (vc[k],)))

    # metrics summary at the exact spec reading
    print("\n== measured metrics at the spec reading (min..max per pattern/label) ==")
    conc_by_c = defaultdict(list)
    for x in M["conc"]:
        conc_by_c[x["p"]["c"]].append(x)

    def inst_metric(inst):
        p, s = inst["pattern"], inst["subject"]
        if p == "gift_velocity":
            m = M["vel"].get(s, {60: [0, 0, 0]})[60]
            return "gifts/60s=%d coins/60s=%d" % (m[0], m[2]), (m[0], m[2])
        if p == "rejection_probe":
            m = M["probe"].get(s, {60: [0, 0]})[60]
            return "rejected/60s=%d" % m[0], (m[0],)
        if p == "recharge_burn":
            m = M["burn"][s]
            ratio = m["S10"] / m["R10"] if m["R10"] else 0
            return "spent10m=%d recharged10m=%d ratio=%.3f creators=%d" % (m["S10"], m["R10"], ratio, m["ncre10"]), (
                ratio, m["S10"], m["ncre10"])
        if p == "gift_loop":
            best = max([v[24] for k, v in M["loop"].items() if s in k] or [0])
            return "min(each way) in 24h=%d" % best, (best,)
        if p == "payout_concentration":
            xs = conc_by_c[s]
            x = max(xs, key=lambda x: x["p"]["d"])
            sh = x["shares"][("exact", 24)]
            return "payout=%d share(new top3, 24h)=%.3f" % (x["p"]["d"], sh), (x["p"]["d"], sh)
    rng_ = defaultdict(list)
    for inst in instances:
        _, tup = inst_metric(inst)
        rng_[(inst["pattern"], inst["label"])].append(tup)
        rng_[(inst["pattern"], inst["label"] + ":" + inst["variant"])].append(tup)
    for k in sorted(rng_):
        vals = rng_[k]
        cols = list(zip(*vals))
        print("  %-22s %-28s " % k + "  ".join("[%s..%s]" % (
            ("%.3f" % min(c)) if isinstance(c[0], float) else min(c),
            ("%.3f" % max(c)) if isinstance(c[0], float) else max(c)) for c in cols))
    print("   (velocity: gifts,coins | probe: rejected | burn: ratio,spent,creators | loop: min each way | "
          "concentration: payout,share)")

    bgu = [a for a, o in acct_owner.items() if o == -1]
    print("\n== background maxima (spec windows) ==")
    print("  max accepted gifts/60s=%d  max qty/60s=%d  max coins/60s=%d" % tuple(
        max(M["vel"][a][60][i] for a in bgu if a in M["vel"]) for i in range(3)))
    print("  max single gift coins=%d" % max(g["coins"] for g in sim.gifts if g["acc"] and acct_owner[g["s"]] == -1))
    print("  max rejected/60s=%d" % max([M["probe"][a][60][0] for a in bgu if a in M["probe"]] or [0]))
    print("  reciprocal pairs=%d, max min(each way) in 24h=%d" % (
        sum(1 for k in M["loop"] if acct_owner[next(iter(k))] == -1),
        max([v[24] for k, v in M["loop"].items() if acct_owner[next(iter(k))] == -1] or [0])))
    bgp = [x for x in M["conc"] if acct_owner[x["p"]["c"]] == -1]
    print("  payouts=%d, >=10000: %d, max new-sender share=%.3f" % (
        len(bgp), sum(1 for x in bgp if x["p"]["d"] >= 10000),
        max(max(x["shares"].values()) for x in bgp)))
    print("  max daily spend of a viewer=%d" % max(v for (u, d), v in sim.dayspend.items() if acct_owner[u] == -1))

    print("\n== checks ==")
    print("  strict fires:", Counter(k[0] for k in strict))
    print("  lenient (possible) fires:", Counter(k[0] for k in lenient))
    print("  background possible fires:", bg_fires or "none")
    if problems:
        print("  PROBLEMS:")
        for p in problems:
            print("   -", p)
        sys.exit(1)
    print("  all fraud instances cross their rule (strict reading); no near-miss / background traffic crosses "
          "any rule and no fraud instance crosses another rule (lenient reading): OK")


if __name__ == "__main__":
    main()
