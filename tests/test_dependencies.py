"""The lock files: in step with pyproject.toml (else: `make lock`), every pin hashed,
and audited for known vulnerabilities.

The audit asks pip-audit's advisory sources about every pin of requirements.lock and
fails on any known vulnerability. Where neither source can answer (this workplace
reaches PyPI's project pages but not its per-version JSON, which pip-audit's `pypi`
service needs, nor OSV), it falls back to PyPI's project JSON, whose `vulnerabilities`
list is that of the latest release: pins at their latest release are audited there,
and the test fails on a vulnerability among them; it is then skipped, naming what could
not be audited, since a pass would claim more than was checked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"
FIX = "run `make lock` and commit requirements.lock and requirements-runtime.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile lock file."""
    out: dict[str, tuple[str, int]] = {}
    name = None
    for line in lock.read_text().splitlines():
        if m := _PIN.match(line):
            name = canonicalize_name(m.group(1))
            out[name] = (m.group(2), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            out[name] = (out[name][0], out[name][1] + 1)
        elif line and not line.startswith(" "):
            name = None
    return out


def declared() -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = [Requirement(r) for r in project["project"]["dependencies"]]
    runtime += [Requirement(r) for r in project["build-system"]["requires"]]
    runtime += [Requirement(line) for line in (ROOT / "requirements.in").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    extras = project["project"].get("optional-dependencies", {})
    return runtime, [Requirement(r) for r in extras.get("test", [])]


def test_the_locks_pin_every_declared_requirement_with_hashes() -> None:
    full, runtime_pins = pins(LOCK), pins(RUNTIME_LOCK)
    runtime, test = declared()
    for lock, required in ((full, runtime + test), (runtime_pins, runtime)):
        for req in required:
            name = canonicalize_name(req.name)
            assert name in lock, f"{req} is not in the lock: {FIX}"
            assert req.specifier.contains(lock[name][0], prereleases=True), (
                f"{req} but the lock has {lock[name][0]}: {FIX}")
    assert all(n for _, n in full.values()) and all(n for _, n in runtime_pins.values()), "a pin without --hash"
    # The image's subset has the versions that the tests ran with.
    assert {n: v for n, (v, _) in runtime_pins.items()} == {n: full[n][0] for n in runtime_pins}, FIX
    test_only = {canonicalize_name(r.name) for r in test} - {canonicalize_name(r.name) for r in runtime}
    assert not test_only & set(runtime_pins), "a test requirement in the runtime lock"


def _pip_audit(service: str) -> tuple[list[dict[str, Any]] | None, str]:
    """pip-audit's dependencies (with their vulnerabilities), or None and why not."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip_audit", "-r", str(LOCK), "--disable-pip", "-s", service, "-f", "json",
         "--progress-spinner", "off", "--timeout", "20"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    try:
        deps = json.loads(proc.stdout)["dependencies"]
    except (ValueError, KeyError):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"pip-audit -s {service} failed (exit {proc.returncode}): {last[:300]}"
    skipped = [d for d in deps if d.get("skip_reason")]
    if skipped:
        return None, (f"pip-audit -s {service} could not audit {len(skipped)} of {len(deps)} pins: "
                      f"{skipped[0]['skip_reason']}")
    return deps, f"pip-audit -s {service} audited {len(deps)} pins"


def _latest_release_vulns(name: str) -> tuple[str, list[str]] | None:
    """(latest version, ids of its known, not withdrawn, vulnerabilities) from PyPI's
    project JSON, or None if unreachable."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=20) as resp:
            data = json.load(resp)
    except (OSError, ValueError, urllib.error.URLError):
        return None
    vulns = [v.get("id", "?") for v in data.get("vulnerabilities") or [] if not v.get("withdrawn")]
    return data["info"]["version"], vulns


def test_no_pin_of_the_lock_has_a_known_vulnerability() -> None:
    reasons = []
    for service in ("pypi", "osv"):
        deps, why = _pip_audit(service)
        if deps is not None:
            found = {f"{d['name']}=={d['version']}": [v["id"] for v in d["vulns"]] for d in deps if d.get("vulns")}
            assert not found, f"known vulnerabilities ({why}): {found}"
            return
        reasons.append(why)
    # Fallback: PyPI's project JSON lists the vulnerabilities of the latest release only.
    locked = {n: v for n, (v, _) in pins(LOCK).items()}
    with ThreadPoolExecutor(8) as pool:
        latest = dict(zip(locked, pool.map(_latest_release_vulns, locked)))
    unreachable = sorted(n for n, r in latest.items() if r is None)
    at_latest = {n: r for n, r in latest.items() if r is not None and Version(r[0]) == Version(locked[n])}
    found = {f"{n}=={locked[n]}": r[1] for n, r in at_latest.items() if r[1]}
    assert not found, f"known vulnerabilities (PyPI project JSON, latest releases): {found}"
    older = sorted(f"{n}=={locked[n]} (latest {r[0]})"
                   for n, r in latest.items() if r is not None and n not in at_latest)
    if older or unreachable:
        pytest.skip(
            "; ".join(reasons) + f"; PyPI's project JSON: {len(at_latest)} of {len(locked)} pins are their latest "
            f"release and have no known vulnerability; not audited: {len(older)} older pins ({', '.join(older)})"
            + (f", {len(unreachable)} unreachable ({', '.join(unreachable)})" if unreachable else "")
        )
