"""Crontify-compatible pings, following seeds/crontify-http.txt (host swapped)."""

import json
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import app_dump, write_config

CONFIG = """
api_tokens:
  - {name: ck-live, env: T_CK, owner: acme, scope: write}
  - {name: other-account, env: T_OTHER, owner: globex, scope: write}
  - {name: acme-ui, env: T_UI, owner: acme, scope: read}
monitors:
  - id: nightly-report
    schedule: {interval: 1h}
    labels: {team: data}
    meta_rules: ["rows_processed < 1", "emails_sent == 0"]
    ping: {tokens: [ck-live]}
  - id: limited
    schedule: {interval: 1h}
    rate_limit: 2/1m
    ping: {tokens: [ck-live]}
  - id: not-granted
    schedule: {interval: 1h}
"""
KEY = {"X-API-Key": "ck_live_0123456789abcdef"}
BASE = "/api/v1/ping/nightly-report"


@pytest.fixture
async def client(aiohttp_client, app_settings, tmp_path, monkeypatch, clock):
    monkeypatch.setenv("T_CK", "ck_live_0123456789abcdef")
    monkeypatch.setenv("T_OTHER", "ck_live_globex")
    monkeypatch.setenv("T_UI", "ui-token")
    monkeypatch.setenv("CRONMON_PING_KEY", "crontify-test-ping-key")
    settings = app_settings(write_config(tmp_path, CONFIG), max_body_bytes=60_000)
    client = await aiohttp_client(create_app(settings, clock=clock))
    # An API monitor of another account.
    created = await client.post(
        "/api/v1/monitors", json={"id": "globex-job", "schedule": {"interval": "1h"}},
        headers={"Authorization": "Bearer ck_live_globex"},
    )
    assert created.status == 201
    return client


def envelope(body: dict, status: str) -> None:
    assert body["success"] is True
    data = body["data"]
    assert data["received"] is True and data["monitorId"] == "nightly-report" and data["status"] == status
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["timestamp"])
    assert data["runId"]


async def test_the_documented_shell_script_flow(client, clock):
    # Signal start
    start = await client.post(f"{BASE}/start", headers=KEY)
    assert start.status == 200
    started = await start.json()
    envelope(started, "running")
    clock.advance(30)
    # Signal success with metadata
    success = await client.post(f"{BASE}/success", headers={**KEY, "Content-Type": "application/json"},
                                data=json.dumps({"meta": {"exit_code": 0}}))
    body = await success.json()
    envelope(body, "success")
    assert body["data"]["runId"] == started["data"]["runId"]  # the run that started
    facts = await client.app[CORE].store.facts("nightly-report")
    assert facts.last_duration == pytest.approx(30) and facts.meta == {"exit_code": 0.0}
    # Signal failure with log output
    output = "Traceback (most recent call last):\n  ...\nValueError: boom\n"
    fail = await client.post(
        f"{BASE}/fail", headers=KEY, json={"errorMessage": "Job exited with code 1", "logOutput": output}
    )
    envelope(await fail.json(), "failed")
    events = await client.app[CORE].store.history("nightly-report")
    assert events[0]["message"] == "Job exited with code 1"


async def test_meta_on_success_and_silent_failure(client):
    ok = await client.post(f"{BASE}/success", headers=KEY, json={"meta": {"rows_processed": 1523, "emails_sent": 48}})
    assert ok.status == 200
    silent = await client.post(f"{BASE}/success", headers=KEY, json={"meta": {"rows_processed": 0, "emails_sent": 48}})
    envelope(await silent.json(), "success")  # Crontify answers success; the alert rules catch it
    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("monitor") == "nightly-report"
    }
    assert samples[("cronmon_runs_total", "silent_failure")] == 1
    assert samples[("cronmon_runs_total", "ok")] == 1
    assert samples[("cronmon_silent_failure", None)] == 1
    status = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "cronmon_monitor_status" and s.labels["monitor"] == "nightly-report" and s.value == 1
    ]
    assert status[0].labels["status"] == "up"  # a silent failure is not a threshold failure


async def test_log_output_is_cut_stored_apart_and_read_back(client):
    start = await (await client.post(f"{BASE}/start", headers=KEY)).json()
    run_id = start["data"]["runId"]
    long_log = "x" * 10_000 + "TAIL"
    await client.post(f"{BASE}/fail", headers=KEY, json={"errorMessage": "boom", "logOutput": long_log})
    listing = await (
        await client.get("/api/v1/monitors/nightly-report/runs", headers={"Authorization": "Bearer ui-token"})
    ).json()
    assert "x" * 100 not in json.dumps(listing)  # never in list queries
    log = await client.get(
        f"/api/v1/monitors/nightly-report/runs/{run_id}/log", headers={"Authorization": "Bearer ui-token"}
    )
    body = await log.json()
    assert body["hasLog"] is True and body["content"] == "x" * 10_000 and body["truncated"] is True
    no_log = await (await client.post(f"{BASE}/start", headers=KEY)).json()
    body = await (
        await client.get(
            f"/api/v1/monitors/nightly-report/runs/{no_log['data']['runId']}/log",
            headers={"Authorization": "Bearer ui-token"},
        )
    ).json()
    assert body["hasLog"] is False and body["content"] is None


@pytest.mark.parametrize(
    "headers, path, status, message",
    [
        ({}, f"{BASE}/start", 401, "Missing or invalid API key"),
        ({"X-API-Key": "ck_live_wrong"}, f"{BASE}/start", 401, "Missing or invalid API key"),
        (KEY, "/api/v1/ping/no-such-monitor/start", 404, "Monitor not found"),
        (KEY, "/api/v1/ping/globex-job/start", 404, "Monitor not found"),  # another account's
        # A YAML monitor that does not name the token in ping.tokens.
        (KEY, "/api/v1/ping/not-granted/success", 403, "name it in the monitor's ping.tokens"),
        # The other account's token, on a YAML monitor granted to ck-live only.
        ({"X-API-Key": "ck_live_globex"}, f"{BASE}/success", 403, 'api token "other-account" may not'),
        # A read-scope token of the right account.
        ({"X-API-Key": "ui-token"}, f"{BASE}/success", 403, "has the read scope"),
    ],
)
async def test_auth_errors(client, headers, path, status, message):
    before = await app_dump(client)
    response = await client.post(path, headers=headers, json={"meta": {"rows": 1}, "logOutput": "x"})
    assert response.status == status
    body = await response.json()
    assert body["success"] is False and message in body["error"]
    assert await app_dump(client) == before  # no counter, no rate limit use


@pytest.mark.parametrize(
    "body, field",
    [
        ({"meta": {"rows": "many"}}, "meta.rows"),
        ({"meta": {"ok": True}}, "meta.ok"),
        ({"errorMessage": "e" * 501}, "errorMessage"),
        ({"meta": [1, 2]}, "meta"),
    ],
)
async def test_bad_bodies_change_nothing(client, body, field):
    response = await client.post(f"{BASE}/fail", headers=KEY, json=body)
    assert response.status == 400
    payload = await response.json()
    assert payload["success"] is False and any(i["field"].startswith(field) for i in payload["issues"])
    assert (await client.app[CORE].store.facts("nightly-report")).checkins == {}


async def test_malformed_json_and_too_large(client):
    assert (await client.post(f"{BASE}/success", headers=KEY, data="{nope")).status == 400
    assert (await client.post(f"{BASE}/fail", headers=KEY, json={"logOutput": "y" * 70_000})).status == 413
    assert (await client.app[CORE].store.facts("nightly-report")).checkins == {}


async def test_rate_limit_says_how_long_to_wait(client):
    for _ in range(2):
        assert (await client.post("/api/v1/ping/limited/success", headers=KEY)).status == 200
    refused = await client.post("/api/v1/ping/limited/success", headers=KEY)
    assert refused.status == 429
    body = await refused.json()
    assert 1 <= body["retryAfter"] <= 60 and f"{body['retryAfter']} seconds" in body["error"]
    assert refused.headers["Retry-After"] == str(body["retryAfter"])
    assert (await client.app[CORE].store.facts("limited")).checkins == {"success": 2}
    # The Healthchecks form of the same monitor is limited too.
    assert (await client.get("/ping/crontify-test-ping-key/limited")).status == 429


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"meta": {"rows": ' + b"9" * 400 + b"}}", "digits"),
        (b'{"meta": {"rows": ' + b"9" * 5000 + b"}}", "digits"),
        (b'{"meta": {"rows": 1e400}}', "beyond the range"),
        (b'{"meta": {"rows": NaN}}', "NaN is not a JSON value"),
        (b'{"meta": {"rows": -Infinity}}', "Infinity is not a JSON value"),
        (b'{"logOutput": "tail \\ud800"}', "logOutput holds a lone surrogate"),
        (b'{"errorMessage": "\\udfff"}', "errorMessage holds a lone surrogate"),
        (b'{"meta": {"\\ud800": 1}}', "key"),
        (b"[" * 50_000, "nested too deeply"),
        (b'{"meta": "\xff\xfe"}', "not valid JSON"),
    ],
)
async def test_hostile_bodies_are_a_400_that_records_nothing(client, raw, reason, caplog):
    before = await app_dump(client)
    response = await client.post(f"{BASE}/success", headers={**KEY, "Content-Type": "application/json"}, data=raw)
    assert response.status == 400, await response.text()
    assert reason in (await response.json())["error"]
    assert await app_dump(client) == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_log_output_is_cut_to_the_byte_limit_too(client):
    """10,000 characters of "€" are 30 kB: the byte limit every stored log
    has applies as well, on a character boundary."""
    raw = json.dumps({"logOutput": "€" * 10_000}, ensure_ascii=False).encode()
    response = await client.post(f"{BASE}/fail", headers={**KEY, "Content-Type": "application/json"}, data=raw)
    assert response.status == 200
    store = client.app[CORE].store
    event = (await store.history("nightly-report", 0, 1))[0]
    body = (await store.logs("nightly-report", [event["log"]]))[event["log"]]
    assert event["log_truncated"] is True
    assert body == "€" * (10_000 // 3) and len(body.encode()) <= 10_000
