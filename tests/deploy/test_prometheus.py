"""Prometheus config and rules: promtool's checks and the rules' unit tests, then a real
Prometheus scraping a real worker and evaluating every query of the dashboards and
rules. promtool only proves a query parses; the scrape proves it names metrics the
worker really exports."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.common import (
    PROMETHEUS_CONFIG,
    RULE_FILES,
    RULES_TEST_FILE,
    dashboard_queries,
    grafana_to_promql,
    load_yaml,
    metric_names,
    recorded_names,
    rule_queries,
    rules,
)
from tests.support.eventgen import user_stream
from tests.support.harness import Deployment, Worker, free_port, produce, run
from tools.infra.debian import require

SEVERITIES = {"critical", "warning", "info"}
PROMETHEUS_TIMEOUT_S = 60.0


def _promtool(*args: str) -> str:
    out = subprocess.run([require("promtool", "prometheus"), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_promtool_accepts_config_and_rules() -> None:
    assert RULE_FILES
    _promtool("check", "config", str(PROMETHEUS_CONFIG))
    _promtool("check", "rules", *map(str, RULE_FILES))


def test_rules_unit_tests_pass() -> None:
    _promtool("test", "rules", str(RULES_TEST_FILE))


def test_every_alert_is_documented_and_proven_to_fire() -> None:
    """A rule that cannot fire is a bug: each alert needs a unit test where it does."""
    fired = {case["alertname"] for test in load_yaml(RULES_TEST_FILE)["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    silent = {case["alertname"] for test in load_yaml(RULES_TEST_FILE)["tests"]
              for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")}
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 6
    for rule in alerts:
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"].endswith("docs/operations.md#alerts"), name
        assert name in fired, f"{name} is never shown to fire in {RULES_TEST_FILE.name}"
        assert name in silent, f"{name} is never shown to stay silent in {RULES_TEST_FILE.name}"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _query(base: str, expr: str) -> dict[str, Any]:
    try:
        return _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    except urllib.error.HTTPError as err:  # 400: the body says why
        return json.loads(err.read())


def _exported_names(exposition: str) -> set[str]:
    """Sample names the worker exports, with a histogram's or counter's derived ones
    even before its first observation (a labelled metric has no sample until then)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


def _wait(what: str, check: Any, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + PROMETHEUS_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prometheus exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {PROMETHEUS_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.mark.integration
def test_real_prometheus_scrapes_a_worker_and_evaluates_every_query(
    deployment: Deployment, workers: list[Worker], tmp_path: Path
) -> None:
    prometheus = require("prometheus", "prometheus")
    stream = user_stream(seed=7, n=400)  # every outcome kind, duplicates and malformed messages
    deployment.create_topics()
    run(produce(deployment.bootstrap, [(deployment.topic(t), k, v) for t, k, v in stream.messages]))
    worker = Worker(deployment, "w1").start()
    workers.append(worker)

    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [{"job_name": "ledger", "static_configs": [{"targets": [f"127.0.0.1:{worker.port}"]}]}],
    }))
    base = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={base.removeprefix('http://')}"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        def counted() -> bool:
            result = _query(base, "sum(ledger_events_total)")["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) > 0

        _wait("ledger_events_total > 0 in Prometheus", counted, proc, log)

        failed = {}
        queries = [(w, grafana_to_promql(e)) for w, e in dashboard_queries()] + rule_queries()
        for where, expr in queries:
            answer = _query(base, expr)
            if answer["status"] != "success":
                failed[where] = f"{expr}: {answer.get('error')}"
        assert not failed, json.dumps(failed, indent=1)

        # Each rule evaluated at least once, none with an error.
        def evaluated() -> list[dict[str, Any]]:
            groups = _get(f"{base}/api/v1/rules")["data"]["groups"]
            found = [r for g in groups for r in g["rules"]]
            return found if found and all(r["health"] != "unknown" for r in found) else []

        evaluated_rules = _wait("every rule evaluated", evaluated, proc, log)
        assert len(evaluated_rules) == len(rules())
        assert not [(r["name"], r.get("lastError")) for r in evaluated_rules if r["health"] != "ok"]

        with urllib.request.urlopen(worker.url("/metrics"), timeout=10) as resp:
            exported = _exported_names(resp.read().decode()) | {"up"} | recorded_names()
        referenced = {(where, name) for where, expr in queries for name in metric_names(expr)}
        unknown = sorted((where, name) for where, name in referenced if name not in exported)
        assert not unknown, f"metrics the worker does not export: {unknown}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
