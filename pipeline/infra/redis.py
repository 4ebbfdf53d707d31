"""A private redis-server on the configured port, separate from any system Redis.

Our own process (not the distribution's service) so tests and `dev up` control its port,
password and lifetime, and never touch data another program keeps in a system Redis.
Persistence is off: the ledger's durable state lives in Kafka, Redis is a rebuildable view.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis as redis_py

from pipeline.infra.procs import InfraError, LocalServer, check_port_free, file_lock
from pipeline.settings import PROJECT_ROOT

SETTING = "PIPELINE_REDIS_URL"
_APT_TIMEOUT_S = 900
_INSTALL_LOCK = PROJECT_ROOT / "var" / "cache" / "redis-install.lock"


class LocalRedis(LocalServer):
    """One redis-server with its pid and log in data_dir/redis."""

    name = "redis"
    setting = SETTING
    marker = "redis-server"  # survives Redis rewriting its process title

    def __init__(self, data_dir: Path, host: str, port: int, password: str | None = None) -> None:
        super().__init__(data_dir, host, port)
        self.password = password or None

    def ensure_installed(self) -> str:
        """Path of redis-server, installing Debian's package when root (fresh CI images)."""
        found = _which_redis()
        if found:
            return found
        if os.geteuid() != 0:
            raise InfraError(
                "redis-server is not installed; run `sudo apt-get install redis-server` "
                "(or put a Redis 6+ redis-server on PATH) and retry"
            )
        apt = shutil.which("apt-get")
        if apt is None:
            raise InfraError("redis-server is not installed and apt-get is missing; install Redis 6+ and put redis-server on PATH")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with file_lock(_INSTALL_LOCK, _APT_TIMEOUT_S, "Redis install"):
            found = _which_redis()  # installed by a concurrent caller while we waited
            if found:
                return found
            deadline = time.monotonic() + _APT_TIMEOUT_S
            for cmd in ([apt, "update"], [apt, "install", "-y", "redis-server"]):
                remaining = max(1.0, deadline - time.monotonic())
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=remaining)
                except subprocess.TimeoutExpired:
                    raise InfraError(f"`{' '.join(cmd)}` took over {_APT_TIMEOUT_S} s; run `apt-get install redis-server` by hand") from None
                if out.returncode != 0:
                    detail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-10:])
                    raise InfraError(f"`{' '.join(cmd)}` failed; run `apt-get install redis-server` by hand:\n{detail}")
        found = _which_redis()
        if not found:
            raise InfraError("apt-get installed redis-server but it is not on PATH; check `dpkg -L redis-server`")
        return found

    def start(self, timeout_s: float = 30) -> None:
        """Start redis-server, or return at once if ours already runs; blocks until PING
        answers. timeout_s bounds the server's boot, not a first-time apt-get install."""
        with self._start_lock(timeout_s + _APT_TIMEOUT_S):  # a concurrent caller may be installing
            pid = self.pid()
            if pid is not None:
                self._check_same_address(pid)
                # Instant when up; also checks the password.
                self._wait_ready(pid, self._ping, time.monotonic() + timeout_s)
                return
            check_port_free(self.host, self.port, "Redis", SETTING)
            argv = [
                self.ensure_installed(),
                "--port", str(self.port),
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
        client = redis_py.Redis(
            host=self.host, port=self.port, password=self.password,
            socket_connect_timeout=1, socket_timeout=1,
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


def _which_redis() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None
