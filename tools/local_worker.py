"""A worker process started by a command (`run`, `bench`) and stopped when it is done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.settings import Settings

HEALTH_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def get(s: Settings, path: str, raw: bool = False) -> Any:
    """A worker's JSON answer (or its text, `raw`), with the bearer token if one is set."""
    request = urllib.request.Request(f"http://127.0.0.1:{s.web_port}{path}")
    if s.http_tokens:
        request.add_header("Authorization", f"Bearer {s.http_tokens[0]}")
    with urllib.request.urlopen(request, timeout=5) as resp:
        body = resp.read()
    return body.decode() if raw else json.loads(body)


@contextmanager
def running_worker(s: Settings, log_path: Path, env: dict[str, str] | None = None,
                   health_timeout_s: float = HEALTH_TIMEOUT_S,
                   cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m pipeline worker` with the current environment (plus `env`), healthy
    (its partitions restored) within `health_timeout_s`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting a worker (log: {log_path})")
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker"], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, cwd=cwd,
        )
    try:
        deadline = time.monotonic() + health_timeout_s
        while True:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}; see {log_path}")
            try:
                if get(s, "/health").get("status") == "ok":
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker was not healthy after {health_timeout_s:.0f}s; see {log_path}")
            time.sleep(0.3)
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
