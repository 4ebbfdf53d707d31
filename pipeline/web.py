"""The HTTP read model served by every worker (contract, "Read model").

Users and creators are read from Redis, where every worker mirrors the state it
commits, so any worker answers for any key. Errors are JSON with a 4xx/5xx status,
never a traceback.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web as aioweb
from aiohttp.http_exceptions import HttpProcessingError
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from agents.credit.state import WINDOWS
from agents.ingest.decode import ID_RE
from agents.ledger.state import month_name
from agents.readmodel import alerts, leaderboards
from agents.readmodel.outcomes import MAX_WAIT_MS, OutcomeWaiters, TooManyWaits
from agents.readmodel.redis_sink import hash_key
from pipeline import metrics, redis_client
from pipeline.dashboard import routes as dashboard
from pipeline.engine.kv import block_cache_bytes
from pipeline.http_guard import install as guard_http
from pipeline.invariants import require
from pipeline.settings import Settings

log = logging.getLogger(__name__)
READ_TIMEOUT_S = 2.0
USER_FIELDS = (
    "coins", "recharged_coins", "spent_coins", "daily_coin_limit", "last_spend_day", "last_spend_day_coins",
    "monthly_coin_limit", "last_spend_month", "last_spend_month_coins", "gifter_level", "lifetime_spent_coins",
    "bonus_coins",
)
CREATOR_FIELDS = ("diamonds", "lifetime_diamonds", "paid_out_diamonds")
# Stored as -1 when null.
NULLABLE = {"daily_coin_limit", "last_spend_day", "monthly_coin_limit", "last_spend_month"}
MONTHS = {"last_spend_month"}  # stored as months since year 0, shown as the contract's YYYY-MM
# Query numbers are ASCII digits only: int() and str.isdigit() also take '５' or '٥', and
# date.fromisoformat() takes '2026-W01-1' and '20260102xx'.
LIMIT_RE = re.compile(r"[0-9]{1,9}")
DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@aioweb.middleware
async def json_errors(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
    """Every error is JSON: an unknown path or method too, and an unexpected failure is
    a 500 whose body says nothing of the code (the traceback goes to the log only)."""
    try:
        answer: aioweb.StreamResponse = await handler(request)
        return answer
    except aioweb.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return aioweb.json_response({"error": exc.reason.lower(), "status": exc.status}, status=exc.status,
                                    headers=headers)
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return aioweb.json_response({"error": "internal error", "status": 500}, status=500)


OPEN_PATHS = ("/health", "/live", "/metrics")  # for probes and scrapers, which carry no token
# No cycle and no restore progress for this long: the engine is wedged; /live says so
# and an orchestrator restarts the worker. A cycle takes at most a poll and a commit;
# a restore reports progress with every batch it reads.
STUCK_AFTER_S = 300.0


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or dashboard.is_open(path)


def bearer_auth(tokens: tuple[str, ...]) -> Any:
    """Every path but the open ones needs `Authorization: Bearer <token>` with one of
    `tokens` (two while rotating); compared in constant time with each, and never logged."""
    require(bool(tokens), "at least one token")
    expected = [f"Bearer {token}".encode() for token in tokens]

    @aioweb.middleware
    async def check(request: aioweb.Request, handler: Any) -> aioweb.StreamResponse:
        if not is_open(request.path):
            given = request.headers.get("Authorization", "").encode()
            if not sum(hmac.compare_digest(given, e) for e in expected):  # no early exit
                return aioweb.json_response({"error": "missing or wrong bearer token", "status": 401}, status=401,
                                            headers={"WWW-Authenticate": "Bearer"})
        answer: aioweb.StreamResponse = await handler(request)
        return answer

    return check


class _OneLineBadRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a 20 KB path, binary junk) with a
    traceback: a hostile client must not be able to fill the log with them."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "%s: %s %s", (record.getMessage(), exc.code, exc.__class__.__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def register_views(app: Any, settings: Settings, service: Any) -> None:
    """The HTTP read model (docs/reference.md): every view reads Redis, never the
    worker's state, so any worker answers for any key; /health, /live and /metrics
    describe this worker."""
    client = redis_client.connect(settings, socket_timeout=READ_TIMEOUT_S, decode_responses=True)
    guard_http(app.web, settings)  # timeouts, connection cap, headers (pipeline/http_guard.py)
    app.web.web_app.middlewares.append(json_errors)
    if settings.http_tokens:
        app.web.web_app.middlewares.append(bearer_auth(settings.http_tokens))
    logging.getLogger("aiohttp.server").addFilter(_OneLineBadRequests())
    dashboard.register(app.web.web_app, client, settings.redis_prefix,
                       lambda now: [p.to_json() for p in service.promotions.in_force_now(now)])
    reads = _Reads(client, settings)
    _register_entities(app, reads)
    _register_boards(app, reads)
    _register_outcomes(app, OutcomeWaiters(client, settings.redis_prefix, settings.outcome_max_waits))
    _register_worker(app, service)


def error(view: View, status: int, message: str) -> Response:
    return view.json({"error": message, "status": status}, status=status)


def limit_of(request: Request, default: int = 10) -> int:
    raw = request.query.get("limit", str(default))
    if not LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= leaderboards.MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {leaderboards.MAX_LIMIT}")
    return int(raw)


def day_of(request: Request) -> int:
    raw = request.query.get("day", "")
    try:
        if not DAY_RE.fullmatch(raw):
            raise ValueError(raw)
        return leaderboards.parse_day(raw)
    except ValueError:
        raise ValueError("day must be a date YYYY-MM-DD") from None


class _Reads:
    """The read model's Redis reads, as views answer them (400 on bad input, 503 when
    Redis is unavailable)."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    async def entity(self, view: View, kind: str, id_: str, fields: tuple[str, ...]) -> Response:
        """A user or creator hash as JSON: unknown ids read as zeros; -1 stands for null."""
        if not ID_RE.fullmatch(id_):
            return error(view, 400, f"{kind}_id must match {ID_RE.pattern}")
        try:
            # decode_responses: str keys and values
            h: dict[str, str] = await self.client.hgetall(hash_key(self.settings, kind, id_))
        except (RedisError, OSError):
            return error(view, 503, "read model unavailable (Redis)")
        body: dict[str, Any] = {f"{kind}_id": id_}
        for name in fields:
            value = int(h.get(name, -1 if name in NULLABLE else 0))
            body[name] = None if name in NULLABLE and value < 0 else month_name(value) if name in MONTHS else value
        return view.json(body)

    async def board(self, view: View, request: Request, key: Callable[[], str], id_name: str,
                    score_name: str, top_gifters: bool = False) -> Response:
        """`top_gifters`: ranks 1 to TOP_GIFTER_RANKS carry "badge": "top_gifter" (a
        stream's gifter board)."""
        try:
            limit, zkey = limit_of(request), key()
        except ValueError as exc:
            return error(view, 400, str(exc))
        try:
            entries = await leaderboards.top(self.client, self.settings.redis_key(zkey), limit)
        except (RedisError, OSError):
            return error(view, 503, "read model unavailable (Redis)")
        return view.json({"entries": [
            {"rank": i + 1, id_name: member, score_name: score,
             **({"badge": "top_gifter"} if top_gifters and i < leaderboards.TOP_GIFTER_RANKS else {})}
            for i, (member, score) in enumerate(entries)
        ]})


def _register_entities(app: Any, reads: _Reads) -> None:
    @app.page("/users/{user_id}")
    class UserView(View):
        async def get(self, request: Request, user_id: str) -> Response:
            return await reads.entity(self, "user", user_id, USER_FIELDS)

    @app.page("/creators/{creator_id}")
    class CreatorView(View):
        async def get(self, request: Request, creator_id: str) -> Response:
            return await reads.entity(self, "creator", creator_id, CREATOR_FIELDS)

    @app.page("/creators/{creator_id}/windows")
    class CreatorWindowsView(View):
        async def get(self, request: Request, creator_id: str) -> Response:
            size = request.query.get("size", "1m")
            if not ID_RE.fullmatch(creator_id):
                return error(self, 400, f"creator_id must match {ID_RE.pattern}")
            if size not in WINDOWS:
                return error(self, 400, f"size must be one of {', '.join(WINDOWS)}")
            try:
                found = await leaderboards.windows(reads.client, creator_id, size, reads.settings.redis_prefix)
            except (RedisError, OSError):
                return error(self, 503, "read model unavailable (Redis)")
            span = WINDOWS[size][0]
            return self.json({"creator_id": creator_id, "size": size, "windows": [
                {"start": start, "end": start + span, "diamonds": diamonds} for start, diamonds in found
            ]})


def _register_boards(app: Any, reads: _Reads) -> None:
    @app.page("/leaderboards/streams/{stream_id}/gifters")
    class StreamGiftersView(View):
        async def get(self, request: Request, stream_id: str) -> Response:
            if not ID_RE.fullmatch(stream_id):
                return error(self, 400, f"stream_id must match {ID_RE.pattern}")
            return await reads.board(self, request, lambda: leaderboards.stream_key(stream_id), "user_id", "coins",
                                     top_gifters=True)

    @app.page("/leaderboards/gifters")
    class DayGiftersView(View):
        async def get(self, request: Request) -> Response:
            return await reads.board(
                self, request, lambda: leaderboards.gifters_day_key(day_of(request)), "user_id", "coins"
            )

    @app.page("/leaderboards/creators")
    class CreatorsView(View):
        async def get(self, request: Request) -> Response:
            def key() -> str:
                period = request.query.get("period", "all")
                if period == "all":
                    return leaderboards.CREATORS_ALL
                if period == "day":
                    return leaderboards.creators_day_key(day_of(request))
                raise ValueError("period must be all or day")

            return await reads.board(self, request, key, "creator_id", "diamonds")

    @app.page("/alerts")
    class AlertsView(View):
        async def get(self, request: Request) -> Response:
            """The newest fraud alerts first (agents/readmodel/alerts.py)."""
            try:
                limit = limit_of(request, default=50)
            except ValueError as exc:
                return error(self, 400, str(exc))
            try:
                found = await alerts.latest(reads.client, reads.settings.redis_prefix, limit)
            except (RedisError, OSError):
                return error(self, 503, "read model unavailable (Redis)")
            return self.json({"alerts": found})


WAIT_RE = re.compile(r"[0-9]{1,5}")


def _register_outcomes(app: Any, waiters: OutcomeWaiters) -> None:
    @app.page("/outcomes/{event_id}")
    class OutcomeView(View):
        async def get(self, request: Request, event_id: str) -> Response:
            """The event's committed outcome, waiting up to wait_ms for its commit."""
            if not ID_RE.fullmatch(event_id):
                return error(self, 400, f"event_id must match {ID_RE.pattern}")
            raw_wait = request.query.get("wait_ms", "0")
            if not WAIT_RE.fullmatch(raw_wait) or int(raw_wait) > MAX_WAIT_MS:
                return error(self, 400, f"wait_ms must be an integer from 0 to {MAX_WAIT_MS}")
            try:
                found = await waiters.get(event_id, int(raw_wait))
            except TooManyWaits as exc:
                answer = error(self, 503, f"too many waits open, retry shortly: {exc}")
                answer.headers["Retry-After"] = "1"
                return answer
            except (RedisError, OSError):
                return error(self, 503, "read model unavailable (Redis)")
            if found is None:
                return error(self, 404, f"no committed outcome for {event_id} (yet, or no longer: outcomes are kept "
                                        "for PIPELINE_OUTCOME_RETENTION_S)")
            body = found.encode() if isinstance(found, str) else found
            return self.bytes(body, content_type="application/json")


def _register_worker(app: Any, service: Any) -> None:
    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            engine = service.engine
            ready = engine.ready.is_set()
            body = {
                "status": "ok" if ready else "starting",
                "partitions": sorted(engine.tasks),
                "processed": engine.processed_total,
                "read_model_pending": len(service.read_model.pending),
            }
            return self.json(body, status=200 if ready else 503)

    @app.page("/live")
    class LiveView(View):
        async def get(self, request: Request) -> Response:
            """Liveness, unlike /health: a rebalance or a restore is not a reason to restart."""
            idle_s = round(time.monotonic() - service.engine.progress_at, 1)
            alive = idle_s < STUCK_AFTER_S
            return self.json({"status": "alive" if alive else "stuck", "since_progress_s": idle_s},
                             status=200 if alive else 503)

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            for name, n in service.engine.table_sizes().items():
                metrics.TABLE_ENTRIES.labels(name).set(n)
            metrics.ASSIGNED_PARTITIONS.set(len(service.engine.tasks))
            for kind, n in {**service.engine.state_memory(), "block_cache": block_cache_bytes()}.items():
                metrics.STATE_MEMORY.labels(kind).set(n)
            return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
