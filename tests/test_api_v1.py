"""Native management API /api/v1 over HTTP, against the real test Redis."""

import pytest

from exporter.web.app import create_app
from exporter.web.keys import CORE, SWEEPER

from .conftest import free_port, write_config

CONFIG = """
api_tokens:
  - {name: alice-rw, env: T_ALICE, owner: alice, team: data, scope: write}
  - {name: bob-ro, env: T_BOB, owner: bob, team: data, scope: read}
  - {name: carol-rw, env: T_CAROL, owner: carol, scope: write}
monitors:
  - id: yaml-job
    schedule: {interval: 1h}
"""
ALICE, BOB, CAROL = ({"Authorization": f"Bearer {t}"} for t in ("alice-token", "bob-token", "carol-token"))
NEW = {"id": "etl", "name": "ETL", "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Berlin"},
       "grace": "10m", "labels": {"team": "data"}}


@pytest.fixture
def env(monkeypatch):
    for name, value in (("T_ALICE", "alice-token"), ("T_BOB", "bob-token"), ("T_CAROL", "carol-token")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CRONMON_PING_KEY", "api-test-ping-key")


@pytest.fixture
async def client(aiohttp_client, app_settings, tmp_path, env, clock):
    app = create_app(app_settings(write_config(tmp_path, CONFIG), max_body_bytes=5000), clock=clock)
    return await aiohttp_client(app)


async def error(response, status: int, code: str) -> dict:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["error"]["code"] == code
    return body["error"]


async def test_authentication_and_scopes(client):
    await error(await client.get("/api/v1/monitors"), 401, "unauthorized")
    response = await client.get("/api/v1/monitors", headers={"Authorization": "Bearer nope"})
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await error(response, 401, "unauthorized")
    message = (await error(await client.post("/api/v1/monitors", json=NEW, headers=BOB), 403, "forbidden"))["message"]
    assert "read scope" in message
    assert (await (await client.get("/api/v1/monitors", headers=ALICE)).json())["monitors"][0]["id"] == "yaml-job"


async def test_create_see_change_delete(client):
    created = await client.post("/api/v1/monitors", json=NEW, headers=ALICE)
    assert created.status == 201, await created.text()
    monitor = (await created.json())["monitor"]
    assert monitor["source"] == "api" and monitor["owner"] == "alice" and monitor["team"] == "data"
    assert monitor["grace"] == 600 and monitor["status"] == "new" and monitor["writable"] is True
    assert monitor["ping_url"].startswith("http://localhost:9879/ping/")

    # Bob (same team, read scope) sees it without its ping URL; Carol does not see it.
    seen_by_bob = (await (await client.get("/api/v1/monitors/etl", headers=BOB)).json())["monitor"]
    assert seen_by_bob["writable"] is False and "ping_url" not in seen_by_bob
    await error(await client.get("/api/v1/monitors/etl", headers=CAROL), 404, "not_found")
    await error(await client.delete("/api/v1/monitors/etl", headers=CAROL), 404, "not_found")
    carol_ids = [m["id"] for m in (await (await client.get("/api/v1/monitors", headers=CAROL)).json())["monitors"]]
    assert carol_ids == ["yaml-job"]

    # It takes pings at once, by its UUID and by ping key + id.
    uuid_path = monitor["ping_url"].split("localhost:9879")[1]
    assert (await client.get(uuid_path + "/start")).status == 200
    assert (await client.post("/ping/api-test-ping-key/etl", data="done: 12 rows")).status == 200
    assert (await (await client.get("/api/v1/monitors/etl", headers=ALICE)).json())["monitor"]["status"] == "up"

    patched = await client.patch("/api/v1/monitors/etl", json={"grace": 60, "paused": True}, headers=ALICE)
    assert patched.status == 200, await patched.text()
    body = (await patched.json())["monitor"]
    assert (body["grace"], body["paused"], body["name"]) == (60, True, "ETL")
    replaced = await client.put(
        "/api/v1/monitors/etl", json={"schedule": {"interval": "15m"}, "name": "ETL v2"}, headers=ALICE
    )
    body = (await replaced.json())["monitor"]
    assert body["schedule"] == {"interval": 900} and body["grace"] == 300 and body["paused"] is False

    assert (await client.delete("/api/v1/monitors/etl", headers=ALICE)).status == 204
    await error(await client.get("/api/v1/monitors/etl", headers=ALICE), 404, "not_found")
    assert (await client.get("/ping/api-test-ping-key/etl")).status == 404
    facts = await client.app[CORE].store.facts("etl")
    assert facts.checkins == {} and facts.last_checkin is None  # history and counters went too


async def test_yaml_monitors_are_read_only(client):
    for response in (
        await client.post("/api/v1/monitors", json={**NEW, "id": "yaml-job"}, headers=ALICE),
        await client.put("/api/v1/monitors/yaml-job", json=NEW | {"id": "yaml-job"}, headers=ALICE),
        await client.patch("/api/v1/monitors/yaml-job", json={"grace": 5}, headers=ALICE),
        await client.delete("/api/v1/monitors/yaml-job", headers=ALICE),
    ):
        err = await error(response, 409, "read_only")
        assert "is declared in" in err["message"] and "monitors.yaml" in err["message"]


@pytest.mark.parametrize(
    "body, field, reason",
    [
        (
            {**NEW, "schedule": {"cron": "0 3 * * *", "timezone": "Mars/Base"}},
            "schedule.timezone",
            "unknown time zone 'Mars/Base'",
        ),
        ({**NEW, "colour": "red"}, "colour", "unknown key"),
        ({**NEW, "schedule": {"cron": "0 0 30 2 *"}}, "schedule.cron", "never fires"),
        ({**NEW, "id": "Bad Id"}, "id", "is not a valid id"),
        ({**NEW, "labels": {"instance": "x"}}, "labels", "reserved"),
        ({**NEW, "ping": {"uuid_env": "X"}}, "ping", "only be set in YAML"),
        ([1, 2], "", "JSON object"),
    ],
)
async def test_invalid_monitors_are_refused_and_change_nothing(client, body, field, reason):
    err = await error(await client.post("/api/v1/monitors", json=body, headers=ALICE), 400, "validation_failed")
    assert any(i["field"] == field and reason in i["reason"] for i in err["issues"]), err
    ids = [m["id"] for m in (await (await client.get("/api/v1/monitors", headers=ALICE)).json())["monitors"]]
    assert ids == ["yaml-job"]


async def test_bad_bodies_and_conflicts(client):
    await error(await client.post("/api/v1/monitors", data="{nope", headers=ALICE), 400, "invalid_json")
    await error(await client.post("/api/v1/monitors", data="x" * 6000, headers=ALICE), 413, "too_large")
    assert (await client.post("/api/v1/monitors", json=NEW, headers=ALICE)).status == 201
    await error(await client.post("/api/v1/monitors", json=NEW, headers=CAROL), 409, "conflict")
    await error(
        await client.patch("/api/v1/monitors/etl", json={"id": "other"}, headers=ALICE), 400, "validation_failed"
    )
    await error(
        await client.patch("/api/v1/monitors/etl", json={"grace": "soon"}, headers=ALICE), 400, "validation_failed"
    )
    await error(await client.get("/api/v1/monitors/etl/runs?limit=0", headers=ALICE), 400, "validation_failed")
    await error(await client.get("/api/v1/monitors/etl/runs?before=x", headers=ALICE), 400, "validation_failed")


async def test_runs_pagination_and_logs(client, clock):
    await client.post("/api/v1/monitors", json={**NEW, "schedule": {"interval": "1h"}}, headers=ALICE)
    for i in range(5):
        clock.advance(10)
        await client.post("/ping/api-test-ping-key/etl/log", data=f"line {i}")
    first = await (await client.get("/api/v1/monitors/etl/runs?limit=2", headers=ALICE)).json()
    assert [r["seq"] for r in first["runs"]] == [5, 4] and first["next_before"] == 4
    second = await (
        await client.get(f"/api/v1/monitors/etl/runs?limit=2&before={first['next_before']}", headers=ALICE)
    ).json()
    assert [r["seq"] for r in second["runs"]] == [3, 2]
    last = await (await client.get("/api/v1/monitors/etl/runs?limit=2&before=2", headers=ALICE)).json()
    assert [r["seq"] for r in last["runs"]] == [1] and last["next_before"] is None
    assert first["runs"][0]["has_log"] is True and first["runs"][0]["time"].endswith("Z")
    log = await (await client.get("/api/v1/monitors/etl/runs/5/log", headers=ALICE)).json()
    assert log == {"hasLog": True, "content": "line 4", "seq": 5, "run": None, "has_log": True, "truncated": False}
    await error(await client.get("/api/v1/monitors/etl/runs/99/log", headers=ALICE), 404, "not_found")
    await error(await client.get("/api/v1/monitors/etl/runs/1/log", headers=CAROL), 404, "not_found")


async def test_other_replicas_pick_up_api_monitors(aiohttp_client, client, app_settings, tmp_path, clock):
    replica = await aiohttp_client(create_app(app_settings(tmp_path / "monitors.yaml"), clock=clock))
    assert (await client.post("/api/v1/monitors", json=NEW, headers=ALICE)).status == 201
    await replica.app[SWEEPER].run_once()  # one tick notices the new revision
    assert "etl" in replica.app[CORE].registry.monitors
    assert (await replica.get("/ping/api-test-ping-key/etl")).status == 200
    assert (await client.delete("/api/v1/monitors/etl", headers=ALICE)).status == 204
    await replica.app[SWEEPER].run_once()
    assert "etl" not in replica.app[CORE].registry.monitors


async def test_store_down_is_503_in_the_api_shape(aiohttp_client, app_settings, tmp_path, env, clock):
    settings = app_settings(write_config(tmp_path, CONFIG), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    down = await aiohttp_client(create_app(settings, clock=clock))
    await error(await down.get("/api/v1/monitors", headers=ALICE), 503, "store_unavailable")
    await error(await down.post("/api/v1/monitors", json=NEW, headers=ALICE), 503, "store_unavailable")


@pytest.mark.parametrize(
    "raw, code, reason",
    [
        (b'{"id": "x", "schedule": {"interval": "1h"}, "grace": 1' + b"0" * 400 + b"}", "invalid_json", "digits"),
        (b'{"id": "x", "schedule": {"interval": "1h"}, "grace": 1e400}', "invalid_json", "beyond the range"),
        (b'{"id": "x", "schedule": {"interval": "1h"}, "grace": NaN}', "invalid_json", "NaN"),
        (b'{"id": "x", "schedule": {"interval": "1h"}, "grace": 100000000000000000000000000000}',
         "validation_failed", "10 years"),
        (b'{"id": "x", "schedule": {"interval": "1h"}, "failure_threshold": 1' + b"0" * 200 + b"}",
         "validation_failed", "1000"),
        (b'{"id": "x", "schedule": {"cron": "0 3 * * *", "timezone": "' + b"A" * 300 + b'"}}',
         "validation_failed", "unknown time zone"),
        (b'{"id": "x", "schedule": {"interval": "1h"}, "name": "\\ud800"}', "invalid_json", "lone surrogate"),
        (b'{"id": "x", "schedule": {"interval": "' + b"9" * 4000 + b'd"}}', "validation_failed", "not a duration"),
    ],
)
async def test_numbers_and_text_no_field_can_hold_are_a_400_that_creates_nothing(client, raw, code, reason):
    response = await client.post("/api/v1/monitors", data=raw, headers={**ALICE, "Content-Type": "application/json"})
    problem = await error(response, 400, code)
    assert reason in problem["message"] + str(problem.get("issues"))
    assert "x" not in client.app[CORE].registry.monitors


async def test_an_owner_gets_at_most_monitors_per_owner_api_monitors(aiohttp_client, app_settings, tmp_path, env):
    """Counted over every API, checked in the same Redis script as the
    create (concurrent creates cannot overshoot it); a delete frees a place."""
    import asyncio

    app = create_app(app_settings(write_config(tmp_path, CONFIG), monitors_per_owner=3))
    client = await aiohttp_client(app)
    sent = await asyncio.gather(*(
        client.post("/api/v1/monitors", json={"id": f"m{i}", "schedule": {"interval": "1h"}}, headers=ALICE)
        for i in range(6)
    ))
    assert sorted(r.status for r in sent) == [201] * 3 + [403] * 3
    problem = await error(next(r for r in sent if r.status == 403), 403, "quota_exceeded")
    assert 'owner "alice" already has 3 monitors' in problem["message"]
    # Boxwatch counts against the same limit.
    boxwatch = await client.post("/cron-checks", json={"name": "b", "interval_seconds": 3600}, headers=ALICE)
    assert boxwatch.status == 402
    created = [m for m in app[CORE].registry.monitors if m.startswith("m")]
    assert len(created) == 3
    assert (await client.delete(f"/api/v1/monitors/{created[0]}", headers=ALICE)).status == 204
    again = await client.post("/api/v1/monitors", json={"id": "m9", "schedule": {"interval": "1h"}}, headers=ALICE)
    assert again.status == 201
    # Another owner has places of its own.
    assert (await client.post("/api/v1/monitors", json={"id": "c1", "schedule": {"interval": "1h"}},
                              headers=CAROL)).status == 201


PING_CONFIG = """
api_tokens:
  - {name: alice-rw, env: T_ALICE, owner: alice, team: data, scope: write}
  - {name: bob-ro, env: T_BOB, owner: bob, team: data, scope: read}
  - {name: carol-rw, env: T_CAROL, owner: carol, scope: write}
monitors:
  - id: yaml-job
    schedule: {interval: 1h}
    ping: {tokens: [alice-rw]}
  - id: kept-uuid
    schedule: {interval: 1h}
    ping: {tokens: [alice-rw], uuid_env: KEPT_UUID}
"""
KEPT_UUID = "2f0e4a1c-9b7d-4e3a-8c55-1d2e3f405162"


async def test_ping_urls_are_shown_to_the_tokens_that_may_check_in(aiohttp_client, app_settings, tmp_path, env,
                                                                  monkeypatch, clock):
    """A YAML monitor's ping URL goes to the tokens its ping.tokens names
    (access.can_check_in: they may record check-ins on it anyway), not to
    read-scope tokens nor to write tokens it does not name; an API
    monitor's to the tokens that may change it. Only a UUID cronmon made is
    served: a UUID from env or files (the operator's) and the ping key
    (which addresses every monitor) never are."""
    monkeypatch.setenv("KEPT_UUID", KEPT_UUID)
    client = await aiohttp_client(create_app(app_settings(write_config(tmp_path, PING_CONFIG)), clock=clock))
    assert (await client.post("/api/v1/monitors", json=NEW, headers=ALICE)).status == 201

    async def seen(monitor_id: str, headers: dict) -> dict:
        response = await client.get(f"/api/v1/monitors/{monitor_id}", headers=headers)
        assert response.status == 200, await response.text()
        return (await response.json())["monitor"]

    job = await seen("yaml-job", ALICE)
    assert job["writable"] is False  # YAML: read-only, and still its URL is shown to a token that may ping it
    [url] = job["ping_urls"]
    assert job["ping_url"] == url and url.startswith("http://localhost:9879/ping/")
    assert "api-test-ping-key" not in str(job)
    assert (await client.get(url.split("localhost:9879")[1] + "/start")).status == 200
    assert (await client.get(url.split("localhost:9879")[1])).status == 200
    assert (await seen("yaml-job", ALICE))["status"] == "up"
    listed = {m["id"]: m for m in (await (await client.get("/api/v1/monitors", headers=ALICE)).json())["monitors"]}
    assert listed["yaml-job"]["ping_urls"] == [url]

    for other in (BOB, CAROL):  # read scope; write scope but not named in ping.tokens
        for monitor_id in ("yaml-job", "kept-uuid"):
            body = await seen(monitor_id, other)
            assert "ping_urls" not in body and "ping_url" not in body, (other, body)

    kept = await seen("kept-uuid", ALICE)
    assert kept["ping_urls"] == [] and "ping_url" not in kept and KEPT_UUID not in str(kept)

    etl = await seen("etl", ALICE)
    assert etl["ping_urls"] == [etl["ping_url"]] and etl["ping_url"].startswith("http://localhost:9879/ping/")
    assert "ping_urls" not in await seen("etl", BOB)


async def test_run_entries_give_every_time_as_iso_utc(client, clock):
    """`time`, `started` (a run's start, on its end and on its timeout) and
    `through` (the last slot a missed entry accounts for) are all RFC 3339
    UTC strings, not a mix of strings and Unix floats."""
    from exporter.model import iso_utc

    created = await client.post(
        "/api/v1/monitors", json={**NEW, "schedule": {"interval": "1h"}, "max_runtime": "10m", "grace": "1m"},
        headers=ALICE,
    )
    assert created.status == 201, await created.text()
    rid = "8d3c2b1a-0f9e-4d8c-b7a6-5f4e3d2c1b0a"
    started_at = clock()
    assert (await client.get(f"/ping/api-test-ping-key/etl/start?rid={rid}")).status == 200
    clock.advance(30)
    finished_at = clock()
    assert (await client.get(f"/ping/api-test-ping-key/etl?rid={rid}")).status == 200
    rid2 = "9e4d3c2b-1a0f-4e9d-8c7b-6a5f4e3d2c1b"
    clock.advance(60)
    second_start = clock()
    assert (await client.get(f"/ping/api-test-ping-key/etl/start?rid={rid2}")).status == 200
    clock.advance(11 * 60)  # past max_runtime: it times out
    await client.app[SWEEPER].run_once()
    assert (await client.get(f"/ping/api-test-ping-key/etl?rid={rid2}")).status == 200  # its late end
    clock.advance(3 * 3600)  # then nothing: the next slots are missed
    await client.app[SWEEPER].run_once()

    runs = (await (await client.get("/api/v1/monitors/etl/runs", headers=ALICE)).json())["runs"]
    ended = {r["run"]: r for r in runs if r["kind"] == "success"}
    assert ended[rid]["time"] == iso_utc(finished_at) and ended[rid]["started"] == iso_utc(started_at)
    assert ended[rid2]["started"] == iso_utc(second_start)
    [timeout] = [r for r in runs if r["kind"] == "timeout"]
    assert timeout["started"] == iso_utc(second_start)
    [missed] = [r for r in runs if r["kind"] == "missed"]
    assert isinstance(missed["through"], str) and missed["through"].endswith("Z")
    for run in runs:
        assert "t" not in run
        for name in ("time", "started", "through"):
            if name in run:
                assert isinstance(run[name], str) and run[name].endswith("Z"), (name, run)
