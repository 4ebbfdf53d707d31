"""Debian packages the local infrastructure and its tests need, installed on demand.

CI starts from a clean machine: when a program is missing and we are root, apt-get
installs its package (under a lock, so parallel callers install once); otherwise the
error names the command that fixes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from pipeline.settings import PROJECT_ROOT
from tools.infra.procs import InfraError, file_lock

APT_TIMEOUT_S = 900
_INSTALL_LOCK = PROJECT_ROOT / "var" / "cache" / "apt-install.lock"
_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")


def which(program: str) -> str | None:
    """PATH first, then the usual system directories (root's PATH may lack sbin)."""
    found = shutil.which(program)
    if found:
        return found
    for directory in _DIRS:
        candidate = os.path.join(directory, program)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require(program: str, package: str) -> str:
    """Path of `program`, installing Debian's `package` first when root and missing."""
    found = which(program)
    if found:
        return found
    fix = f"run `sudo apt-get install {package}` (or put {program} on PATH) and retry"
    if os.geteuid() != 0:
        raise InfraError(f"{program} is not installed; {fix}")
    apt = shutil.which("apt-get")
    if apt is None:
        raise InfraError(f"{program} is not installed and apt-get is missing; put {program} on PATH")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with file_lock(_INSTALL_LOCK, APT_TIMEOUT_S, f"{package} install"):
        found = which(program)  # installed by a concurrent caller while we waited
        if found:
            return found
        deadline = time.monotonic() + APT_TIMEOUT_S
        for cmd in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", package]):
            remaining = max(1.0, deadline - time.monotonic())
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=remaining)
            except subprocess.TimeoutExpired:
                raise InfraError(f"`{' '.join(cmd)}` took over {APT_TIMEOUT_S} s; {fix}") from None
            if out.returncode != 0:
                detail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-10:])
                raise InfraError(f"`{' '.join(cmd)}` failed; {fix}:\n{detail}")
    found = which(program)
    if not found:
        raise InfraError(f"apt-get installed {package} but {program} is not on PATH; check `dpkg -L {package}`")
    return found


def kcat() -> str:
    """kcat, librdkafka's command-line client: tests produce with it as a client of
    another Kafka implementation would (its own codecs and, unless told, its own CRC32
    partitioner)."""
    return require("kcat", "kcat")
