"""CrossCheck-compatible flights and check-ins, following
seeds/crosscheck-flights.txt and seeds/crosscheck-checkins.txt (host swapped)."""

import asyncio
import re
import shlex
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.model import CLOCK_SKEW_ALLOWANCE as SKEW
from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import T0, app_dump, write_config

SEEDS = Path(__file__).resolve().parent / "data" / "seeds"  # copies of shared/seeds/
CONFIG = """
api_tokens:
  - {name: cc-ops, env: T_OPS, owner: alice, team: ops, scope: write}
  - {name: cc-ops-bob, env: T_BOB, owner: bob, team: ops, scope: write}
  - {name: cc-other, env: T_OTHER, owner: mallory, scope: write}
  - {name: cc-reader, env: T_READ, owner: alice, scope: read}
monitors:
  - id: migrated-backup
    schedule: {interval: 1h}
    ping: {api_key_env: OLD_CC_KEY, shortcode_env: OLD_CC_CODE}
  - id: fenced
    schedule: {interval: 1h}
    allowed_ips: ["203.0.113.0/24"]
"""
AUTH = {"Authorization": "Bearer ops-token"}
DRF_AUTH = {"Authorization": "Token ops-token"}
OTHER = {"Authorization": "Bearer other-token"}
READER = {"Authorization": "Bearer read-token"}


@pytest.fixture
async def client(aiohttp_client, app_settings, tmp_path, monkeypatch, clock):
    for name, value in {"T_OPS": "ops-token", "T_BOB": "bob-token", "T_OTHER": "other-token",
                        "T_READ": "read-token", "OLD_CC_KEY": "old-crosscheck-key-123",
                        "OLD_CC_CODE": "Ab1Cd2Ef", "CRONMON_PING_KEY": "cc-test-ping-key"}.items():
        monkeypatch.setenv(name, value)
    settings = app_settings(write_config(tmp_path, CONFIG), public_url="https://cron.example")
    return await aiohttp_client(create_app(settings, clock=clock))


async def create(client, headers=AUTH, **fields):
    body = {"name": "Nightly backup", **fields}
    response = await client.post("/api/flights/", json=body, headers=headers)
    assert response.status == 201, await response.text()
    return await response.json()


async def api_flights(client, query="", headers=AUTH):
    """Listed flights, without the YAML one every token sees."""
    response = await client.get(f"/api/flights/{query}", headers=headers)
    assert response.status == 200
    return [f for f in await response.json() if f["path"] != "migrated-backup"]


async def metric(client, name, **labels):
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


# -- flights -------------------------------------------------------------------


async def test_create_applies_every_default_and_returns_read_only_fields(client, clock):
    flight = await create(client)
    assert re.fullmatch(r"[0-9a-f-]{36}", flight["id"])
    assert flight["path"].startswith("nightly-backup-")
    defaults = {"description": "", "expected_interval": 3600, "grace_period": 60, "max_missed_checkins": 3,
                "allowed_ips": [], "monitoring_type": "PASSIVE", "monitor_url": None, "monitor_interval": 60,
                "slow_response_threshold": 5, "timeout_threshold": 10, "consecutive_failure_threshold": None,
                "group": None, "order": 0, "team": None, "extra_config": {}}
    assert {k: flight[k] for k in defaults} == defaults
    assert len(flight["api_key"]) == 43 and len(flight["shortcode"]) == 12
    assert flight["short_check_in_url"] == f"https://cron.example/c/{flight['shortcode']}/"
    assert flight["last_check_in"] is None and flight["last_landing_status"] is None
    assert flight["status"] == "new" and flight["is_deleted"] is False
    assert flight["created_at"] == flight["updated_at"] == "2026-06-15T12:00:00.000Z"
    assert flight["team_name"] is None and flight["group_name"] is None
    assert (flight["uptime_percentage"], flight["uptime_checks_total"], flight["uptime_checks_successful"]) == (
        None,
        0,
        0,
    )
    assert [a["action"] for a in flight["audit"]] == ["created"]
    # The flight is a monitor: in /metrics under its path, rate-limited as documented.
    assert await metric(client, "cronmon_monitor_status", monitor=flight["path"], status="new") == 1
    monitor = client.app[CORE].registry.monitors[flight["path"]]
    assert monitor.rate_limit == (10, 60.0) and monitor.failure_threshold == 3 and monitor.grace == 60


async def test_every_request_field_is_stored(client):
    group = await (
        await client.post("/api/flights/groups/", json={"name": "Databases", "order": 1}, headers=AUTH)
    ).json()
    body = {
        "name": "Orders API",
        "description": "health",
        "path": "orders-api",
        "expected_interval": 300,
        "grace_period": 30,
        "max_missed_checkins": 2,
        "allowed_ips": ["10.0.0.0/8", "203.0.113.7"],
        "monitoring_type": "ACTIVE",
        "monitor_url": "https://orders.example/health",
        "monitor_interval": 120,
        "slow_response_threshold": 2,
        "timeout_threshold": 8,
        "consecutive_failure_threshold": 4,
        "group": group["id"],
        "order": 7,
        "team": "ops",
        "extra_config": {"is_paired_arrival": True},
    }
    flight = await create(client, **body)
    assert {k: flight[k] for k in body} == body
    assert flight["team_name"] == "ops" and flight["group_name"] == "Databases"
    monitor = client.app[CORE].registry.monitors["orders-api"]
    # An active flight lands once per check: its schedule is the check interval.
    assert monitor.schedule.seconds == 120 and monitor.failure_threshold == 4
    assert monitor.group == "Databases" and dict(monitor.labels) == {"team": "ops"}
    # Team members see and may change it; another account does not see it.
    assert (
        await client.get(f"/api/flights/{flight['id']}/", headers={"Authorization": "Bearer bob-token"})
    ).status == 200
    assert (await client.get(f"/api/flights/{flight['id']}/", headers=OTHER)).status == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "expected_interval": "3600"}, "expected_interval"),
        ({"name": "x", "expected_interval": 0}, "expected_interval"),
        ({"name": "x", "grace_period": -1}, "grace_period"),
        ({"name": "x", "max_missed_checkins": 0}, "max_missed_checkins"),
        ({"name": "x", "allowed_ips": ["10.0.0.300"]}, "allowed_ips"),
        ({"name": "x", "allowed_ips": "10.0.0.1"}, "allowed_ips"),
        ({"name": "x", "monitoring_type": "PUSH"}, "monitoring_type"),
        ({"name": "x", "monitoring_type": "ACTIVE"}, "monitor_url"),
        ({"name": "x", "monitoring_type": "ACTIVE", "monitor_url": "ftp://x"}, "monitor_url"),
        (
            {"name": "x", "monitoring_type": "ACTIVE", "monitor_url": "https://x", "slow_response_threshold": 20},
            "slow_response_threshold",
        ),
        (
            {"name": "x", "monitoring_type": "ACTIVE", "monitor_url": "https://x", "monitor_interval": 5},
            "monitor_interval",
        ),
        ({"name": "x", "group": "0b1e7f43-0000-4000-8000-000000000000"}, "group"),
        ({"name": "x", "team": "finance"}, "team"),
        ({"name": "x", "extra_config": {"is_paired_arrival": "yes"}}, "extra_config"),
        ({"name": "x", "extra_config": {"blob": "x" * 5000}}, "extra_config"),
        ({"name": "x", "path": "Has Spaces"}, "path"),
        ({"name": "x", "order": 1.5}, "order"),
        ({"name": "x", "expected_interval": None}, "expected_interval"),
        ({"name": "x", "colour": "red"}, "colour"),
    ],
)
async def test_invalid_flights_are_refused_and_nothing_is_created(client, body, field):
    response = await client.post("/api/flights/", json=body, headers=AUTH)
    assert response.status == 400
    assert field in await response.json()
    assert await api_flights(client) == []


async def test_bad_bodies_and_auth(client):
    assert (await client.post("/api/flights/", data="{nope", headers=AUTH)).status == 400
    assert (await client.post("/api/flights/", json=[1], headers=AUTH)).status == 400
    response = await client.get("/api/flights/")
    assert response.status == 401 and "detail" in await response.json()
    assert (await client.get("/api/flights/", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.post("/api/flights/", json={"name": "x"}, headers=READER)).status == 403
    assert (await client.get("/api/flights/", headers=DRF_AUTH)).status == 200  # DRF's "Token" scheme
    assert (await client.get("/api/flights/not-a-flight/", headers=AUTH)).status == 404
    big = {"name": "x", "description": "y" * 200_000}
    assert (await client.post("/api/flights/", json=big, headers=AUTH)).status == 413
    assert await api_flights(client) == []


async def test_list_filters_by_monitoring_type(client):
    await create(client, name="passive")
    await create(client, name="quick", monitoring_type="QUICK_PASSIVE")
    await create(client, name="active", monitoring_type="ACTIVE", monitor_url="https://a.example/")
    names = lambda flights: sorted(f["name"] for f in flights)  # noqa: E731
    assert names(await api_flights(client)) == ["active", "passive", "quick"]
    for kind, expected in (("PASSIVE", ["passive"]), ("ACTIVE", ["active"]), ("QUICK_PASSIVE", ["quick"])):
        assert names(await api_flights(client, f"?monitoring_type={kind}")) == expected
    assert (await client.get("/api/flights/?monitoring_type=NOPE", headers=AUTH)).status == 400
    # Another account sees none of them; YAML flights (imported keys) everyone sees, read-only.
    other = await (await client.get("/api/flights/", headers=OTHER)).json()
    assert names(other) == ["migrated-backup"]


async def test_put_patch_and_audit(client, clock):
    flight = await create(client, expected_interval=600)
    url = f"/api/flights/{flight['id']}/"
    clock.advance(10)
    patched = await client.patch(url, json={"grace_period": 120, "id": "ignored", "status": "ignored"}, headers=AUTH)
    assert patched.status == 200
    body = await patched.json()
    assert body["grace_period"] == 120 and body["expected_interval"] == 600 and body["id"] == flight["id"]
    assert body["updated_at"] == "2026-06-15T12:00:10.000Z"
    # PUT needs the required field; the rest keep their values (as in DRF).
    assert (await client.put(url, json={"grace_period": 5}, headers=AUTH)).status == 400
    put = await (await client.put(url, json={"name": "Renamed", "expected_interval": 900}, headers=AUTH)).json()
    assert put["name"] == "Renamed" and put["expected_interval"] == 900 and put["grace_period"] == 120
    # Nothing changes: no write, no audit entry.
    await client.patch(url, json={"grace_period": 120}, headers=AUTH)
    # The path is the monitor id and cannot change.
    assert (await client.patch(url, json={"path": "elsewhere"}, headers=AUTH)).status == 400
    # A bad update changes nothing.
    assert (await client.patch(url, json={"expected_interval": -5}, headers=AUTH)).status == 400
    # Another account cannot see it, a read token cannot write it.
    assert (await client.patch(url, json={"grace_period": 1}, headers=OTHER)).status == 404
    assert (await client.patch(url, json={"grace_period": 1}, headers=READER)).status == 403

    audit = await (await client.get(f"{url}audit/", headers=AUTH)).json()
    assert [a["action"] for a in audit] == ["updated", "updated", "created"]
    assert audit[0]["changes"] == {
        "expected_interval": {"old": 600, "new": 900},
        "name": {"old": "Nightly backup", "new": "Renamed"},
    }
    assert audit[1]["changes"] == {"grace_period": {"old": 60, "new": 120}}
    assert audit[0]["actor"] == "alice" and audit[0]["token"] == "cc-ops"
    monitor = client.app[CORE].registry.monitors[flight["path"]]
    assert monitor.schedule.seconds == 900 and monitor.grace == 120 and monitor.name == "Renamed"


async def test_audit_keeps_the_last_100(client):
    flight = await create(client)
    url = f"/api/flights/{flight['id']}/"
    for order in range(1, 106):
        assert (await client.patch(url, json={"order": order}, headers=AUTH)).status == 200
    audit = await (await client.get(f"{url}audit/", headers=AUTH)).json()
    assert len(audit) == 100 and audit[0]["changes"]["order"] == {"old": 104, "new": 105}


async def test_soft_delete_restore_purge_and_hard_delete(client):
    flight = await create(client)
    url = f"/api/flights/{flight['id']}/"
    assert (await client.post(f"{url}purge/", headers=AUTH)).status == 400  # not soft-deleted
    assert (await client.post(f"{url}restore/", headers=AUTH)).status == 400
    deleted = await (await client.post(f"{url}soft-delete/", headers=AUTH)).json()
    assert deleted["is_deleted"] is True and deleted["status"] == "paused"
    assert await api_flights(client) == []
    trash = await (await client.get("/api/flights/?is_deleted=true", headers=AUTH)).json()
    assert [f["id"] for f in trash] == [flight["id"]]
    # A soft-deleted flight takes no check-ins, on CrossCheck's routes or any other.
    registry = client.app[CORE].registry
    uuid = registry.ping_uuid(registry.monitors[flight["path"]])
    before = await app_dump(client)
    assert (await client.post("/api/flights/check-in/", headers={"X-API-Key": flight["api_key"]})).status == 401
    assert (await client.get(f"/c/{flight['shortcode']}/")).status == 404
    assert (await client.get(f"/ping/{uuid}")).status == 404
    assert (await client.get(f"/ping/cc-test-ping-key/{flight['path']}")).status == 404
    assert (
        await client.post(f"/api/v1/ping/{flight['path']}/success", headers={"X-API-Key": "ops-token"})
    ).status == 404
    assert await app_dump(client) == before
    restored = await (await client.post(f"{url}restore/", headers=AUTH)).json()
    assert restored["is_deleted"] is False and restored["status"] == "new"
    assert (await client.post("/api/flights/check-in/", headers={"X-API-Key": flight["api_key"]})).status == 201
    actions = [a["action"] for a in await (await client.get(f"{url}audit/", headers=AUTH)).json()]
    assert actions == ["restored", "soft_deleted", "created"]
    await client.post(f"{url}soft-delete/", headers=AUTH)
    assert (await client.post(f"{url}purge/", headers=AUTH)).status == 204
    assert (await client.get(url, headers=AUTH)).status == 404
    assert flight["path"] not in client.app[CORE].registry.monitors

    other = await create(client, name="other")
    assert (await client.delete(f"/api/flights/{other['id']}/", headers=AUTH)).status == 204
    assert (await client.get(f"/api/flights/{other['id']}/", headers=AUTH)).status == 404
    assert (await client.post("/api/flights/check-in/", headers={"X-API-Key": other["api_key"]})).status == 401


@pytest.mark.parametrize("wrap", [False, True])
async def test_reorder_both_body_forms(client, wrap):
    a, b = await create(client, name="a"), await create(client, name="b")
    items = [{"id": a["id"], "order": 2}, {"id": b["id"], "order": 1}]
    response = await client.post("/api/flights/reorder/", json={"items": items} if wrap else items, headers=AUTH)
    assert response.status == 200
    assert [(f["name"], f["order"]) for f in await api_flights(client)] == [("b", 1), ("a", 2)]
    assert (await (await client.get(f"/api/flights/{a['id']}/audit/", headers=AUTH)).json())[0]["action"] == "reordered"


async def test_a_reorder_reloads_the_definitions_once(client, monkeypatch):
    flights = [await create(client, name=f"f{i}") for i in range(5)]
    store = client.app[CORE].store
    reads = []
    original = store.definitions

    async def counted(ids):
        reads.append(sorted(ids))
        return await original(ids)

    async def no_full_reload():
        raise AssertionError("a reorder must not reload every definition")

    monkeypatch.setattr(store, "definitions", counted)
    monkeypatch.setattr(store, "monitor_definitions", no_full_reload)
    items = [{"id": f["id"], "order": 10 - i} for i, f in enumerate(flights)]
    assert (await client.post("/api/flights/reorder/", json=items, headers=AUTH)).status == 200
    assert len(reads) == 1
    assert [f["name"] for f in await api_flights(client)] == ["f4", "f3", "f2", "f1", "f0"]


@pytest.mark.parametrize(
    "body, status",
    [
        ([], 400),
        ({"items": "x"}, 400),
        ([{"id": "x"}], 400),
        ([{"id": "x", "order": "1"}], 400),
        ([{"id": "0b1e7f43-0000-4000-8000-000000000000", "order": 1}], 404),
    ],
)
async def test_bad_reorders_change_nothing(client, body, status):
    a = await create(client, name="a")
    response = await client.post("/api/flights/reorder/", json=body, headers=AUTH)
    assert response.status == status
    assert (await (await client.get(f"/api/flights/{a['id']}/", headers=AUTH)).json())["order"] == 0


async def test_groups_crud_reorder_and_delete_ungroups(client):
    created = await client.post("/api/flights/groups/", json={"name": "Group name", "order": 0}, headers=AUTH)
    assert created.status == 201
    group = await created.json()
    assert group["name"] == "Group name" and group["order"] == 0 and group["flight_count"] == 0
    second = await (await client.post("/api/flights/groups/", json={"name": "Second", "order": 1}, headers=AUTH)).json()
    flight = await create(client, group=group["id"])
    assert flight["group_name"] == "Group name"
    assert client.app[CORE].registry.monitors[flight["path"]].group == "Group name"

    gurl = f"/api/flights/groups/{group['id']}/"
    detail = await (await client.get(gurl, headers=AUTH)).json()
    assert detail["flight_count"] == 1
    renamed = await (await client.patch(gurl, json={"name": "Databases"}, headers=AUTH)).json()
    assert renamed["name"] == "Databases"
    # The flight's group in /metrics follows the rename.
    assert client.app[CORE].registry.monitors[flight["path"]].group == "Databases"
    assert (await client.patch(gurl, json={"name": ""}, headers=AUTH)).status == 400
    assert (await client.patch(gurl, json={"order": "x"}, headers=AUTH)).status == 400
    assert (await client.get(gurl, headers=OTHER)).status == 404

    for body in (
        [{"id": group["id"], "order": 5}, {"id": second["id"], "order": 3}],
        {"items": [{"id": group["id"], "order": 5}, {"id": second["id"], "order": 3}]},
    ):
        assert (await client.post("/api/flights/groups/reorder/", json=body, headers=AUTH)).status == 200
    listed = await (await client.get("/api/flights/groups/", headers=AUTH)).json()
    assert [(g["name"], g["order"]) for g in listed] == [("Second", 3), ("Databases", 5)]

    assert (await client.delete(gurl, headers=AUTH)).status == 204
    assert (await client.get(gurl, headers=AUTH)).status == 404
    ungrouped = await (await client.get(f"/api/flights/{flight['id']}/", headers=AUTH)).json()
    assert ungrouped["group"] is None and ungrouped["group_name"] is None
    assert ungrouped["audit"][0]["action"] == "ungrouped"
    assert client.app[CORE].registry.monitors[flight["path"]].group == ""
    assert [g["name"] for g in await (await client.get("/api/flights/groups/", headers=AUTH)).json()] == ["Second"]
    assert (await client.post("/api/flights/groups/", json={"order": 1}, headers=AUTH)).status == 400


# -- check-ins -------------------------------------------------------------------


async def test_check_in_statuses_metadata_and_duration(client, clock):
    flight = await create(client, expected_interval=600)
    key = {"X-API-Key": flight["api_key"]}
    response = await client.post(
        "/api/flights/check-in/",
        json={"status": "SUCCESS", "metadata": {"version": "1.0.0", "rows": 42}, "runtime_duration": 12.5},
        headers=key,
    )
    assert response.status == 201
    landing = await response.json()
    assert landing["status"] == "SUCCESS" and landing["phase"] == "SINGLE" and landing["flight"] == flight["id"]
    assert landing["metadata"] == {"version": "1.0.0", "rows": 42} and landing["runtime_duration"] == 12.5
    clock.advance(60)
    assert (await client.post("/api/flights/check-in/", json={"status": "WARNING"}, headers=key)).status == 201
    clock.advance(60)
    assert (await client.post("/api/flights/check-in/", json={"status": "ERROR"}, headers=key)).status == 201

    path = flight["path"]
    assert await metric(client, "cronmon_runs_total", monitor=path, outcome="ok") == 1
    assert await metric(client, "cronmon_runs_total", monitor=path, outcome="warning") == 1
    assert await metric(client, "cronmon_runs_total", monitor=path, outcome="error") == 1
    assert await metric(client, "cronmon_run_meta", monitor=path, key="rows") == 42
    landings = await (await client.get(f"/api/flights/{flight['id']}/landings/", headers=AUTH)).json()
    assert [x["status"] for x in landings] == ["ERROR", "WARNING", "SUCCESS"]
    detail = await (await client.get(f"/api/flights/{flight['id']}/", headers=AUTH)).json()
    assert detail["last_landing_status"] == "ERROR" and detail["last_check_in"] == "2026-06-15T12:02:00.000Z"
    assert (detail["uptime_checks_total"], detail["uptime_checks_successful"], detail["uptime_percentage"]) == (
        3,
        2,
        66.67,
    )
    limited = await (await client.get(f"/api/flights/{flight['id']}/landings/?limit=1&offset=1", headers=AUTH)).json()
    assert [x["status"] for x in limited] == ["WARNING"]
    assert (await client.get(f"/api/flights/{flight['id']}/landings/?limit=0", headers=AUTH)).status == 400


@pytest.mark.parametrize(
    "body",
    [
        {"status": "OK"},
        {"status": 1},
        {"metadata": "x"},
        {"metadata": {"k": "v" * 9000}},
        {"runtime_duration": -1},
        {"runtime_duration": "5"},
        {"phase": "MIDDLE"},
        {"pair_key": ""},
        [1],
    ],
)
async def test_bad_check_ins_record_nothing(client, body):
    flight = await create(client)
    response = await client.post("/api/flights/check-in/", json=body, headers={"X-API-Key": flight["api_key"]})
    assert response.status == 400
    assert await (await client.get(f"/api/flights/{flight['id']}/landings/", headers=AUTH)).json() == []


async def test_check_in_auth(client):
    await create(client)
    assert (await client.post("/api/flights/check-in/")).status == 401
    response = await client.post("/api/flights/check-in/", headers={"X-API-Key": "guess"})
    assert response.status == 401 and (await response.json())["detail"] == "Invalid API key."
    # A management token is not a flight key.
    assert (await client.post("/api/flights/check-in/", headers={"X-API-Key": "ops-token"})).status == 401
    assert (await client.post("/api/flights/check-in/", data="{x", headers={"X-API-Key": "guess"})).status == 401


async def test_paired_arrival(client, clock):
    flight = await create(client, extra_config={"is_paired_arrival": True})
    key = {"X-API-Key": flight["api_key"]}
    start = await client.post("/api/flights/check-in/", json={"phase": "START", "pair_key": "job-123"}, headers=key)
    assert start.status == 201 and (await start.json())["phase"] == "START"
    assert await metric(client, "cronmon_running_runs", monitor=flight["path"]) == 1
    # A retried START of the same pair records nothing new.
    again = await client.post("/api/flights/check-in/", json={"phase": "START", "pair_key": "job-123"}, headers=key)
    assert again.status == 200 and (await again.json())["duplicate"] is True
    clock.advance(95)
    done = await client.post(
        "/api/flights/check-in/", json={"phase": "COMPLETE", "pair_key": "job-123", "status": "SUCCESS"}, headers=key
    )
    landing = await done.json()
    assert done.status == 201 and landing["phase"] == "COMPLETE" and landing["pair_key"] == "job-123"
    assert landing["runtime_duration"] == 95
    assert await metric(client, "cronmon_running_runs", monitor=flight["path"]) == 0
    assert await metric(client, "cronmon_last_duration_seconds", monitor=flight["path"]) == 95


async def test_rate_limit_is_ten_a_minute_per_flight(client, clock):
    a, b = await create(client, name="a"), await create(client, name="b")
    for _ in range(10):
        assert (await client.post("/api/flights/check-in/", headers={"X-API-Key": a["api_key"]})).status == 201
    refused = await client.post("/api/flights/check-in/", headers={"X-API-Key": a["api_key"]})
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "throttled" in (await refused.json())["detail"]
    assert (await client.get(f"/c/{a['shortcode']}/")).status == 429  # same flight, same budget
    assert (await client.post(f"/api/flights/{a['id']}/test_now/", headers=AUTH)).status == 429
    assert (await client.post("/api/flights/check-in/", headers={"X-API-Key": b["api_key"]})).status == 201
    landings = await (await client.get(f"/api/flights/{a['id']}/landings/?limit=100", headers=AUTH)).json()
    assert len(landings) == 10


async def test_allowed_ips(client, app_settings, aiohttp_client, tmp_path, clock):
    flight = await create(client, allowed_ips=["203.0.113.0/24"])
    key = {"X-API-Key": flight["api_key"]}
    # The test client connects from 127.0.0.1.
    refused = await client.post("/api/flights/check-in/", headers=key)
    assert refused.status == 403 and "allowed" in (await refused.json())["detail"]
    assert (await client.get(f"/c/{flight['shortcode']}/")).status == 403
    assert (await client.post("/api/flights/test-check-in/", headers=key)).status == 403
    # Forwarded-For is ignored unless the peer is a trusted proxy.
    spoofed = {**key, "X-Forwarded-For": "203.0.113.9"}
    assert (await client.post("/api/flights/check-in/", headers=spoofed)).status == 403
    assert await (await client.get(f"/api/flights/{flight['id']}/landings/", headers=AUTH)).json() == []
    # Other APIs reach the same monitor and the same rule (the core enforces it).
    uuid = client.app[CORE].registry.ping_uuid(client.app[CORE].registry.monitors[flight["path"]])
    assert (await client.get(f"/ping/{uuid}")).status == 403
    await client.patch(f"/api/flights/{flight['id']}/", json={"allowed_ips": ["127.0.0.1"]}, headers=AUTH)
    assert (await client.post("/api/flights/check-in/", headers=key)).status == 201


async def test_allowed_ips_behind_a_trusted_proxy(aiohttp_client, app_settings, tmp_path, monkeypatch, clock):
    import ipaddress

    monkeypatch.setenv("T_OPS", "ops-token")
    monkeypatch.setenv("CRONMON_PING_KEY", "k")
    settings = app_settings(
        write_config(tmp_path, "api_tokens:\n  - {name: o, env: T_OPS, owner: a, scope: write}\n"),
        trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    client = await aiohttp_client(create_app(settings, clock=clock))
    flight = await create(client, allowed_ips=["203.0.113.0/24"])
    key = {"X-API-Key": flight["api_key"]}
    # The right-most address not of a trusted proxy is the client; what the
    # client itself wrote further left is not believed.
    ok = await client.post("/api/flights/check-in/", headers={**key, "X-Forwarded-For": "10.9.9.9, 203.0.113.9"})
    assert ok.status == 201 and (await ok.json())["source_ip"] == "203.0.113.9"
    forged = await client.post("/api/flights/check-in/", headers={**key, "X-Forwarded-For": "203.0.113.9, 10.9.9.9"})
    assert forged.status == 403


async def test_short_url_and_quick_flights_keep_no_metadata(client):
    quick = await create(client, name="quick", monitoring_type="QUICK_PASSIVE")
    code = quick["shortcode"]
    for method, path in (("GET", f"/c/{code}/"), ("GET", f"/c/{code}"), ("POST", f"/c/{code}/")):
        response = await client.request(method, path)
        assert response.status == 200 and await response.json() == {"status": "ok"}
    posted = await client.post(f"/c/{code}/", json={"status": "ERROR", "metadata": {"source": "cron"}})
    assert posted.status == 200
    landings = await (await client.get(f"/api/flights/{quick['id']}/landings/", headers=AUTH)).json()
    assert landings[0]["status"] == "ERROR" and landings[0]["metadata"] == {}
    assert len(landings) == 4
    assert (await client.get("/c/notacode/")).status == 404
    assert (await client.post(f"/c/{code}/", data="{bad")).status == 400
    assert (await client.post(f"/c/{code}/", json={"status": "NOPE"})).status == 400
    assert len(await (await client.get(f"/api/flights/{quick['id']}/landings/", headers=AUTH)).json()) == 4


async def test_test_now_records_a_test_landing_that_changes_no_state(client, clock):
    flight = await create(client, expected_interval=600)
    response = await client.post(f"/api/flights/{flight['id']}/test_now/", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok" and body["override_seconds"] == 300
    assert body["landing"]["is_test"] is True and body["landing"]["status"] == "SUCCESS"
    assert isinstance(body["landing"]["id"], int)
    landings = await (await client.get(f"/api/flights/{flight['id']}/landings/", headers=AUTH)).json()
    assert [x["is_test"] for x in landings] == [True]
    # Still "new": a test never stands in for a real run.
    assert await metric(client, "cronmon_monitor_status", monitor=flight["path"], status="new") == 1
    assert (await client.post(f"/api/flights/{flight['id']}/test_now/", headers=READER)).status == 403
    assert (await client.post(f"/api/flights/{flight['id']}/test_now/", headers=OTHER)).status == 404


async def test_metrics_summary_by_day_and_by_hour(client, clock):
    flight = await create(client, expected_interval=3600, grace_period=60)
    key = {"X-API-Key": flight["api_key"]}
    await client.post("/api/flights/check-in/", headers=key)  # 12:00 ok
    clock.advance(3600)
    await client.post("/api/flights/check-in/", json={"status": "ERROR"}, headers=key)  # 13:00 error
    # 14:00 passes with no check-in: missed once the sweeper sees it
    # (grace, then the clock skew allowance).
    clock.advance(3600 + 60 + SKEW)
    await client.app[CORE].sweep(client.app[CORE].registry.monitors[flight["path"]], clock())
    clock.advance(86400 * 2)  # two days later: a warning
    await client.app[CORE].sweep(client.app[CORE].registry.monitors[flight["path"]], clock())
    await client.post("/api/flights/check-in/", json={"status": "WARNING"}, headers=key)

    body = await (await client.get(f"/api/flights/{flight['id']}/metrics/", headers=AUTH)).json()
    assert body["flight"] == flight["id"]
    day = body["summary"]["24h"]
    assert (day["total"], day["warning"], day["missed"]) == (day["total"], 1, day["total"] - 1)
    week = body["summary"]["7d"]
    assert week["success"] == 1 and week["error"] == 1 and week["warning"] == 1 and week["missed"] >= 1
    assert week["successful"] == 2 and week["total"] == 3 + week["missed"]
    assert week["uptime_percentage"] == round(100 * 2 / week["total"], 2)
    assert body["summary"]["30d"] == week
    assert len(body["by_day"]) == 30 and len(body["by_hour"]) == 24
    assert body["by_day"][-1]["date"] == "2026-06-17" and body["by_day"][-3]["date"] == "2026-06-15"
    first = body["by_day"][-3]
    assert (first["success"], first["error"], first["missed"]) == (1, 1, 1)
    assert body["by_day"][0]["total"] == 0 and body["by_day"][0]["uptime_percentage"] is None
    assert body["by_hour"][-1]["hour"] == "2026-06-17T14:00:00Z"
    assert sum(h["total"] for h in body["by_hour"]) == day["total"]
    detail = await (await client.get(f"/api/flights/{flight['id']}/", headers=AUTH)).json()
    assert detail["uptime_checks_total"] == body["summary"]["30d"]["total"]


# -- the documents' examples, run as written ------------------------------------


def _seed_examples(name: str) -> list[str]:
    text = (SEEDS / name).read_text()
    examples = re.findall(r"^curl .*?(?=\n(?!-H|-d)|\Z)", text, flags=re.S | re.M)
    return [" ".join(line.rstrip("\\").strip() for line in e.strip().splitlines()) for e in examples]


async def _run_curl(command: str) -> tuple[int, str]:
    argv = shlex.split(command)
    process = await asyncio.create_subprocess_exec(
        *argv[:1],
        "-sS",
        "-w",
        "\n%{http_code}",
        *argv[1:],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


async def test_every_check_in_example_runs_as_written(client):
    import json

    flight = await create(client)
    base = f"http://{client.server.host}:{client.server.port}"
    examples = _seed_examples("crosscheck-checkins.txt")
    assert len(examples) == 5, examples  # check-in, two short URL, paired start and end
    results = []
    for example in examples:
        command = (
            example.replace("https://crosscheck.app", base)
            .replace("<flight-api-key>", flight["api_key"])
            .replace("Ab1Cd2Ef", flight["shortcode"])
        )
        results.append(await _run_curl(command))
    assert [code for code, _ in results] == [201, 200, 200, 201, 201]
    assert json.loads(results[0][1])["metadata"] == {"version": "1.0.0"}
    assert json.loads(results[1][1]) == {"status": "ok"}
    assert json.loads(results[4][1])["pair_key"] == "job-123"
    landings = await (await client.get(f"/api/flights/{flight['id']}/landings/", headers=AUTH)).json()
    assert [x["phase"] for x in landings] == ["COMPLETE", "START", "SINGLE", "SINGLE", "SINGLE"]
    assert landings[2]["metadata"] == {"source": "cron"}
    test = await client.post("/api/flights/test-check-in/", headers={"X-API-Key": flight["api_key"]})
    assert await test.json() == {"message": "Test check-in working!"}
    assert len(await (await client.get(f"/api/flights/{flight['id']}/landings/", headers=AUTH)).json()) == 5


async def test_every_flights_endpoint_of_the_document_answers(client):
    """Each path in crosscheck-flights.txt, with its documented method."""
    text = (SEEDS / "crosscheck-flights.txt").read_text()
    endpoints = re.findall(r"^(GET|POST|PUT|PATCH|DELETE) (/api/\S+)", text, flags=re.M)
    assert len(endpoints) == 20
    flight = await create(client)
    group = await (await client.post("/api/flights/groups/", json={"name": "g"}, headers=AUTH)).json()
    bodies = {
        "/api/flights/reorder/": [{"id": flight["id"], "order": 1}],
        "/api/flights/groups/reorder/": {"items": [{"id": group["id"], "order": 1}]},
        "/api/flights/": {"name": "another"},
        "/api/flights/groups/": {"name": "another"},
    }
    # The deletes go last.
    order = sorted(endpoints, key=lambda e: e[0] == "DELETE")
    for method, path in order:
        concrete = path.replace("{id}", group["id"] if "/groups/" in path else flight["id"])
        body = bodies.get(path, {"name": "x"} if method in ("PUT", "PATCH") else None)
        if "restore" in path:
            await client.post(f"/api/flights/{flight['id']}/soft-delete/", headers=AUTH)
        if "purge" in path:  # on a flight of its own, soft-deleted first
            doomed = await create(client, name="doomed")
            await client.post(f"/api/flights/{doomed['id']}/soft-delete/", headers=AUTH)
            concrete = path.replace("{id}", doomed["id"])
        response = await client.request(method, concrete, json=body, headers=AUTH)
        assert response.status in (200, 201, 204), (method, path, response.status, await response.text())


async def test_yaml_flight_keeps_its_crosscheck_key_and_shortcode(client):
    """A job migrating from CrossCheck keeps its X-API-Key and short URL: the
    YAML monitor imports them from the environment."""
    key = {"X-API-Key": "old-crosscheck-key-123"}
    assert (await client.post("/api/flights/check-in/", json={"status": "SUCCESS"}, headers=key)).status == 201
    assert (await client.get("/c/Ab1Cd2Ef/")).status == 200
    assert await metric(client, "cronmon_runs_total", monitor="migrated-backup", outcome="ok") == 2
    listed = await (await client.get("/api/flights/", headers=OTHER)).json()
    assert [f["path"] for f in listed] == ["migrated-backup"]
    assert listed[0]["api_key"] is None and listed[0]["last_landing_status"] == "SUCCESS"
    refused = await client.patch(f"/api/flights/{listed[0]['id']}/", json={"order": 1}, headers=AUTH)
    assert refused.status == 403 and "monitors.yaml" in (await refused.json())["detail"]


def test_uptime_windows_are_exact_at_the_edges():
    from exporter import uptime

    now = T0 + 30 * 60  # 12:30
    hour, day = int(now // 3600), int(now // 86400)
    buckets = {
        f"h{hour}:ok": 2,
        f"h{hour - 23}:missed": 1,
        f"h{hour - 24}:error": 5,
        f"d{day}:ok": 2,
        f"d{day - 6}:warning": 1,
        f"d{day - 7}:error": 4,
        f"d{day - 29}:silent_failure": 1,
        f"d{day - 30}:ok": 9,
    }
    summary = uptime.summary(buckets, now)
    assert (summary["24h"].total, summary["24h"].successful) == (3, 2)
    assert (summary["7d"].total, summary["7d"].successful, summary["7d"].percentage) == (3, 3, 100.0)
    assert (summary["30d"].total, summary["30d"].error) == (8, 5)
    assert uptime.UptimeCounts().percentage is None


def test_imported_secrets_must_exist_and_be_unique(tmp_path):
    from exporter import credentials
    from exporter.config import ConfigError, load_config

    path = write_config(
        tmp_path,
        """
        monitors:
          - {id: a, schedule: {interval: 1h}, ping: {api_key_env: KEY_A, shortcode_env: CODE}}
          - {id: b, schedule: {interval: 1h}, ping: {shortcode_env: CODE, api_key_file: /nonexistent/key}}
    """,
    )
    config = load_config(path, now=T0)
    with pytest.raises(ConfigError) as caught:
        credentials.resolve(config, tmp_path, {"CODE": "Ab1Cd2Ef", "CRONMON_PING_KEY": "k"})
    assert caught.value.problems == [
        f'{path}: monitor "a": field "ping.api_key_env": environment variable KEY_A is not set or empty',
        f'{path}: monitor "b": field "ping.api_key_file": cannot read /nonexistent/key: No such file or directory',
        f'{path}: monitor "b": its ping.shortcode is also the shortcode of monitor "a"',
    ]


def test_trusted_proxy_flag_and_environment(monkeypatch, capsys):
    import ipaddress

    from exporter.cli import build_parser

    argv = ["serve", "--config", "x", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "192.0.2.1"]
    assert build_parser().parse_args(argv).trusted_proxy == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
    ]
    monkeypatch.setenv("CRONMON_TRUSTED_PROXIES", "172.16.0.0/12, fd00::/8")
    assert build_parser().parse_args(["serve", "--config", "x"]).trusted_proxy == [
        ipaddress.ip_network("172.16.0.0/12"),
        ipaddress.ip_network("fd00::/8"),
    ]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--config", "x", "--trusted-proxy", "proxy.example"])
    assert "'proxy.example' is not an IP address or a network" in capsys.readouterr().err


async def test_uptime_buckets_stay_bounded(make_core, clock, raw_redis):
    """Hour buckets older than 48 hours and day buckets older than 31 days
    are pruned as new hours start, so the hash does not grow with time."""
    from exporter.model import CheckIn, Kind

    core = make_core("monitors:\n  - {id: job, schedule: {interval: 1h}, grace: 1h}\n")
    for _ in range(40 * 24 // 6):  # 40 days, a run every 6 hours
        await core.record(CheckIn("job", Kind.SUCCESS, clock()))
        clock.advance(6 * 3600)
    await core.record(CheckIn("job", Kind.SUCCESS, clock()))
    fields = await raw_redis.hkeys(core.store.key("job", "uptime"))
    hour, day = int(clock() // 3600), int(clock() // 86400)
    hours = [int(f[1:].split(":")[0]) for f in fields if f.startswith("h") and f != "hour"]
    days = [int(f[1:].split(":")[0]) for f in fields if f.startswith("d")]
    assert min(hours) > hour - 48 and max(hours) == hour
    assert min(days) > day - 31 and max(days) == day
    assert len(fields) <= 48 + 31 + 1


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("GET", "/ping/cc-test-ping-key/fenced", {}),
        ("POST", "/api/v1/ping/fenced/success", {"X-API-Key": "ops-token"}),
        ("GET", "/api/1/cron/fenced/ops-token/?status=ok", {}),
    ],
)
async def test_allowed_ips_hold_for_every_api(client, method, path, headers):
    """The core enforces a monitor's allow list, whichever API reaches it."""
    response = await client.request(method, path, headers=headers)
    assert response.status == 403
    assert await metric(client, "cronmon_runs_total", monitor="fenced", outcome="ok") == 0


async def test_a_read_scope_token_never_sees_a_flights_check_in_credentials(client):
    """api_key and shortcode let anyone check in: a dashboard's read token
    sees the flight, but not them (as the native API hides ping_url)."""
    flight = await create(client)
    assert flight["api_key"] and flight["shortcode"]
    read = {"Authorization": "Bearer read-token"}
    listed = await api_flights(client, headers=read)
    detail = await (await client.get(f"/api/flights/{flight['id']}/", headers=read)).json()
    for seen in (listed[0], detail):
        assert seen["id"] == flight["id"]
        assert seen["api_key"] is None and seen["shortcode"] is None and seen["short_check_in_url"] is None
    assert flight["api_key"] not in str(listed) + str(detail)
