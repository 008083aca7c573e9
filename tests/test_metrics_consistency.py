"""Series that must agree within one scrape (issue 13's small ones):
cronmon_consecutive_failures and cronmon_runs_total{outcome="missed"} move
together, in the same scrape, when a miss is recorded."""

from prometheus_client.parser import text_string_to_metric_families

from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import write_config

CONFIG = """
monitors:
  - id: job
    schedule: {interval: 1h}
    grace: 1m
"""


def values(text: str) -> dict[str, float]:
    wanted = {"cronmon_consecutive_failures", "cronmon_runs_total", "cronmon_up"}
    return {
        sample.name if sample.name != "cronmon_runs_total" else "missed_total": sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name in wanted and sample.labels.get("monitor") == "job"
        and sample.labels.get("outcome", "missed") == "missed"
    }


async def test_consecutive_failures_never_runs_ahead_of_the_missed_counter(aiohttp_client, app_settings, tmp_path,
                                                                           monkeypatch, clock):
    monkeypatch.setenv("CRONMON_PING_KEY", "k" * 22)
    client = await aiohttp_client(create_app(app_settings(write_config(tmp_path, CONFIG)), clock=clock))
    assert (await client.get(f"/ping/{'k' * 22}/job")).status == 200
    clock.advance(3600 + 60 + 10)  # the next slot's deadline passed; no sweep yet (tests drive sweeps)
    pending = values(await (await client.get("/metrics")).text())
    # Down already (the status counts the pending miss), but neither count has moved.
    assert pending == {"cronmon_up": 0, "cronmon_consecutive_failures": 0, "missed_total": 0}
    core = client.app[CORE]
    assert await core.sweep(core.registry.monitors["job"], clock()) == 1
    recorded = values(await (await client.get("/metrics")).text())
    assert recorded == {"cronmon_up": 0, "cronmon_consecutive_failures": 1, "missed_total": 1}


async def test_last_exit_code_is_minus_one_when_the_last_completion_reported_none(aiohttp_client, app_settings,
                                                                               tmp_path, monkeypatch, clock):
    """0 means the job said it exited 0; -1 that the last completion said
    nothing (a plain ping), not an earlier run's code."""
    monkeypatch.setenv("CRONMON_PING_KEY", "k" * 22)
    client = await aiohttp_client(create_app(app_settings(write_config(tmp_path, CONFIG)), clock=clock))

    async def exit_code() -> float:
        text = await (await client.get("/metrics")).text()
        [value] = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "cronmon_last_exit_code" and s.labels["monitor"] == "job"]
        return value

    assert await exit_code() == -1  # nothing completed yet
    for path, expected in (("job/3", 3), ("job", -1), ("job/0", 0), ("job?exit_code=1", 1), ("job/start", 1),
                           ("job", -1)):
        assert (await client.get(f"/ping/{'k' * 22}/{path}")).status == 200
        assert await exit_code() == expected, path
        clock.advance(60)
