"""The Healthchecks-compatible ping API over HTTP (pytest-aiohttp), against
the real test redis-server."""

import asyncio
import uuid

import pytest

from exporter.credentials import derive_uuid, digest
from exporter.evaluate import evaluate
from exporter.model import Status
from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import free_port, write_config

KEY = "test-ping-key-0123456789"
HC_UUID = "5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278"

CONFIG = """
ping_keys:
  - name: ops
    env: TEST_OPS_KEY
  - name: batch
    env: TEST_BATCH_KEY
monitors:
  - id: backup
    schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
    grace: 15m
    max_runtime: 2h
    labels: {team: data, severity: critical}
  - id: migrated
    schedule: {interval: 1h}
    ping: {uuid_env: TEST_HC_UUID}
  - id: batch-only
    schedule: {interval: 1h}
    ping: {keys: [batch]}
"""


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("TEST_OPS_KEY", KEY)
    monkeypatch.setenv("TEST_BATCH_KEY", "batch-key-abcdefghijklmnop")
    monkeypatch.setenv("TEST_HC_UUID", HC_UUID.upper())  # UUIDs match case-insensitively


@pytest.fixture
async def client(aiohttp_client, serve, app_settings, tmp_path, env, clock):
    settings = app_settings(write_config(tmp_path, CONFIG), max_body_bytes=2000, log_limit_bytes=16)
    app = create_app(settings, clock=clock)
    return await aiohttp_client(await serve(app))


async def facts(client, monitor_id="backup"):
    return await client.app[CORE].store.facts(monitor_id)


def backup_uuid() -> str:
    return derive_uuid(digest(KEY), "backup")


PING_FORMS = [
    # (path suffix, expected check-in kind counter, exit code)
    ("", "success", None),
    ("/start", "start", None),
    ("/fail", "fail", None),
    ("/log", "log", None),
    ("/0", "success", 0),
    ("/1", "fail", 1),
    ("/255", "fail", 255),
]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
@pytest.mark.parametrize("suffix, kind, exit_code", PING_FORMS)
@pytest.mark.parametrize("form", ["uuid", "slug"])
async def test_every_ping_form_is_recorded(client, method, suffix, kind, exit_code, form):
    base = f"/ping/{backup_uuid()}" if form == "uuid" else f"/ping/{KEY}/backup"
    response = await client.request(method, base + suffix)
    assert response.status == 200
    assert (await response.text()) == ("" if method == "HEAD" else "OK")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    recorded = await facts(client)
    assert recorded.checkins == {kind: 1}
    assert recorded.last_exit_code == exit_code


async def test_run_id_pairs_start_and_finish(client, clock):
    rid = str(uuid.uuid4())
    assert (await client.get(f"/ping/{KEY}/backup/start?rid={rid}")).status == 200
    clock.advance(90)
    assert (await client.get(f"/ping/{KEY}/backup?rid={rid}")).status == 200
    recorded = await facts(client)
    assert recorded.last_duration == pytest.approx(90) and recorded.open_runs == ()


async def test_post_body_becomes_the_log_cut_and_flagged(client):
    core = client.app[CORE]
    await client.post(f"/ping/{KEY}/backup", data="short log")
    # limit 16 bytes: "é" takes bytes 16-17, so the cut falls inside it and
    # the partial character is dropped rather than stored as garbage
    await client.post(f"/ping/{KEY}/backup/fail", data="abcdefghijklmnoé-tail".encode())
    newest, older = await core.store.history("backup", 0, 2)
    assert await core.store.log("backup", older["log"]) == "short log"
    assert "log_truncated" not in older
    assert await core.store.log("backup", newest["log"]) == "abcdefghijklmno"
    assert newest["log_truncated"] is True
    assert newest["ua"].startswith("Python") and newest["ip"] == "127.0.0.1"


async def test_a_user_agent_that_is_not_utf8_is_kept_readable(client):
    """Header bytes that are not UTF-8 are kept as U+FFFD (aiohttp
    surrogate-escapes them, and a lone surrogate cannot go to Redis: that
    was a 500)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"GET /ping/" + KEY.encode() + b"/backup HTTP/1.1\r\nHost: x\r\nUser-Agent: curl \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    (newest,) = await client.app[CORE].store.history("backup", 0, 1)
    assert newest["ua"] == "curl \ufffd\ufffd"


async def test_uuid_from_env_is_accepted_and_derived_one_is_not(client):
    assert (await client.get(f"/ping/{HC_UUID}")).status == 200
    assert (await facts(client, "migrated")).checkins == {"success": 1}
    assert (await client.get(f"/ping/{derive_uuid(digest(KEY), 'migrated')}")).status == 404


async def test_key_restrictions(client):
    assert (await client.get(f"/ping/{KEY}/batch-only")).status == 404
    assert (await client.get("/ping/batch-key-abcdefghijklmnop/batch-only")).status == 200
    assert (await client.get("/ping/batch-key-abcdefghijklmnop/backup")).status == 200


async def test_ping_keys_hold_on_the_uuid_route_too(client):
    """A monitor restricted to `ping.keys: [batch]` has the UUID derived from
    the batch key; the one another key would derive is no address of it."""
    batch_uuid = derive_uuid(digest("batch-key-abcdefghijklmnop"), "batch-only")
    assert (await client.get(f"/ping/{derive_uuid(digest(KEY), 'batch-only')}")).status == 404
    assert (await facts(client, "batch-only")).checkins == {}
    assert (await client.get(f"/ping/{batch_uuid}")).status == 200
    assert (await facts(client, "batch-only")).checkins == {"success": 1}


@pytest.mark.parametrize(
    "path, status, text",
    [
        (f"/ping/{KEY}/backup/256", 400, "invalid url format"),
        ("/ping/{uuid}/999", 400, "invalid url format"),
        (f"/ping/{KEY}/backup?rid=not-a-uuid", 400, "invalid uuid format"),
        (f"/ping/{KEY}/nope", 404, "not found"),
        ("/ping/wrong-key/backup", 404, "not found"),
        (f"/ping/{uuid.uuid4()}", 404, "not found"),
        ("/ping/not-a-uuid", 404, "not found"),
        (f"/ping/{KEY}/backup/bogus", 404, "not found"),
        (f"/ping/{KEY}/backup/start/extra", 404, "not found"),
        (f"/ping/{KEY}//start", 404, "not found"),
    ],
)
async def test_bad_pings_get_healthchecks_errors_and_change_nothing(client, path, status, text):
    response = await client.get(path.replace("{uuid}", backup_uuid()))
    assert (response.status, await response.text()) == (status, text)
    assert (await facts(client)).checkins == {}


async def test_body_over_limit_is_413_and_not_recorded(client):
    response = await client.post(f"/ping/{KEY}/backup", data=b"x" * 2001)
    assert response.status == 413
    assert "limit is 2000 bytes" in await response.text()
    assert (await facts(client)).checkins == {}


async def test_chunked_body_over_limit_is_413(client):
    async def chunks():
        for _ in range(30):
            yield b"y" * 100

    response = await client.post(f"/ping/{KEY}/backup", data=chunks())
    assert response.status == 413
    assert (await facts(client)).checkins == {}


async def test_other_methods_are_refused(client):
    assert (await client.put(f"/ping/{KEY}/backup")).status == 405


async def test_status_follows_pings(client, clock):
    core = client.app[CORE]
    monitor = core.registry.monitors["backup"]
    await client.get(f"/ping/{KEY}/backup/start")
    assert evaluate(monitor, await facts(client), clock.now).status is Status.RUNNING
    await client.get(f"/ping/{KEY}/backup/1")
    assert evaluate(monitor, await facts(client), clock.now).status is Status.FAILED


async def test_store_down_is_503_and_ready_fails(aiohttp_client, serve, app_settings, tmp_path, env, clock):
    settings = app_settings(write_config(tmp_path, CONFIG), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(await serve(create_app(settings, clock=clock)))
    response = await client.get(f"/ping/{KEY}/backup")
    assert response.status == 503
    assert "store unavailable" in await response.text()
    ready = await client.get("/-/ready")
    assert ready.status == 503 and "not ready: store unavailable" in await ready.text()
    assert (await client.get("/-/healthy")).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert "cronmon_store_up 0\n" in metrics
    assert "cronmon_monitor_status" not in metrics.replace("# HELP cronmon_monitor_status", "")


async def test_create_1_auto_provisions_when_allowed(aiohttp_client, serve, app_settings, tmp_path, env, clock):
    settings = app_settings(write_config(tmp_path, CONFIG), auto_provision=True)
    client = await aiohttp_client(await serve(create_app(settings, clock=clock)))
    response = await client.get(f"/ping/{KEY}/new-job?create=1")
    assert (response.status, await response.text()) == (201, "Created")
    monitor = client.app[CORE].registry.monitors["new-job"]
    assert monitor.schedule.seconds == 86400 and monitor.grace == 3600 and monitor.owner == "ping-key:ops"
    assert (await client.get(f"/ping/{KEY}/new-job?create=1")).status == 200  # exists now: a plain ping
    assert (await client.app[CORE].store.facts("new-job")).checkins == {"success": 2}
    assert (await client.get(f"/ping/{KEY}/Bad Slug?create=1")).status == 400
    assert (await client.get("/ping/wrong-key/other?create=1")).status == 404


async def test_create_1_is_refused_unless_allowed(client):
    assert (await client.get(f"/ping/{KEY}/new-job?create=1")).status == 404
    assert "new-job" not in client.app[CORE].registry.monitors


async def test_a_retry_with_the_same_idempotency_key_is_recorded_once(client, clock):
    """curl --retry after a timeout whose first attempt did land: with an
    Idempotency-Key the retry changes nothing (issue 12, idempotency)."""
    headers = {"Idempotency-Key": "6f1c2b1e-1d2a-4c5e-9b7a-0e2f3d4c5b6a"}
    for _ in range(3):
        response = await client.post(f"/ping/{KEY}/backup/fail", data="disk full", headers=headers)
        assert response.status == 200 and await response.text() == "OK"
    recorded = await facts(client)
    assert recorded.checkins == {"fail": 1} and recorded.outcomes == {"error": 1}
    assert len(await client.app[CORE].store.history("backup", 0, 10)) == 1
    # The structured-field form ("...") is the same key.
    await client.get(f"/ping/{KEY}/backup/fail", headers={"Idempotency-Key": f'"{headers["Idempotency-Key"]}"'})
    assert (await facts(client)).checkins == {"fail": 1}
    # Another key, or none, is another check-in.
    await client.get(f"/ping/{KEY}/backup/fail", headers={"Idempotency-Key": "other"})
    await client.get(f"/ping/{KEY}/backup/fail")
    assert (await facts(client)).checkins == {"fail": 3}
    # After the window (a day) the key is forgotten.
    clock.advance(86400 + 1)
    await client.get(f"/ping/{KEY}/backup/fail", headers=headers)
    assert (await facts(client)).checkins == {"fail": 4}


async def test_a_duplicate_does_not_use_up_the_rate_limit(aiohttp_client, serve, app_settings, tmp_path, env, clock):
    config = write_config(
        tmp_path,
        "ping_keys: [{name: ops, env: TEST_OPS_KEY}]\n"
        "monitors: [{id: job, schedule: {interval: 1h}, rate_limit: 2/1m}]",
    )
    client = await aiohttp_client(await serve(create_app(app_settings(config), clock=clock)))
    headers = {"Idempotency-Key": "k1"}
    for _ in range(5):
        assert (await client.get(f"/ping/{KEY}/job", headers=headers)).status == 200
    assert (await client.get(f"/ping/{KEY}/job")).status == 200  # the second of 2 per minute
    assert (await client.get(f"/ping/{KEY}/job")).status == 429


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "two words"])
async def test_an_idempotency_key_cronmon_cannot_keep_is_400_and_changes_nothing(client, value):
    response = await client.get(f"/ping/{KEY}/backup", headers={"Idempotency-Key": value})
    assert response.status == 400
    assert "Idempotency-Key" in await response.text()
    assert (await facts(client)).checkins == {}
