"""`/dashboard` (the page and its assets) and `/dashboard/events` (its live data).

The page and assets hold no data and are open, so a browser can load them; the event
stream needs the bearer token when PIPELINE_HTTP_TOKEN is set (the page asks for it and
sends it in a header: fetch, not EventSource, which cannot). Limits: MAX_STREAMS open
streams per worker, each polling Redis every PUSH_INTERVAL_S and closed after
MAX_STREAM_S (the page reconnects), or at once when the worker shuts down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from agents.ingest.decode import ID_RE
from agents.readmodel.redis_sink import REDIS_DOWN
from pipeline.dashboard.snapshot import Selection, snapshot

log = logging.getLogger(__name__)

PAGE_FILE = Path(__file__).parent / "page.html"  # not under static/: served only with its headers
STATIC = Path(__file__).parent / "static"
PAGE = "/dashboard"
ASSETS = "/dashboard/static/"
MAX_STREAMS = 64
PUSH_INTERVAL_S = 1.0
KEEPALIVE_S = 15.0
MAX_STREAM_S = 3600.0
RECONNECT_MS = 2000
HEADERS = {
    # Only our own assets and stream: an injected script could read the token from the tab.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidated: a new page never runs an old app.js
}


def is_open(path: str) -> bool:
    """The page and its assets: no token needed (they hold no data)."""
    return path == PAGE or path.startswith(ASSETS)


Promotions = Callable[[int], list[dict[str, Any]]]


def register(web_app: web.Application, redis: Redis, prefix: str, promotions: Promotions = lambda now: []) -> None:
    open_streams = 0
    closing = asyncio.Event()

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE_FILE)

    async def events(request: web.Request) -> web.StreamResponse:
        nonlocal open_streams
        chosen = Selection(request.query.get("stream", ""), request.query.get("creator", ""))
        for name, value in (("stream", chosen.stream_id), ("creator", chosen.creator_id)):
            if value and not ID_RE.fullmatch(value):
                return _error(400, f"{name} must match {ID_RE.pattern}")
        if open_streams >= MAX_STREAMS:
            return _error(503, f"dashboard streams are limited to {MAX_STREAMS} per worker")
        open_streams += 1
        try:
            return await _stream(request, redis, prefix, chosen, closing, promotions)
        finally:
            open_streams -= 1

    async def on_shutdown(_: web.Application) -> None:
        closing.set()

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == PAGE or request.path.startswith("/dashboard/"):
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)

    web_app.router.add_get(PAGE, page)
    web_app.router.add_get("/dashboard/events", events)
    web_app.router.add_static(ASSETS, STATIC)
    web_app.on_shutdown.append(on_shutdown)
    web_app.on_response_prepare.append(add_headers)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


async def _stream(request: web.Request, redis: Redis, prefix: str, chosen: Selection,
                  closing: asyncio.Event, promotions: Promotions) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    try:
        await response.prepare(request)
        await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
        started = last_write = time.monotonic()
        last, failed = "", False
        while not closing.is_set() and time.monotonic() - started < MAX_STREAM_S:
            try:
                body = await snapshot(redis, prefix, chosen, int(time.time() * 1000), promotions)
                data, event = json.dumps(body, separators=(",", ":")), "snapshot"
            except REDIS_DOWN:
                data, event = json.dumps({"error": "read model unavailable (Redis)"}), "unavailable"
            except Exception as exc:  # a bug or a foreign value in Redis: say so, log it once
                if not failed:
                    log.warning("dashboard snapshot failed: %r", exc, exc_info=exc)
                failed = True
                data, event = json.dumps({"error": "read model unreadable (see the worker log)"}), "unavailable"
            now = time.monotonic()
            if data != last:
                await response.write(f"event: {event}\ndata: {data}\n\n".encode())
                last, last_write = data, now
            elif now - last_write >= KEEPALIVE_S:
                await response.write(b": keepalive\n\n")
                last_write = now
            try:
                await asyncio.wait_for(closing.wait(), PUSH_INTERVAL_S)
            except TimeoutError:
                pass
    except ConnectionError:
        pass  # the viewer left; the response has begun, so no JSON error can follow
    return response
