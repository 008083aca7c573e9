"""The whole alerting path with the real servers: cronmon (real clock) ->
Prometheus (1s scrapes, the shipped rules) -> Alertmanager (the shipped
routes and inhibitions, shortened waits) -> a webhook receiver here."""

import asyncio
import time

import httpx
import pytest

from exporter.model import CheckIn, Kind
from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import write_config
from .servers import WebhookReceiver, alertmanager_config_for_tests, start_alertmanager, start_prometheus
from .test_dashboards import dashboards, expressions, grafana_to_promql, variable_queries

pytestmark = pytest.mark.e2e

KEY = "e2e-ping-key-0123456789"
CONFIG = """
monitors:
  - id: heartbeat
    schedule: {interval: 2s}
    grace: 1s
    labels: {team: data}
  - id: etl
    schedule: {interval: 1h}
    labels: {team: platform, severity: critical}
  - id: backup
    schedule: {interval: 1h}
    max_runtime: 2s
    labels: {team: data}
  - id: steady
    schedule: {interval: 1h}
    max_runtime: 10m
    labels: {team: data, severity: warning}
    group: reports
  - id: quick
    schedule: {interval: 1h}
    min_runtime: 1m
    labels: {team: data}
  - id: ignored
    schedule: {interval: 1h}
    alerts: {failed: false}
    labels: {team: data}
"""


@pytest.fixture
async def stack(aiohttp_server, app_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("CRONMON_PING_KEY", KEY)
    settings = app_settings(write_config(tmp_path, CONFIG), sweep_interval=0.2)
    app = create_app(settings)  # real clock
    cronmon = await aiohttp_server(app)
    receiver = WebhookReceiver()
    hook = await aiohttp_server(receiver.app())
    am, am_url = await start_alertmanager(tmp_path, alertmanager_config_for_tests(str(hook.make_url("")).rstrip("/")))
    prom, prom_url = await start_prometheus(tmp_path, f"127.0.0.1:{cronmon.port}", am_url)
    try:
        yield {
            "cronmon": str(cronmon.make_url("")).rstrip("/"), "receiver": receiver,
            "prometheus": prom_url, "core": app[CORE],
        }
    finally:
        prom.stop()
        am.stop()


async def ping(stack, path: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{stack['cronmon']}/ping/{KEY}/{path}")
        assert response.status_code == 200, response.text


async def test_missed_failed_and_stuck_jobs_page_and_resolve(stack):
    receiver = stack["receiver"]
    await ping(stack, "heartbeat")
    missed_deadline = time.time() + 3  # interval 2s + grace 1s
    await ping(stack, "etl/fail")
    await ping(stack, "backup/start")
    await ping(stack, "steady/start")
    await ping(stack, "quick/start")
    await ping(stack, "ignored/fail")  # its failed alert is switched off
    await asyncio.sleep(1.2)
    await ping(stack, "quick")  # 1.2 s, shorter than its min_runtime of 1 minute
    # Numeric meta has no Healthchecks form; it comes through the core
    # (the Crontify/CrossCheck adapters feed it the same way).
    await stack["core"].record(CheckIn("steady", Kind.SUCCESS, time.time(), meta={"rows_processed": 1200}))

    missed = await receiver.wait_for("CronJobMissed", monitor="heartbeat")
    assert missed.receiver_path == "data-pager"  # team=data, default severity critical
    assert missed.labels["team"] == "data" and missed.labels["severity"] == "critical"
    assert missed.annotations["link"].endswith("/monitors/heartbeat")
    print(f"\nrules path: missed deadline -> webhook in {missed.received_at - missed_deadline:.1f}s")

    failed = await receiver.wait_for("CronJobFailed", monitor="etl")
    assert failed.receiver_path == "platform-pager"
    stuck = await receiver.wait_for("CronJobStuck", monitor="backup")
    assert stuck.receiver_path == "data-pager"
    too_fast = await receiver.wait_for("CronJobSilentFailure", monitor="quick")
    assert too_fast.labels["severity"] == "warning" and "min_runtime" in too_fast.annotations["description"]

    # While jobs are failing, missed and stuck, every dashboard query and
    # variable returns data from this Prometheus.
    await assert_dashboards_return_data(stack["prometheus"])

    # Good runs resolve each of them.
    await ping(stack, "heartbeat")
    await ping(stack, "etl")
    await ping(stack, "backup")
    await receiver.wait_for("CronJobMissed", "resolved", monitor="heartbeat")
    await receiver.wait_for("CronJobFailed", "resolved", monitor="etl")
    await receiver.wait_for("CronJobStuck", "resolved", monitor="backup")
    # The stuck run finished after max_runtime: that is CronJobTooLong (a warning).
    too_long = await receiver.wait_for("CronJobTooLong", monitor="backup")
    assert too_long.labels["severity"] == "warning" and too_long.receiver_path == "data-tickets"
    # The steady job never alerted; nor did the failing job whose failed alert is off
    # (etl's CronJobFailed, from the same scrapes, came and went meanwhile).
    assert not [n for n in receiver.notifications if n.labels.get("monitor") in ("steady", "ignored")]


async def assert_dashboards_return_data(prometheus: str) -> None:
    empty = []
    async with httpx.AsyncClient() as client:
        # rate() and increase() need at least two scrapes in their window.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            query = {"query": "count_over_time(cronmon_build_info[1m]) >= 3"}
            if (await client.get(f"{prometheus}/api/v1/query", params=query)).json()["data"]["result"]:
                break
            await asyncio.sleep(0.5)
        for name, board in dashboards().items():
            monitor = "steady" if name == "cronmon-monitor.json" else ".*"
            for expr in expressions(board):
                query = grafana_to_promql(expr, monitor)
                reply = (await client.get(f"{prometheus}/api/v1/query", params={"query": query})).json()
                assert reply["status"] == "success", (query, reply)
                if not reply["data"]["result"]:
                    empty.append(query)
            for label, selector in variable_queries(board):
                selector = grafana_to_promql(selector, ".*")
                url = f"{prometheus}/api/v1/label/{label}/values"
                reply = (await client.get(url, params={"match[]": selector})).json()
                if not reply["data"]:
                    empty.append(f"label_values({selector}, {label})")
    assert not empty, "queries without data:\n" + "\n".join(empty)
