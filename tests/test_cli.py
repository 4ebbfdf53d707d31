"""The command line: --help on every command, and one-line errors for bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import build_parser
from pipeline.settings import PROJECT_ROOT

COMMANDS = ["worker", "dev", "topics", "run", "simulate", "bench", "fraud-eval", "soak", "redrive"]


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize(("variable", "value"), [
    ("PIPELINE_WEB_PORT", "http"), ("PIPELINE_PARTITIONS", "0"), ("PIPELINE_REDIS_URL", "http://x"),
    ("PIPELINE_ECONOMICS_FILE", "/nonexistent.toml"), ("PIPELINE_HOLD_SUSPICIOUS_PAYOUTS", "yes"),
    ("PIPELINE_PAYOUT_MAX_WAIT_S", "0"),
    ("PIPELINE_DATA_DIR", str(Path(__file__))),  # a file, not a folder
    ("PIPELINE_HTTP_TOKEN", "short"), ("PIPELINE_KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("PIPELINE_KAFKA_SASL_MECHANISM", "GSSAPI"), ("PIPELINE_KAFKA_CA_FILE", "/nonexistent.pem"),
])
def test_a_bad_setting_stops_the_worker_with_one_line_naming_it(variable: str, value: str) -> None:
    env = {**os.environ, variable: value}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "worker"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and variable in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("servers", ["127.0.0.1:1", "nosuchhost.invalid:9092"])
def test_an_unreachable_broker_is_one_line_too(servers: str) -> None:
    env = {**os.environ, "PIPELINE_BOOTSTRAP_SERVERS": servers}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "worker"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2
    assert ("PIPELINE_BOOTSTRAP_SERVERS" in proc.stderr and proc.stderr.count("\n") == 1
            and "Traceback" not in proc.stderr)


def test_without_the_tools_package_the_runtime_commands_work_and_the_tools_say_how(tmp_path: Path) -> None:
    """The worker image holds pipeline/ and agents/ only (Dockerfile): the command line
    still builds, and a tool command says how to get the tools instead of a traceback."""
    import shutil

    for package in ("pipeline", "agents"):
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    # Only the copy is found: not the checkout's tools/, through sys.path or the editable
    # install's finder.
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    code = ("import sys, runpy; "
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]; "
            f"sys.path[:] = [p for p in sys.path if p not in ('', {str(PROJECT_ROOT)!r})]; "
            "sys.argv = ['pipeline'] + sys.argv[1:]; runpy.run_module('pipeline', run_name='__main__')")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)

    helped = run("--help")
    assert helped.returncode == 0 and "worker" in helped.stdout and "bench" in helped.stdout
    tool = run("bench", "uniform")
    assert tool.returncode == 2
    assert "the tools package is not installed here" in tool.stderr and "pip install -e '.[tools]'" in tool.stderr
