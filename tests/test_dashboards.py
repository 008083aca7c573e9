"""The Grafana dashboards: generated from grafana/build.py, well formed.
(Every expression is run against a live Prometheus in test_e2e_prometheus.)"""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"


def load_builder():
    spec = importlib.util.spec_from_file_location("grafana_build", ROOT / "grafana" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def expressions(board: dict) -> list[str]:
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]


def test_committed_dashboards_are_what_build_py_generates():
    generated = load_builder().render()
    committed = {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    assert committed == generated, "run `python3 grafana/build.py` and commit the result"


def test_two_dashboards_with_the_expected_panels():
    boards = dashboards()
    overview, monitor = boards["cronmon-overview.json"], boards["cronmon-monitor.json"]
    titles = {p["title"] for p in overview["panels"]}
    assert {"Monitors", "Runs by outcome", "Currently failing, missed or stuck", "Down", "Up"} <= titles
    titles = {p["title"] for p in monitor["panels"]}
    assert {"Status", "Run duration", "Runs by outcome", "Reported numbers (meta)"} <= titles
    # Dashboards work with the default series: nothing opt-in is queried.
    for board in (overview, monitor):
        for expr in expressions(board):
            assert "cronmon_run_duration_seconds" not in expr and "cronmon_checkins_total" not in expr, expr


@pytest.mark.parametrize("name", ["cronmon-overview.json", "cronmon-monitor.json"])
def test_templated_by_team_group_and_monitor(name):
    board = dashboards()[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "team", "group", "monitor"} <= variables.keys()
    for expr in expressions(board):
        assert "$monitor" in expr or expr.startswith(
            ("min(cronmon_", "count(cronmon_build_info", "histogram_quantile(0.99")
        ), expr
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_provisioning_points_at_the_dashboards():
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/cronmon.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"


def grafana_to_promql(expr: str, monitor: str) -> str:
    """Substitute the Grafana variables the way Grafana would."""
    return (
        expr.replace("$team", ".*")
        .replace("$group", ".*")
        .replace("$monitor", monitor)
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
    )


def variable_queries(board: dict) -> list[tuple[str, str]]:
    """(label, series selector) of every label_values() variable."""
    out = []
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable.get("definition", ""))
        if match:
            out.append((match.group(2), match.group(1)))
    return out
