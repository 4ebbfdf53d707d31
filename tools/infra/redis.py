"""A private redis-server on the configured port, separate from any system Redis.

Our own process (not the distribution's service) so tests and `dev up` control its port,
password and lifetime, and never touch data another program keeps in a system Redis.
Persistence is off: the ledger's durable state lives in Kafka, Redis is a rebuildable view.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis as redis_py

from tools.infra import debian
from tools.infra.procs import InfraError, LocalServer, check_port_free

SETTING = "PIPELINE_REDIS_URL"


class LocalRedis(LocalServer):
    """One redis-server with its pid and log in data_dir/redis."""

    name = "redis"
    setting = SETTING
    marker = "redis-server"  # survives Redis rewriting its process title

    def __init__(self, data_dir: Path, host: str, port: int, password: str | None = None,
                 tls_cert_file: Path | None = None, tls_key_file: Path | None = None,
                 tls_ca_file: Path | None = None) -> None:
        super().__init__(data_dir, host, port)
        self.password = password or None
        # TLS only on `port` (the tests of the pipeline's rediss://): the server's PEM
        # certificate and key, and the CA it trusts (and our ready probe verifies with);
        # clients are not asked for a certificate.
        self.tls = (tls_cert_file, tls_key_file, tls_ca_file) if tls_cert_file else None
        if self.tls is not None and not (tls_key_file and tls_ca_file):
            raise ValueError("TLS needs tls_cert_file, tls_key_file and tls_ca_file")

    def ensure_installed(self) -> str:
        """Path of redis-server, installing Debian's package when root (fresh CI images)."""
        return debian.require("redis-server", "redis-server")

    def start(self, timeout_s: float = 30) -> None:
        """Start redis-server, or return at once if ours already runs; blocks until PING
        answers. timeout_s bounds the server's boot, not a first-time apt-get install."""
        with self._start_lock(timeout_s + debian.APT_TIMEOUT_S):  # a concurrent caller may be installing
            pid = self.pid()
            if pid is not None:
                self._check_same_address(pid)
                # Instant when up; also checks the password.
                self._wait_ready(pid, self._ping, time.monotonic() + timeout_s)
                return
            check_port_free(self.host, self.port, "Redis", SETTING)
            ports = ["--port", str(self.port)]
            if self.tls is not None:
                cert, key, ca = self.tls
                ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
            argv = [
                self.ensure_installed(),
                *ports,
                "--bind", self.host,
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ]
            if self.password:
                argv += ["--requirepass", self.password]
            secrets = [self.password] if self.password else []
            self._launch(argv, self._ping, time.monotonic() + timeout_s, secrets)

    def _ping(self) -> bool:
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.tls[2])} if self.tls else {}
        client = redis_py.Redis(
            host=self.host, port=self.port, password=self.password,
            socket_connect_timeout=1, socket_timeout=1,
            **tls,
        )
        try:
            return bool(client.ping())
        except redis_py.AuthenticationError:
            raise InfraError(
                f"Redis at {self.address} (pid {self.pid()}) runs with a different password than "
                f"{SETTING} gives; run `python -m pipeline dev down` then `dev up` to restart it"
            ) from None
        except redis_py.ResponseError as e:
            if "AUTH" in str(e).upper():
                raise InfraError(
                    f"Redis at {self.address} rejects the password in {SETTING} ({e}); run "
                    "`python -m pipeline dev down` then `dev up` to restart it with that password"
                ) from None
            return False
        except (redis_py.ConnectionError, redis_py.TimeoutError):
            return False
        finally:
            client.close()

