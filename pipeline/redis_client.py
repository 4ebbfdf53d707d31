"""Every Redis client of the pipeline and its commands, built in one place from the
settings: the URL (PIPELINE_REDIS_URL) and, with rediss://, the CA file that verifies
the server's certificate and host name (PIPELINE_REDIS_CA_FILE; unset: the system's
CAs). A client built elsewhere with `from_url(settings.redis_url)` would silently
ignore the CA file.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis
import redis.asyncio as aioredis

from pipeline.settings import Settings


def options(settings: Settings) -> dict[str, Any]:
    """Connection options beyond the URL (redis-py's from_url keyword arguments)."""
    if settings.redis_url.startswith("rediss://"):
        # redis-py's defaults, stated: a certificate and host name are verified.
        opts: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if settings.redis_ca_file is not None:
            opts["ssl_ca_certs"] = str(settings.redis_ca_file)
        return opts
    return {}


def connect(settings: Settings, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client (connects lazily, at its first command)."""
    return aioredis.from_url(settings.redis_url, **options(settings), **kwargs)


def connect_sync(settings: Settings, **kwargs: Any) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **options(settings), **kwargs)


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a redis-py connection error (a certificate that does not
    verify against the CA, or is for another host name; an unreadable CA file), if any.
    redis-py wraps it in its ConnectionError, keeping it as the cause or context."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None
