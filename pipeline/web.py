"""The HTTP read model served by every worker (contract, "Read model").

Users and creators are read from Redis, where every worker mirrors the state it
commits, so any worker answers for any key. Errors are JSON with a 4xx/5xx status,
never a traceback.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from agents.ingest.decode import ID_RE
from agents.readmodel.redis_sink import hash_key
from pipeline.settings import Settings

READ_TIMEOUT_S = 2.0
USER_FIELDS = ("coins", "recharged_coins", "spent_coins")
CREATOR_FIELDS = ("diamonds", "lifetime_diamonds", "paid_out_diamonds")


def register_views(app: Any, settings: Settings, service: Any) -> None:
    client = aioredis.from_url(settings.redis_url, socket_timeout=READ_TIMEOUT_S, decode_responses=True)

    async def read_hash(kind: str, id_: str) -> dict[str, str]:
        return await client.hgetall(hash_key(settings, kind, id_))

    def error(view: View, status: int, message: str) -> Response:
        return view.json({"error": message, "status": status}, status=status)

    @app.page("/users/{user_id}")
    class UserView(View):
        async def get(self, request: Request, user_id: str) -> Response:
            if not ID_RE.fullmatch(user_id):
                return error(self, 400, "user_id must match ^[A-Za-z0-9_.:-]{1,64}$")
            try:
                h = await read_hash("user", user_id)
            except (RedisError, OSError):
                return error(self, 503, "read model unavailable (Redis)")
            body: dict[str, Any] = {"user_id": user_id}
            body.update({f: int(h.get(f, 0)) for f in USER_FIELDS})
            limit = int(h.get("daily_coin_limit", -1))
            body["daily_coin_limit"] = None if limit < 0 else limit
            day = int(h.get("last_spend_day", -1))
            body["last_spend_day"] = None if day < 0 else day
            body["last_spend_day_coins"] = int(h.get("last_spend_day_coins", 0))
            return self.json(body)

    @app.page("/creators/{creator_id}")
    class CreatorView(View):
        async def get(self, request: Request, creator_id: str) -> Response:
            if not ID_RE.fullmatch(creator_id):
                return error(self, 400, "creator_id must match ^[A-Za-z0-9_.:-]{1,64}$")
            try:
                h = await read_hash("creator", creator_id)
            except (RedisError, OSError):
                return error(self, 503, "read model unavailable (Redis)")
            body: dict[str, Any] = {"creator_id": creator_id}
            body.update({f: int(h.get(f, 0)) for f in CREATOR_FIELDS})
            return self.json(body)

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

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
