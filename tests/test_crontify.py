"""Crontify-compatible pings, following seeds/crontify-http.txt (host swapped).

Issue 13 for Crontify: a field cronmon cannot use is cut or dropped and
said in `warnings`, never a 400 that loses the run (item 5); a body that
cannot be read at all is refused with a sentence and changes nothing;
`meta.exit_code` is the run's exit code (item 6); every documented answer
has the document's JSON types (item 7). The document's examples are
quoted here as written and run by curl and bash, as a job would.
"""

import json
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import app_dump, write_config
from .servers import run_client

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


# -- item 5: one bad field does not cost the job its run ------------------------

# What pydantic's errors look like; none of it may reach a client.
PYDANTIC_WORDS = ("Input should", "valid integer", "valid dictionary", ".int:", ".float:", "int_parsing", "type=")


def assert_no_internals(text: str) -> None:
    assert not [w for w in PYDANTIC_WORDS if w in text], text


@pytest.mark.parametrize(
    "body, message, meta, said",
    [
        # Over Crontify's 500 characters: cut, not refused.
        ({"errorMessage": "e" * 501}, "e" * 500, {}, ["errorMessage was cut to 500 characters (it had 501)"]),
        ({"errorMessage": "é" * 400 + "€" * 400}, "é" * 400 + "€" * 100, {}, ["errorMessage was cut to 500"]),
        # The example: a dry_run flag among numbers.
        ({"errorMessage": "boom", "meta": {"rows_processed": 1523, "dry_run": True}}, "boom",
         {"rows_processed": 1523.0}, ["meta.dry_run is a boolean, not a number, so it was dropped"]),
        ({"meta": {"rows": "many", "ok": 3}}, None, {"ok": 3.0}, ["meta.rows is a string, not a number"]),
        ({"meta": {"a": None, "b": [1], "c": {"d": 1}, "n": 2.5}}, None, {"n": 2.5},
         ["meta.a is null", "meta.b is an array", "meta.c is an object"]),
        ({"meta": {"": 1, "k" * 101: 2, "fine": 1}}, None, {"fine": 1.0},
         ["meta has an empty key", "longer than 100 characters"]),
        # A key that is not safe to show as it is: quoted, no raw newline.
        ({"meta": {"a\nb": "x"}}, None, {}, ['meta["a\\nb"] is a string']),
        ({"meta": [1, 2]}, None, {}, ["meta is an array, not an object, so it was ignored"]),
        ({"meta": "rows=1"}, None, {}, ["meta is a string, not an object"]),
        ({"errorMessage": 42, "meta": {"rows": 1}}, None, {"rows": 1.0}, ["errorMessage is a number, not a string"]),
        ({"errorMessage": "boom", "logOutput": {"lines": []}}, "boom", {}, ["logOutput is an object, not a string"]),
        # Many bad values: ten named, the rest counted.
        ({"meta": {f"k{i}": "x" for i in range(15)}}, None, {}, ["meta.k9 is a string", "5 more meta values"]),
    ],
)
async def test_a_bad_field_is_cut_or_dropped_the_run_recorded_and_the_answer_says_so(
    client, caplog, body, message, meta, said
):
    caplog.set_level(logging.WARNING, logger="exporter.web.crontify")
    response = await client.post(f"{BASE}/fail", headers=KEY, json=body)
    text = await response.text()
    assert response.status == 200, text
    answer = json.loads(text)
    envelope(answer, "failed")
    warnings = answer["warnings"]
    assert isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)
    for sentence in said:
        assert any(sentence in w for w in warnings), (sentence, warnings)
    if body.get("meta") and isinstance(body["meta"], dict) and len(body["meta"]) > 10:
        assert "meta.k10" not in text and len(warnings) == 11
    assert_no_internals(text)
    store = client.app[CORE].store
    facts = await store.facts("nightly-report")
    assert facts.checkins == {"fail": 1} and dict(facts.meta) == meta  # the run is recorded
    assert facts.last_outcome == "error"
    assert (await store.history("nightly-report"))[0].get("message") == message
    logged = [r.getMessage() for r in caplog.records if r.name == "exporter.web.crontify"]
    assert len(logged) == 1 and caplog.records[-1].levelno == logging.WARNING
    assert "nightly-report" in logged[0] and all(sentence in logged[0] for sentence in said)
    assert "\n" not in logged[0]
    assert "ck_live_0123456789abcdef" not in logged[0]  # the key's name, never the key


async def test_a_clean_ping_has_no_warnings_and_logs_nothing(client, caplog):
    caplog.set_level(logging.INFO, logger="exporter.web.crontify")
    response = await client.post(f"{BASE}/fail", headers=KEY, json={"errorMessage": "e" * 500, "meta": {"n": 1}})
    assert "warnings" not in await response.json()
    assert [r for r in caplog.records if r.name == "exporter.web.crontify"] == []


async def test_a_long_log_output_is_cut_and_the_answer_says_so(client):
    response = await client.post(f"{BASE}/fail", headers=KEY, json={"logOutput": "x" * 10_001})
    answer = await response.json()
    assert answer["warnings"] == [
        "logOutput was cut to its first 10000 characters (it had 10001): cronmon keeps at most 10000 characters "
        "and 10000 bytes of a log"
    ]


@pytest.mark.parametrize(
    "raw, headers, status, said",
    [
        (b"{nope", {}, 400, "The body is not valid JSON: Expecting property name"),
        (b'{"meta": {"rows": 1}', {}, 400, "The body is not valid JSON"),
        (b"meta=1", {"Content-Type": "application/x-www-form-urlencoded"}, 400, "The body is not valid JSON"),
        (b"[1, 2]", {}, 400, "The body is an array, not a JSON object"),
        (b'"success"', {}, 400, "The body is a string, not a JSON object"),
        (b"42", {}, 400, "The body is a number, not a JSON object"),
        (b"true", {}, 400, "The body is a boolean, not a JSON object"),
        (b"null", {}, 400, "The body is null, not a JSON object"),
        (b'{"meta": {"rows": 1e400}}', {}, 400, "1e400 is beyond the range of any field"),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "does not decode as its Content-Encoding (gzip) says"),
        (b"{}", {"Content-Encoding": "zstd"}, 415, "Unsupported Content-Encoding 'zstd'"),
        (json.dumps({"logOutput": "y" * 70_000}).encode(), {}, 413, "Request body too large: the limit is 60000"),
    ],
)
async def test_a_body_that_cannot_be_read_is_refused_with_a_sentence_and_changes_nothing(
    client, caplog, raw, headers, status, said
):
    before = await app_dump(client)
    response = await client.post(f"{BASE}/fail", headers={**KEY, "Content-Type": "application/json", **headers},
                                 data=raw)
    text = await response.text()
    assert response.status == status, text
    answer = json.loads(text)
    assert answer["success"] is False and set(answer) == {"success", "error"}
    error = answer["error"]
    # A sentence: what is wrong, how to fix it, and that nothing was recorded.
    assert said in error and error.endswith("Nothing was recorded.") and "send" in error, error
    assert_no_internals(error)
    assert await app_dump(client) == before
    assert any("not recorded" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# -- item 6: exit codes ---------------------------------------------------------


async def last_exit_code(client, monitor: str = "nightly-report") -> float:
    text = await (await client.get("/metrics")).text()
    (value,) = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "cronmon_last_exit_code" and s.labels.get("monitor") == monitor
    ]
    return value


async def test_fail_with_meta_exit_code_sets_the_exit_code_and_a_completion_without_one_clears_it(client):
    assert await last_exit_code(client) == -1  # nothing completed yet
    # The document's /fail body.
    fail = await client.post(f"{BASE}/fail", headers=KEY, json={
        "errorMessage": "Database connection timeout after 30s", "meta": {"exit_code": 1},
        "logOutput": "Traceback (most recent call last):\n ...",
    })
    assert "warnings" not in await fail.json()
    assert await last_exit_code(client) == 1
    facts = await client.app[CORE].store.facts("nightly-report")
    assert facts.last_exit_code == 1 and facts.meta["exit_code"] == 1.0  # still meta, as the document says
    # A success that reports no exit code: unknown, not the failed run's 1.
    assert (await client.post(f"{BASE}/success", headers=KEY)).status == 200
    assert await last_exit_code(client) == -1
    # The shell script's success: exit code 0.
    await client.post(f"{BASE}/success", headers=KEY, json={"meta": {"exit_code": 0}})
    assert await last_exit_code(client) == 0
    await client.post(f"{BASE}/fail", headers=KEY, json={"meta": {"exit_code": 255.0}})  # JSON's 255.0 is 255
    assert await last_exit_code(client) == 255


@pytest.mark.parametrize(
    "exit_code, kept, said",
    [
        (256, 256.0, "meta.exit_code 256 is not an exit code (a whole number from 0 to 255)"),
        (-1, -1.0, "meta.exit_code -1 is not an exit code"),
        (1.5, 1.5, "meta.exit_code 1.5 is not an exit code"),
        ("1", None, "meta.exit_code is a string, not a number, so it was dropped and not used as the run's exit code"),
        (True, None, "meta.exit_code is a boolean, not a number"),
        (None, None, "meta.exit_code is null, not a number"),
    ],
)
async def test_a_meta_exit_code_that_is_not_an_exit_code_is_not_used_as_one(client, exit_code, kept, said):
    await client.post(f"{BASE}/fail", headers=KEY, json={"meta": {"exit_code": 3}})
    assert await last_exit_code(client) == 3
    response = await client.post(f"{BASE}/fail", headers=KEY, json={"meta": {"exit_code": exit_code, "rows": 1}})
    assert response.status == 200
    answer = await response.json()
    envelope(answer, "failed")
    assert any(said in w for w in answer["warnings"]), answer["warnings"]
    assert await last_exit_code(client) == -1  # this run's code is unknown; the earlier 3 does not stand for it
    facts = await client.app[CORE].store.facts("nightly-report")
    assert facts.checkins == {"fail": 2} and facts.meta.get("rows") == 1.0
    assert facts.meta.get("exit_code") == (kept if kept is not None else 3.0)  # the earlier run's value stays


async def test_a_start_does_not_set_an_exit_code(client):
    await client.post(f"{BASE}/fail", headers=KEY, json={"meta": {"exit_code": 2}})
    answer = await (await client.post(f"{BASE}/start", headers=KEY, json={"meta": {"exit_code": 0}})).json()
    envelope(answer, "running")
    assert any("a run that has just started has none" in w for w in answer["warnings"])
    assert await last_exit_code(client) == 2


# -- item 7: the document's JSON types ---------------------------------------------

# The response examples of seeds/crontify-http.txt, as written there.
DOCUMENTED = {
    "start": """{
"success": true,
"data": {
"received": true,
"monitorId": "clxxx...",
"runId": "clyyy...",
"status": "running",
"timestamp": "2025-01-01T09:00:00.000Z"
}
}""",
    "success": """{
"success": true,
"data": {
"received": true,
"monitorId": "clxxx...",
"runId": "clyyy...",
"status": "success",
"timestamp": "2025-01-01T09:02:15.000Z"
}
}""",
    "fail": """{
"success": true,
"data": {
"received": true,
"monitorId": "clxxx...",
"runId": "clyyy...",
"status": "failed",
"timestamp": "2025-01-01T09:01:05.000Z"
}
}""",
    "log present": """{
"hasLog": true,
"content": "Error: Connection refused\\n at ..."
}""",
    "no log": """{
"hasLog": false,
"content": null
}""",
}
# The documented request bodies.
SUCCESS_BODY = '{\n"meta": {\n"rows_processed": 1523,\n"emails_sent": 48\n}\n}'
FAIL_BODY = ('{\n"errorMessage": "Database connection timeout after 30s",\n"meta": { "exit_code": 1 },\n'
             '"logOutput": "Traceback (most recent call last):\\n ..."\n}')


def shape(value):
    """The JSON type of every field, recursively: int and float apart (Python's
    json reads 2 as int and 2.0 as float), bool apart from both."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return {bool: "boolean", int: "integer", float: "float", str: "string", type(None): "null"}[type(value)]


async def test_every_documented_response_has_the_documented_json_types(client):
    documented = {name: json.loads(text) for name, text in DOCUMENTED.items()}
    json_body = {**KEY, "Content-Type": "application/json"}
    answers = {
        "start": await client.post(f"{BASE}/start", headers=KEY),
        "success": await client.post(f"{BASE}/success", headers=json_body, data=SUCCESS_BODY),
        "fail": None,
    }
    start = await answers["start"].json()
    answers["fail"] = await client.post(f"{BASE}/fail", headers=json_body, data=FAIL_BODY)
    for name in ("start", "success", "fail"):
        response = answers[name]
        assert response.status == 200 and response.content_type == "application/json"
        body = json.loads(await response.text())
        assert shape(body) == shape(documented[name]), name  # the same keys, the same types
        assert body["data"]["status"] == documented[name]["data"]["status"]
    ui = {"Authorization": "Bearer ui-token"}
    fail_run = (await client.app[CORE].store.history("nightly-report"))[0]["run"]
    logs = {
        "log present": await client.get(f"/api/v1/monitors/nightly-report/runs/{fail_run}/log", headers=ui),
        "no log": await client.get(
            f"/api/v1/monitors/nightly-report/runs/{start['data']['runId']}/log", headers=ui
        ),
    }
    for name, response in logs.items():
        assert response.status == 200
        body = json.loads(await response.text())
        # The route is shared with the native API, which adds its own keys
        # (seq, run, has_log, truncated): Crontify's are there, typed as documented.
        assert shape({key: body[key] for key in documented[name]}) == shape(documented[name]), name
    assert shape(json.loads(await logs["log present"].text()))["content"] == "string"


def test_shape_tells_integers_floats_and_booleans_apart():
    assert shape({"a": 2, "b": 2.0, "c": True, "d": None, "e": [1]}) == {
        "a": "integer", "b": "float", "c": "boolean", "d": "null", "e": ["integer"],
    }
    assert shape(json.loads('{"n": 2}')) != shape(json.loads('{"n": 2.0}'))


# -- the document's curl examples, run by curl -------------------------------------

# "Shell script example", as written in the document (its indentation lost).
SHELL_SCRIPT = r'''#!/bin/bash

API_KEY="ck_live_..."
MONITOR_ID="clxxx..."
BASE_URL="https://api.crontify.com/api/v1"

# Signal start
curl -s -X POST "$BASE_URL/ping/$MONITOR_ID/start" \
-H "X-API-Key: $API_KEY"

# Run the job and capture output
JOB_OUTPUT=$(python3 /path/to/job.py 2>&1)
EXIT_CODE=$?

if [ $EXIT_CODE -eq 0 ]; then
# Signal success with metadata
curl -s -X POST "$BASE_URL/ping/$MONITOR_ID/success" \
-H "X-API-Key: $API_KEY" \
-H "Content-Type: application/json" \
-d "{\"meta\": {\"exit_code\": 0}}"
else
# Signal failure with log output
ESCAPED_OUTPUT=$(echo "$JOB_OUTPUT" | python3 -c "import json,sys; print(json.dumps(sys.stdin.read()))")
curl -s -X POST "$BASE_URL/ping/$MONITOR_ID/fail" \
-H "X-API-Key: $API_KEY" \
-H "Content-Type: application/json" \
-d "{\"errorMessage\": \"Job exited with code $EXIT_CODE\", \"logOutput\": $ESCAPED_OUTPUT}"
fi
'''


def answers(out: bytes) -> list[dict]:
    """The JSON answers curl -s printed one after another."""
    decoder, text, found = json.JSONDecoder(), out.decode(), []
    while text.strip():
        value, end = decoder.raw_decode(text.strip())
        found.append(value)
        text = text.strip()[end:]
    return found


def base_url(client) -> str:
    return f"http://127.0.0.1:{client.server.port}/api/v1"


# The README's suggestion for the failure branch: the exit code in meta too.
FAIL_WITH_EXIT_CODE = (r'-d "{\"errorMessage\": \"Job exited with code $EXIT_CODE\", '
                       r'\"meta\": {\"exit_code\": $EXIT_CODE}, \"logOutput\": $ESCAPED_OUTPUT}"')


@pytest.mark.parametrize("job_exit, with_exit_code", [(0, False), (3, False), (3, True)])
async def test_the_documented_shell_script_runs_as_written(client, tmp_path, job_exit, with_exit_code):
    job = tmp_path / "job.py"
    job.write_text(
        f"import sys\nprint('line one', flush=True)\nprint('boom \"quoted\"', file=sys.stderr)\nsys.exit({job_exit})\n"
    )
    script = (
        SHELL_SCRIPT.replace('"https://api.crontify.com/api/v1"', f'"{base_url(client)}"')
        .replace('"ck_live_..."', '"ck_live_0123456789abcdef"')
        .replace('"clxxx..."', '"nightly-report"')
        .replace("/path/to/job.py", str(job))
        .replace("curl -s ", "curl -s --noproxy '*' ")
    )
    if with_exit_code:
        documented = r'-d "{\"errorMessage\": \"Job exited with code $EXIT_CODE\", \"logOutput\": $ESCAPED_OUTPUT}"'
        assert documented in script
        script = script.replace(documented, FAIL_WITH_EXIT_CODE)
    (tmp_path / "ping.sh").write_text(script)
    code, out, err = await run_client("bash", str(tmp_path / "ping.sh"))
    assert code == 0, err
    start, end = answers(out)
    envelope(start, "running")
    envelope(end, "success" if job_exit == 0 else "failed")
    assert end["data"]["runId"] == start["data"]["runId"]
    assert shape(end) == shape(json.loads(DOCUMENTED["success"]))
    facts = await client.app[CORE].store.facts("nightly-report")
    if job_exit == 0:
        # {"meta": {"exit_code": 0}}: the job's exit code, and meta.
        assert facts.checkins == {"start": 1, "success": 1} and facts.meta == {"exit_code": 0.0}
        assert await last_exit_code(client) == 0
    else:
        assert facts.checkins == {"start": 1, "fail": 1}
        # The script's failure branch sends no meta: the exit code is unknown.
        assert await last_exit_code(client) == (3 if with_exit_code else -1)
        event = (await client.app[CORE].store.history("nightly-report"))[0]
        assert event["message"] == "Job exited with code 3"
        log = await client.app[CORE].store.logs("nightly-report", [event["log"]])
        assert log[event["log"]] == 'line one\nboom "quoted"\n'  # $(...) strips the newlines, echo adds one


async def test_the_documented_fail_body_over_curl_sets_the_exit_code(client):
    code, out, err = await run_client(
        "curl", "-sS", "--noproxy", "*", "--max-time", "30", "-X", "POST",
        f"{base_url(client)}/ping/nightly-report/fail", "-H", "X-API-Key: ck_live_0123456789abcdef",
        "-H", "Content-Type: application/json",
        "--data-binary", "@-", "-w", "\n%{http_code}", stdin=FAIL_BODY.encode(),
    )
    assert code == 0, err
    text, _, status = out.decode().rpartition("\n")
    assert status == "200"
    assert shape(json.loads(text)) == shape(json.loads(DOCUMENTED["fail"]))
    assert await last_exit_code(client) == 1
    # And a bad field over curl: recorded, with a warning, not a 400.
    code, out, err = await run_client(
        "curl", "-sS", "--noproxy", "*", "--max-time", "30", "-X", "POST",
        f"{base_url(client)}/ping/nightly-report/success", "-H", "X-API-Key: ck_live_0123456789abcdef",
        "-d", '{"meta": {"rows_processed": 1523, "dry_run": true}}', "-w", "\n%{http_code}",
    )
    assert code == 0, err
    text, _, status = out.decode().rpartition("\n")
    assert status == "200", text
    assert json.loads(text)["warnings"] == [
        "meta.dry_run is a boolean, not a number, so it was dropped: meta keeps numbers only; send 1 or 0 for true "
        "or false"
    ]
    assert await last_exit_code(client) == -1


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
    error = (await response.json())["error"]
    assert reason in error and error.endswith("Nothing was recorded.") and "send" in error, error
    assert_no_internals(error)
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
