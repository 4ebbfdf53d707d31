"""The dashboard's pure parts: the per-minute chart, fleet rates and reports, which
paths need no token, and the page's script against its markup (snapshot() itself reads
Redis: tests/browser/test_dashboard.py calls it on the real server)."""

from __future__ import annotations

import re

import pytest

from pipeline import fleet
from pipeline.dashboard import routes
from pipeline.dashboard.snapshot import MINUTE_MS, per_minute
from pipeline.web import is_open

T = 1_795_735_200_000  # a minute boundary
APP_JS = (routes.STATIC / "app.js").read_text()
PAGE_HTML = routes.PAGE_FILE.read_text()


def test_per_minute_fills_quiet_minutes_with_zero_and_ends_now() -> None:
    chart = per_minute([(T - 2 * MINUTE_MS, 7), (T, 3)], now_ms=T + 59_999, minutes=4)
    assert chart == [{"start": T - 3 * MINUTE_MS, "diamonds": 0}, {"start": T - 2 * MINUTE_MS, "diamonds": 7},
                     {"start": T - MINUTE_MS, "diamonds": 0}, {"start": T, "diamonds": 3}]


def test_per_minute_follows_a_window_ahead_of_the_clock_and_drops_old_ones() -> None:
    chart = per_minute([(T - 10 * MINUTE_MS, 5), (T + MINUTE_MS, 9)], now_ms=T, minutes=3)
    assert [p["start"] for p in chart] == [T - MINUTE_MS, T, T + MINUTE_MS]
    assert [p["diamonds"] for p in chart] == [0, 0, 9]
    assert len(per_minute([], now_ms=T)) == 30


def test_rate_is_over_its_window_only() -> None:
    rate = fleet.Rate(window_s=4 * fleet.PUBLISH_INTERVAL_S)
    assert rate.add(0.0, 0) == 0.0
    for i in range(1, 10):
        r = rate.add(i * fleet.PUBLISH_INTERVAL_S, 100 * i if i < 6 else 500)
    assert len(rate.samples) == 5
    assert r == 0.0  # no growth in the last window
    assert fleet.Rate(60).add(1.0, 10) == 0.0  # one sample: no rate yet


def test_a_report_refuses_negative_numbers_and_a_foreign_hash_is_skipped() -> None:
    with pytest.raises(AssertionError):
        fleet.Report("w", partitions=1, events_per_s=0, lag=-1, dead_letters=0, dead_letters_per_min=0, ts=0)
    good = {"worker": "w", "partitions": "2", "events_per_s": "1.5", "lag": "3",
            "dead_letters": "0", "dead_letters_per_min": "0.0", "ts": "1"}
    assert fleet._parse(good) is not None
    assert fleet._parse({**good, "lag": "-1"}) is None
    assert fleet._parse({k: v for k, v in good.items() if k != "ts"}) is None
    assert fleet._parse({**good, "partitions": "many"}) is None


def test_only_the_page_assets_and_probes_are_open() -> None:
    for path in ("/dashboard", "/dashboard/static/app.js", "/health", "/live", "/metrics"):
        assert is_open(path), path
    for path in ("/dashboard/events", "/dashboard/", "/dashboardx", "/alerts", "/users/u1", "/metrics/x"):
        assert not is_open(path), path



def test_every_element_the_script_draws_is_on_the_page() -> None:
    used = set(re.findall(r'\$\("([\w-]+)"\)', APP_JS))
    assert {"gifters", "level-ups", "level-ups-empty", "promotions", "promotions-empty"} <= used
    missing = {i for i in used if f'id="{i}"' not in PAGE_HTML}
    assert not missing, missing


def test_the_script_never_parses_wire_data_as_markup() -> None:
    """Ids come from the wire: text nodes and attributes only (and the CSP allows no
    inline script or handler on the page)."""
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in APP_JS, sink
    assert not re.search(r"<script(?![^>]*\bsrc=)", PAGE_HTML), "an inline script"
    assert not re.search(r"\son[a-z]+=|\sstyle=", PAGE_HTML), "an inline handler or style"
