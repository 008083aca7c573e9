"""Sentry Crons check-ins: the document's payloads in envelopes (plain,
gzip, brotli), the official sentry-sdk and sentry-cli as real clients,
the HTTP check-in endpoint (with curl, query and JSON body), slug
normalisation, partial upserts, and the error paths: every check-in that
is not recorded is refused or listed, and logged."""

import gzip
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import brotli
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.web.app import create_app
from exporter.web.keys import CORE
from exporter.web.sentry import sentry_slug

from .conftest import app_dump, write_config
from .servers import run_client

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
SECRETS = ("dsnkey123", "readonlykey", "otherteamkey")
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


def assert_warned(caplog, *words: str) -> None:
    """A WARNING of the Sentry adapter names all `words`, and no log line
    holds a token's secret."""
    lines = [r.getMessage() for r in caplog.records if r.name == "exporter.web.sentry"]
    assert [line for line in lines if all(word in line for word in words)], lines
    assert not [r for r in caplog.records if r.name == "exporter.web.sentry" and r.levelno != logging.WARNING]
    assert not [line for line in lines if any(secret in line for secret in SECRETS)], lines


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
    # Only what was sent changed (Sentry's Monitor.update_config): the margin stays 5 minutes.
    assert (monitor.grace, monitor.max_runtime) == (300, 1800)
    reset = {**DOC_CONFIG, "status": "ok", "monitor_config": {
        "schedule": {"type": "crontab", "value": "*/10 * * * *"}, "checkin_margin": None, "max_runtime": 12}}
    await client.post("/api/42/envelope/", data=envelope(reset), headers=AUTH)
    monitor = client.app[CORE].registry.monitors[slug]
    # A key sent as null: Sentry's default. The thresholds were not sent, and stay.
    assert (monitor.grace, monitor.max_runtime) == (60, 720)
    assert (monitor.failure_threshold, monitor.recovery_threshold) == (3, 2)
    assert monitor.schedule.expression == "*/10 * * * *"


async def test_yaml_monitor_keeps_its_config(client):
    yaml_config = {**DOC_CONFIG, "monitor_slug": "my-monitor"}
    response = await client.post("/api/42/envelope/", data=envelope(yaml_config), headers=AUTH)
    assert response.status == 200 and "warnings" not in await response.json()
    assert client.app[CORE].registry.monitors["my-monitor"].schedule.seconds == 3600
    assert (await facts(client, "my-monitor")).checkins == {"start": 1}


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


async def test_other_items_are_ignored_and_an_unknown_monitor_is_listed_and_logged(client, caplog):
    """Sentry takes a check-in for a monitor it does not know (and records
    nothing): a 200, but the check-in is listed in `dropped` and logged at
    WARNING, not dropped without a word."""
    body = envelope(
        {"check_in_id": "b" * 32, "monitor_slug": "Nobody", "status": "ok"},
        extra_items=[({"type": "event"}, b'{"message": "hi"}'), ({"type": "session"}, b"{}")],
    )
    with caplog.at_level(logging.WARNING, "exporter.web.sentry"):
        response = await client.post("/api/42/envelope/?sentry_key=dsnkey123", data=body)
    answer = await response.json()
    assert response.status == 200 and answer["id"] == "9ec79c33ec9942ab8353589fcb2e04dc"
    [drop] = answer["dropped"]
    assert (drop["monitor_slug"], drop["reason"]) == ("nobody", "unknown_monitor")
    assert "no monitor 'nobody'" in drop["detail"] and "'Nobody'" in drop["detail"]
    assert "monitor_config" in drop["detail"]  # how to fix it
    assert_warned(caplog, "'Nobody'", "unknown_monitor", "sentry-dsn")


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


async def test_http_check_in_endpoint(client, caplog):
    url = "/api/42/cron/my-monitor/dsnkey123/"
    assert (await client.get(url + "?status=in_progress&check_in_id=c0ffee00c0ffee00c0ffee00c0ffee00")).status == 202
    assert (await client.post(url + "?status=ok&check_in_id=c0ffee00c0ffee00c0ffee00c0ffee00")).status == 202
    assert (await facts(client, "my-monitor")).checkins == {"start": 1, "success": 1}
    assert (await client.get(url + "?status=bogus")).status == 400
    assert (await client.get("/api/42/cron/my-monitor/wrongkey/?status=ok")).status == 401
    with caplog.at_level(logging.WARNING, "exporter.web.sentry"):
        unknown = await client.get("/api/42/cron/nobody/dsnkey123/?status=ok")
    assert unknown.status == 404 and "no monitor 'nobody'" in (await unknown.json())["detail"]
    assert_warned(caplog, "'nobody'", "unknown_monitor", "sentry-dsn")  # not a silent 404


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
    code, _, err = await run(sys.executable, str(script), str(server.port), variant)
    assert code == 0, err
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
    [drop] = (await response.json())["dropped"]
    assert (drop["monitor_slug"], drop["reason"]) == ("limited", "rate_limited")
    assert "rate limit exceeded" in drop["detail"] and "rate_limit" in drop["detail"]
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


CRON = {"type": "crontab", "value": "0 * * * *"}


@pytest.mark.parametrize(
    "config, field",
    [
        ({"schedule": {"type": "interval", "value": "five", "unit": "minute"}}, "schedule.value"),
        ({"schedule": {"type": "interval", "value": 10**40, "unit": "minute"}}, "schedule.value"),
        ({"schedule": {"type": "interval", "value": 5, "unit": "fortnight"}}, "schedule.unit"),
        ({"schedule": "0 * * * *"}, "schedule"),
        ({"checkin_margin": 5}, "schedule"),  # no schedule at all
        ({"schedule": {"type": "crontab", "value": ["0 * * * *"]}}, "schedule.value"),
        ({"schedule": {"type": "crontab", "value": "61 * * * *"}}, "schedule.value"),
        ({"schedule": {"type": "daily"}}, "schedule.type"),
        ({"schedule": CRON, "checkin_margin": "5"}, "checkin_margin"),
        ({"schedule": CRON, "max_runtime": 1e308}, "max_runtime"),
        ({"schedule": CRON, "failure_issue_threshold": "x"}, "failure_issue_threshold"),
        ({"schedule": CRON, "recovery_threshold": 1.5}, "recovery_threshold"),
        ({"schedule": CRON, "timezone": ["UTC"]}, "timezone"),
        ({"schedule": CRON, "timezone": "A" * 300}, "timezone"),
        # Sentry checks the time zone of an interval schedule too.
        ({"schedule": {"type": "interval", "value": 1, "unit": "hour"}, "timezone": "Mars/Base"}, "timezone"),
    ],
)
async def test_a_monitor_config_of_the_wrong_shape_for_a_new_monitor_is_a_400_naming_the_field(
    client, config, field, caplog
):
    """Nothing is created or recorded; the detail names the key as the
    client sent it (checkin_margin, not cronmon's grace); never a 500."""
    before = await app_dump(client)
    payload = {"check_in_id": "a" * 32, "monitor_slug": "new-one", "status": "in_progress", "monitor_config": config}
    with caplog.at_level(logging.WARNING, "exporter.web.sentry"):
        response = await client.post("/api/42/envelope/", data=envelope(payload), headers=AUTH)
    assert response.status == 400
    assert (await response.json())["detail"].startswith(f"monitor_config.{field}: ")
    assert "new-one" not in client.app[CORE].registry.monitors
    assert await app_dump(client) == before
    assert_warned(caplog, "'new-one'", "invalid_monitor_config", "sentry-dsn")
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



# -- real clients: sentry-sdk, sentry-cli, curl ---------------------------------

SENTRY_CLI = Path(sys.executable).parent / "sentry-cli"


async def run(*argv: str, env: dict | None = None, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    return await run_client(*argv, env=env if env is not None else dict(os.environ), stdin=stdin)


async def sentry_cli(server, tmp_path, *args: str) -> int:
    """`sentry-cli monitors run ...` with the DSN of `server` (loopback only:
    a clean environment, no proxy, no config file, no update check)."""
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "SENTRY_DSN": f"http://dsnkey123@127.0.0.1:{server.port}/42", "SENTRY_DISABLE_UPDATE_CHECK": "true",
    }
    code, _, err = await run(str(SENTRY_CLI), "monitors", "run", *args, env=env)
    assert b"Failed to send" not in err, err  # cronmon took every check-in envelope
    return code


async def curl(url: str, body: bytes, *options: str) -> tuple[int, dict]:
    """POST `body` as a user would with curl: (status, JSON answer)."""
    code, out, err = await run(
        "curl", "-sS", "--noproxy", "*", "--max-time", "30", "-X", "POST", "-H", "Content-Type: application/json",
        *options, "-w", "\n%{http_code}", url, env={"PATH": os.environ["PATH"]}, stdin=body,
    )
    assert code == 0, err
    text, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(text) if text else {}


@pytest.fixture
async def server(aiohttp_server, app_settings, tmp_path, env):
    return await aiohttp_server(create_app(app_settings(write_config(tmp_path, CONFIG))))


@pytest.mark.parametrize(
    "raw, slug",
    [
        ("Nightly_Import", "nightly_import"),
        ("My Job", "my-job"),
        ("  Café  Crème -- backup ", "cafe-creme-backup"),
        ("db.backup/v2?x=1", "dbbackupv2x1"),
        ("__job__", "job"),
        ("\ufb01le", "file"),  # NFKD: the ligature is f + i
        ("a" * 49 + " b", "a" * 49),  # cut to 50 characters ("a…a-"), then the dash stripped
        ("!!!", ""),
        ("日本語", ""),
        ("--__--", ""),
    ],
)
def test_sentry_slug_is_djangos_slugify_cut_to_50(raw, slug):
    assert sentry_slug(raw) == slug


SLUG_JOB = """
import sys
import sentry_sdk
from sentry_sdk.crons import capture_checkin
sentry_sdk.init(dsn=f"http://dsnkey123@127.0.0.1:{sys.argv[1]}/42")
config = {"schedule": {"type": "crontab", "value": "0 2 * * *"}, "timezone": "Europe/Vienna"}
check_in_id = capture_checkin(monitor_slug="Nightly_Import", status="in_progress", monitor_config=config)
capture_checkin(monitor_slug="Nightly_Import", check_in_id=check_in_id, status="ok")
sentry_sdk.flush()
"""


async def test_sdk_and_cli_slugs_are_normalised_as_sentry_does(server, tmp_path):
    """`Nightly_Import` from the SDK is monitor nightly_import; `My Job`
    from sentry-cli is my-job, and `MY  JOB` lands on it too."""
    script = tmp_path / "slugs.py"
    script.write_text(textwrap.dedent(SLUG_JOB))
    code, _, err = await run(sys.executable, str(script), str(server.port))
    assert code == 0, err
    assert await sentry_cli(server, tmp_path, "My Job", "--schedule", "*/5 * * * *", "--", "true") == 0
    assert await sentry_cli(server, tmp_path, "MY  JOB", "--", "true") == 0
    core = server.app[CORE]
    nightly = core.registry.monitors["nightly_import"]
    assert nightly.schedule.expression == "0 2 * * *" and nightly.schedule.timezone == "Europe/Vienna"
    assert (await core.facts("nightly_import")).checkins == {"start": 1, "success": 1}
    assert core.registry.monitors["my-job"].schedule.expression == "*/5 * * * *"
    assert (await core.facts("my-job")).checkins == {"start": 2, "success": 2}


async def test_a_slug_that_normalises_to_nothing_is_refused_and_records_nothing(client, caplog):
    before = await app_dump(client)
    with caplog.at_level(logging.WARNING, "exporter.web.sentry"):
        for raw in ("!!!", "日本語", "--__--"):
            payload = {"check_in_id": "a" * 32, "monitor_slug": raw, "status": "ok", "monitor_config": DOC_CONFIG[
                "monitor_config"]}
            response = await client.post("/api/42/envelope/", data=envelope(payload), headers=AUTH)
            assert response.status == 400, await response.text()
            detail = (await response.json())["detail"]
            assert f"monitor_slug {raw!r} is empty once normalised" in detail and "letter or digit" in detail
        http = await client.get("/api/42/cron/%21%21%21/dsnkey123/?status=ok")
        assert http.status == 400 and "'!!!' is empty once normalised" in (await http.json())["detail"]
    assert await app_dump(client) == before
    assert_warned(caplog, "'!!!'", "invalid_slug", "sentry-dsn")
    # Beside a check-in that is recorded: dropped, listed, the answer a 200.
    good = {"check_in_id": "b" * 32, "monitor_slug": "My-Monitor", "status": "ok"}
    bad = {"check_in_id": "c" * 32, "monitor_slug": "!!!", "status": "ok"}
    response = await client.post("/api/42/envelope/", data=envelope(good, bad), headers=AUTH)
    assert response.status == 200
    assert [(d["monitor_slug"], d["reason"]) for d in (await response.json())["dropped"]] == [("!!!", "invalid_slug")]
    assert (await facts(client, "my-monitor")).checkins == {"success": 1}


async def test_a_read_scope_token_is_refused_naming_the_scope_and_logged(client, caplog):
    """Its upsert and its check-ins, over both routes: a 403 that says
    what to change, a WARNING naming the token (never its secret), and
    nothing written."""
    ro = {"X-Sentry-Auth": "Sentry sentry_key=readonlykey"}
    before = await app_dump(client)
    with caplog.at_level(logging.WARNING, "exporter.web.sentry"):
        upsert = {**DOC_CONFIG, "monitor_slug": "not-created"}
        sent = await client.post("/api/42/envelope/", data=envelope(upsert), headers=ro)
        http = await client.post("/api/42/cron/not-created/readonlykey/",
                                 json={"status": "ok", "monitor_config": DOC_CONFIG["monitor_config"]})
        unknown = await client.get("/api/42/cron/nobody/readonlykey/?status=ok")
    for response in (sent, http, unknown):
        assert response.status == 403
        detail = (await response.json())["detail"]
        assert 'api token "sentry-ro" has the read scope' in detail and "needs scope: write" in detail
    assert "monitor_config" in (await sent.json())["detail"]
    assert "not-created" not in client.app[CORE].registry.monitors
    assert await app_dump(client) == before
    assert_warned(caplog, "'not-created'", "forbidden", "sentry-ro")


MARS = {"schedule": {"type": "crontab", "value": "0 * * * *"}, "timezone": "Mars/Base"}
MARS_DETAIL = "monitor_config.timezone: unknown time zone 'Mars/Base'; use a tz database name such as Europe/Berlin"
MARS_JOB = """
import sys
import sentry_sdk
from sentry_sdk.crons import capture_checkin
sentry_sdk.init(dsn=f"http://dsnkey123@127.0.0.1:{sys.argv[1]}/42")
config = {"schedule": {"type": "crontab", "value": "0 * * * *"}, "timezone": "Mars/Base"}
capture_checkin(monitor_slug="mars-job", status="in_progress", monitor_config=config)
sentry_sdk.flush()
"""


async def test_an_invalid_config_for_a_new_monitor_is_refused_naming_the_field(server, aiohttp_client, tmp_path,
                                                                               caplog):
    """The SDK's check-in creates nothing and says why in the log; the
    same envelope or HTTP check-in gets a 400 with the field and the fix;
    beside a recorded check-in it is listed in `dropped`."""
    script = tmp_path / "mars.py"
    script.write_text(textwrap.dedent(MARS_JOB))
    with caplog.at_level(logging.WARNING, "exporter.web.sentry"):
        code, _, err = await run(sys.executable, str(script), str(server.port))
    assert code == 0, err
    assert "mars-job" not in server.app[CORE].registry.monitors
    assert_warned(caplog, "'mars-job'", "invalid_monitor_config", "sentry-dsn", MARS_DETAIL)
    client = await aiohttp_client(server)
    before = await app_dump(client)
    payload = {"check_in_id": "a" * 32, "monitor_slug": "mars-job", "status": "in_progress", "monitor_config": MARS}
    response = await client.post("/api/42/envelope/", data=envelope(payload), headers=AUTH)
    assert response.status == 400 and (await response.json())["detail"] == MARS_DETAIL
    http = await client.post("/api/42/cron/mars-job/dsnkey123/", json={"status": "ok", "monitor_config": MARS})
    assert http.status == 400 and (await http.json())["detail"] == MARS_DETAIL
    assert await app_dump(client) == before
    good = {"check_in_id": "b" * 32, "monitor_slug": "my-monitor", "status": "ok"}
    mixed = await client.post("/api/42/envelope/", data=envelope(good, payload), headers=AUTH)
    assert mixed.status == 200
    assert (await mixed.json())["dropped"] == [
        {"monitor_slug": "mars-job", "reason": "invalid_monitor_config", "detail": MARS_DETAIL}
    ]
    assert (await facts(client, "my-monitor")).checkins == {"success": 1}


async def test_an_invalid_config_for_an_existing_monitor_records_the_check_in_and_keeps_the_config(client, caplog):
    """As Sentry does: the check-in lands on the monitor, its config stays,
    and the answer and the log say the config was not taken."""
    slug = DOC_CONFIG["monitor_slug"]
    assert (await client.post("/api/42/envelope/", data=envelope(DOC_CONFIG), headers=AUTH)).status == 200
    bad = {**MARS, "schedule": {"type": "crontab", "value": "*/5 * * * *"}, "checkin_margin": 9}
    done = {**DOC_CONFIG, "status": "ok", "monitor_config": bad}
    with caplog.at_level(logging.WARNING, "exporter.web.sentry"):
        response = await client.post("/api/42/envelope/", data=envelope(done), headers=AUTH)
        http = await client.post(f"/api/42/cron/{slug}/dsnkey123/", json={"status": "in_progress",
                                                                          "monitor_config": bad})
    expected = {
        "monitor_slug": slug, "reason": "invalid_monitor_config",
        "detail": f"{MARS_DETAIL}; the check-in was recorded and the monitor kept its config",
    }
    assert response.status == 200 and (await response.json())["warnings"] == [expected]
    assert http.status == 202 and (await http.json())["warnings"] == [expected]
    monitor = client.app[CORE].registry.monitors[slug]
    assert monitor.schedule.expression == "0 * * * *" and monitor.schedule.timezone == "America/Los_Angeles"
    assert monitor.grace == 300  # not even the valid checkin_margin of the invalid config
    assert (await facts(client, slug)).checkins == {"start": 2, "success": 1}
    assert_warned(caplog, slug, "Mars/Base", "sentry-dsn")


async def test_sentry_cli_with_only_a_schedule_keeps_what_an_earlier_run_set(server, aiohttp_client, tmp_path):
    """Sentry's Monitor.update_config: the schedule always, other keys only
    when sent. Before, the second run moved the job to UTC with a 1-minute
    margin and a 30-minute timeout."""
    full = ["--timezone", "Europe/Vienna", "--check-in-margin", "4", "--max-runtime", "12",
            "--failure-issue-threshold", "2", "--recovery-threshold", "3"]
    assert await sentry_cli(server, tmp_path, "cli-job", "--schedule", "*/5 * * * *", *full, "--", "true") == 0
    client = await aiohttp_client(server)

    async def shown() -> dict:
        response = await client.get("/api/v1/monitors/cli-job", headers={"Authorization": "Bearer dsnkey123"})
        assert response.status == 200
        monitor = (await response.json())["monitor"]
        return {k: monitor[k] for k in ("schedule", "grace", "max_runtime", "failure_threshold", "recovery_threshold")}

    kept = {"grace": 240, "max_runtime": 720, "failure_threshold": 2, "recovery_threshold": 3}
    assert await shown() == {"schedule": {"cron": "*/5 * * * *", "timezone": "Europe/Vienna"}, **kept}
    assert await sentry_cli(server, tmp_path, "cli-job", "--schedule", "*/10 * * * *", "--", "true") == 0
    assert await shown() == {"schedule": {"cron": "*/10 * * * *", "timezone": "Europe/Vienna"}, **kept}
    assert (await server.app[CORE].facts("cli-job")).checkins == {"start": 2, "success": 2}


async def test_a_monitor_config_leaves_what_the_native_api_set(client):
    """A monitor made with the native API keeps its name, labels, grace and
    time zone when a Sentry client sends only a schedule."""
    bearer = {"Authorization": "Bearer dsnkey123"}
    native = {"id": "native-job", "name": "Native job", "schedule": {"cron": "0 3 * * *", "timezone": "Europe/Berlin"},
              "grace": 600, "max_runtime": 3600, "labels": {"tier": "gold"}}
    assert (await client.post("/api/v1/monitors", json=native, headers=bearer)).status == 201
    payload = {"check_in_id": "a" * 32, "monitor_slug": "native-job", "status": "in_progress",
               "monitor_config": {"schedule": {"type": "crontab", "value": "0 4 * * *"}}}
    assert (await client.post("/api/42/envelope/", data=envelope(payload), headers=AUTH)).status == 200
    monitor = client.app[CORE].registry.monitors["native-job"]
    assert monitor.schedule.expression == "0 4 * * *" and monitor.schedule.timezone == "Europe/Berlin"
    assert (monitor.name, monitor.grace, monitor.max_runtime, monitor.labels) == (
        "Native job", 600, 3600, (("tier", "gold"),))
    assert (await facts(client, "native-job")).checkins == {"start": 1}


async def test_http_check_in_with_a_json_body_over_curl(server, aiohttp_client):
    """Sentry's documented HTTP upsert: status and monitor_config in a JSON
    body; a query parameter wins over the body's field; the kit inflates a
    gzip body."""
    url = f"http://127.0.0.1:{server.port}/api/42/cron/Curl_Job/dsnkey123/"
    start = {"status": "in_progress", "check_in_id": "c" * 32, "environment": "prod", "release": "2.0",
             "monitor_config": {"schedule": {"type": "crontab", "value": "0 5 * * *"}, "timezone": "Europe/Vienna",
                                "checkin_margin": 10}}
    status, answer = await curl(url, json.dumps(start).encode(), "-d", "@-")
    assert (status, answer) == (202, {"id": "c" * 32})
    core = server.app[CORE]
    monitor = core.registry.monitors["curl_job"]
    assert (monitor.schedule.expression, monitor.schedule.timezone) == ("0 5 * * *", "Europe/Vienna")
    assert monitor.grace == 600
    done = {"status": "ok", "check_in_id": "c" * 32, "duration": 2.5,
            "monitor_config": {"schedule": {"type": "crontab", "value": "0 6 * * *"}}}
    status, _ = await curl(url + "?status=error", json.dumps(done).encode(), "-d", "@-")
    assert status == 202
    monitor = core.registry.monitors["curl_job"]  # the config applied, what it did not send kept
    assert (monitor.schedule.expression, monitor.schedule.timezone) == ("0 6 * * *", "Europe/Vienna")
    assert monitor.grace == 600
    recorded = await core.facts("curl_job")
    assert recorded.checkins == {"start": 1, "fail": 1} and recorded.outcomes == {"error": 1}
    assert recorded.last_duration == 2.5
    client = await aiohttp_client(server)
    first = (await client.app[CORE].store.history("curl_job"))[-1]
    assert (first["environment"], first["release"]) == ("prod", "2.0")
    compressed = gzip.compress(json.dumps({"status": "ok"}).encode())
    status, _ = await curl(url, compressed, "-H", "Content-Encoding: gzip", "--data-binary", "@-")
    assert status == 202 and (await core.facts("curl_job")).checkins == {"start": 1, "fail": 1, "success": 1}


@pytest.mark.parametrize(
    "slug, body, words",
    [
        ("my-monitor", b'{"status": "done"}', "status in the body must be in_progress, ok or error"),
        ("my-monitor", b'{"duration": "5"}', "duration in the body"),
        ("my-monitor", b'{"duration": -1}', "duration in the body"),
        ("my-monitor", b'{"duration": NaN}', "NaN"),
        ("my-monitor", b'{"environment": 7}', "environment in the body must be a string"),
        ("my-monitor", b'{"check_in_id": ["a"]}', "check_in_id in the body must be a string"),
        ("my-monitor", b'{"monitor_config": 5}', "monitor_config in the body must be an object"),
        ("my-monitor", b'[{"status": "ok"}]', "must be a JSON object"),
        ("my-monitor", b"status=ok", "not valid JSON"),
        ("my-monitor", b'{"status": "ok", "release": "\\ud800"}', "release"),
        ("brand-new", json.dumps({"monitor_config": MARS}).encode(), MARS_DETAIL),
    ],
)
async def test_a_bad_http_body_is_a_400_naming_the_field_that_changes_nothing(server, aiohttp_client, slug, body,
                                                                              words):
    """The whole body is checked before anything is recorded or created,
    even a field the query overrides (here ?status=ok)."""
    client = await aiohttp_client(server)
    before = await app_dump(client)
    status, answer = await curl(f"http://127.0.0.1:{server.port}/api/42/cron/{slug}/dsnkey123/?status=ok", body,
                                "-d", "@-")
    assert status == 400 and words in answer["detail"], answer
    assert await app_dump(client) == before


async def test_a_sentry_cli_failure_leaves_the_exit_code_unknown(server, aiohttp_client, tmp_path):
    """sentry-cli sends the status and the duration of the command it ran,
    not its exit code: the run is an error, and cronmon_last_exit_code says
    -1 (none reported), not 0 or 3."""
    assert await sentry_cli(server, tmp_path, "exit-job", "--schedule", "*/5 * * * *", "--", "sh", "-c", "exit 3") == 3
    recorded = await server.app[CORE].facts("exit-job")
    assert recorded.checkins == {"start": 1, "fail": 1} and recorded.outcomes == {"error": 1}
    client = await aiohttp_client(server)
    text = await (await client.get("/metrics")).text()
    [exit_code] = [
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == "cronmon_last_exit_code" and sample.labels.get("monitor") == "exit-job"
    ]
    assert exit_code == -1
