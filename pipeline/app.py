"""The Faust application of a worker: lifecycle, web server and the ledger engine.

Faust runs the worker (signals, logging, the aiohttp web server, services); the ledger
itself runs as a service inside it (pipeline/engine), because Faust's per-message
agents cannot carry the ledger's volume and its exactly-once mode is not trustworthy
(docs/design.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import itertools
import logging
import os
import shutil
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import faust
from faust.app.base import BootStrategy
from mode import Service
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.credit.agent import CreatorLedger
from agents.ledger.agent import UserLedger
from agents.ledger.promotions import PromotionBook, PromotionsInput
from agents.metrics import count_committed
from agents.outcomes import LevelUp, outcomes_of
from agents.readmodel.outcomes import OutcomeCache
from agents.readmodel.redis_sink import WRITE_TIMEOUT_S, RedisReadModel
from pipeline import fleet, redis_client, topics
from pipeline.economics import DAY_MS, Economics
from pipeline.engine.engine import Engine, PartitionMoved
from pipeline.engine.kv import RocksKV
from pipeline.engine.stage import Stage
from pipeline.http_guard import MAX_BODY_BYTES
from pipeline.invariants import refuse_optimized
from pipeline.settings import ConfigError, Settings, redis_address

log = logging.getLogger(__name__)
EXIT_ENGINE_FAILED = 3
REFILL_CHECK_S = 1.0


class _WebOnlyBoot(BootStrategy):
    """Faust's own Kafka consumer and producer stay off: the engine owns Kafka I/O."""

    enable_kafka = False


class LedgerApp(faust.App):
    BootStrategy = _WebOnlyBoot


class LedgerService(Service):
    """Starts the engine once the worker runs and stops it cleanly on shutdown."""

    def __init__(self, settings: Settings, econ: Economics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.read_model = RedisReadModel(settings, redis_client.connect(settings, socket_timeout=WRITE_TIMEOUT_S))
        self.outcomes = OutcomeCache(self.read_model.redis, settings.redis_prefix, settings.outcome_retention_s)
        self.promotions = PromotionBook(econ.dedupe_window_days * DAY_MS)
        self.engine = Engine(settings, stage_factory(settings, econ, self.promotions), self.read_model.write,
                             self._committed, broadcasts={topics.PROMOTIONS: PromotionsInput(self.promotions)})
        self.fleet = fleet.Publisher(settings, lambda: self.engine.processed_total, lambda: len(self.engine.tasks))

    def _committed(self, effects: list[Any]) -> None:
        """A committed batch's effects: metrics, and its outcomes for GET /outcomes."""
        count_committed(effects)
        self.outcomes.add(outcomes_of(effects), (e for e in effects if type(e) is LevelUp))

    async def on_start(self) -> None:
        if not self.settings.internal_keys:
            log.warning("PIPELINE_INTERNAL_KEY is not set: internal topics are protected by Kafka ACLs alone "
                        "(python -m pipeline acls); set it to sign and verify every internal record")
        await self.engine.start()
        self.add_future(self._run())
        self.add_future(self.read_model.retry_forever())
        self.add_future(self._keep_read_model_filled())
        self.add_future(self._return_free_memory())
        self.add_future(self.fleet.run())

    async def _run(self) -> None:
        try:
            await self.engine.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # A ledger that cannot process must not keep answering health checks:
            # exit; its open transaction is aborted by the next owner of its partitions.
            log.critical("ledger engine stopped: %r", exc, exc_info=exc)
            logging.shutdown()
            os._exit(EXIT_ENGINE_FAILED)

    async def _keep_read_model_filled(self) -> None:
        while True:
            await asyncio.sleep(REFILL_CHECK_S)
            for partition in list(self.engine.tasks):
                force = partition in self.engine.needs_refill
                try:
                    snapshot = functools.partial(self.engine.snapshot, partition)
                    done = await self.read_model.refill(partition, snapshot, force)
                except PartitionMoved:
                    continue  # revoked, rebuilt or stopping: its next task is refilled in full
                if done or not force:
                    self.engine.needs_refill.discard(partition)

    async def _return_free_memory(self) -> None:
        """glibc keeps freed memory in its heap (RocksDB and the fetch buffers churn
        large blocks): give it back to the system now and then, or RSS creeps up."""
        trim = _malloc_trim()
        while trim is not None:
            await asyncio.sleep(TRIM_INTERVAL_S)
            trim(0)

    async def on_stop(self) -> None:
        await self.engine.stop()
        await self.outcomes.close()
        await self.read_model.close()
        await self.fleet.close()


TRIM_INTERVAL_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    return trim


def preflight(settings: Settings) -> None:
    """Fail fast, in one line, on what a worker cannot run without."""
    asyncio.run(_preflight(settings))


def _check_data_dir(settings: Settings) -> None:
    probe = settings.data_dir / f".write-probe-{os.getpid()}"
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"PIPELINE_DATA_DIR={settings.data_dir} is not a folder the worker can write ({exc.strerror}); "
            "point it at one, or fix its permissions"
        ) from None


async def _preflight(settings: Settings) -> None:
    _check_data_dir(settings)
    # aiokafka logs each failed connection itself; the one line of ConfigError says it all.
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        await topics.ensure_topics(settings)
    finally:
        kafka_log.setLevel(level)
    await _check_redis(settings)


async def _check_redis(settings: Settings) -> None:
    """A wrong URL or password, or a TLS certificate that does not verify, stops the
    worker; Redis merely down does not: the ledger does not depend on it (the read model
    is written when it is back), so a worker restarted during a Redis outage must start."""
    client = redis_client.connect(settings, socket_timeout=5)
    try:
        await client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        tls = redis_client.tls_failure(exc)
        if tls is not None and not isinstance(tls, ssl.SSLEOFError):
            raise _redis_tls_error(settings, tls) from None
        if isinstance(exc, AuthenticationError) or "Name or service not known" in str(exc):
            raise _redis_config_error(settings, exc) from None
        # Logging is not set up yet (Faust does it when the worker starts): say it plainly.
        print(f"warning: Redis at PIPELINE_REDIS_URL is unreachable ({exc.__class__.__name__}); starting anyway, "
              "the read model is written when it is back", file=sys.stderr)
    except RedisError as exc:  # WRONGPASS, NOAUTH, ...: configuration
        raise _redis_config_error(settings, exc) from None
    finally:
        await client.aclose()


def _redis_config_error(settings: Settings, exc: Exception) -> ConfigError:
    detail = _without_password(settings, f"{exc.__class__.__name__}: {exc}")
    return ConfigError(
        f"cannot use Redis at PIPELINE_REDIS_URL ({detail}); "
        "start it with `python -m pipeline dev up` or fix the URL (host, port, password)"
    )


def _redis_tls_error(settings: Settings, exc: ssl.SSLError) -> ConfigError:
    where = "{}:{}".format(*redis_address(settings))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConfigError(
            f"Redis at {where} failed TLS verification ({(exc.verify_message or str(exc)).rstrip('.')}); set "
            "PIPELINE_REDIS_CA_FILE to the PEM file of the CA that signed Redis's certificate, and make "
            "PIPELINE_REDIS_URL name a host that certificate is for"
        )
    return ConfigError(  # not TLS on that port, or a handshake the server refuses
        f"TLS with Redis at {where} failed ({exc.reason or exc.__class__.__name__}); check that PIPELINE_REDIS_URL "
        "(rediss://) names Redis's TLS port, and PIPELINE_REDIS_CA_FILE"
    )


def _without_password(settings: Settings, text: str) -> str:
    password = urlparse(settings.redis_url).password
    for form in {password, unquote(password)} if password else ():
        text = text.replace(form, "***")
    return text


def state_root(settings: Settings) -> Path:
    """This process's state directory; those of processes that are gone are removed
    (a killed worker leaves its RocksDB files behind; their content is in Kafka)."""
    root = settings.data_dir / "state"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("pid-*"):
        pid = int(old.name.removeprefix("pid-"))
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return root / f"pid-{os.getpid()}"


def stage_factory(settings: Settings, econ: Economics,
                  promotions: PromotionBook | None = None) -> Callable[[int], list[Stage]]:
    """A partition's stages, each with its own RocksDB (kv.py) under `state_root`."""
    root = state_root(settings)
    generation = itertools.count()
    partitions = settings.partitions

    def make(p: int) -> list[Stage]:
        n = next(generation)
        return [
            UserLedger(econ, p, partitions, kv=RocksKV(root / f"users-{p}-{n}"),
                       max_clock_skew_ms=settings.max_clock_skew_ms, promotions=promotions),
            CreatorLedger(econ, partitions, kv=RocksKV(root / f"creators-{p}-{n}"),
                          hold_suspicious=settings.hold_suspicious_payouts,
                          max_hold_ms=settings.payout_max_wait_s * 1000),
        ]

    return make


def create_app(settings: Settings, econ: Economics) -> LedgerApp:
    refuse_optimized()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = LedgerApp(
        settings.topic("ledger-worker"),
        broker=[f"kafka://{s}" for s in settings.bootstrap_list],
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_enabled=True,
        web_application_options={"client_max_size": MAX_BODY_BYTES},  # the API is GET-only
        datadir=str(settings.data_dir / "faust"),
        store="memory://",
    )
    service = LedgerService(settings, econ, loop=None, beacon=app.beacon)
    app.ledger = service  # type: ignore[attr-defined]

    @app.task  # type: ignore[untyped-decorator]  # Faust has no type information
    async def _start_ledger() -> None:
        await app.add_runtime_dependency(service)

    from pipeline.web import register_views

    register_views(app, settings, service)
    return app
