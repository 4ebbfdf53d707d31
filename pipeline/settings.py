"""Runtime settings, read once from environment variables.

Every setting has a documented default (docs/reference.md, "Settings") so a newcomer runs the
pipeline with no configuration; a bad value raises ConfigError naming the variable and
what would fix it, instead of failing later deep inside Kafka or Redis clients.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it and the fix."""


_INT_RE = re.compile(r"-?[0-9]{1,18}")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{0,100}$")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
_INTERNAL_KEY_RE = re.compile(r"[A-Za-z0-9._~+/=-]{32,256}")
MAX_HTTP_TOKENS = 2  # the new and the old one, during a rotation
DEFAULT_MAX_CLOCK_SKEW_MS = 5 * 60_000  # CONTRACT.md, Economics: "at most 5 minutes ahead"
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # may carry a password
    topic_prefix: str = ""
    redis_prefix: str = ""
    web_host: str = "0.0.0.0"
    web_port: int = 6066
    partitions: int = 4
    replication_factor: int = 1
    data_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "var")
    economics_file: Path | None = None
    log_level: str = "info"
    # Largest number of input records one processing cycle takes (one transaction per
    # partition per cycle): bounds memory and the size of a transaction.
    max_batch: int = 5000
    # Memory (estimated) of the decoded state values a worker keeps, over all its tables
    # and partitions (store.py).
    state_cache_mb: int = 128
    # Longest a partition waits for a lagging co-partitioned input before it is
    # processed anyway (event-time merge; see agents/engine/merge.py).
    max_idle_ms: int = 500
    # An event dated further ahead of the worker's clock is rejected `invalid_ts`.
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    # Day and stream leaderboards expire this long after their last update.
    leaderboard_retention_days: int = 7
    # payout_concentration holds the payout (outcome rejected, `held_for_review`).
    hold_suspicious_payouts: bool = True
    # Longest a payout waits for a user partition that sends no progress (no worker, or
    # stuck) before it is decided without that partition's unapplied credits: the one
    # way causal order can be broken, logged as such. Well above a worker's recovery
    # (session timeout, restore: about a minute at 1 M users), which must not trip it.
    payout_max_wait_s: int = 600
    # Committed outcomes stay in Redis this long for GET /outcomes/{event_id}
    # (agents/readmodel/outcomes.py); a worker holds at most outcome_max_waits long polls.
    outcome_retention_s: int = 300
    outcome_max_waits: int = 10_000
    # Bearer tokens every HTTP endpoint but /health, /metrics and the dashboard page
    # accepts (empty: open). Two during a rotation: the new one first, which our own
    # clients send.
    http_tokens: tuple[str, ...] = field(default=(), repr=False)
    # Keys that sign and verify internal records (pipeline/engine/signing.py): the first
    # signs; empty: internal topics are protected by Kafka ACLs alone.
    internal_keys: tuple[str, ...] = field(default=(), repr=False)
    # While a key is introduced on a deployment that ran without one: unsigned internal
    # records (never a wrongly signed one) are still read.
    accept_unsigned: bool = False
    # HTTP limits (pipeline/http_guard.py): a request head must be complete within
    # http_head_timeout_s of its first byte (an unneeded body is drained for as long at
    # most); a keep-alive connection idle for http_idle_timeout_s is closed (keep it
    # above the idle timeout of a proxy in front); connections beyond
    # http_max_connections are closed at once.
    http_head_timeout_s: int = 10
    http_idle_timeout_s: int = 30
    http_max_connections: int = 1000
    # At most http_max_connections_per_client open connections per peer IP address,
    # beyond which that client's new ones are closed at once (others are still served).
    # Behind a proxy every client has the proxy's address: raise it to the proxy's
    # connection pool (up to http_max_connections).
    http_max_connections_per_client: int = 64
    # Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL mechanism and
    # credentials; a CA file for TLS (None: the system's).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_username: str | None = None
    kafka_password: str | None = field(default=None, repr=False)
    kafka_ca_file: Path | None = None
    # CA file that verifies Redis's certificate with rediss:// (None: the system's).
    redis_ca_file: Path | None = None

    def kafka_options(self) -> dict[str, Any]:
        """Connection options of every Kafka client of the pipeline and its commands."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap_list,
                                   "security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL_"):
            options.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_username,
                           sasl_plain_password=self.kafka_password)
        if self.kafka_security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(cafile=str(self.kafka_ca_file) if self.kafka_ca_file else None)
        return options

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def topic(self, name: str) -> str:
        """The full name of a pipeline topic, internal or contract, under the prefix."""
        return f"{self.topic_prefix}{name}"

    def redis_key(self, key: str) -> str:
        return f"{self.redis_prefix}{key}"

    @property
    def group_id(self) -> str:
        return self.topic("ledger")


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not _INT_RE.fullmatch(raw):  # int() also takes "５", " 5" and "5_000"
        raise ConfigError(f"{name}={raw!r} is not a whole number; set it to an integer from {lo} to {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range; set it to an integer from {lo} to {hi}")
    return value


def _host_port(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}: {value!r} is not host:port; use for example 127.0.0.1:9092")
    return host, int(port)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings; raises ConfigError with the variable to fix."""
    env = os.environ if env is None else env
    d = Settings()
    bootstrap = env.get("PIPELINE_BOOTSTRAP_SERVERS", d.bootstrap_servers).strip()
    if not bootstrap:
        raise ConfigError("PIPELINE_BOOTSTRAP_SERVERS is empty; set it to host:port[,host:port...]")
    for server in bootstrap.split(","):
        _host_port(server.strip(), "PIPELINE_BOOTSTRAP_SERVERS")
    redis_url = env.get("PIPELINE_REDIS_URL", d.redis_url).strip()
    parsed = urlparse(redis_url)
    try:
        _ = parsed.port  # raises ValueError on a port that is not a number from 0 to 65535
        valid = parsed.scheme in ("redis", "rediss", "unix") and (parsed.scheme == "unix" or bool(parsed.hostname))
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            f"PIPELINE_REDIS_URL={redacted_url(redis_url)!r} is not a Redis URL; use redis://[:password@]host:port/db"
        )
    redis_ca_file = env.get("PIPELINE_REDIS_CA_FILE") or None
    if redis_ca_file is not None and not Path(redis_ca_file).is_file():
        raise ConfigError(f"PIPELINE_REDIS_CA_FILE={redis_ca_file!r} does not exist; point it at the PEM file of the "
                          "certificate authority of Redis's TLS certificate")
    if redis_ca_file is not None and parsed.scheme != "rediss":
        raise ConfigError("PIPELINE_REDIS_CA_FILE is set but PIPELINE_REDIS_URL does not use TLS; use "
                          "rediss://[:password@]host:port/db, or unset PIPELINE_REDIS_CA_FILE")
    _check_ca_file("PIPELINE_REDIS_CA_FILE", redis_ca_file)
    for var, default in (("PIPELINE_TOPIC_PREFIX", d.topic_prefix), ("PIPELINE_REDIS_PREFIX", d.redis_prefix)):
        if not _PREFIX_RE.match(env.get(var, default)):
            raise ConfigError(f"{var} may hold only letters, digits, '.', '_' and '-' (at most 100)")
    log_level = env.get("PIPELINE_LOG_LEVEL", d.log_level).lower()
    if log_level not in ("crit", "error", "warn", "info", "debug"):
        raise ConfigError(f"PIPELINE_LOG_LEVEL={log_level!r}; use one of crit, error, warn, info, debug")
    economics = env.get("PIPELINE_ECONOMICS_FILE") or None
    if economics is not None and not Path(economics).is_file():
        raise ConfigError(f"PIPELINE_ECONOMICS_FILE={economics!r} does not exist; "
                          "point it at a TOML file like pipeline/economics.toml")
    data_dir = Path(env.get("PIPELINE_DATA_DIR") or d.data_dir)
    raw_tokens = env.get("PIPELINE_HTTP_TOKEN") or ""
    tokens = tuple(t.strip() for t in raw_tokens.split(",")) if raw_tokens else ()
    if len(tokens) > MAX_HTTP_TOKENS or not all(_TOKEN_RE.fullmatch(t) for t in tokens):
        raise ConfigError(f"PIPELINE_HTTP_TOKEN must be one token, or {MAX_HTTP_TOKENS} separated by a comma while "
                          "rotating, each 16 to 256 characters of letters, digits and -._~+/= "
                          "(e.g. `openssl rand -hex 32`)")
    raw_keys = env.get("PIPELINE_INTERNAL_KEY") or ""
    internal_keys = tuple(k.strip() for k in raw_keys.split(",")) if raw_keys else ()
    if len(internal_keys) > MAX_HTTP_TOKENS or not all(_INTERNAL_KEY_RE.fullmatch(k) for k in internal_keys):
        raise ConfigError("PIPELINE_INTERNAL_KEY must be one key, or 2 separated by a comma while rotating (the new "
                          "one first), each 32 to 256 characters of letters, digits and -._~+/= "
                          "(e.g. `openssl rand -hex 32`)")
    accept_unsigned = env.get("PIPELINE_ACCEPT_UNSIGNED", "0").strip()
    if accept_unsigned not in ("0", "1") or (accept_unsigned == "1" and not internal_keys):
        raise ConfigError("PIPELINE_ACCEPT_UNSIGNED must be 0 (default) or 1, and 1 only with PIPELINE_INTERNAL_KEY "
                          "(while a key is introduced on a deployment that ran without one)")
    protocol = env.get("PIPELINE_KAFKA_SECURITY_PROTOCOL", d.kafka_security_protocol).strip().upper()
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"PIPELINE_KAFKA_SECURITY_PROTOCOL={protocol!r}; use one of {', '.join(_PROTOCOLS)}")
    mechanism = env.get("PIPELINE_KAFKA_SASL_MECHANISM", d.kafka_sasl_mechanism).strip().upper()
    if mechanism not in _MECHANISMS:
        raise ConfigError(f"PIPELINE_KAFKA_SASL_MECHANISM={mechanism!r}; use one of {', '.join(_MECHANISMS)}")
    username, password = env.get("PIPELINE_KAFKA_USERNAME") or None, env.get("PIPELINE_KAFKA_PASSWORD") or None
    if protocol.startswith("SASL_") and (username is None or password is None):
        raise ConfigError(f"PIPELINE_KAFKA_SECURITY_PROTOCOL={protocol} needs PIPELINE_KAFKA_USERNAME and "
                          "PIPELINE_KAFKA_PASSWORD")
    ca_file = env.get("PIPELINE_KAFKA_CA_FILE") or None
    if ca_file is not None and not Path(ca_file).is_file():
        raise ConfigError(f"PIPELINE_KAFKA_CA_FILE={ca_file!r} does not exist; point it at the PEM file of the "
                          "brokers' certificate authority")
    _check_ca_file("PIPELINE_KAFKA_CA_FILE", ca_file)
    hold = env.get("PIPELINE_HOLD_SUSPICIOUS_PAYOUTS", "1").strip()
    if hold not in ("0", "1"):
        raise ConfigError(f"PIPELINE_HOLD_SUSPICIOUS_PAYOUTS={hold!r}; use 1 to hold payouts the fraud rules "
                          "flag for review (default) or 0 to only alert")
    return Settings(
        bootstrap_servers=bootstrap,
        redis_url=redis_url,
        topic_prefix=env.get("PIPELINE_TOPIC_PREFIX", d.topic_prefix),
        redis_prefix=env.get("PIPELINE_REDIS_PREFIX", d.redis_prefix),
        web_host=env.get("PIPELINE_WEB_HOST", d.web_host),
        web_port=_int(env, "PIPELINE_WEB_PORT", d.web_port, 1, 65535),
        partitions=_int(env, "PIPELINE_PARTITIONS", d.partitions, 1, 256),
        replication_factor=_int(env, "PIPELINE_REPLICATION_FACTOR", d.replication_factor, 1, 5),
        data_dir=data_dir,
        economics_file=Path(economics) if economics else None,
        log_level=log_level,
        max_batch=_int(env, "PIPELINE_MAX_BATCH", d.max_batch, 1, 100_000),
        state_cache_mb=_int(env, "PIPELINE_STATE_CACHE_MB", d.state_cache_mb, 0, 65_536),
        max_idle_ms=_int(env, "PIPELINE_MAX_IDLE_MS", d.max_idle_ms, 0, 60_000),
        max_clock_skew_ms=_int(env, "PIPELINE_MAX_CLOCK_SKEW_MS", d.max_clock_skew_ms, 0, 3_600_000),
        leaderboard_retention_days=_int(
            env, "PIPELINE_LEADERBOARD_RETENTION_DAYS", d.leaderboard_retention_days, 1, 3650
        ),
        hold_suspicious_payouts=hold == "1",
        payout_max_wait_s=_int(env, "PIPELINE_PAYOUT_MAX_WAIT_S", d.payout_max_wait_s, 1, 86_400),
        outcome_retention_s=_int(env, "PIPELINE_OUTCOME_RETENTION_S", d.outcome_retention_s, 60, 7 * 86_400),
        outcome_max_waits=_int(env, "PIPELINE_OUTCOME_MAX_WAITS", d.outcome_max_waits, 1, 100_000),
        http_tokens=tokens,
        internal_keys=internal_keys,
        accept_unsigned=accept_unsigned == "1",
        http_head_timeout_s=_int(env, "PIPELINE_HTTP_HEAD_TIMEOUT_S", d.http_head_timeout_s, 1, 300),
        http_idle_timeout_s=_int(env, "PIPELINE_HTTP_IDLE_TIMEOUT_S", d.http_idle_timeout_s, 1, 3600),
        http_max_connections=_int(env, "PIPELINE_HTTP_MAX_CONNECTIONS", d.http_max_connections, 1, 100_000),
        http_max_connections_per_client=_int(env, "PIPELINE_HTTP_MAX_CONNECTIONS_PER_CLIENT",
                                             d.http_max_connections_per_client, 1, 100_000),
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_username=username,
        kafka_password=password,
        kafka_ca_file=Path(ca_file) if ca_file else None,
        redis_ca_file=Path(redis_ca_file) if redis_ca_file else None,
    )


def _check_ca_file(name: str, path: str | None) -> None:
    """A CA file must hold PEM certificates: caught here in one line, not as a
    traceback from inside the Kafka or Redis client."""
    if path is None:
        return
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"{name}={path!r} is not a PEM file of CA certificates ({exc.__class__.__name__}); "
                          "point it at the PEM file of the certificate authority") from None


_USERINFO_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@")
_SECRET_QUERY_RE = re.compile(r"(?i)([?&](?:password|passwd|pass|pwd)=)[^&#]*")


def redacted_url(url: str) -> str:
    """The URL fit for an error or a log line: its password (user info, or a
    `password=` query argument) replaced by ***; the user name stays. Forgiving of
    malformed URLs, which are the ones that end up in error messages: everything up to
    the last '@' counts as user info."""
    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m["userinfo"].partition(":")
        return f"{m['scheme']}{user}:***@" if sep else f"{m['scheme']}***@"

    return _SECRET_QUERY_RE.sub(r"\1***", _USERINFO_RE.sub(userinfo, url, count=1))


def kafka_address(settings: Settings) -> tuple[str, int]:
    """The first bootstrap server, where `dev up` runs its local broker."""
    return _host_port(settings.bootstrap_list[0], "PIPELINE_BOOTSTRAP_SERVERS")


def redis_address(settings: Settings) -> tuple[str, int]:
    parsed = urlparse(settings.redis_url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379
