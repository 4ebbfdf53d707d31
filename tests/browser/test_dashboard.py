"""The live dashboard in a real browser (Debian's chromium, headless, driven by
Playwright) against a worker fed by the simulator: the leaderboard changes on screen
without a reload, an alert appears in the feed with its evidence, and the page fits a
phone's width. The populated page is saved as a screenshot (var/screenshots/)."""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pipeline import economics
from pipeline.dashboard import routes
from pipeline.settings import PROJECT_ROOT
from pipeline.topics import GIFTS, RECHARGES
from tests.support.harness import Deployment, Worker, produce, run
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


def open_dashboard(browser: Browser, worker: Worker, query: str, width: int = 1280) -> Page:
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
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


def test_dashboard_assets_are_shipped_in_the_package() -> None:
    assert {p.name for p in routes.STATIC.iterdir()} == {"app.js", "style.css"}  # the page is not a static file
    text = routes.PAGE_FILE.read_text()
    for asset in ("/dashboard/static/app.js", "/dashboard/static/style.css"):
        assert asset in text
    shipped = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"dashboard/page.html", "dashboard/static/*"} <= set(shipped["pipeline"])
