"""The Grafana dashboards and provisioning load as files: Grafana itself is not run
here, so what makes it skip a dashboard silently (a duplicate uid, a panel id clash, a
missing datasource uid, a provider path that holds nothing) is checked instead. That
their queries parse and name real metrics is checked against a real Prometheus in
test_prometheus.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from agents import metrics as ledger_metrics
from pipeline import metrics
from tests.deploy.common import (
    COMPOSE_FILE,
    DASHBOARDS_DIR,
    GRAFANA_PROVISIONING,
    dashboard_queries,
    dashboards,
    load_yaml,
    metric_names,
)

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
BOARDS = dashboards()


def test_there_are_the_four_dashboards() -> None:
    assert {b["uid"] for b in BOARDS.values()} == {"ledger-flows", "ledger-latency", "ledger-lag", "ledger-fraud"}


@pytest.mark.parametrize("path", list(BOARDS), ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    board: dict[str, Any] = BOARDS[path]
    assert board["title"] and board["uid"] and len(board["uid"]) <= 40
    assert board["schemaVersion"] >= 39
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids {ids}"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        where = f"panel {panel['id']} ({panel['title']})"
        assert panel["type"] == "timeseries", where
        assert panel["datasource"] == DATASOURCE, where
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, where
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{where} overlaps another panel"
        cells |= area
        assert panel["targets"], where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            assert target["expr"].strip(), where


def test_dashboard_uids_are_unique() -> None:
    uids = [b["uid"] for b in BOARDS.values()]
    assert len(uids) == len(set(uids))


def test_every_pipeline_metric_is_on_a_dashboard() -> None:
    """A metric no dashboard shows is one nobody looks at."""
    shown = {name for _, expr in dashboard_queries() for name in metric_names(expr)}
    families = {m.describe()[0].name for module in (metrics, ledger_metrics) for m in vars(module).values()
                if isinstance(m, MetricWrapperBase)}
    assert len(families) >= 20
    missing = {f for f in families if not shown & {f, f"{f}_total", f"{f}_bucket", f"{f}_sum", f"{f}_count"}}
    assert not missing, f"on no dashboard: {sorted(missing)}"


def test_metric_name_tokenizer() -> None:
    """The tokenizer the metric checks rely on."""
    expr = ('histogram_quantile(0.99, sum by (le, phase) (rate(ledger_cycle_phase_seconds_bucket{phase!="x"}'
            '[$__rate_interval]))) > 3 * (avg_over_time(ledger:fraud_alerts:rate10m[6h] offset 10m) or vector(0))'
            ' and on () absent(up{job="ledger"} == 1)')
    assert metric_names(expr) == {"ledger_cycle_phase_seconds_bucket", "ledger:fraud_alerts:rate10m", "up"}


def test_datasource_is_the_dashboards_uid_and_the_compose_prometheus() -> None:
    [source] = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert source["uid"] == DATASOURCE["uid"] and source["type"] == DATASOURCE["type"]
    host = source["url"].split("//")[1].split(":")[0]
    assert host in load_yaml(COMPOSE_FILE)["services"]


def test_dashboard_provider_path_is_where_compose_mounts_the_dashboards() -> None:
    [provider] = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "ledger.yml")["providers"]
    assert provider["type"] == "file"
    grafana = load_yaml(COMPOSE_FILE)["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    source = mounts[provider["options"]["path"]]
    assert (COMPOSE_FILE.parent / source).resolve() == DASHBOARDS_DIR.resolve()
    assert any(DASHBOARDS_DIR.glob("*.json"))
