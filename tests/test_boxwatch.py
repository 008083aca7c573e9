"""Boxwatch-compatible cron checks, following seeds/boxwatch-cron-checks.txt."""

import json
import re

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
    assert row["status"] == "failed" and row["last_exit_code"] == 3 and row["last_duration_seconds"] == 8  # 7.5
    assert row["last_start_at"] and row["last_success_at"] and row["last_fail_at"]

    detail = await (await client.get("/cron-checks/1", headers=AUTH)).json()
    assert detail["pings_total"] == 3
    newest, success, start = detail["pings"]
    assert (newest["ping_type"], newest["exit_code"], newest["duration_seconds"], newest["body"]) == (
        "fail",
        3,
        8,  # whole seconds, rounded half up
        "disk full",
    )
    assert success["ping_type"] == "success" and success["user_agent"] == "curl/8.4.0"
    assert success["duration_seconds"] == 2 and success["source_ip"] == "127.0.0.1"
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


# --- The document's JSON types -------------------------------------------
#
# Each response example of seeds/boxwatch-cron-checks.txt, copied verbatim:
# our answer, in the same state, must have the same keys and the same JSON
# type for every field (json_shape), since a typed client decodes them. The
# examples of create, get and update show an abbreviated `check` (update only
# the changed field): there the documented keys must be there with the
# documented types, and the rest are those of the full check (the list's).

DOC_LIST = """
{
  "checks": [
    {
      "id": 7,
      "user_id": 3,
      "server_id": 12,
      "server_hostname": "cron-01.prod",
      "name": "Nightly DB backup",
      "slug": "9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12",
      "interval_seconds": 86400,
      "grace_seconds": 300,
      "max_duration_seconds": 1800,
      "enabled": 1,
      "status": "up",
      "alert_on_missed": 1,
      "alert_on_fail": 1,
      "alert_on_stuck": 1,
      "alert_on_long": 0,
      "last_ping_at": "2026-05-24T03:00:14Z",
      "last_start_at": "2026-05-24T03:00:12Z",
      "last_success_at": "2026-05-24T03:00:14Z",
      "last_fail_at": null,
      "last_exit_code": null,
      "last_duration_seconds": 2,
      "created_at": "2026-04-12T11:23:00Z"
    }
  ],
  "plan_limit": 25,
  "current_count": 1,
  "plan": "pro"
}
"""
DOC_CREATE_REQUEST = """
{
  "name": "Nightly DB backup",
  "interval_seconds": 86400,
  "grace_seconds": 600,
  "max_duration_seconds": 1800,
  "server_id": 12,
  "alert_on_long": true
}
"""
DOC_CREATE = """
{
  "check": {
    "id": 7,
    "slug": "9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12",
    "name": "Nightly DB backup",
    "interval_seconds": 86400,
    "grace_seconds": 600,
    "max_duration_seconds": 1800,
    "enabled": 1,
    "status": "new"
  },
  "ping_urls": {
    "success": "https://api.boxwatch.app/ping/9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12",
    "start": "https://api.boxwatch.app/ping/9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12/start",
    "fail": "https://api.boxwatch.app/ping/9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12/fail"
  }
}
"""
DOC_GET = """
{
  "check": {
    "id": 7,
    "name": "Nightly DB backup",
    "slug": "9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12",
    "status": "up",
    "server_hostname": "cron-01.prod"
  },
  "ping_urls": {
    "success": "https://api.boxwatch.app/ping/9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12",
    "start": "https://api.boxwatch.app/ping/9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12/start",
    "fail": "https://api.boxwatch.app/ping/9b1a3c8e-2f4d-4a7e-9c1d-5b2e6a8d0f12/fail"
  },
  "pings": [
    {
      "id": 8821,
      "check_id": 7,
      "ping_type": "success",
      "exit_code": null,
      "duration_seconds": 2,
      "source_ip": "203.0.113.10",
      "user_agent": "curl/8.4.0",
      "body": null,
      "received_at": "2026-05-24T03:00:14Z"
    }
  ],
  "pings_total": 412
}
"""
DOC_UPDATE = """{ "check": { "id": 7, "name": "Nightly DB backup", "interval_seconds": 90000 } }"""
DOC_DELETE = """{ "ok": true }"""
# The errors are described in prose: "validation_failed with an issues
# array. Each issue has field and reason"; "plan_limit_reached; body
# includes current, limit, plan"; "not_found".
DOC_400 = {"error": "validation_failed", "issues": [{"field": "name", "reason": "required"}]}
DOC_402 = {"error": "plan_limit_reached", "current": 25, "limit": 25, "plan": "pro"}
DOC_404 = {"error": "not_found"}

# cronmon has no servers, so no hostname to give (the document: "the server
# hostname (if linked)", so a client already handles null).
NULL_HERE = {"server_hostname"}

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def json_shape(value):
    """A JSON value's type, recursively: objects keep their keys, lists
    their elements; an integer is not a float (json makes 2 an int, 2.0 a
    float); a timestamp is its format (digits as 9: `9999-99-99T99:99:99Z`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        if _TIMESTAMP.match(value):
            return "timestamp " + re.sub(r"\d", "9", value)
        return "uuid" if _UUID.fullmatch(value) else "string"
    if isinstance(value, list):
        return [json_shape(v) for v in value]
    assert isinstance(value, dict), value
    return {key: json_shape(v) for key, v in value.items()}


def documented_shape(example):
    """json_shape of a document example, with the NULL_HERE fields null."""
    shape = json_shape(example)

    def nulled(node):
        if isinstance(node, list):
            return [nulled(n) for n in node]
        if isinstance(node, dict):
            return {k: "null" if k in NULL_HERE else nulled(v) for k, v in node.items()}
        return node

    return nulled(shape)


def assert_documented_shape(example_text, answer, abbreviated=(), newest=()):
    """The answer's json_shape is the example's. Objects at the keys in
    `abbreviated` are compared on the example's keys (and must have those of
    the full check); lists at the keys in `newest` on their first elements,
    as many as the example shows."""
    example = json.loads(example_text) if isinstance(example_text, str) else example_text
    answer = dict(answer)
    for key in abbreviated:
        assert set(answer[key]) == set(FULL_CHECK_KEYS), sorted(set(answer[key]) ^ set(FULL_CHECK_KEYS))
        answer[key] = {k: answer[key].get(k, "<missing>") for k in example[key]}
    for key in newest:
        assert len(answer[key]) >= len(example[key])
        answer[key] = answer[key][: len(example[key])]
    assert json_shape(answer) == documented_shape(example)


FULL_CHECK_KEYS = tuple(json.loads(DOC_LIST)["checks"][0])


async def ran_for_a_fraction(client, clock, slug):
    """The document's run: a start, then a success 2.013 s later (at a
    fraction of a second, so both timestamps and the duration have one)."""
    clock.advance(0.25)
    assert (await client.get(f"/ping/{slug}/start")).status == 200
    clock.advance(2.0131304264069)
    assert (await client.get(f"/ping/{slug}", headers={"User-Agent": "curl/8.4.0"})).status == 200


async def test_list_answer_has_the_documented_types(client, clock):
    slug = (await create(client, {**json.loads(DOC_CREATE_REQUEST), "grace_seconds": 300}))["check"]["slug"]
    await ran_for_a_fraction(client, clock, slug)
    response = await client.get("/cron-checks", headers=AUTH)
    assert response.status == 200
    listed = await response.json()
    assert_documented_shape(DOC_LIST, listed)
    row = listed["checks"][0]
    assert row["last_duration_seconds"] == 2 and row["status"] == "up" and row["enabled"] == 1
    # T0 is 2026-06-15T12:00:00Z: the start was at :00.25, the success at :02.26.
    assert (row["last_start_at"], row["last_success_at"], row["last_ping_at"], row["created_at"]) == (
        "2026-06-15T12:00:00Z",
        "2026-06-15T12:00:02Z",
        "2026-06-15T12:00:02Z",
        "2026-06-15T12:00:00Z",
    )


async def test_user_id_is_a_stable_integer_per_owner(client, aiohttp_client, app_settings, tmp_path, clock):
    await create(client, {"name": "a", "interval_seconds": 3600})
    await create(client, {"name": "b", "interval_seconds": 3600})
    other = {"Authorization": "Bearer other-token"}
    theirs_created = await client.post("/cron-checks", json={"name": "c", "interval_seconds": 3600}, headers=other)
    assert theirs_created.status == 201
    mine = (await (await client.get("/cron-checks", headers=AUTH)).json())["checks"]
    theirs = (await (await client.get("/cron-checks", headers=other)).json())["checks"]
    ids = {row["user_id"] for row in mine}
    assert len(ids) == 1 and type(next(iter(ids))) is int and 0 < next(iter(ids)) < 2**31
    assert theirs[0]["user_id"] != mine[0]["user_id"]
    # Another replica (a second app on the same store) says the same.
    settings = app_settings(write_config(tmp_path, CONFIG), public_url="https://cron.example")
    replica = await aiohttp_client(create_app(settings, clock=clock))
    again = (await (await replica.get("/cron-checks", headers=AUTH)).json())["checks"]
    assert {row["user_id"] for row in again} == ids


async def test_create_answer_has_the_documented_types(client):
    created = await create(client, json.loads(DOC_CREATE_REQUEST))
    assert_documented_shape(DOC_CREATE, created, abbreviated=("check",))
    assert created["check"]["status"] == "new" and created["check"]["last_duration_seconds"] is None


async def test_get_answer_has_the_documented_types(client, clock):
    slug = (await create(client, json.loads(DOC_CREATE_REQUEST)))["check"]["slug"]
    await ran_for_a_fraction(client, clock, slug)
    response = await client.get("/cron-checks/1", headers=AUTH)
    assert response.status == 200
    detail = await response.json()
    assert_documented_shape(DOC_GET, detail, abbreviated=("check",), newest=("pings",))
    # The full check is the list's, in the same state.
    listed = await (await client.get("/cron-checks", headers=AUTH)).json()
    assert detail["check"] == listed["checks"][0]
    success, start = detail["pings"]
    assert (success["duration_seconds"], success["received_at"]) == (2, "2026-06-15T12:00:02Z")
    # A start has no duration; otherwise a ping of the documented shape too.
    assert start["duration_seconds"] is None and start["received_at"] == "2026-06-15T12:00:00Z"
    assert json_shape({**start, "duration_seconds": 2}) == documented_shape(json.loads(DOC_GET)["pings"][0])


async def test_update_and_delete_answers_have_the_documented_types(client):
    await create(client, json.loads(DOC_CREATE_REQUEST))
    response = await client.put("/cron-checks/1", json={"interval_seconds": 90000}, headers=AUTH)
    assert response.status == 200
    updated = await response.json()
    assert_documented_shape(DOC_UPDATE, updated, abbreviated=("check",))
    assert updated["check"]["interval_seconds"] == 90000
    response = await client.delete("/cron-checks/1", headers=AUTH)
    assert response.status == 200
    assert_documented_shape(DOC_DELETE, await response.json())


async def test_error_answers_have_the_documented_types(client):
    async def answer(response, status):
        assert response.status == status, await response.text()
        return await response.json()

    def issues_shape(payload):
        # Any number of issues, each exactly {field, reason}.
        assert payload["issues"]
        assert_documented_shape(DOC_400, {**payload, "issues": payload["issues"][:1]})
        assert all(json_shape(i) == {"field": "string", "reason": "string"} for i in payload["issues"])
        return {i["field"] for i in payload["issues"]}

    post = client.post
    assert issues_shape(await answer(await post("/cron-checks", json={}, headers=AUTH), 400)) == {
        "name", "interval_seconds"}
    # A boolean-or-integer field that is neither: one issue, named as sent.
    bad = {**EXAMPLE, "enabled": "yes", "interval_seconds": 1.5}
    assert issues_shape(await answer(await post("/cron-checks", json=bad, headers=AUTH), 400)) == {
        "enabled", "interval_seconds"}
    assert issues_shape(await answer(await post("/cron-checks", data="{", headers=AUTH), 400)) == {"body"}
    await create(client)
    assert issues_shape(await answer(await client.put("/cron-checks/1", json={}, headers=AUTH), 400)) == {"body"}
    bad_offset = await client.get("/cron-checks/1?pings_offset=-1", headers=AUTH)
    assert issues_shape(await answer(bad_offset, 400)) == {"pings_offset"}

    for path in ("/cron-checks/99", "/cron-checks/abc"):
        for method in ("GET", "PUT", "DELETE"):
            response = await client.request(method, path, json={"name": "x"}, headers=AUTH)
            assert_documented_shape(DOC_404, await answer(response, 404))

    for i in range(2):
        await create(client, {"name": f"job {i}", "interval_seconds": 3600})
    refused = await answer(await post("/cron-checks", json=EXAMPLE, headers=AUTH), 402)
    assert_documented_shape(DOC_402, refused)
    assert refused == {"error": "plan_limit_reached", "current": 3, "limit": 3, "plan": "self-hosted"}

    # The undocumented ones: {"error": <code>} too.
    assert json_shape(await answer(await client.get("/cron-checks"), 401)) == {"error": "string"}
    ro = {"Authorization": "Bearer dashboard-token"}
    assert json_shape(await answer(await post("/cron-checks", json=EXAMPLE, headers=ro), 403)) == {"error": "string"}


@pytest.mark.parametrize(
    "start_to_finish, reported, whole",
    [
        (2.0131304264069, None, 2),
        (2.5, None, 3),  # half up (Python's round() would say 2)
        (3.49, None, 3),
        (0.4, None, 0),
        (None, 7.5, 8),
        (None, 0.5, 1),
        (None, 2.4999, 2),
    ],
)
async def test_durations_are_whole_seconds_rounded_half_up(client, clock, start_to_finish, reported, whole):
    slug = (await create(client))["check"]["slug"]
    if start_to_finish is not None:
        clock.advance(0.5)
        assert (await client.get(f"/ping/{slug}/start")).status == 200
        clock.advance(start_to_finish)
    query = f"?duration={reported}" if reported is not None else ""
    assert (await client.get(f"/ping/{slug}{query}")).status == 200
    row = (await (await client.get("/cron-checks", headers=AUTH)).json())["checks"][0]
    ping = (await (await client.get("/cron-checks/1", headers=AUTH)).json())["pings"][0]
    assert row["last_duration_seconds"] == whole and type(row["last_duration_seconds"]) is int
    assert ping["duration_seconds"] == whole and type(ping["duration_seconds"]) is int
