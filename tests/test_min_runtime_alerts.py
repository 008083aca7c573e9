"""DESIGN.md's two monitor fields built late: `min_runtime` (a success that
ran shorter is a silent failure: the too-fast job that did nothing) and the
per-monitor `alerts:` on/off switches. Config, the core against a real
Redis, /metrics, the native API and the bridge; the shipped rules see both
in tests/test_e2e_prometheus.py (real Prometheus) and the promtool tests."""

from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.bridge import firing_alerts
from exporter.config import ConfigError, load_config
from exporter.evaluate import evaluate
from exporter.model import CheckIn, Kind, Outcome
from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import T0, app_dump, write_config

QUICK = """
monitors:
  - id: job
    schedule: {interval: 1h}
    min_runtime: 30s
    max_runtime: 10m
  - id: plain
    schedule: {interval: 1h}
"""


def ci(kind: Kind, at: float, monitor_id: str = "job", **kw) -> CheckIn:
    return CheckIn(monitor_id=monitor_id, kind=kind, received_at=at, **kw)


async def outcome_of_last_run(core, monitor_id: str = "job") -> tuple[Outcome | None, dict]:
    facts = await core.store.facts(monitor_id)
    [entry] = [e for e in await core.store.history(monitor_id, 0, 1)]
    return facts.last_outcome, entry


class TestMinRuntime:
    async def test_a_paired_run_shorter_than_min_runtime_is_a_silent_failure(self, make_core):
        core = make_core(QUICK)
        await core.record(ci(Kind.START, T0))
        await core.record(ci(Kind.SUCCESS, T0 + 3))
        outcome, entry = await outcome_of_last_run(core)
        assert outcome is Outcome.SILENT_FAILURE
        assert entry["outcome"] == "silent_failure" and entry["too_short"] == 30 and entry["duration"] == 3
        facts = await core.store.facts("job")
        # Not bad for the failure threshold (it has an alert of its own), as a broken meta rule.
        assert facts.consecutive_bad == 0 and facts.outcomes == {"silent_failure": 1}
        assert facts.last_success == T0 + 3

    async def test_a_reported_duration_is_judged_too(self, make_core):
        core = make_core(QUICK)
        await core.record(ci(Kind.SUCCESS, T0, duration=29.5))
        assert (await outcome_of_last_run(core))[0] is Outcome.SILENT_FAILURE
        await core.record(ci(Kind.SUCCESS, T0 + 3600, duration=30))
        outcome, entry = await outcome_of_last_run(core)
        assert outcome is Outcome.OK and "too_short" not in entry  # exactly min_runtime is long enough

    async def test_long_enough_unknown_or_failed_runs_are_not_changed(self, make_core):
        core = make_core(QUICK)
        await core.record(ci(Kind.START, T0))
        await core.record(ci(Kind.SUCCESS, T0 + 31))
        assert (await outcome_of_last_run(core))[0] is Outcome.OK
        # A plain ping has no duration: nothing to judge.
        await core.record(ci(Kind.SUCCESS, T0 + 3600))
        outcome, entry = await outcome_of_last_run(core)
        assert outcome is Outcome.OK and "duration" not in entry
        # A quick failure is a failure; a quick warning stays a warning.
        await core.record(ci(Kind.START, T0 + 7200))
        await core.record(ci(Kind.FAIL, T0 + 7201))
        assert (await outcome_of_last_run(core))[0] is Outcome.ERROR
        await core.record(ci(Kind.WARNING, T0 + 10800, duration=1))
        assert (await outcome_of_last_run(core))[0] is Outcome.WARNING
        # A monitor without min_runtime: a one-second success is ok.
        await core.record(ci(Kind.SUCCESS, T0, monitor_id="plain", duration=1))
        assert (await outcome_of_last_run(core, "plain"))[0] is Outcome.OK

    async def test_the_bridge_fires_silent_failure_for_a_too_short_run(self, make_core):
        core = make_core(QUICK)
        await core.record(ci(Kind.SUCCESS, T0, duration=2))
        monitor = core.registry.monitors["job"]
        facts = await core.store.facts("job")
        assert firing_alerts(monitor, facts, evaluate(monitor, facts, T0 + 1)) == ["CronJobSilentFailure"]
        muted = replace(monitor, muted=frozenset({"CronJobSilentFailure"}))
        assert firing_alerts(muted, facts, evaluate(muted, facts, T0 + 1)) == []


@pytest.mark.parametrize(
    "fields, words",
    [
        ("min_runtime: 0s", "must be greater than 0"),
        ("min_runtime: soon", "min_runtime"),
        ("min_runtime: 10m\n    max_runtime: 10m", "min_runtime (600s) must be shorter than max_runtime (600s)"),
        ("alerts: {missed: false}\n    mute: [failed]", "give alerts: (on/off switches) or mute: (a list), not both"),
        ("alerts: {long: false}", "field \"alerts.long\": unknown key (did you mean 'too_long'?"),
        ("alerts: {missed: maybe}", "missed"),
        ("alerts: [missed]", "alerts"),
    ],
)
def test_bad_min_runtime_or_alerts_name_the_field(tmp_path, fields, words):
    lines = "".join(f"    {line}\n" for line in fields.split("\n    "))
    path = write_config(tmp_path, f"monitors:\n  - id: job\n    schedule: {{interval: 1h}}\n{lines}")
    with pytest.raises(ConfigError) as raised:
        load_config(path, now=T0)
    message = str(raised.value)
    assert "job" in message and words in message, message


def test_alert_switches_mute_what_is_off(tmp_path):
    path = write_config(tmp_path, """
        monitors:
          - id: switched
            schedule: {interval: 1h}
            alerts: {missed: false, too_long: false, stuck: true}
          - id: listed
            schedule: {interval: 1h}
            mute: [failed]
          - id: default
            schedule: {interval: 1h}
            alerts: {}
        """)
    config = load_config(path, now=T0)
    muted = {m.id: m.muted for m in config.monitors}
    assert muted == {
        "switched": {"CronJobMissed", "CronJobTooLong"}, "listed": {"CronJobFailed"}, "default": frozenset(),
    }


APP_CONFIG = """
api_tokens:
  - {name: admin, env: T_ADMIN, owner: ops, scope: write}
monitors:
  - id: quick
    schedule: {interval: 1h}
    min_runtime: 1m
    alerts: {failed: false, silent_failure: true}
  - id: plain
    schedule: {interval: 1h}
"""
ADMIN = {"Authorization": "Bearer admin-secret-0123456789"}


@pytest.fixture
async def client(aiohttp_client, app_settings, tmp_path, monkeypatch, clock):
    monkeypatch.setenv("T_ADMIN", "admin-secret-0123456789")
    monkeypatch.setenv("CRONMON_PING_KEY", "k" * 22)
    return await aiohttp_client(create_app(app_settings(write_config(tmp_path, APP_CONFIG)), clock=clock))


def samples(text: str, name: str) -> dict[tuple, float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) for s in family.samples if s.name == name
    }


async def test_metrics_show_min_runtime_and_the_switches(client, clock):
    """cronmon_min_runtime_seconds only where it is set (the default series
    budget stays), cronmon_alert_muted for a switch that is off, and a ping
    pair 10 s apart sets cronmon_silent_failure, which CronJobSilentFailure reads."""
    key = "k" * 22
    assert (await client.get(f"/ping/{key}/quick/start")).status == 200
    clock.advance(10)
    assert (await client.get(f"/ping/{key}/quick")).status == 200
    text = await (await client.get("/metrics")).text()
    assert samples(text, "cronmon_min_runtime_seconds") == {(("monitor", "quick"),): 60}
    assert samples(text, "cronmon_alert_muted") == {(("alert", "CronJobFailed"), ("monitor", "quick")): 1}
    assert samples(text, "cronmon_silent_failure") == {(("monitor", "plain"),): 0, (("monitor", "quick"),): 1}


async def test_the_native_api_takes_and_shows_min_runtime_and_alerts(client):
    body = {"id": "api-quick", "schedule": {"interval": 3600}, "min_runtime": 45,
            "alerts": {"missed": False, "too_long": False}}
    created = await client.post("/api/v1/monitors", json=body, headers=ADMIN)
    assert created.status == 201, await created.text()
    shown = (await created.json())["monitor"]
    assert shown["min_runtime"] == 45
    assert shown["alerts"] == {"missed": False, "failed": True, "stuck": True, "too_long": False,
                               "silent_failure": True, "probe_down": True}
    monitor = client.app[CORE].registry.monitors["api-quick"]
    assert monitor.min_runtime == 45 and monitor.muted == {"CronJobMissed", "CronJobTooLong"}
    yaml_shown = (await (await client.get("/api/v1/monitors/quick", headers=ADMIN)).json())["monitor"]
    assert yaml_shown["min_runtime"] == 60 and yaml_shown["alerts"]["failed"] is False
    before = await app_dump(client)
    for bad, words in (({"min_runtime": -1}, "min_runtime"), ({"alerts": {"sometimes": False}}, "alerts"),
                       ({"min_runtime": 3600, "max_runtime": 60}, "shorter than max_runtime")):
        refused = await client.post("/api/v1/monitors", json={**body, "id": "bad-one", **bad}, headers=ADMIN)
        assert refused.status == 400 and words in await refused.text()
    assert await app_dump(client) == before


async def test_patching_alerts_replaces_a_stored_mute(client):
    """One setting, two spellings: a PATCH of either replaces the other."""
    body = {"id": "patched", "schedule": {"interval": 3600}, "mute": ["missed"]}
    assert (await client.post("/api/v1/monitors", json=body, headers=ADMIN)).status == 201
    patched = await client.patch("/api/v1/monitors/patched", json={"alerts": {"failed": False}}, headers=ADMIN)
    assert patched.status == 200, await patched.text()
    assert client.app[CORE].registry.monitors["patched"].muted == {"CronJobFailed"}
    back = await client.patch("/api/v1/monitors/patched", json={"mute": ["stuck"]}, headers=ADMIN)
    assert back.status == 200 and client.app[CORE].registry.monitors["patched"].muted == {"CronJobStuck"}
    both = await client.patch("/api/v1/monitors/patched", json={"mute": ["stuck"], "alerts": {}}, headers=ADMIN)
    assert both.status == 400 and "not both" in await both.text()
