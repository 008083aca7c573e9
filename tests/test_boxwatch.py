"""Boxwatch-compatible cron checks, following seeds/boxwatch-cron-checks.txt."""

import pytest

from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import write_config

CONFIG = """
api_tokens:
  - {name: bw, env: T_BW, owner: ops, scope: write}
  - {name: bw-other, env: T_BW2, owner: someone-else, scope: write}
  - {name: bw-dashboard, env: T_BW_RO, owner: ops, scope: read}
"""
AUTH = {"Authorization": "Bearer bw-token"}
EXAMPLE = {"name": "Nightly DB backup", "interval_seconds": 86400, "grace_seconds": 600,
           "max_duration_seconds": 1800, "server_id": 12, "alert_on_long": True}


@pytest.fixture
async def client(aiohttp_client, app_settings, tmp_path, monkeypatch, clock):
    monkeypatch.setenv("T_BW", "bw-token")
    monkeypatch.setenv("T_BW2", "other-token")
    monkeypatch.setenv("T_BW_RO", "dashboard-token")
    monkeypatch.setenv("CRONMON_PING_KEY", "bw-test-ping-key")
    settings = app_settings(write_config(tmp_path, CONFIG), boxwatch_plan_limit=3, public_url="https://cron.example")
    return await aiohttp_client(create_app(settings, clock=clock))


async def create(client, body=EXAMPLE):
    response = await client.post("/cron-checks", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    return await response.json()


async def test_create_list_get_update_delete(client, clock):
    created = await create(client)
    check = created["check"]
    assert check["id"] == 1 and check["name"] == "Nightly DB backup" and check["status"] == "new"
    assert (check["interval_seconds"], check["grace_seconds"], check["max_duration_seconds"]) == (86400, 600, 1800)
    assert check["enabled"] == 1 and check["alert_on_long"] == 1 and check["server_id"] == 12
    slug = check["slug"]
    assert created["ping_urls"] == {
        "success": f"https://cron.example/ping/{slug}",
        "start": f"https://cron.example/ping/{slug}/start",
        "fail": f"https://cron.example/ping/{slug}/fail",
    }

    # The documented ping URLs work, with exit code, duration, IP and user agent.
    assert (await client.get(f"/ping/{slug}/start")).status == 200
    clock.advance(2)
    assert (await client.get(f"/ping/{slug}", headers={"User-Agent": "curl/8.4.0"})).status == 200
    assert (await client.post(f"/ping/{slug}/fail?exit_code=3&duration=7.5", data="disk full")).status == 200

    listed = await (await client.get("/cron-checks", headers=AUTH)).json()
    assert (listed["plan_limit"], listed["current_count"], listed["plan"]) == (3, 1, "self-hosted")
    row = listed["checks"][0]
    assert row["status"] == "failed" and row["last_exit_code"] == 3 and row["last_duration_seconds"] == 7.5
    assert row["last_start_at"] and row["last_success_at"] and row["last_fail_at"]

    detail = await (await client.get("/cron-checks/1", headers=AUTH)).json()
    assert detail["pings_total"] == 3
    newest, success, start = detail["pings"]
    assert (newest["ping_type"], newest["exit_code"], newest["duration_seconds"], newest["body"]) == (
        "fail",
        3,
        7.5,
        "disk full",
    )
    assert success["ping_type"] == "success" and success["user_agent"] == "curl/8.4.0"
    assert success["duration_seconds"] == pytest.approx(2) and success["source_ip"] == "127.0.0.1"
    assert start["check_id"] == 1 and start["received_at"].endswith("Z")
    offset = await (await client.get("/cron-checks/1?pings_offset=2", headers=AUTH)).json()
    assert [p["ping_type"] for p in offset["pings"]] == ["start"]

    updated = await client.put("/cron-checks/1", json={"interval_seconds": 90000}, headers=AUTH)
    assert updated.status == 200
    assert (await updated.json())["check"]["interval_seconds"] == 90000
    assert (await client.delete("/cron-checks/1", headers=AUTH)).status == 200
    assert (await client.get("/cron-checks/1", headers=AUTH)).status == 404
    assert (await client.get(f"/ping/{slug}")).status == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({**EXAMPLE, "name": ""}, "name"),
        ({**EXAMPLE, "name": "x" * 101}, "name"),
        ({**EXAMPLE, "interval_seconds": 59}, "interval_seconds"),
        ({**EXAMPLE, "interval_seconds": 7_776_001}, "interval_seconds"),
        ({**EXAMPLE, "grace_seconds": 43201}, "grace_seconds"),
        ({**EXAMPLE, "grace_seconds": -1}, "grace_seconds"),
        ({**EXAMPLE, "max_duration_seconds": 86400}, "max_duration_seconds"),
        ({"name": "a", "interval_seconds": 3600, "alert_on_long": True}, "alert_on_long"),
        ({**EXAMPLE, "colour": "red"}, "colour"),
        ({**EXAMPLE, "interval_seconds": "daily"}, "interval_seconds"),
        ({"name": "no interval"}, "interval_seconds"),
    ],
)
async def test_validation_failed_with_issues(client, body, field):
    response = await client.post("/cron-checks", json=body, headers=AUTH)
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == "validation_failed"
    assert any(issue["field"] == field for issue in payload["issues"]), payload
    assert (await (await client.get("/cron-checks", headers=AUTH)).json())["checks"] == []


async def test_defaults_and_short_interval_grace(client):
    check = (await create(client, {"name": "Heartbeat", "interval_seconds": 60}))["check"]
    assert check["grace_seconds"] == 30  # half the interval: the documented 300 would break the rule
    assert (check["alert_on_missed"], check["alert_on_fail"], check["alert_on_stuck"], check["alert_on_long"]) == (
        1,
        1,
        1,
        0,
    )
    assert check["max_duration_seconds"] is None and check["server_id"] is None


async def test_plan_limit_not_found_and_auth(client):
    for i in range(3):
        await create(client, {"name": f"job {i}", "interval_seconds": 3600})
    refused = await client.post("/cron-checks", json={"name": "one more", "interval_seconds": 3600}, headers=AUTH)
    assert refused.status == 402
    assert await refused.json() == {"error": "plan_limit_reached", "current": 3, "limit": 3, "plan": "self-hosted"}
    assert (await client.get("/cron-checks/99", headers=AUTH)).status == 404
    assert await (await client.get("/cron-checks/abc", headers=AUTH)).json() == {"error": "not_found"}
    other = {"Authorization": "Bearer other-token"}
    assert (await client.get("/cron-checks/1", headers=other)).status == 404  # another account's check
    assert (await client.get("/cron-checks")).status == 401
    no_fields = await client.put("/cron-checks/1", json={"bogus_only": 1}, headers=AUTH)
    assert no_fields.status == 400
    empty = await client.put("/cron-checks/1", json={}, headers=AUTH)
    assert (await empty.json())["issues"][0]["reason"] == "no updatable fields provided"


async def test_checks_show_up_in_metrics(client):
    check = (await create(client))["check"]
    await client.get(f"/ping/{check['slug']}")
    metrics = await (await client.get("/metrics")).text()
    assert 'cronmon_runs_total{monitor="nightly-db-backup-1",outcome="ok"} 1\n' in metrics


async def test_concurrent_creates_cannot_both_take_the_last_place(client):
    """The plan limit is checked in the same Redis script as the write: of
    creates racing for the last places, exactly the limit's worth succeed."""
    import asyncio

    statuses = await asyncio.gather(
        *(client.post("/cron-checks", json={**EXAMPLE, "name": f"job {i}"}, headers=AUTH) for i in range(8))
    )
    assert sorted(r.status for r in statuses) == [201] * 3 + [402] * 5
    listed = await (await client.get("/cron-checks", headers=AUTH)).json()
    assert listed["current_count"] == 3
    # Deleting frees a place.
    assert (await client.delete(f"/cron-checks/{listed['checks'][0]['id']}", headers=AUTH)).status == 200
    await create(client, {**EXAMPLE, "name": "after a delete"})


async def test_a_read_scope_token_never_sees_the_ping_slug(client):
    """The slug is the ping UUID, a check-in credential: a dashboard's token
    must not be able to ping (as the native API hides ping_url)."""
    slug = (await create(client))["check"]["slug"]
    ro = {"Authorization": "Bearer dashboard-token"}
    listed = await (await client.get("/cron-checks", headers=ro)).json()
    detail = await (await client.get("/cron-checks/1", headers=ro)).json()
    assert listed["checks"][0]["slug"] is None and detail["check"]["slug"] is None
    assert detail["ping_urls"] is None
    assert slug not in str(listed) + str(detail)
    assert (await (await client.get("/cron-checks/1", headers=AUTH)).json())["check"]["slug"] == slug


async def test_alert_switches_mute_their_alerts(client):
    """alert_on_* off mutes the alert (cronmon_alert_muted, which the rules
    and the bridge honour); alert_on_long is off by default."""
    check = (await create(client, {**EXAMPLE, "alert_on_long": False, "alert_on_missed": False}))["check"]
    monitor = client.app[CORE].registry.monitors[f"nightly-db-backup-{check['id']}"]
    assert monitor.muted == {"CronJobMissed", "CronJobTooLong"}
    text = await (await client.get("/metrics")).text()
    muted = sorted(
        line.split('alert="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("cronmon_alert_muted{") and monitor.id in line
    )
    assert muted == ["CronJobMissed", "CronJobTooLong"]
    updated = await client.put(
        f"/cron-checks/{check['id']}", json={"alert_on_missed": True, "alert_on_long": True}, headers=AUTH
    )
    assert updated.status == 200
    assert client.app[CORE].registry.monitors[monitor.id].muted == frozenset()
