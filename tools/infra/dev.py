"""`python -m pipeline dev up|down|status`: local Kafka and Redis where the settings point.

Addresses come from the same settings the pipeline reads, so after `dev up` the pipeline
runs with no extra configuration; each call returns lines for the CLI to print.
"""

from __future__ import annotations

import time
from urllib.parse import unquote, urlparse

from pipeline.settings import ConfigError, Settings, kafka_address, redis_address
from tools.infra.kafka import LocalKafka
from tools.infra.procs import LocalServer
from tools.infra.redis import LocalRedis


def _kafka(settings: Settings) -> LocalKafka:
    host, port = kafka_address(settings)
    return LocalKafka(settings.data_dir, host, port)


def local_redis(settings: Settings) -> LocalRedis:
    parsed = urlparse(settings.redis_url)
    if parsed.scheme == "unix":
        raise ConfigError(
            "PIPELINE_REDIS_URL is a unix socket; `dev up` runs Redis on TCP, so use "
            "redis://127.0.0.1:6379/0 (or leave it unset)"
        )
    host, port = redis_address(settings)
    password = unquote(parsed.password) if parsed.password else None
    return LocalRedis(settings.data_dir, host, port, password)


def up(settings: Settings) -> list[str]:
    """Start whatever is not running yet; safe to repeat."""
    lines = []
    servers: list[LocalServer] = [local_redis(settings), _kafka(settings)]  # Redis first: ready at once
    for server in servers:
        was_running = server.is_running()
        t0 = time.monotonic()
        server.start()  # when already running: checks the address (and the Redis password)
        if was_running:
            lines.append(f"{server.name}: already running at {server.address} (pid {server.pid()})")
        else:
            lines.append(
                f"{server.name}: started at {server.address} (pid {server.pid()}), ready in "
                f"{time.monotonic() - t0:.1f} s; data and log in {server.dir}"
            )
    return lines


def down(settings: Settings) -> list[str]:
    """Stop both servers; their data stays in data_dir for the next `up`."""
    lines = []
    servers: list[LocalServer] = [_kafka(settings), local_redis(settings)]
    for server in servers:
        pid = server.pid()
        if pid is None:
            lines.append(f"{server.name}: not running")
            continue
        t0 = time.monotonic()
        server.stop()
        lines.append(f"{server.name}: stopped (was pid {pid}) in {time.monotonic() - t0:.1f} s")
    return lines


def status(settings: Settings) -> list[str]:
    return [_kafka(settings).status(), local_redis(settings).status()]
