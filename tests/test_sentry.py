"""Sentry Crons check-ins: the document's payloads in envelopes (plain,
gzip, brotli), the official sentry-sdk as a real client (with and without
brotli), the HTTP check-in endpoint, and the error paths."""

import gzip
import json
import logging
import sys
import textwrap

import brotli
import pytest

from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import app_dump, write_config

CONFIG = """
api_tokens:
  - {name: sentry-dsn, env: T_DSN, owner: web, team: web, scope: write}
  - {name: sentry-ro, env: T_RO, owner: ro, scope: read}
  - {name: other-team, env: T_OTHER, owner: ops, team: ops, scope: write}
monitors:
  - id: my-monitor
    schedule: {interval: 1h}
    ping: {tokens: [sentry-dsn]}
  - id: limited
    schedule: {interval: 1h}
    rate_limit: 1/1h
    ping: {tokens: [sentry-dsn]}
"""
AUTH = {"X-Sentry-Auth": "Sentry sentry_key=dsnkey123, sentry_version=7, sentry_client=test/1.0"}
DOC_CONFIG = {  # the document's monitor upsert example
    "check_in_id": "83a7c03ed0a04e1b97e2e3b18d38f244",
    "monitor_slug": "b7645b8e-b47d-4398-be9a-d16b0dac31cb",
    "status": "in_progress",
    "monitor_config": {
        "schedule": {"type": "crontab", "value": "0 * * * *"},
        "checkin_margin": 5, "max_runtime": 30, "timezone": "America/Los_Angeles",
    },
}


def envelope(*payloads: dict, extra_items: list[tuple[dict, bytes]] = ()) -> bytes:
    lines = [json.dumps({"event_id": "9ec79c33ec9942ab8353589fcb2e04dc", "sent_at": "2026-11-23T00:00:00Z"}).encode()]
    for header, body in extra_items:
        lines += [json.dumps(header).encode(), body]
    for payload in payloads:
        body = json.dumps(payload).encode()
        lines += [json.dumps({"type": "check_in", "length": len(body)}).encode(), body]
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("T_DSN", "dsnkey123")
    monkeypatch.setenv("T_RO", "readonlykey")
    monkeypatch.setenv("T_OTHER", "otherteamkey")
    monkeypatch.setenv("CRONMON_PING_KEY", "sentry-test-ping-key")


@pytest.fixture
async def client(aiohttp_client, app_settings, tmp_path, env, clock):
    return await aiohttp_client(create_app(app_settings(write_config(tmp_path, CONFIG)), clock=clock))


async def facts(client, monitor_id):
    return await client.app[CORE].store.facts(monitor_id)


@pytest.mark.parametrize("encoding", ["", "gzip", "br"])
async def test_documented_check_in_in_every_encoding(client, clock, encoding):
    start = {"check_in_id": "83a7c03ed0a04e1b97e2e3b18d38f244", "monitor_slug": "my-monitor",
             "status": "in_progress", "release": "1.0.0", "environment": "production"}
    done = {**start, "status": "ok", "duration": 10.0}
    for payload in (start, done):
        body = envelope(payload)
        if encoding == "gzip":
            body = gzip.compress(body)
        elif encoding == "br":
            body = brotli.compress(body)
        headers = {**AUTH, "Content-Encoding": encoding} if encoding else AUTH
        response = await client.post("/api/42/envelope/", data=body, headers=headers)
        assert response.status == 200, await response.text()
        clock.advance(10)
    recorded = await facts(client, "my-monitor")
    assert recorded.checkins == {"start": 1, "success": 1}
    assert recorded.last_duration == 10.0 and recorded.open_runs == ()
    newest = (await client.app[CORE].store.history("my-monitor"))[0]
    assert newest["release"] == "1.0.0" and newest["environment"] == "production"


async def test_monitor_config_upsert_creates_then_updates(client):
    assert (await client.post("/api/42/envelope/", data=envelope(DOC_CONFIG), headers=AUTH)).status == 200
    slug = DOC_CONFIG["monitor_slug"]
    monitor = client.app[CORE].registry.monitors[slug]
    assert monitor.source == "api" and monitor.owner == "web"
    assert monitor.schedule.expression == "0 * * * *" and monitor.schedule.timezone == "America/Los_Angeles"
    assert (monitor.grace, monitor.max_runtime) == (300, 1800)
    assert (await facts(client, slug)).checkins == {"start": 1}
    changed = {**DOC_CONFIG, "status": "ok", "monitor_config": {
        "schedule": {"type": "interval", "value": 2, "unit": "hour"}, "failure_issue_threshold": 3,
        "recovery_threshold": 2}}
    await client.post("/api/42/envelope/", data=envelope(changed), headers=AUTH)
    monitor = client.app[CORE].registry.monitors[slug]
    assert monitor.schedule.seconds == 7200 and (monitor.failure_threshold, monitor.recovery_threshold) == (3, 2)
    assert (monitor.grace, monitor.max_runtime) == (60, 1800)  # Sentry's defaults when not given


async def test_yaml_monitor_keeps_its_config_and_read_key_cannot_create(client):
    yaml_config = {**DOC_CONFIG, "monitor_slug": "my-monitor"}
    await client.post("/api/42/envelope/", data=envelope(yaml_config), headers=AUTH)
    assert client.app[CORE].registry.monitors["my-monitor"].schedule.seconds == 3600
    assert (await facts(client, "my-monitor")).checkins == {"start": 1}
    ro = {"X-Sentry-Auth": "Sentry sentry_key=readonlykey"}
    other = {**DOC_CONFIG, "monitor_slug": "not-created"}
    assert (await client.post("/api/42/envelope/", data=envelope(other), headers=ro)).status == 200
    assert "not-created" not in client.app[CORE].registry.monitors


async def test_all_zero_check_in_id_closes_the_newest_run(client, clock):
    await client.post(
        "/api/42/envelope/",
        data=envelope({"check_in_id": "a" * 32, "monitor_slug": "my-monitor", "status": "in_progress"}),
        headers=AUTH,
    )
    clock.advance(5)
    await client.post(
        "/api/42/envelope/",
        data=envelope({"check_in_id": "0" * 32, "monitor_slug": "my-monitor", "status": "error"}),
        headers=AUTH,
    )
    recorded = await facts(client, "my-monitor")
    assert recorded.open_runs == () and recorded.last_duration == 5 and recorded.outcomes == {"error": 1}


async def test_other_items_and_unknown_monitors_are_ignored(client):
    body = envelope(
        {"check_in_id": "b" * 32, "monitor_slug": "nobody", "status": "ok"},
        extra_items=[({"type": "event"}, b'{"message": "hi"}'), ({"type": "session"}, b"{}")],
    )
    response = await client.post("/api/42/envelope/?sentry_key=dsnkey123", data=body)
    assert response.status == 200 and (await response.json())["id"] == "9ec79c33ec9942ab8353589fcb2e04dc"


@pytest.mark.parametrize(
    "headers, body, status",
    [
        ({}, envelope(), 401),
        ({"X-Sentry-Auth": "Sentry sentry_key=wrong"}, envelope(), 401),
        ({**AUTH, "Content-Encoding": "gzip"}, b"not gzip at all", 400),
        ({**AUTH, "Content-Encoding": "br"}, b"not brotli", 400),
        ({**AUTH, "Content-Encoding": "zstd"}, b"x", 400),
        ({**AUTH, "Content-Encoding": "gzip"}, gzip.compress(b"\n" * 3_000_000), 413),  # expands too far
    ],
)
async def test_envelope_errors(client, headers, body, status):
    response = await client.post("/api/42/envelope/", data=body, headers=headers)
    assert response.status == status
    assert "detail" in await response.json()  # Sentry's error shape, zstd's refusal included
    assert (await facts(client, "my-monitor")).checkins == {}


async def test_http_check_in_endpoint(client):
    url = "/api/42/cron/my-monitor/dsnkey123/"
    assert (await client.get(url + "?status=in_progress&check_in_id=c0ffee00c0ffee00c0ffee00c0ffee00")).status == 202
    assert (await client.post(url + "?status=ok&check_in_id=c0ffee00c0ffee00c0ffee00c0ffee00")).status == 202
    assert (await facts(client, "my-monitor")).checkins == {"start": 1, "success": 1}
    assert (await client.get(url + "?status=bogus")).status == 400
    assert (await client.get("/api/42/cron/my-monitor/wrongkey/?status=ok")).status == 401
    assert (await client.get("/api/42/cron/nobody/dsnkey123/?status=ok")).status == 404


SDK_JOB = """
import sys
if sys.argv[2] == "without-brotli":
    sys.modules["brotli"] = None  # as on a machine without the brotli package
import sentry_sdk
from sentry_sdk.crons import capture_checkin, monitor
sentry_sdk.init(dsn=f"http://dsnkey123@127.0.0.1:{sys.argv[1]}/42")
config = {"schedule": {"type": "interval", "value": 1, "unit": "hour"}, "checkin_margin": 2, "max_runtime": 10}
check_in_id = capture_checkin(monitor_slug="sdk-job", status="in_progress", monitor_config=config)
capture_checkin(monitor_slug="sdk-job", check_in_id=check_in_id, status="ok", duration=3.5)

@monitor(monitor_slug="my-monitor")
def job():
    raise RuntimeError("boom")

try:
    job()
except RuntimeError:
    pass
sentry_sdk.flush()
"""


@pytest.mark.parametrize("variant", ["with-brotli", "without-brotli"])
async def test_the_official_sentry_sdk_as_a_client(aiohttp_server, app_settings, tmp_path, env, variant):
    server = await aiohttp_server(create_app(app_settings(write_config(tmp_path, CONFIG))))
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SDK_JOB))
    import asyncio

    process = await asyncio.create_subprocess_exec(sys.executable, str(script), str(server.port), variant)
    assert await asyncio.wait_for(process.wait(), 60) == 0
    core = server.app[CORE]
    job = core.registry.monitors["sdk-job"]
    assert job.schedule.seconds == 3600 and job.grace == 120 and job.max_runtime == 600
    sdk_facts = await core.store.facts("sdk-job")
    assert sdk_facts.checkins == {"start": 1, "success": 1} and sdk_facts.last_duration == 3.5
    decorated = await core.store.facts("my-monitor")
    assert decorated.checkins == {"start": 1, "fail": 1} and decorated.outcomes == {"error": 1}


async def test_an_unchanged_monitor_config_writes_nothing(client):
    await client.post("/api/42/envelope/", data=envelope(DOC_CONFIG), headers=AUTH)
    store = client.app[CORE].store
    revision = await store.monitors_revision()
    for check_in_id, status in (
        ("1" * 32, "in_progress"),
        ("1" * 32, "ok"),
        ("2" * 32, "in_progress"),
        ("2" * 32, "error"),
    ):
        again = {**DOC_CONFIG, "check_in_id": check_in_id, "status": status}
        assert (await client.post("/api/42/envelope/", data=envelope(again), headers=AUTH)).status == 200
    assert await store.monitors_revision() == revision  # no rewrite, no replica reload
    assert (await facts(client, DOC_CONFIG["monitor_slug"])).checkins == {"start": 3, "success": 1, "fail": 1}


@pytest.mark.parametrize("duration", ["nan", "inf", "-1", "1e300"])
async def test_an_implausible_duration_over_http_is_refused_and_records_nothing(client, duration):
    url = "/api/42/cron/my-monitor/dsnkey123/"
    response = await client.get(url + f"?status=ok&duration={duration}")
    assert response.status == 400 and "duration" in (await response.json())["detail"]
    assert (await facts(client, "my-monitor")).checkins == {}


async def test_an_implausible_duration_in_an_envelope_is_dropped_not_fatal(client):
    body = envelope({"check_in_id": "a" * 32, "monitor_slug": "my-monitor", "status": "ok", "duration": float("nan")})
    response = await client.post("/api/42/envelope/", data=body, headers=AUTH)
    assert response.status == 200
    recorded = await facts(client, "my-monitor")
    assert recorded.checkins == {"success": 1} and recorded.last_duration is None


def _item(body: bytes, header: bytes | None = None) -> bytes:
    return (header or json.dumps({"type": "check_in", "length": len(body)}).encode()) + b"\n" + body


GOOD_ITEM = _item(json.dumps({"check_in_id": "c" * 32, "monitor_slug": "my-monitor", "status": "ok"}).encode())
ENVELOPE_HEADER = b'{"event_id": "9ec79c33ec9942ab8353589fcb2e04dc"}\n'


@pytest.mark.parametrize(
    "body, encoding, reason",
    [
        # A good check-in, then a line that is not an item header.
        (ENVELOPE_HEADER + GOOD_ITEM + b"\nnot json\n", "", "is not JSON"),
        (ENVELOPE_HEADER + GOOD_ITEM + b"\n[1, 2]\n{}\n", "", "must be a JSON object"),
        (ENVELOPE_HEADER + GOOD_ITEM + b'\n{"type": "check_in", "length": 99999}\n{}\n', "", "length"),
        (ENVELOPE_HEADER + GOOD_ITEM + b'\n{"type": "check_in", "length": -1}\n{}\n', "", "length"),
        (b"[]\n" + GOOD_ITEM, "", "envelope header"),
        (ENVELOPE_HEADER + GOOD_ITEM + b"\n" + _item(b'"a string"'), "", "must be a JSON object"),
        (ENVELOPE_HEADER + GOOD_ITEM + b"\n" + _item(b'{"monitor_slug": 7, "status": "ok"}'), "", "monitor_slug"),
        (ENVELOPE_HEADER + GOOD_ITEM + b"\n" + _item(b'{"monitor_slug": "x", "status": "done"}'), "", "status"),
        (
            ENVELOPE_HEADER
            + GOOD_ITEM
            + b"\n"
            + _item(b'{"monitor_slug": "x", "status": "ok", "duration": ' + b"9" * 5000 + b"}"),
            "",
            "is not JSON",
        ),
        (ENVELOPE_HEADER + GOOD_ITEM + b"\n" + _item(b"[" * 60_000), "", "nested too deeply"),
        (
            ENVELOPE_HEADER + GOOD_ITEM + b"\n" + _item(b'{"monitor_slug": "x", "status": "ok", "monitor_config": 5}'),
            "",
            "monitor_config",
        ),
        (brotli.compress(ENVELOPE_HEADER + GOOD_ITEM)[:-4], "br", ""),  # cut short
        (b"\x0b\x02\x80", "br", ""),  # a valid brotli stream of nothing
        (gzip.compress(ENVELOPE_HEADER + GOOD_ITEM)[:-20], "gzip", ""),  # cut inside the deflate stream
        (b"", "", "empty"),
    ],
)
async def test_a_malformed_envelope_is_a_400_that_records_nothing(client, body, encoding, reason, caplog):
    before = await app_dump(client)
    headers = {**AUTH, "Content-Encoding": encoding} if encoding else AUTH
    response = await client.post("/api/42/envelope/", data=body, headers=headers)
    assert response.status == 400, await response.text()
    assert reason in (await response.json())["detail"]
    assert await app_dump(client) == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_refused_item_is_dropped_and_the_rest_recorded_once(client):
    """The second item's monitor is over its rate limit: answering 429
    after recording the first would make the SDK send both again."""
    limited = {"check_in_id": "d" * 32, "monitor_slug": "limited", "status": "ok"}
    first = await client.post("/api/42/envelope/", data=envelope(limited), headers=AUTH)
    assert first.status == 200
    mine = {"check_in_id": "e" * 32, "monitor_slug": "my-monitor", "status": "ok"}
    again = {**limited, "check_in_id": "f" * 32}
    response = await client.post("/api/42/envelope/", data=envelope(mine, again), headers=AUTH)
    assert response.status == 200
    assert (await response.json())["dropped"] == [{"monitor_slug": "limited", "reason": "rate_limited"}]
    assert (await facts(client, "my-monitor")).checkins == {"success": 1}
    assert (await facts(client, "limited")).checkins == {"success": 1}
    # Nothing of it recorded: the refusal itself.
    alone = await client.post("/api/42/envelope/", data=envelope(again), headers=AUTH)
    assert alone.status == 429 and alone.headers["Retry-After"]


@pytest.mark.parametrize("key, reason", [("readonlykey", "read scope"), ("otherteamkey", "ping.tokens")])
async def test_a_token_records_only_where_it_is_granted(client, key, reason):
    """A YAML monitor takes check-ins only from tokens its ping.tokens
    names; a read-scope token records nowhere. Nothing changes in Redis, not
    even the rate limit's counter."""
    before = await app_dump(client)
    for slug in ("my-monitor", "limited"):
        http = await client.get(f"/api/42/cron/{slug}/{key}/?status=ok")
        assert http.status == 403 and reason in (await http.json())["detail"]
        payload = {"check_in_id": "a" * 32, "monitor_slug": slug, "status": "ok"}
        sent = await client.post(f"/api/42/envelope/?sentry_key={key}", data=envelope(payload))
        assert sent.status == 403 and reason in (await sent.json())["detail"]
    assert await app_dump(client) == before
    granted = await client.get("/api/42/cron/limited/dsnkey123/?status=ok")
    assert granted.status == 202


@pytest.mark.parametrize(
    "config",
    [
        {"schedule": {"type": "interval", "value": "five", "unit": "minute"}},
        {"schedule": {"type": "interval", "value": 10**40, "unit": "minute"}},
        {"schedule": "0 * * * *"},
        {"schedule": {"type": "crontab", "value": ["0 * * * *"]}},
        {"schedule": {"type": "crontab", "value": "0 * * * *"}, "checkin_margin": "5"},
        {"schedule": {"type": "crontab", "value": "0 * * * *"}, "max_runtime": 1e308},
        {"schedule": {"type": "crontab", "value": "0 * * * *"}, "failure_issue_threshold": "x"},
        {"schedule": {"type": "crontab", "value": "0 * * * *"}, "recovery_threshold": 1.5},
        {"schedule": {"type": "crontab", "value": "0 * * * *"}, "timezone": ["UTC"]},
        {"schedule": {"type": "crontab", "value": "0 * * * *"}, "timezone": "A" * 300},
    ],
)
async def test_a_monitor_config_of_the_wrong_shape_creates_nothing_and_is_no_500(client, config, caplog):
    payload = {"check_in_id": "a" * 32, "monitor_slug": "new-one", "status": "in_progress", "monitor_config": config}
    response = await client.post("/api/42/envelope/", data=envelope(payload), headers=AUTH)
    assert response.status == 200
    assert "new-one" not in client.app[CORE].registry.monitors
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_retried_envelope_is_recorded_once(client, clock):
    """The SDK retries an envelope it got no answer for; its check_in_id is
    the idempotency key of each check-in (deduped in record.lua), so the
    retried start and the retried completion change nothing."""
    start = {"check_in_id": "5f0c9d7a3b2e4f1a8c6d0e9b7a5c3d1f", "monitor_slug": "my-monitor", "status": "in_progress"}
    done = {**start, "status": "error"}
    for payload in (start, start, done, done, done):
        response = await client.post("/api/42/envelope/", data=envelope(payload), headers=AUTH)
        assert response.status == 200, await response.text()
        clock.advance(5)
    recorded = await facts(client, "my-monitor")
    assert recorded.checkins == {"start": 1, "fail": 1} and recorded.outcomes == {"error": 1}
    assert len(await client.app[CORE].store.history("my-monitor", 0, 10)) == 2
