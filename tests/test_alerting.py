"""The shipped rules and Alertmanager config, checked by the real tools:
promtool (check + unit tests), amtool (check + routing), and a running
Alertmanager for the inhibitions."""

import subprocess
import time
from datetime import UTC

import httpx
import pytest

from .servers import (
    ROOT,
    SHIPPED_ALERTMANAGER,
    SHIPPED_RULES,
    WebhookReceiver,
    alertmanager_config_for_tests,
    binary,
    start_alertmanager,
)

pytestmark = pytest.mark.e2e


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT)


def test_rules_are_valid():
    result = run(binary("promtool"), "check", "rules", str(SHIPPED_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 14 rules found" in result.stdout


def test_rule_unit_tests_pass():
    result = run(binary("promtool"), "test", "rules", "alertmanager/tests/cronmon-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_named_in_the_design_exists():
    import yaml

    names = {
        rule["alert"]
        for group in yaml.safe_load(SHIPPED_RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert names == {
        "CronJobMissed", "CronJobFailed", "CronJobStuck", "CronJobTooLong", "CronJobSilentFailure",
        "CronProbeDown", "CronmonDown", "CronmonStoreDown", "CronmonConfigReloadFailed",
    }


def test_alertmanager_config_is_valid():
    result = run(binary("amtool"), "check-config", str(SHIPPED_ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    "labels, receiver",
    [
        ("alertname=CronJobMissed team=data severity=critical", "data-pager"),
        ("alertname=CronJobTooLong team=data severity=warning", "data-tickets"),
        ("alertname=CronJobFailed team=platform severity=critical", "platform-pager"),
        ("alertname=CronJobFailed team=web severity=critical", "cron-pager"),
        ("alertname=CronJobFailed team=web severity=warning", "cron-default"),
        ("alertname=CronmonDown severity=critical", "cronmon-operators"),
        ("alertname=CronmonStoreDown team=data severity=critical", "cronmon-operators"),
    ],
)
def test_routing_by_team_and_severity(labels, receiver):
    result = run(binary("amtool"), "config", "routes", "test", f"--config.file={SHIPPED_ALERTMANAGER}", *labels.split())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


async def test_job_alerts_are_inhibited_while_cronmon_is_down(aiohttp_server, tmp_path):
    receiver = WebhookReceiver()
    hook = await aiohttp_server(receiver.app())
    am, am_url = await start_alertmanager(tmp_path, alertmanager_config_for_tests(str(hook.make_url("")).rstrip("/")))
    try:
        now = time.time()

        def alert(name: str, **labels) -> dict:
            return {"labels": {"alertname": name, **labels}, "startsAt": _iso(now), "endsAt": _iso(now + 300)}

        async with httpx.AsyncClient() as client:
            down = alert("CronmonDown", severity="critical")
            missed = alert("CronJobMissed", monitor="backup", team="data", severity="critical")
            other = alert("CronJobMissed", monitor="report", team="platform", severity="critical")
            # CronmonDown is firing first (as it is when cronmon went away);
            # then the held job alerts arrive.
            assert (await client.post(f"{am_url}/api/v2/alerts", json=[down])).status_code == 200
            await receiver.wait_for("CronmonDown")
            assert (await client.post(f"{am_url}/api/v2/alerts", json=[down, missed, other])).status_code == 200
            # Give Alertmanager time to have sent the job alerts, had they not been inhibited.
            await _sleep(3)
            assert receiver.find("CronJobMissed") is None
            # cronmon is back: the inhibition lifts and the page goes to the team.
            down["endsAt"] = _iso(time.time())
            assert (await client.post(f"{am_url}/api/v2/alerts", json=[down, missed])).status_code == 200
            page = await receiver.wait_for("CronJobMissed", monitor="backup")
            assert page.receiver_path == "data-pager"
    finally:
        am.stop()


def _iso(ts: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
