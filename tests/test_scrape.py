"""The scrape cache: incremental /metrics must equal a full rebuild.

Random check-ins, sweeps, clock jumps, reloads and API monitor changes go
through two replicas (two Cores, two Stores, one Redis); after each step a
replica's incremental scrape is compared, series for series, with a
rendering from scratch of every monitor's facts read fresh from Redis.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import render_full
from exporter.config import parse_monitor_spec
from exporter.core import Core
from exporter.errors import MonitorExists, UnknownMonitor
from exporter.model import CheckIn, Kind
from exporter.scrape import Scraper
from exporter.store import Store, StoreLimits, connect
from exporter.sweeper import Sweeper

from .conftest import T0, Clock, registry_from, write_config

BASE = "http://cronmon.test"
IDS = [f"m{i}" for i in range(7)]


def yaml_for(variant: int) -> str:
    """A config that differs by variant: monitors come and go, change
    grace, labels, schedules and opt-in series."""
    rng = random.Random(variant)
    lines = ["groups:", "  - {name: g1, metrics: [checkins]}", "monitors:"]
    for i, monitor_id in enumerate(IDS):
        if rng.random() < 0.2:
            continue  # removed in this variant
        schedule = (
            f"{{interval: {rng.choice([60, 300])}s}}" if i % 2 else
            f'{{cron: "{rng.choice(["*/5 * * * *", "0 * * * *"])}", timezone: Europe/Berlin}}'
        )
        options = rng.choice(["[]", "[duration_histogram]", "[last_outcome, checkins]"])
        lines.append(
            f"  - {{id: {monitor_id}, schedule: {schedule}, grace: {rng.choice([30, 90])}s, "
            f"max_runtime: 200s, labels: {{team: t{rng.randint(0, 2)}}}, group: g{i % 3}, metrics: {options}, "
            f"meta_rules: ['rows < 1'], paused: {str(rng.random() < 0.1).lower()}}}"
        )
    return "\n".join(lines) + "\n"


def series(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, f"series twice: {key}"
            out[key] = sample.value
    return out


operation = st.one_of(
    st.tuples(st.just("checkin"), st.integers(0, 1), st.sampled_from(IDS + ["api1", "api2"]),
              st.sampled_from(["start", "success", "fail", "log", "success-meta"]), st.booleans()),
    st.tuples(st.just("advance"), st.integers(1, 900)),
    st.tuples(st.just("sweep"), st.integers(0, 1)),
    st.tuples(st.just("reload"), st.integers(0, 1), st.integers(0, 5)),
    st.tuples(st.just("api"), st.integers(0, 1), st.sampled_from(["api1", "api2"]),
              st.sampled_from(["create", "update", "delete"])),
    st.tuples(st.just("sync"), st.integers(0, 1)),
    st.tuples(st.just("scrape"), st.integers(0, 1)),
)


async def scenario(redis_url: str, directory, ops: list) -> int:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    clock = Clock(T0)
    stores = [Store(connect(redis_url), prefix, StoreLimits()) for _ in range(2)]
    config = write_config(directory, yaml_for(0), f"{prefix}.yaml")
    cores = [Core(store, registry_from(config, directory), clock) for store in stores]
    sweepers = [Sweeper(core, clock=clock) for core in cores]
    scrapers = [Scraper(core, BASE, shard_size=2) for core in cores]
    run_ids: list[str] = []
    compared = 0
    try:
        for op in ops:
            name, *args = op
            if name == "checkin":
                replica, monitor_id, kind, with_rid = args
                meta = {"rows": 0} if kind == "success-meta" else {}
                kind = Kind(kind.removesuffix("-meta"))
                rid = None
                if with_rid:
                    if kind is Kind.START or not run_ids:
                        run_ids.append(str(uuid.uuid4()))
                    rid = run_ids[-1]
                try:
                    await cores[replica].record(CheckIn(monitor_id, kind, clock.now, run_id=rid, meta=meta))
                except UnknownMonitor:
                    pass
            elif name == "advance":
                clock.advance(args[0])
            elif name == "sweep":
                await sweepers[args[0]].run_once()
            elif name == "reload":
                replica, variant = args
                config.write_text(yaml_for(variant))
                cores[replica].swap(registry_from(config, directory, now=clock.now))
                await cores[replica].resync_all(clock.now)
            elif name == "api":
                replica, monitor_id, action = args
                core = cores[replica]
                spec = parse_monitor_spec(
                    {"id": monitor_id, "schedule": {"interval": f"{random.Random(len(ops)).choice([60, 120])}s"},
                     "labels": {"team": action}, "metrics": ["checkins"] if action == "update" else []},
                    clock.now,
                )
                current = core.registry.monitors.get(monitor_id)
                try:
                    if action == "create":
                        await core.create_monitor(spec, "owner", None)
                    elif current is not None and not current.from_yaml and action == "update":
                        await core.update_monitor(current, spec)
                    elif current is not None and not current.from_yaml:
                        await core.delete_monitor(current)
                except (MonitorExists, UnknownMonitor):
                    pass
            elif name == "sync":
                await cores[args[0]].sync_api_monitors()
            else:
                replica = args[0]
                assert await scrapers[replica].refresh()
                incremental = scrapers[replica].cache.body(b"", gzip=False).decode()
                zipped = gzip.decompress(scrapers[replica].cache.body(b"", gzip=True)).decode()
                monitors = cores[replica].registry.monitors
                facts = await stores[replica].snapshot(monitors)
                full = render_full(monitors, facts, clock.now, BASE)
                assert zipped == incremental
                assert series(incremental) == series(full)
                compared += 1
    finally:
        for store in stores:
            await store.close()
    return compared


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=5, max_size=60).map(lambda ops: [*ops, ("scrape", 0), ("scrape", 1)]))
def test_incremental_scrape_equals_full_rebuild(redis_server, tmp_path_factory, ops):
    directory = tmp_path_factory.mktemp("scrape")
    assert asyncio.run(scenario(redis_server.url, directory, ops)) >= 2


def pytest_generate_tests(metafunc):
    """The change feed is sharded on a cluster: the walks run there too."""
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["single", "cluster"], indirect=True)


def test_a_long_random_walk_through_two_replicas(backend, tmp_path_factory):
    """One long seeded walk (the property test's examples are short)."""
    rng = random.Random(1234)
    ops: list = []
    kinds = ["start", "success", "fail", "log", "success-meta"]
    for _ in range(400):
        roll = rng.random()
        if roll < 0.45:
            ops.append(("checkin", rng.randint(0, 1), rng.choice(IDS + ["api1", "api2"]), rng.choice(kinds),
                        rng.random() < 0.5))
        elif roll < 0.6:
            ops.append(("advance", rng.randint(1, 600)))
        elif roll < 0.7:
            ops.append(("sweep", rng.randint(0, 1)))
        elif roll < 0.75:
            ops.append(("reload", rng.randint(0, 1), rng.randint(0, 5)))
        elif roll < 0.82:
            ops.append(("api", rng.randint(0, 1), rng.choice(["api1", "api2"]),
                        rng.choice(["create", "update", "delete"])))
        elif roll < 0.88:
            ops.append(("sync", rng.randint(0, 1)))
        else:
            ops.append(("scrape", rng.randint(0, 1)))
    ops += [("scrape", 0), ("scrape", 1)]
    directory = tmp_path_factory.mktemp("walk")
    assert asyncio.run(scenario(backend.url, directory, ops)) > 40


def test_an_unchanged_scrape_renders_nothing(backend, tmp_path_factory):
    """What changed, not what exists: a second scrape with no new fact and
    no deadline reached re-renders no monitor; one check-in re-renders one."""

    async def run() -> tuple[int, int, int]:
        directory = tmp_path_factory.mktemp("unchanged")
        prefix = f"t{uuid.uuid4().hex[:12]}"
        text = "monitors:\n" + "".join(f"  - {{id: m{i}, schedule: {{interval: 1h}}}}\n" for i in range(50))
        clock = Clock(T0)
        store = Store(connect(backend.url), prefix, StoreLimits())
        core = Core(store, registry_from(write_config(directory, text), directory), clock)
        scraper = Scraper(core, BASE, shard_size=8)
        try:
            for i in range(50):
                await core.record(CheckIn(f"m{i}", Kind.SUCCESS, clock.now))
            await scraper.refresh()
            first = scraper.cache.rendered_last
            clock.advance(60)
            await scraper.refresh()
            second = scraper.cache.rendered_last
            await core.record(CheckIn("m7", Kind.SUCCESS, clock.now))
            await scraper.refresh()
            return first, second, scraper.cache.rendered_last
        finally:
            await store.close()

    assert asyncio.run(run()) == (50, 0, 1)


def test_time_alone_re_renders_a_monitor_at_its_deadline(redis_server, tmp_path_factory):
    async def run() -> list[str]:
        directory = tmp_path_factory.mktemp("deadline")
        prefix = f"t{uuid.uuid4().hex[:12]}"
        clock = Clock(T0)
        store = Store(connect(redis_server.url), prefix, StoreLimits())
        config = write_config(directory, "monitors:\n  - {id: beat, schedule: {interval: 60s}, grace: 30s}\n")
        core = Core(store, registry_from(config, directory), clock)
        scraper = Scraper(core, BASE)
        seen = []
        try:
            await core.record(CheckIn("beat", Kind.SUCCESS, clock.now))
            for step in (10, 55, 30):  # up, late (past 60 s), down (past 90 s)
                clock.advance(step)
                await scraper.refresh()
                samples = series(scraper.cache.body(b"", gzip=False).decode())
                seen.extend(
                    dict(labels)["status"] for (name, labels), value in samples.items()
                    if name == "cronmon_monitor_status" and value == 1
                )
        finally:
            await store.close()
        return seen

    assert asyncio.run(run()) == ["up", "late", "down"]
