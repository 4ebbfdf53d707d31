"""What the deployment tests share: the repository's deploy files, the settings the
pipeline really reads, and the PromQL of the dashboards and rules.

The deploy files are checked against the code (settings.py, metrics.py) rather than
against copies of names in the tests, so a renamed setting or metric fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline import settings as settings_module
from pipeline.settings import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))  # *.test.yml are promtool unit tests
RULES_TEST_FILE = RULES_DIR / "ledger.rules.test.yml"
DASHBOARDS_DIR = DEPLOY / "grafana" / "dashboards"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
K8S_DIR = DEPLOY / "k8s"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


class _RecordingEnv(dict[str, str]):
    """An empty environment that remembers every variable name looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.names.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.names.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.names.add(str(key))
        return super().__contains__(key)


def setting_names() -> frozenset[str]:
    """The PIPELINE_* variables settings.load() reads: observed, not parsed from the
    source, so a setting read under a computed name still counts."""
    env = _RecordingEnv()
    settings_module.load(env)
    names = frozenset(n for n in env.names if n.startswith("PIPELINE_"))
    assert len(names) >= 15, names  # load() reads every setting unconditionally
    return names


def dashboards() -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every target of every dashboard panel."""
    out = []
    for path, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name} panel {panel['id']} {target['refId']}", target["expr"]))
    return out


def rules() -> list[dict[str, Any]]:
    """Every rule (alerting and recording) of the rule files."""
    return [rule for path in RULE_FILES for group in load_yaml(path)["groups"] for rule in group["rules"]]


def rule_queries() -> list[tuple[str, str]]:
    return [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends: its interval variables replaced by a duration."""
    return re.sub(r"\$__(rate_interval|interval|range)\b", "1m", expr)


_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "offset", "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects. A small tokenizer rather than a PromQL
    parser (there is none in Python here): strings, label matchers, grouping clauses,
    ranges and Grafana variables are removed; what remains that is not a keyword and
    not called like a function is a metric name."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if m.group() in _NOT_METRICS or expr[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group())
    return names
