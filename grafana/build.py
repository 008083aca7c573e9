#!/usr/bin/env python3
"""Generates the Grafana dashboards in grafana/dashboards/ (dashboards as
code: edit this file, run `python3 grafana/build.py`, commit both; a test
fails when they differ).

Every query de-duplicates across cronmon replicas, which all export the
same Redis-backed series (`max by (monitor, ...)` before any `sum`),
and filters by the template variables: `team` and `monitor` are labels on
every cronmon series; `group` lives on cronmon_monitor_info and is joined
in. The datasource is a variable, so the dashboards import into any
Grafana with any Prometheus datasource.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}

SEL = 'team=~"$team", monitor=~"$monitor"'
# Restricts a per-monitor vector to the monitors of the selected groups.
IN_GROUP = ' * on (monitor) group_left () max by (monitor) (cronmon_monitor_info{group=~"$group"})'


def variables(single_monitor: bool) -> list[dict]:
    def query_var(name: str, query: str, multi: bool = True) -> dict:
        return {
            "name": name,
            "label": name.capitalize(),
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": multi,
            "allValue": ".*",
            "current": {},
        }

    monitor_query = 'label_values(cronmon_monitor_info{team=~"$team", group=~"$group"}, monitor)'
    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
        },
        query_var("team", "label_values(cronmon_monitor_info, team)"),
        query_var("group", "label_values(cronmon_monitor_info, group)"),
        query_var("monitor", monitor_query, multi=not single_monitor),
    ]


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = self.y = 0
        self.row_height = 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_height
            self.row_height = 0
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        panel["id"] = len(self.panels) + 1
        panel["datasource"] = DS
        self.x += w
        self.row_height = max(self.row_height, h)
        self.panels.append(panel)


def target(expr: str, ref: str = "A", legend: str = "", instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"], t["range"] = True, False
    if table:
        t["format"] = "table"
    return t


def stat(title: str, expr: str, unit: str = "none", description: str = "", color: str = "green") -> dict:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {"unit": unit, "color": {"mode": "fixed", "fixedColor": color}},
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "none"},
    }


def timeseries(title: str, targets: list[dict], unit: str = "none", bars: bool = False, description: str = "") -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"drawStyle": "bars" if bars else "line", "fillOpacity": 60 if bars else 10,
                           "stacking": {"mode": "normal" if bars else "none"}},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }


def table(title: str, targets: list[dict], description: str = "", overrides: list | None = None) -> dict:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "targets": targets,
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ],
        "fieldConfig": {"defaults": {}, "overrides": overrides or []},
        "options": {"showHeader": True},
    }


STATUS_COLORS = {
    "up": "green", "running": "blue", "late": "yellow", "new": "text",
    "paused": "text", "down": "red", "failed": "red", "stuck": "orange",
}


def overview() -> dict:
    layout = Layout()
    for status in ("up", "running", "late", "down", "failed", "stuck", "paused", "new"):
        layout.add(
            stat(
                status.capitalize(),
                f'count((max by (monitor) (cronmon_monitor_status{{{SEL}, status="{status}"}}) == 1){IN_GROUP}) or vector(0)',
                color=STATUS_COLORS[status],
                description=f"Monitors whose status is {status}.",
            ),
            3, 4,
        )
    layout.add(
        table(
            "Currently failing, missed or stuck",
            [target(
                f'(max by (monitor, status) (cronmon_monitor_status{{{SEL}, status=~"down|failed|stuck"}}) == 1){IN_GROUP}',
                instant=True, table=True,
            )],
            description="Monitors that are down (missed), failed or stuck right now.",
        ),
        24, 7,
    )
    layout.add(
        table(
            "Monitors",
            [
                target(f'(max by (monitor, status) (cronmon_monitor_status{{{SEL}}}) == 1){IN_GROUP}', "A", instant=True, table=True),
                target(f'max by (monitor) (cronmon_last_success_timestamp_seconds{{{SEL}}}){IN_GROUP} * 1000', "B", instant=True, table=True),
                target(f'max by (monitor) (cronmon_next_expected_timestamp_seconds{{{SEL}}}){IN_GROUP} * 1000', "C", instant=True, table=True),
                target(f'max by (monitor) (cronmon_last_duration_seconds{{{SEL}}}){IN_GROUP}', "D", instant=True, table=True),
            ],
            description="Every monitor: its status, last success, next expected run and last run's duration.",
            overrides=[
                {"matcher": {"id": "byName", "options": "Value #B"},
                 "properties": [{"id": "displayName", "value": "Last success"}, {"id": "unit", "value": "dateTimeFromNow"}]},
                {"matcher": {"id": "byName", "options": "Value #C"},
                 "properties": [{"id": "displayName", "value": "Next expected"}, {"id": "unit", "value": "dateTimeFromNow"}]},
                {"matcher": {"id": "byName", "options": "Value #D"},
                 "properties": [{"id": "displayName", "value": "Last duration"}, {"id": "unit", "value": "s"}]},
                {"matcher": {"id": "byName", "options": "Value #A"}, "properties": [{"id": "custom.hidden", "value": True}]},
            ],
        ),
        24, 10,
    )
    layout.add(
        timeseries(
            "Runs by outcome",
            [target(f'sum by (outcome) (max by (monitor, outcome) (increase(cronmon_runs_total{{{SEL}}}[$__rate_interval])){IN_GROUP})', legend="{{outcome}}")],
            bars=True,
            description="Run outcomes recorded per interval (missed slots and timeouts included).",
        ),
        12, 8,
    )
    layout.add(
        timeseries(
            "Monitors by status",
            [target(f'sum by (status) (max by (monitor, status) (cronmon_monitor_status{{{SEL}}}){IN_GROUP})', legend="{{status}}")],
            description="How many monitors were in each status over time.",
        ),
        12, 8,
    )
    layout.add(stat("Store up", "min(cronmon_store_up)", description="0: cronmon cannot reach Redis."), 6, 4)
    layout.add(
        stat("Config reload OK", "min(cronmon_config_last_reload_successful)",
             description="0: the last config reload failed; the previous config keeps running."),
        6, 4,
    )
    layout.add(stat("cronmon instances", "count(cronmon_build_info)"), 6, 4)
    layout.add(
        stat("Ping latency p99", 'histogram_quantile(0.99, sum by (le) (rate(cronmon_http_request_duration_seconds_bucket{handler="/ping/{tail}"}[$__rate_interval])))', unit="s"),
        6, 4,
    )
    return dashboard("cronmon-overview", "cronmon: fleet overview", layout, single_monitor=False)


def monitor_drilldown() -> dict:
    layout = Layout()
    one = 'monitor="$monitor"'
    layout.add(
        {
            "type": "state-timeline",
            "title": "Status",
            "targets": [target(f"max by (status) (cronmon_monitor_status{{{one}}}) == 1", legend="{{status}}")],
            "fieldConfig": {
                "defaults": {"color": {"mode": "fixed"}},
                "overrides": [
                    {"matcher": {"id": "byName", "options": status},
                     "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}]}
                    for status, color in STATUS_COLORS.items()
                ],
            },
            "options": {"showValue": "never", "mergeValues": True},
        },
        24, 6,
    )
    layout.add(stat("Last success", f"max(cronmon_last_success_timestamp_seconds{{{one}}}) * 1000", unit="dateTimeFromNow"), 6, 4)
    layout.add(stat("Next expected", f"max(cronmon_next_expected_timestamp_seconds{{{one}}}) * 1000", unit="dateTimeFromNow"), 6, 4)
    layout.add(stat("Consecutive failures", f"max(cronmon_consecutive_failures{{{one}}})", color="red"), 6, 4)
    layout.add(stat("Running now", f"max(cronmon_running_runs{{{one}}})", color="blue"), 6, 4)
    layout.add(
        timeseries(
            "Run duration",
            [
                target(f"max(cronmon_last_duration_seconds{{{one}}})", "A", "last run"),
                target(f"max(quantile_over_time(0.5, cronmon_last_duration_seconds{{{one}}}[$__range]))", "B", "p50 over the range"),
                target(f"max(quantile_over_time(0.9, cronmon_last_duration_seconds{{{one}}}[$__range]))", "C", "p90 over the range"),
                target(f"max(cronmon_max_runtime_seconds{{{one}}})", "D", "max_runtime"),
            ],
            unit="s",
            description=(
                "The last run's duration, percentiles of it over the time range, and max_runtime (0: none). "
                "Per-run percentiles need the opt-in duration histogram (metrics: [duration_histogram])."
            ),
        ),
        12, 8,
    )
    layout.add(
        timeseries(
            "Runs by outcome",
            [target(f"max by (outcome) (increase(cronmon_runs_total{{{one}}}[$__rate_interval]))", legend="{{outcome}}")],
            bars=True,
        ),
        12, 8,
    )
    layout.add(
        timeseries(
            "Runs by outcome",
            [target(f"max by (outcome) (increase(cronmon_runs_total{{{one}}}[$__rate_interval]))", legend="{{outcome}}")],
            bars=True,
        ),
        12, 8,
    )
    layout.add(
        timeseries(
            "Reported numbers (meta)",
            [target(f"max by (key) (cronmon_run_meta{{{one}}})", legend="{{key}}")],
            description="The last value of each numeric meta key the job reported.",
        ),
        12, 8,
    )
    return dashboard("cronmon-monitor", "cronmon: monitor", layout, single_monitor=True)


def dashboard(uid: str, title: str, layout: Layout, single_monitor: bool) -> dict:
    return {
        "uid": uid,
        "title": title,
        "tags": ["cronmon"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": variables(single_monitor)},
        "links": [
            {"title": "cronmon dashboards", "type": "dashboards", "tags": ["cronmon"], "asDropdown": True,
             "includeVars": True, "keepTime": True}
        ],
        "panels": layout.panels,
    }


def render() -> dict[str, str]:
    return {
        f"{board['uid']}.json": json.dumps(board, indent=2, sort_keys=True) + "\n"
        for board in (overview(), monitor_drilldown())
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
