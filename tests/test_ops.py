"""/metrics (checked by the real promtool), readiness and config reload."""

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.web.app import create_app
from exporter.web.keys import CORE, SETTINGS, SWEEPER

from .conftest import T0, wait_for, write_config

CONFIG = """
groups:
  - name: heartbeats
    metrics: [checkins, duration_histogram, last_outcome]
monitors:
  - id: backup
    name: Nightly backup
    schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
    grace: 15m
    max_runtime: 2h
    labels: {team: data, severity: critical}
    group: backups
    metrics: [checkins, duration_histogram, last_outcome]
  - id: beat
    schedule: {interval: 5m}
    labels: {team: platform}
    group: heartbeats
  - id: plain
    schedule: {interval: 1h}
"""

PER_MONITOR = [
    "cronmon_monitor_info", "cronmon_monitor_status", "cronmon_up",
    "cronmon_last_checkin_timestamp_seconds", "cronmon_last_start_timestamp_seconds",
    "cronmon_last_success_timestamp_seconds", "cronmon_last_failure_timestamp_seconds",
    "cronmon_last_duration_seconds", "cronmon_last_exit_code", "cronmon_silent_failure",
    "cronmon_next_expected_timestamp_seconds", "cronmon_deadline_timestamp_seconds",
    "cronmon_grace_seconds", "cronmon_max_runtime_seconds", "cronmon_running_runs",
    "cronmon_consecutive_failures", "cronmon_checkins_total", "cronmon_runs_total",
    "cronmon_run_duration_seconds_bucket", "cronmon_run_duration_seconds_count",
    "cronmon_run_duration_seconds_sum", "cronmon_last_outcome",
]
SELF = [
    "cronmon_build_info", "cronmon_store_up", "cronmon_config_last_reload_successful",
    "cronmon_config_last_reload_success_timestamp_seconds", "cronmon_monitors",
    "cronmon_http_requests_total", "cronmon_http_request_duration_seconds_bucket",
]


@pytest.fixture
def config_path(tmp_path):
    return write_config(tmp_path, CONFIG)


@pytest.fixture
async def client(aiohttp_client, app_settings, config_path, monkeypatch, clock):
    monkeypatch.setenv("CRONMON_PING_KEY", "k" * 22)
    client = await aiohttp_client(create_app(app_settings(config_path, enable_lifecycle=True), clock=clock))
    # The start-up resync (the sweeper's first pass) runs in the background;
    # a scrape before it ends and one after it differ (seen as a flaky
    # text-vs-OpenMetrics comparison). Tests start once it is done.
    await wait_for(lambda: client.app[SWEEPER].passes > 0)
    return client


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels) -> float:
    found = [s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def scrape(client) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


async def test_every_metric_for_every_monitor_with_its_labels(client, clock):
    await client.get("/ping/" + "k" * 22 + "/backup/start")
    clock.advance(12)
    await client.post("/ping/" + "k" * 22 + "/backup/3", data="it broke")
    text = await scrape(client)
    all_samples = samples(text)
    for name in PER_MONITOR:
        for monitor, labels in (("backup", {"team": "data", "severity": "critical"}), ("beat", {"team": "platform"})):
            matching = [s for s in all_samples if s.name == name and s.labels.get("monitor") == monitor]
            assert matching, (name, monitor)
            assert all(labels.items() <= s.labels.items() for s in matching), (name, monitor)
    for name in SELF:
        assert any(s.name == name for s in all_samples), name
    assert value(text, "cronmon_monitor_status", monitor="backup", status="failed") == 1
    assert (
        sum(s.value for s in all_samples if s.name == "cronmon_monitor_status" and s.labels["monitor"] == "backup") == 1
    )
    assert value(text, "cronmon_monitor_status", monitor="beat", status="new") == 1
    assert value(text, "cronmon_up", monitor="backup") == 0
    assert value(text, "cronmon_last_exit_code", monitor="backup") == 3
    assert value(text, "cronmon_last_duration_seconds", monitor="backup") == pytest.approx(12)
    assert value(text, "cronmon_last_start_timestamp_seconds", monitor="backup") == T0
    assert value(text, "cronmon_last_failure_timestamp_seconds", monitor="backup") == T0 + 12
    assert value(text, "cronmon_last_success_timestamp_seconds", monitor="backup") == 0
    assert value(text, "cronmon_checkins_total", monitor="backup", kind="fail") == 1
    assert value(text, "cronmon_runs_total", monitor="backup", outcome="error") == 1
    assert value(text, "cronmon_runs_total", monitor="beat", outcome="missed") == 0
    assert value(text, "cronmon_run_duration_seconds_bucket", monitor="backup", le="10.0") == 0
    assert value(text, "cronmon_run_duration_seconds_bucket", monitor="backup", le="30.0") == 1
    assert value(text, "cronmon_grace_seconds", monitor="backup") == 900
    assert value(text, "cronmon_max_runtime_seconds", monitor="beat") == 0
    info = [s for s in all_samples if s.name == "cronmon_monitor_info" and s.labels["monitor"] == "backup"][0]
    assert info.labels["name"] == "Nightly backup" and info.labels["timezone"] == "Europe/Berlin"
    assert info.labels["schedule"] == "0 3 * * *" and info.labels["group"] == "backups"
    assert value(text, "cronmon_store_up") == 1
    assert value(text, "cronmon_monitors", source="yaml") == 3
    assert value(text, "cronmon_http_requests_total", handler="/ping/{tail}", code="200") == 2


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is required (Debian package prometheus; `python3 dev.py test` installs it)"
    return path


async def test_promtool_finds_nothing_to_complain_about(client, clock):
    await client.get("/ping/" + "k" * 22 + "/backup/start")
    await client.get("/ping/" + "k" * 22 + "/beat")
    await client.app[CORE].store.client.hset(
        client.app[CORE].store.key("backup", "meta"), mapping={"rows_processed": "12", "bytes": "1e6"}
    )
    text = await scrape(client)
    assert value(text, "cronmon_run_meta", monitor="backup", key="rows_processed", team="data") == 12
    assert value(text, "cronmon_run_meta", monitor="backup", key="bytes") == 1e6
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )


async def test_openmetrics_is_negotiated(client):
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    body = await response.text()
    assert body.endswith("# EOF\n") and "cronmon_checkins_total{" in body


async def test_health_and_index(client):
    assert (await client.get("/-/healthy")).status == 200
    ready = await client.get("/-/ready")
    assert ready.status == 200 and await ready.text() == "OK\n"
    index = await client.get("/")
    assert "3 monitors configured" in await index.text()


async def test_reload_swaps_good_config_and_keeps_old_on_bad(client, config_path):
    key = "k" * 22
    config_path.write_text(CONFIG + "  - {id: added, schedule: {interval: 1m}}\n")
    response = await client.post("/-/reload")
    assert response.status == 200 and "4 monitors" in await response.text()
    text = await scrape(client)
    assert value(text, "cronmon_config_last_reload_successful") == 1
    assert value(text, "cronmon_monitor_status", monitor="added", status="new") == 1
    assert (await client.get(f"/ping/{key}/added")).status == 200

    config_path.write_text(CONFIG.replace("timezone: Europe/Berlin", "timezone: Mars/Olympus"))
    response = await client.post("/-/reload")
    assert response.status == 500
    body = await response.text()
    assert "keeping the running one" in body and "unknown time zone 'Mars/Olympus'" in body
    text = await scrape(client)
    assert value(text, "cronmon_config_last_reload_successful") == 0
    # the old config keeps running, including the monitor the bad file dropped
    assert value(text, "cronmon_monitor_status", monitor="added", status="up") == 1
    assert (await client.get(f"/ping/{key}/added")).status == 200
    assert (await client.get("/-/reload")).status == 405


async def test_reload_of_schedule_change_resyncs(client, config_path, clock):
    key = "k" * 22
    # Let the background sweeper finish its start-up pass; it then sleeps
    # (interval 3600s in tests) and this test drives the sweeps itself.
    await wait_for(lambda: client.app[SWEEPER].passes >= 1)
    await client.get(f"/ping/{key}/beat")
    config_path.write_text(CONFIG.replace("interval: 5m", "interval: 1m"))
    assert (await client.post("/-/reload")).status == 200
    assert client.app[CORE].registry.monitors["beat"].schedule.seconds == 60
    # The sweeper re-bases changed monitors on its next tick: the new
    # 1-minute schedule counts from then, not from the last arrival.
    clock.advance(30)
    await client.app[SWEEPER].run_once()
    text = await scrape(client)
    assert value(text, "cronmon_next_expected_timestamp_seconds", monitor="beat") == T0 + 30 + 60


async def test_text_encoder_matches_prometheus_client(client, clock):
    """The fast text encoder and prometheus_client's OpenMetrics encoder
    must carry exactly the same samples."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    key = "k" * 22
    await client.get(f"/ping/{key}/backup/start")
    clock.advance(3)
    await client.post(f"/ping/{key}/backup/fail", data='quote " and \\ backslash')
    text = await scrape(client)
    openmetrics = await (await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})).text()

    def normalized(samples_):
        return sorted(
            (s.name.removesuffix("_total"), tuple(sorted(s.labels.items())), s.value)
            for s in samples_
            if not s.name.endswith("_created") and not s.name.startswith(("process_", "cronmon_http_"))
        )

    om = [s for family in parse_openmetrics(openmetrics) for s in family.samples]
    assert normalized(samples(text)) == normalized(om)
    assert len(normalized(om)) > 100


async def test_a_default_monitor_costs_at_most_30_series(client, clock):
    """The series budget: opt-in sets stay out unless asked for, by the
    monitor (backup) or its YAML group (beat)."""
    key = "k" * 22
    for monitor in ("plain", "beat", "backup"):
        await client.get(f"/ping/{key}/{monitor}/start")
        clock.advance(2)
        await client.get(f"/ping/{key}/{monitor}")
    text = await scrape(client)

    def series(monitor):
        return [s for s in samples(text) if s.labels.get("monitor") == monitor]

    plain = {s.name for s in series("plain")}
    assert len(series("plain")) <= 30
    assert not plain & {"cronmon_checkins_total", "cronmon_last_outcome", "cronmon_run_duration_seconds_bucket"}
    for monitor in ("beat", "backup"):
        names = {s.name for s in series(monitor)}
        assert {"cronmon_checkins_total", "cronmon_last_outcome", "cronmon_run_duration_seconds_bucket"} <= names
        assert len(series(monitor)) == len(series("plain")) + 5 + 6 + 19


async def test_gzip_when_asked(client, clock):
    import gzip

    await client.get("/ping/" + "k" * 22 + "/plain")
    sweeper = client.app[SWEEPER]
    await wait_for(lambda: sweeper.passes >= 1)  # its start-up resync changes what is shown
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"}, auto_decompress=False)
    assert "Content-Encoding" not in plain.headers
    text = await plain.read()
    zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert zipped.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(await zipped.read())
    # Same samples either way (self metrics such as request counts move between scrapes).
    monitor_part = [line for line in body.decode().splitlines() if 'monitor="' in line]
    assert monitor_part == [line for line in text.decode().splitlines() if 'monitor="' in line]
    assert len(monitor_part) > 50


async def test_monitor_page_and_link(client, clock):
    key = "k" * 22
    await client.get(f"/ping/{key}/backup/start")
    clock.advance(5)
    await client.post(f"/ping/{key}/backup/2", data="secret-looking log body")
    page = await client.get("/monitors/backup")
    body = await page.json()
    assert body["status"] == "failed" and body["last_exit_code"] == 2
    assert body["labels"] == {"team": "data", "severity": "critical"}
    assert [e["kind"] for e in body["recent_events"]] == ["fail", "start"]
    assert body["recent_events"][0]["has_log"] is True
    assert "secret-looking" not in await page.text()
    assert (await client.get("/monitors/nope")).status == 404
    text = await scrape(client)
    info = [s for s in samples(text) if s.name == "cronmon_monitor_info" and s.labels["monitor"] == "backup"][0]
    assert info.labels["url"].endswith("/monitors/backup")
    assert value(text, "cronmon_last_outcome", monitor="backup", outcome="error") == 1
    assert value(text, "cronmon_last_outcome", monitor="backup", outcome="ok") == 0
    assert value(text, "cronmon_last_outcome", monitor="beat", outcome="ok") == 0


async def test_a_burst_of_reload_requests_folds_into_one_more_reload(client, monkeypatch):
    """SIGHUP x 10 while a reload runs: the one in progress plus one more."""
    import asyncio

    from exporter.web.keys import RELOADER

    reloader = client.app[RELOADER]
    loads = []
    original = reloader.load

    def counted(*args):
        loads.append(1)
        return original(*args)

    monkeypatch.setattr(reloader, "load", counted)
    async with reloader._lock:  # a reload "in progress"
        for _ in range(10):
            reloader.request_reload()
        await asyncio.sleep(0.05)
    for _ in range(100):
        if not reloader._requests:
            break
        await asyncio.sleep(0.02)
    assert loads == [1]
    reloader.request_reload()  # a later signal gets its own reload
    for _ in range(100):
        if len(loads) == 2 and not reloader._requests:
            break
        await asyncio.sleep(0.02)
    assert loads == [1, 1]


async def test_a_reload_of_unchanged_files_parses_nothing_but_reads_secrets_again(client, config_path, monkeypatch):
    """An unchanged reload (config management signals often) parses
    nothing and swaps nothing: the running registry stays, so the sweeper
    re-checks no fingerprint and the scrape cache re-renders nothing. A
    rotated secret with the same files is swapped in."""
    import exporter.reloader as reloader_module
    from exporter.web.keys import CORE, RELOADER, SWEEPER

    parses = []
    original = reloader_module.parse_in_child

    async def counted(*args, **kwargs):
        parses.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(reloader_module, "parse_in_child", counted)
    core, sweeper = client.app[CORE], client.app[SWEEPER]
    swaps: list[object] = []
    client.app[RELOADER].on_swap.append(swaps.append)
    assert (await client.post("/-/reload")).status == 200  # the first may swap: the key is now read back
    running, swaps[:] = core.registry, []
    sweeper.needs_resync = False
    assert (await client.post("/-/reload")).status == 200
    assert parses == []  # same bytes as at start-up
    assert swaps == [] and core.registry is running and not sweeper.needs_resync
    monkeypatch.setenv("CRONMON_PING_KEY", "r" * 22)  # a rotated key
    assert (await client.post("/-/reload")).status == 200
    assert parses == [] and len(swaps) == 1 and sweeper.needs_resync
    assert (await client.get("/ping/" + "r" * 22 + "/beat")).status == 200
    assert (await client.get("/ping/" + "k" * 22 + "/beat")).status == 404
    config_path.write_text(CONFIG + "  - {id: added, schedule: {interval: 1m}}\n")
    assert (await client.post("/-/reload")).status == 200
    assert parses == [1]


async def test_reload_over_http_needs_the_lifecycle_flag(aiohttp_client, app_settings, config_path, monkeypatch, clock):
    """As Prometheus: POST /-/reload is unauthenticated and costly, so it
    answers only with --web.enable-lifecycle; SIGHUP always works."""
    monkeypatch.setenv("CRONMON_PING_KEY", "k" * 22)
    client = await aiohttp_client(create_app(app_settings(config_path), clock=clock))
    config_path.write_text(CONFIG + "  - {id: added, schedule: {interval: 1m}}\n")
    response = await client.post("/-/reload")
    assert response.status == 403 and "--web.enable-lifecycle" in await response.text()
    assert "added" not in client.app[CORE].registry.monitors


async def test_the_monitor_page_shows_what_a_job_sent_only_to_a_token_that_can_see_it(
    aiohttp_client, app_settings, tmp_path, monkeypatch, clock
):
    monkeypatch.setenv("CRONMON_PING_KEY", "k" * 22)
    monkeypatch.setenv("T_A", "token-a")
    monkeypatch.setenv("T_B", "token-b")
    path = write_config(
        tmp_path,
        """
        api_tokens:
          - {name: a, env: T_A, owner: team-a, scope: write}
          - {name: b, env: T_B, owner: team-b, scope: read}
    """,
    )
    client = await aiohttp_client(create_app(app_settings(path), clock=clock))
    created = await client.post(
        "/api/v1/monitors",
        json={"id": "secret-job", "schedule": {"interval": "1h"}},
        headers={"Authorization": "Bearer token-a"},
    )
    assert created.status == 201
    ping_url = (await created.json())["monitor"]["ping_url"]
    failed = await client.post(
        ping_url.replace(client.app[SETTINGS].base_url, "") + "/1",
        data=b"db password is hunter2",
        headers={"User-Agent": "backup-host-17"},
    )
    assert failed.status == 200

    async def event(headers: dict) -> dict:
        page = await client.get("/monitors/secret-job", headers=headers)
        assert page.status == 200
        body = await page.json()
        assert body["status"] == "failed"  # the state is public, as in /metrics
        return body["recent_events"][0]

    public = await event({})
    assert public["kind"] == "fail" and public["exit_code"] == 1
    assert not {"ip", "ua", "message", "metadata"} & set(public) and public["has_log"] is True
    assert not {"ip", "ua"} & set(await event({"Authorization": "Bearer token-b"}))  # another team's token
    owner = await event({"Authorization": "Bearer token-a"})
    assert owner["ua"] == "backup-host-17" and owner["ip"] == "127.0.0.1" and owner["has_log"] is True
    wrong = await client.get("/monitors/secret-job", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401


async def test_every_route_is_counted_without_a_middleware_chain(client):
    """Request metrics come from each route's handler, wrapped once when
    the route is added (app._Router), not from a middleware run for every
    request (which cost 16 µs of CPU a ping): no route escapes the wrap,
    and answers no route gives (404, 405) are counted as "unmatched"."""
    app = client.app
    assert list(app.middlewares) == []
    routes = list(app.router.routes())
    assert len(routes) > 50
    for route in routes:
        assert getattr(route.handler, "instrumented_as", None) == route.resource.canonical, route
        assert route.handler.__wrapped__ is not route.handler  # the route's own handler stays reachable
    assert (await client.get("/no/such/path")).status == 404
    assert (await client.delete("/metrics")).status == 405
    assert (await client.get("/ping/" + "k" * 22 + "/beat")).status == 200
    text = await scrape(client)
    assert value(text, "cronmon_http_requests_total", handler="unmatched", code="404") == 1
    assert value(text, "cronmon_http_requests_total", handler="unmatched", code="405") == 1
    assert value(text, "cronmon_http_requests_total", handler="/ping/{tail}", code="200") == 1
    assert value(text, "cronmon_http_request_duration_seconds_count", handler="unmatched") == 2
