"""The direct bridge: which alerts, with which labels, and delivery to a
real Alertmanager (also when it is down at first, or hangs)."""

import asyncio
import time

import httpx
import pytest
from aiohttp import web

from exporter.bridge import alert_labels, firing_alerts
from exporter.evaluate import evaluate
from exporter.model import CLOCK_SKEW_ALLOWANCE as SKEW
from exporter.model import Facts, IntervalSchedule, Monitor, OpenRun, Outcome
from exporter.web.app import create_app

from .conftest import T0, free_port, write_config
from .servers import WebhookReceiver, alertmanager_config_for_tests, start_alertmanager

KEY = "bridge-ping-key-012345678"
CONFIG = """
monitors:
  - id: heartbeat
    schedule: {interval: 2s}
    grace: 1s
    labels: {team: data}
  - id: etl
    description: Loads orders into the warehouse.
    schedule: {interval: 1h}
    labels: {team: platform, severity: critical}
  - id: backup
    schedule: {interval: 1h}
    max_runtime: 2s
    labels: {team: data}
"""


class TestWhichAlerts:
    monitor = Monitor(id="job", schedule=IntervalSchedule(3600), max_runtime=60, labels=(("team", "data"),))

    def names(self, facts: Facts, now: float = T0 + 10) -> list[str]:
        return firing_alerts(self.monitor, facts, evaluate(self.monitor, facts, now))

    def test_by_status(self):
        base = dict(first_checkin=T0, accounted_through=T0, next_slot=T0 + 3600)
        assert self.names(Facts(**base)) == []
        assert self.names(Facts(**base), now=T0 + 3600 + 300 + SKEW) == ["CronJobMissed"]
        failed = Facts(**base, alerting=True, last_bad_outcome=Outcome.ERROR)
        assert self.names(failed) == ["CronJobFailed"]
        stuck = Facts(**base, open_runs=(OpenRun("r", T0 - 100),))
        assert self.names(stuck) == ["CronJobStuck"]
        long_run = Facts(**base, last_duration=61.0)
        assert self.names(long_run) == ["CronJobTooLong"]

    def test_muted_alerts_are_not_sent(self):
        from dataclasses import replace

        muted = replace(self.monitor, muted=frozenset({"CronJobTooLong", "CronJobMissed"}))
        base = dict(first_checkin=T0, accounted_through=T0, next_slot=T0 + 3600)
        both = Facts(**base, last_duration=61.0)
        late = T0 + 3600 + 300 + SKEW
        assert self.names(both, now=late) == ["CronJobMissed", "CronJobTooLong"]
        assert firing_alerts(muted, both, evaluate(muted, both, late)) == []
        stuck = Facts(**base, open_runs=(OpenRun("r", T0 - 100),))
        assert firing_alerts(muted, stuck, evaluate(muted, stuck, T0 + 10)) == ["CronJobStuck"]

    def test_an_active_monitor_that_fails_is_a_probe_down(self):
        from dataclasses import replace

        from exporter.model import HttpProbe

        active = replace(self.monitor, probe=HttpProbe("https://example.com/health"))
        failed = Facts(first_checkin=T0, accounted_through=T0, next_slot=T0 + 3600,
                       alerting=True, last_bad_outcome=Outcome.ERROR)
        assert firing_alerts(active, failed, evaluate(active, failed, T0 + 10)) == ["CronProbeDown"]
        assert alert_labels(active, "CronProbeDown")["severity"] == "critical"

    def test_labels_carry_monitor_labels_and_default_severity(self):
        assert alert_labels(self.monitor, "CronJobMissed") == {
            "alertname": "CronJobMissed", "monitor": "job", "team": "data", "severity": "critical",
        }
        assert alert_labels(self.monitor, "CronJobTooLong")["severity"] == "warning"
        own = Monitor(id="j", schedule=IntervalSchedule(60), labels=(("severity", "info"),))
        assert alert_labels(own, "CronJobMissed")["severity"] == "info"


@pytest.fixture
async def receiver_and_hook(aiohttp_server):
    receiver = WebhookReceiver()
    hook = await aiohttp_server(receiver.app())
    return receiver, str(hook.make_url("")).rstrip("/")


async def start_cronmon(aiohttp_server, app_settings, tmp_path, monkeypatch, am_url: str):
    monkeypatch.setenv("CRONMON_PING_KEY", KEY)
    settings = app_settings(
        write_config(tmp_path, CONFIG), sweep_interval=0.2, alertmanager_urls=(am_url,),
        alert_resend_interval=1.0, public_url="http://cronmon.test",
    )
    server = await aiohttp_server(create_app(settings))
    return str(server.make_url("")).rstrip("/")


async def ping(base: str, path: str, body: bytes | None = None) -> None:
    async with httpx.AsyncClient() as client:
        url = f"{base}/ping/{KEY}/{path}"
        response = await (client.post(url, content=body) if body else client.get(url))
        assert response.status_code == 200


@pytest.mark.e2e
async def test_bridge_pages_with_rich_annotations_and_resolves(
    aiohttp_server, app_settings, tmp_path, monkeypatch, receiver_and_hook
):
    receiver, hook_url = receiver_and_hook
    am, am_url = await start_alertmanager(tmp_path, alertmanager_config_for_tests(hook_url))
    try:
        cronmon = await start_cronmon(aiohttp_server, app_settings, tmp_path, monkeypatch, am_url)
        await ping(cronmon, "heartbeat")
        deadline = time.time() + 3
        await ping(cronmon, "etl/start")
        await ping(cronmon, "etl/3", b"loading orders...\nTraceback: boom in step 2\n")
        await ping(cronmon, "backup/start")

        missed = await receiver.wait_for("CronJobMissed", monitor="heartbeat")
        print(f"\nbridge: missed deadline -> webhook in {missed.received_at - deadline:.1f}s")
        assert missed.receiver_path == "data-pager"
        assert missed.labels == {
            "alertname": "CronJobMissed", "monitor": "heartbeat", "team": "data", "severity": "critical",
        }
        assert missed.annotations["link"] == "http://cronmon.test/monitors/heartbeat"

        failed = await receiver.wait_for("CronJobFailed", monitor="etl")
        assert failed.receiver_path == "platform-pager"
        assert failed.annotations["exit_code"] == "3"
        assert "boom in step 2" in failed.annotations["log_tail"]
        assert failed.annotations["description"] == "etl: Loads orders into the warehouse."

        stuck = await receiver.wait_for("CronJobStuck", monitor="backup")
        assert stuck.receiver_path == "data-pager" and stuck.labels["severity"] == "critical"

        await ping(cronmon, "heartbeat")
        await ping(cronmon, "etl")
        await ping(cronmon, "backup")
        await receiver.wait_for("CronJobMissed", "resolved", monitor="heartbeat")
        await receiver.wait_for("CronJobFailed", "resolved", monitor="etl")
        await receiver.wait_for("CronJobStuck", "resolved", monitor="backup")
        too_long = await receiver.wait_for("CronJobTooLong", monitor="backup")
        assert too_long.labels["severity"] == "warning"
    finally:
        am.stop()


@pytest.mark.e2e
async def test_alertmanager_down_at_first_gets_the_alert_later(
    aiohttp_server, app_settings, tmp_path, monkeypatch, receiver_and_hook
):
    receiver, hook_url = receiver_and_hook
    config = alertmanager_config_for_tests(hook_url)
    port = free_port()
    cronmon = await start_cronmon(aiohttp_server, app_settings, tmp_path, monkeypatch, f"http://127.0.0.1:{port}")
    await ping(cronmon, "etl/fail")
    await asyncio.sleep(2)  # the bridge has tried and failed meanwhile
    am, _ = await start_alertmanager(tmp_path, config, port=port)
    try:
        await receiver.wait_for("CronJobFailed", monitor="etl", timeout=30)
    finally:
        am.stop()


async def test_hanging_alertmanager_does_not_slow_pings(aiohttp_server, app_settings, tmp_path, monkeypatch):
    async def hang(request):
        await asyncio.sleep(3600)
        return web.Response()

    app = web.Application()
    app.router.add_post("/api/v2/alerts", hang)
    black_hole = await aiohttp_server(app)
    cronmon = await start_cronmon(
        aiohttp_server, app_settings, tmp_path, monkeypatch, str(black_hole.make_url("")).rstrip("/")
    )
    async with httpx.AsyncClient(timeout=3) as client:
        for path in ("etl/fail", "etl/start", "etl", "heartbeat", "etl/fail"):
            response = await client.get(f"{cronmon}/ping/{KEY}/{path}")
            assert response.status_code == 200
