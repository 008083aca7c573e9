"""Healthchecks' URLs at the root (issue 13, item 1): hc-ping.com serves
`https://hc-ping.com/<uuid>` and `https://hc-ping.com/<ping key>/<slug>`,
so a job that swaps only the base URL for cronmon's must be answered at
cronmon's root, exactly as under /ping/, without shadowing cronmon's own
routes.

The forms are sent with real curl and wget, as Healthchecks prints them
(`curl -fsS -m 10 --retry 5 URL`, `wget URL -T 10 -t 5 -O /dev/null`), to a
real server on 127.0.0.1, only the base URL replaced; what got recorded is
read back from the core.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import re
import uuid

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from exporter.web import healthchecks
from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import write_config
from .servers import run_client

# A ping key as Healthchecks makes them (token_urlsafe(16), 22 characters,
# lowercased) and a check UUID as it prints them: what a migrated job has.
KEY = "hk3v9x2m8q1w7z5r4t6y0p"
HC_UUID = "5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278"
SHORT_KEY = "short-key-15chr"  # configured by hand, under the root floor
TOKEN = "root-test-api-token-0123456789"

CONFIG = """
ping_keys:
  - name: ops
    env: HCROOT_OPS_KEY
  - name: short
    env: HCROOT_SHORT_KEY
api_tokens:
  - {name: ci, env: HCROOT_TOKEN, owner: ops, scope: read}
monitors:
  - id: backup
    schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
    grace: 15m
    max_runtime: 2h
  - id: migrated
    schedule: {interval: 1h}
    ping: {uuid_env: HCROOT_HC_UUID}
  - id: db.dump
    schedule: {interval: 1h}
  - id: limited
    schedule: {interval: 1h}
    rate_limit: 2/1m
"""

# (path suffix, check-in kind, exit code) for every Healthchecks action
FORMS = [
    ("", "success", None),
    ("/start", "start", None),
    ("/fail", "fail", None),
    ("/log", "log", None),
    ("/0", "success", 0),
    ("/1", "fail", 1),
]


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("HCROOT_OPS_KEY", KEY)
    monkeypatch.setenv("HCROOT_SHORT_KEY", SHORT_KEY)
    monkeypatch.setenv("HCROOT_HC_UUID", HC_UUID)
    monkeypatch.setenv("HCROOT_TOKEN", TOKEN)


@pytest.fixture
def app(app_settings, tmp_path, env, clock):
    settings = app_settings(write_config(tmp_path, CONFIG), auto_provision=True)
    return create_app(settings, clock=clock)


@pytest.fixture
async def server(serve, app):
    return await serve(app)


@pytest.fixture
def base(server) -> str:
    """What replaces `https://hc-ping.com` in a job's URLs."""
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def core(app):
    return app[CORE]


def _clean_env(home) -> dict[str, str]:
    # No proxy variables and no ~/.curlrc or ~/.wgetrc: the commands run as printed.
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LC_ALL": "C"}


async def _run(*argv: str, home, stdin: bytes = b"") -> tuple[int, str, str]:
    code, out, err = await run_client(*argv, env=_clean_env(home), stdin=stdin)
    return code, out.decode(), err.decode()


async def curl(url: str, *options: str, home) -> str:
    """`curl -fsS -m 10 --retry 5 [options] URL` as Healthchecks prints it
    (plus --noproxy: loopback only); returns the body, failing the test on
    curl's error (with -f, any status of 400 or more is one)."""
    code, out, err = await _run(
        "curl", "--noproxy", "*", "-fsS", "-m", "10", "--retry", "5", *options, url, home=home
    )
    assert code == 0, f"curl {url}: exit {code}: {err}"
    return out


async def curl_status(url: str, *options: str, home) -> tuple[int, str]:
    """The same without -f, to read a refusal: (status, body)."""
    code, out, err = await _run(
        "curl", "--noproxy", "*", "-sS", "-m", "10", *options, "-w", "\n%{http_code}", url, home=home
    )
    assert code == 0, err
    body, _, status = out.rpartition("\n")
    return int(status), body


# -- every form, by curl, only the base replaced -----------------------------


@pytest.mark.parametrize("suffix, kind, exit_code", FORMS)
async def test_every_uuid_form_by_curl_at_the_root(base, core, tmp_path, suffix, kind, exit_code):
    assert await curl(f"{base}/{HC_UUID}{suffix}", home=tmp_path) == "OK"
    recorded = await core.facts("migrated")
    assert recorded.checkins == {kind: 1}
    assert recorded.last_exit_code == exit_code
    [event] = await core.recent_events("migrated", 10)
    assert event["ua"].startswith("curl/") and event["ip"] == "127.0.0.1"


@pytest.mark.parametrize("suffix, kind, exit_code", FORMS)
async def test_every_slug_form_by_curl_at_the_root(base, core, tmp_path, suffix, kind, exit_code):
    assert await curl(f"{base}/{KEY}/backup{suffix}", home=tmp_path) == "OK"
    recorded = await core.facts("backup")
    assert recorded.checkins == {kind: 1}
    assert recorded.last_exit_code == exit_code


async def test_a_log_body_sent_to_the_root_becomes_the_log(base, core, tmp_path):
    """Healthchecks' bash examples: `--data-raw "$m" PING_URL/log` and a
    failure carrying the job's output as its body."""
    assert await curl(f"{base}/{HC_UUID}/log", "--data-raw", "step 2 of 3 done", home=tmp_path) == "OK"
    (tmp_path / "job.log").write_text("disk full\n")
    assert await curl(f"{base}/{KEY}/backup/1", "--data-binary", f"@{tmp_path / 'job.log'}", home=tmp_path) == "OK"
    [log_event] = await core.recent_events("migrated", 10)
    assert log_event["kind"] == "log"
    assert await core.log("migrated", log_event["log"]) == "step 2 of 3 done"
    assert (await core.facts("migrated")).checkins == {"log": 1}
    [fail_event] = await core.recent_events("backup", 10)
    assert fail_event["kind"] == "fail" and fail_event["exit_code"] == 1
    assert await core.log("backup", fail_event["log"]) == "disk full\n"


@pytest.mark.parametrize("form", ["uuid", "slug"])
async def test_rid_pairs_start_and_finish_at_the_root(base, core, clock, tmp_path, form):
    """Healthchecks' measuring-run-time example: `PING_URL/start?rid=$RID`,
    then `PING_URL?rid=$RID`."""
    url, monitor = (f"{base}/{HC_UUID}", "migrated") if form == "uuid" else (f"{base}/{KEY}/backup", "backup")
    rid = str(uuid.uuid4())
    other = str(uuid.uuid4())
    assert await curl(f"{url}/start?rid={rid}", home=tmp_path) == "OK"
    clock.advance(30)
    assert await curl(f"{url}/start?rid={other}", home=tmp_path) == "OK"
    clock.advance(60)
    assert await curl(f"{url}?rid={rid}", home=tmp_path) == "OK"
    recorded = await core.facts(monitor)
    assert recorded.last_duration == pytest.approx(90)  # paired with its own start, not the newer one
    assert [run.run_id for run in recorded.open_runs] == [other]


async def test_create_1_at_the_root_provisions_the_monitor(base, core, tmp_path):
    """Healthchecks' auto-provisioning example, `PING_ENDPOINTmy-ping-key/srv01?create=1`."""
    assert "srv01" not in core.registry.monitors
    assert await curl(f"{base}/{KEY}/srv01?create=1", home=tmp_path) == "Created"
    monitor = core.registry.monitors["srv01"]
    assert monitor.schedule.seconds == 86400 and monitor.grace == 3600 and monitor.owner == "ping-key:ops"
    assert await curl(f"{base}/{KEY}/srv01?create=1", home=tmp_path) == "OK"  # exists now
    assert (await core.facts("srv01")).checkins == {"success": 2}


async def test_wget_as_healthchecks_prints_it(base, core, tmp_path):
    """`wget PING_URL -T 10 -t 5 -O /dev/null`."""
    for url in (f"{base}/{HC_UUID}", f"{base}/{KEY}/backup/start"):
        code, _, err = await _run("wget", "--no-proxy", url, "-T", "10", "-t", "5", "-O", "/dev/null", home=tmp_path)
        assert code == 0, err
    assert (await core.facts("migrated")).checkins == {"success": 1}
    assert (await core.facts("backup")).checkins == {"start": 1}
    code, _, _ = await _run(
        "wget", "--no-proxy", f"{base}/{KEY}/nope", "-T", "10", "-t", "1", "-O", "/dev/null", home=tmp_path
    )
    assert code == 8  # wget's "server issued an error response": the 404


# -- the root answers as /ping/ does -----------------------------------------


PARITY = [
    # every success form, both identities, capitals in the UUID, one trailing slash
    "/{uuid}", "/{uuid}/", "/{UUID}/start", "/{uuid}/fail", "/{uuid}/log", "/{uuid}/0", "/{uuid}/255",
    "/{key}/backup", "/{key}/backup/start", "/{key}/backup/fail/", "/{key}/backup/log", "/{key}/backup/3",
    "/{key}/db.dump",  # a cronmon id with a dot
    # and every refusal the handler gives
    "/{uuid}/256",  # 400 invalid url format
    "/{key}/backup/999",
    "/{uuid}?rid=not-a-uuid",  # 400 invalid uuid format
    "/{key}/backup?rid=not-a-uuid",
    "/{other_uuid}",  # 404 not found
    "/{other_uuid}/start",
    "/{key}/nope",
    "/{key}/Backup",  # Healthchecks slugs are lowercase; no cronmon id has capitals
    "/wrong-key-but-long-enough/backup",
    "/{uuid}/bogus",  # a key-shaped UUID and a slug that names nothing
    "/{key}/-leading-dash?create=1",  # 400: ?create=1 cannot make it a monitor id
]


def _fill(path: str) -> str:
    return path.format(uuid=HC_UUID, UUID=HC_UUID.upper(), key=KEY, other_uuid="0f2c7c8e-7b1e-4d6a-9c51-3e8f6a2d4b10")


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
@pytest.mark.parametrize("path", PARITY)
async def test_the_root_answers_exactly_as_ping_does(base, core, method, path):
    path = _fill(path)
    answers = []
    async with aiohttp.ClientSession() as session:
        for prefix in ("", "/ping"):
            body = b"body" if method == "POST" else None
            async with session.request(method, f"{base}{prefix}{path}", data=body) as r:
                answers.append((r.status, await r.text(), r.headers.get("Access-Control-Allow-Origin"),
                                r.headers.get("Retry-After")))
    assert answers[0] == answers[1]
    status, text, cors, _ = answers[0]
    assert cors == "*"  # both came from the ping handler
    if status == 200:
        assert text == ("" if method == "HEAD" else "OK")
        monitor = "migrated" if HC_UUID in path.lower() else ("db.dump" if "db.dump" in path else "backup")
        assert sum((await core.facts(monitor)).checkins.values()) == 2  # one each


async def test_the_rate_limit_answers_alike_at_the_root(base, core, tmp_path):
    url = f"{base}/{KEY}/limited"
    assert await curl(url, home=tmp_path) == "OK"
    assert await curl(url, home=tmp_path) == "OK"
    status, body = await curl_status(url, home=tmp_path)
    assert status == 429 and re.fullmatch(r"rate limited: retry in \d+ seconds", body)
    assert await curl_status(f"{base}/ping/{KEY}/limited", home=tmp_path) == (status, body)
    assert (await core.facts("limited")).checkins == {"success": 2}


# -- what the root forms must leave alone ------------------------------------


async def test_cronmon_routes_answer_as_before_beside_the_root_forms(base, core, clock, tmp_path):
    assert await curl(f"{base}/{KEY}/backup/start", home=tmp_path) == "OK"
    assert await curl(f"{base}/ping/{KEY}/backup/0", home=tmp_path) == "OK"  # /ping/ still works
    assert (await core.facts("backup")).checkins == {"start": 1, "success": 1}

    metrics = await curl(f"{base}/metrics", home=tmp_path)
    backup = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.labels.get("monitor") == "backup"
    }
    assert backup["cronmon_last_start_timestamp_seconds"] == clock.now
    assert backup["cronmon_last_success_timestamp_seconds"] == clock.now
    assert backup["cronmon_last_exit_code"] == 0
    assert (await curl_status(f"{base}/-/healthy", home=tmp_path))[0] == 200
    assert (await curl_status(f"{base}/-/ready", home=tmp_path))[0] == 200

    status, body = await curl_status(f"{base}/api/v1/monitors", home=tmp_path)
    assert status == 401 and "not found" not in body  # the management API, not the ping handler
    listed = json.loads(await curl(f"{base}/api/v1/monitors", "-H", f"Authorization: Bearer {TOKEN}", home=tmp_path))
    assert {"backup", "migrated", "db.dump", "limited"} <= {m["id"] for m in listed["monitors"]}

    page = json.loads(await curl(f"{base}/monitors/backup", home=tmp_path))
    assert [e["kind"] for e in page["recent_events"]] == ["success", "start"]
    assert (await curl_status(f"{base}/monitors/nope", home=tmp_path))[0] == 404
    index = await curl(f"{base}/", home=tmp_path)
    assert "monitors configured" in index


NOT_HEALTHCHECKS = [
    "/robots.txt",
    "/favicon.ico",
    "/backup",  # a bare slug
    "/some/random/path",
    "/{short}/backup",  # a key under the root floor (it works under /ping/)
    "/{uuid}x",
    "/{uuid}/start/extra",
    "/{uuid}//start",
    "/{key}/backup/bogus",
    "/{key}/backup/start/extra",
    "/{key}/bad%20slug",
    "/api/v1/nothing-here-at-all",
    "/monitors/backup/extra",
]


async def test_paths_of_no_healthchecks_shape_still_404(base, core, tmp_path):
    assert await curl(f"{base}/{HC_UUID}", home=tmp_path) == "OK"  # the root form is there
    for path in NOT_HEALTHCHECKS:
        path = path.format(uuid=HC_UUID, key=KEY, short=SHORT_KEY)
        status, body = await curl_status(f"{base}{path}", home=tmp_path)
        # aiohttp's own 404, not the ping handler's "not found"
        assert (status, body) == (404, "404: Not Found"), path
    assert (await core.facts("migrated")).checkins == {"success": 1}
    assert (await core.facts("backup")).checkins == {}


async def test_a_key_under_the_root_floor_works_under_ping_only(base, core, tmp_path):
    assert len(KEY) == 22 and re.fullmatch(r"[a-z0-9]+", KEY)  # as Healthchecks makes them
    assert len(SHORT_KEY) < healthchecks.ROOT_KEY_MIN
    assert await curl(f"{base}/ping/{SHORT_KEY}/backup", home=tmp_path) == "OK"
    assert await curl_status(f"{base}/{SHORT_KEY}/backup", home=tmp_path) == (404, "404: Not Found")
    # the same job with a Healthchecks-length key is served at the root
    assert await curl(f"{base}/{KEY}/backup", home=tmp_path) == "OK"
    assert (await core.facts("backup")).checkins == {"success": 2}


async def test_no_cronmon_route_is_shadowed_by_the_root_forms(app):
    """Every route of the app, its variables filled with a value that is a
    ping key's shape (22 digits: a key, a slug and a number at once), still
    resolves to its own handler; and the root forms are there."""
    root_resources = [r for r in app.router.resources() if r.canonical == "/{tail}"]
    assert len(root_resources) == 2
    checked = 0
    for resource in app.router.resources():
        if resource in root_resources:
            continue
        path = _sample_path(resource)
        for route in resource:
            request = make_mocked_request(route.method, path, app=app)
            match = await app.router.resolve(request)
            assert match.route.resource is resource, (route.method, path, match.route.resource)
            checked += 1
    assert checked > 40
    for path in (f"/{HC_UUID}/start", f"/{KEY}/backup/1"):
        match = await app.router.resolve(make_mocked_request("POST", path, app=app))
        # (route handlers are wrapped for request metrics: web/app.py _Router)
        assert match.route.resource in root_resources and inspect.unwrap(match.route.handler) is healthchecks.ping


def _sample_path(resource) -> str:
    """The resource's path with each variable filled: 22 digits (a ping
    key's length, and a slug and a number too) where its pattern takes
    them, else the first of a few words it takes (crontify's actions)."""
    names = re.findall(r"\{([^}]+)\}", resource.canonical)
    pattern = resource.get_info().get("pattern")
    if pattern is None:
        return resource.canonical
    for values in itertools.product(["1234567890123456789012", "start"], repeat=len(names)):
        path = resource.canonical
        for name, value in zip(names, values, strict=True):
            path = path.replace("{" + name + "}", value)
        if pattern.fullmatch(path):
            return path
    raise AssertionError(f"no sample path for {resource.canonical}")
