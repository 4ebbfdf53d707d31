"""The live dashboard in a real browser (Debian's chromium, headless, driven by
Playwright) against a worker fed by the simulator: the leaderboard changes on screen
without a reload, with levels, level-ups and a promotion, an alert appears in the feed
with its evidence, and the page fits a phone's width. The populated page is saved as a
screenshot (var/screenshots/). Hostile ids, which the ledger would refuse, are written
straight into the real Redis read model and served by the dashboard's own routes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import re
import threading
import time
import tomllib
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import redis
from aiohttp import web
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright
from redis.asyncio import Redis

from agents.ingest.records import Promotion, Withdrawal
from agents.ledger.promotions import PromotionBook
from agents.outcomes import LevelUp
from agents.readmodel import leaderboards
from agents.readmodel.outcomes import LEVEL_UPS
from pipeline import economics
from pipeline.dashboard import routes
from pipeline.dashboard.snapshot import Selection, snapshot
from pipeline.settings import PROJECT_ROOT
from pipeline.topics import GIFTS, PROMOTIONS, RECHARGES
from tests.conftest import Cluster
from tests.support.harness import Deployment, Worker, free_port, produce, run
from tools import simulate_fraud
from tools.infra.debian import require
from tools.simulate import Message, SimConfig, generate, message

pytestmark = pytest.mark.integration

T = TypeVar("T")
SCREENSHOTS = PROJECT_ROOT / "var" / "screenshots"
TOKEN = "dashboard-" + "k" * 22
LIVE_TIMEOUT_MS = 30_000
# Chromium on a machine with no internet: no background fetches, no sandbox (root).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require("chromium", "chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class DashboardServer:
    """The dashboard's routes (pipeline/dashboard/routes.py) on the session's real Redis,
    in an aiohttp app on a thread of its own, with a real PromotionBook as the worker's
    copy of the broadcast: what a worker serves, minus the ledger, so the read model can
    hold what the ledger would refuse."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url, self.prefix = redis_url, prefix
        self.book = PromotionBook(economics.DAY_MS)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = free_port()

    def promotions(self, now_ms: int) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.book.in_force_now(now_ms)]  # as pipeline/web.py

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def call(self, fn: Callable[[], T]) -> T:
        """On the server's loop: the book is not shared across threads."""
        async def go() -> T:
            return fn()
        return self.run(go())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> DashboardServer:
        self.thread.start()

        async def start() -> None:
            self.redis = Redis.from_url(self.redis_url, decode_responses=True)
            app = web.Application()
            routes.register(app, self.redis, self.prefix, self.promotions)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self.runner.cleanup()  # closes the open streams (on_shutdown)
            await self.redis.aclose()
        with contextlib.suppress(Exception):
            self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def iso(ms: int) -> str:
    """JavaScript's Date.toISOString()."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def simulated(n: int, seed: int, prefix: str) -> list[Message]:
    """A live event of the last few minutes in which half of all gifts go to creator 0's
    stream 0."""
    tick_ms = 200
    cfg = SimConfig(events=n, users=40, creators=5, seed=seed, mega_live_share=0.5, id_prefix=prefix,
                    start_ts=int(time.time() * 1000) - n * tick_ms, tick_ms=tick_ms)
    return list(generate(cfg, economics.load(None)))


def off_loop(fn: Callable[[], T]) -> T:
    """Playwright's sync API keeps an event loop running in this thread: Kafka I/O
    (asyncio.run) goes to another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def send(deployment: Deployment, messages: list[Message]) -> None:
    off_loop(lambda: run(produce(deployment.bootstrap, [(deployment.topic(t), k, v) for t, k, v in messages])))


def start_worker(deployment: Deployment, workers: list[Worker]) -> Worker:
    off_loop(deployment.create_topics)
    worker = Worker(deployment, "w1").start()
    workers.append(worker)
    return worker


def wait_for(condition: Callable[[], bool], timeout_s: float = LIVE_TIMEOUT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def open_dashboard(browser: Browser, worker: Worker | DashboardServer, query: str, width: int = 1280) -> Page:
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)

    def dialog(d: Dialog) -> None:  # an alert() would mean injected script ran
        errors.append(f"dialog: {d.message}")
        d.dismiss()
    page.on("dialog", dialog)
    page.goto(worker.url(f"/dashboard?{query}"))
    page.errors = errors  # type: ignore[attr-defined]
    return page


def test_leaderboard_updates_live_behind_the_token(browser: Browser, deployment: Deployment,
                                                  workers: list[Worker]) -> None:
    deployment.extra_env["PIPELINE_HTTP_TOKEN"] = TOKEN
    worker = start_worker(deployment, workers)
    wave = simulated(1_500, seed=3, prefix="a-")
    send(deployment, wave)
    stream = "a-c0-s0"
    # No viewer can give more than they recharged: the whale's total is sure to lead.
    recharged: dict[str, int] = {}
    for topic, _, value in wave:
        if topic == RECHARGES:
            event = json.loads(value)
            recharged[event["user_id"]] = recharged.get(event["user_id"], 0) + event["coins"]

    page = open_dashboard(browser, worker, f"stream={stream}")
    expect(page.locator("#token-form")).to_be_visible()  # no token yet: the stream answered 401
    page.fill("#token", "wrong-" + "x" * 20)
    page.click("#token-form button")
    expect(page.locator("#token-error")).to_have_text("That token was refused.")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator("#gifters tr").first).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    first = page.locator("#gifters tr").first.get_attribute("data-key")
    assert first and first.startswith("a-u"), first

    # A whale joins the stream, amid more simulated traffic: the page must show the new
    # number one without being reloaded (the marker would be gone).
    page.evaluate("window.__notReloaded = true")
    whale, n_gifts = "a-whale", max(recharged.values()) // 1_000 + 1
    n_recharges = n_gifts // 10 + 1
    now = int(time.time() * 1000)
    send(deployment, simulated(500, seed=4, prefix="b-") + [
        message(RECHARGES, {"event_id": f"a-w-r{i}", "user_id": whale, "coins": 10_000, "amount_cents": 9_999,
                            "currency": "USD", "ts": now}, "user_id") for i in range(n_recharges)])
    # Gifts only once the coins are there: a gift fetched before its sender's recharge
    # is refused (docs/design.md, "Limits": live ordering across topics).
    wait_for(lambda: worker.get(f"/users/{whale}")[1]["coins"] == n_recharges * 10_000)
    send(deployment, [message(GIFTS, {"event_id": f"a-w-g{i}", "sender_id": whale, "creator_id": "a-c0",
                                      "stream_id": stream, "gift_id": "galaxy", "quantity": 1,
                                      "ts": now + 1}, "sender_id") for i in range(n_gifts)])
    expect(page.locator("#gifters tr").first).to_have_attribute("data-key", whale, timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#gifters tr").first.locator("td").nth(2)).to_have_text(f"{n_gifts * 1_000:,}",
                                                                             timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"
    # The whale's gifter level beside its name, the top gifter mark on ranks 1 to 3, and
    # its level-up in the feed.
    level = economics.load(None).gifter_level(n_gifts * 1_000)
    top = page.locator("#gifters tr").first
    expect(top.locator(".level")).to_have_text(f"Lv {level}", timeout=LIVE_TIMEOUT_MS)
    expect(top.locator(".top")).to_have_text("top gifter")
    marks = [page.locator("#gifters tr").nth(i).locator(".top").count()
             for i in range(page.locator("#gifters tr").count())]
    assert marks == [1] * min(3, len(marks)) + [0] * (len(marks) - 3), marks
    expect(page.locator(f'#level-ups li[data-user="{whale}"]').filter(has_text=f"→ Lv {level}")
           ).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    # A promotion published now (after the recharges above, so none of them gets it).
    start = int(time.time() * 1000) - 1_000
    promo: dict[str, Any] = {"promo_id": "a-launch", "starts_ts": start, "ends_ts": start + 7_200_000,
                             "bonus_percent": 20, "packages": [5_000, 10_000], "max_per_user": 2, "ts": start}
    send(deployment, [message(PROMOTIONS, promo, "promo_id")])
    row = page.locator('#promotions tr[data-key="a-launch"]')
    expect(row).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(row.locator("td")).to_have_text(["a-launch", "+20%", "5,000 · 10,000", re.compile(r"\S"), "2"])
    expect(row.locator("time")).to_have_attribute("datetime", iso(promo["ends_ts"]))
    expect(page.locator("#promotions-empty")).to_be_hidden()

    expect(page.locator("#creators tr").first).to_have_attribute("data-key", "a-c0")
    expect(page.locator("#chart rect").first).to_be_attached()
    assert page.locator("#chart rect").count() == 30
    expect(page.locator("#workers")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#events-per-s")).not_to_have_text("–")
    page.wait_for_timeout(1_200)  # let the rows' change highlight fade
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "dashboard.png", full_page=True)
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_alert_appears_in_the_feed_with_its_evidence(browser: Browser, deployment: Deployment,
                                                     workers: list[Worker]) -> None:
    worker = start_worker(deployment, workers)
    page = open_dashboard(browser, worker, "", width=390)
    expect(page.locator("#status")).to_contain_text("live", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#alerts-empty")).to_be_visible()
    expect(page.locator("#level-ups-empty")).to_have_text("No level-ups yet.")
    expect(page.locator("#promotions-empty")).to_have_text("No promotions in force.")
    assert page.locator("#level-ups li").count() == page.locator("#promotions tr").count() == 0

    now = int(time.time() * 1000)
    # Card testing: unaffordable gifts, refused whatever the order of topics (a velocity
    # script's gifts could be fetched before its recharge; docs/design.md, "Limits").
    (script,) = [s for s in simulate_fraud.scripts(1, 0, now, 1, seed=5, prefix="v-")
                 if s.label["pattern"] == "rejection_probe"]
    normal = simulated(300, seed=6, prefix="n-")
    send(deployment, list(simulate_fraud.inject(iter(normal), [script])))

    alert = page.locator(f'#alerts li[data-alert^="rejection_probe:{script.label["subject_id"]}:"]')
    expect(alert).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(alert).to_contain_text(f'rejection_probe user {script.label["subject_id"]}')
    evidence = alert.locator("dd").last.inner_text()
    shown = [e.strip() for e in evidence.split(" and ")[0].split(",")]
    assert shown and set(shown) <= set(script.label["event_ids"]), (shown, script.label["event_ids"])
    expect(page.locator("#alerts-empty")).to_be_hidden()
    # Phone width: one column, nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert not page.errors  # type: ignore[attr-defined]


HOSTILE = "<img src=x onerror=alert(1)>"


def test_levels_level_ups_and_promotions_show_hostile_ids_as_text(browser: Browser, cluster: Cluster,
                                                                  deployment: Deployment) -> None:
    prefix, stream = deployment.prefix, "s-1"
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    with DashboardServer(cluster.redis_url, prefix) as server:
        page = open_dashboard(browser, server, f"stream={stream}", width=390)
        expect(page.locator("#status")).to_contain_text("live", timeout=LIVE_TIMEOUT_MS)
        expect(page.locator("#gifters-empty")).to_have_text("No gifts on this stream yet.")
        expect(page.locator("#level-ups-empty")).to_be_visible()
        expect(page.locator("#promotions-empty")).to_be_visible()

        now = int(time.time() * 1000)
        board = {HOSTILE: 9_000, "u-2": 5_000, "u-3": 4_000, "u-4": 100}
        levels = {HOSTILE: 7, "u-2": 5, "u-3": 5, "u-4": 2}
        for user, lv in levels.items():
            r.hset(f"{prefix}user:{user}", "gifter_level", lv)
        ups = [LevelUp(HOSTILE, 7, 5, "e-9" + HOSTILE, now - 1_000), LevelUp("u-2", 5, 4, "e-5", now - 60_000),
               LevelUp("u-4", 2, 0, "e-1", now - 120_000)]
        r.zadd(prefix + LEVEL_UPS, {json.dumps(u.to_json()): u.ts for u in ups})
        r.zadd(prefix + leaderboards.stream_key(stream), board)
        promos = [Promotion(HOSTILE, now - 60_000, now + 3_600_000, 25, frozenset({1_000, 5_000}), 3, now - 60_000),
                  Promotion("p-welcome", now - 60_000, now + 7_200_000, 100, frozenset({100}), 1, now - 60_000),
                  Promotion("p-ended", now - 60_000, now - 1, 50, frozenset({500}), 1, now - 60_000),
                  Promotion("p-later", now + 600_000, now + 900_000, 90, frozenset({500}), 1, now - 60_000)]
        for promo in promos:
            assert server.call(functools.partial(server.book.publish, promo, now)) is None

        # What the stream carries (snapshot() on the same Redis and book) ...
        body = server.run(snapshot(server.redis, prefix, Selection(stream, ""), now, server.promotions))
        assert [(g["user_id"], g["gifter_level"], g.get("badge")) for g in body["gifters"]] == [
            (HOSTILE, 7, "top_gifter"), ("u-2", 5, "top_gifter"), ("u-3", 5, "top_gifter"), ("u-4", 2, None)]
        assert body["level_ups"] == [u.to_json() for u in ups]  # newest first
        assert [p["promo_id"] for p in body["promotions"]] == ["p-welcome", HOSTILE]  # in force, best first

        # ... is what the page shows, hostile ids as text.
        rows = page.locator("#gifters tr")
        expect(rows).to_have_count(4, timeout=LIVE_TIMEOUT_MS)
        expect(rows.locator(".who")).to_have_text([HOSTILE, "u-2", "u-3", "u-4"])
        expect(rows.locator(".level")).to_have_text(["Lv 7", "Lv 5", "Lv 5", "Lv 2"])
        assert [rows.nth(i).locator(".top").count() for i in range(4)] == [1, 1, 1, 0]
        expect(rows.first).to_have_attribute("data-key", HOSTILE)

        feed = page.locator("#level-ups li")
        expect(feed).to_have_count(3)
        expect(feed.locator(".who")).to_have_text([HOSTILE, "u-2", "u-4"])
        expect(feed.first).to_contain_text("Lv 5 → Lv 7")
        expect(feed.nth(2)).to_contain_text("Lv 0 → Lv 2")
        for i, u in enumerate(ups):
            expect(feed.nth(i).locator("time")).to_have_attribute("datetime", iso(u.ts))
        expect(page.locator("#level-ups-empty")).to_be_hidden()

        table = page.locator("#promotions tr")
        expect(table).to_have_count(2)
        expect(table.first.locator("td")).to_have_text(["p-welcome", "+100%", "100", re.compile(r"\S"), "1"])
        expect(table.nth(1).locator("td")).to_have_text([HOSTILE, "+25%", "1,000 · 5,000", re.compile(r"\S"), "3"])
        expect(table.nth(1).locator("time")).to_have_attribute("datetime", iso(now + 3_600_000))
        expect(page.locator("#promotions-empty")).to_be_hidden()

        assert page.locator("img").count() == 0  # nothing was parsed as markup
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # long ids wrap
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "dashboard-hostile.png", full_page=True)

        # Withdrawn and cleared: the empty states come back, live.
        for promo in promos[:2]:
            server.call(functools.partial(server.book.publish, Withdrawal(promo.promo_id, now + 1), now + 1))
        r.delete(prefix + LEVEL_UPS)
        expect(page.locator("#promotions-empty")).to_be_visible(timeout=LIVE_TIMEOUT_MS)
        expect(page.locator("#level-ups-empty")).to_be_visible(timeout=LIVE_TIMEOUT_MS)
        assert page.locator("#level-ups li").count() == page.locator("#promotions tr").count() == 0
        assert not page.errors, page.errors  # type: ignore[attr-defined]
        page.close()
    r.close()


def test_dashboard_assets_are_shipped_in_the_package() -> None:
    assert {p.name for p in routes.STATIC.iterdir()} == {"app.js", "style.css"}  # the page is not a static file
    text = routes.PAGE_FILE.read_text()
    for asset in ("/dashboard/static/app.js", "/dashboard/static/style.css"):
        assert asset in text
    shipped = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"dashboard/page.html", "dashboard/static/*"} <= set(shipped["pipeline"])
