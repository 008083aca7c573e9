"""A simulated year of cron and interval jobs against cronmon's real Core,
Store, Lua scripts and sweep path on a real Redis, with an injected clock.

When each cron job runs comes from an oracle that knows cronie's DST rules
and does not use croniter (tests/test_schedule.py::_cronie_slots). Jobs
check in at their run time plus up to a minute of jitter; one run in seven
is skipped, and in every other DST window the run nearest the change too
(so a daily job skipped on the day of the change must be missed once).
Sweeps happen right after every deadline has passed (as the sweeper's
one-second tick would). The invariant is the issue's: 0 false
missed, exactly 1 missed per skipped run, in every zone and schedule.

CI samples 1.5 days before to 1 day after every DST change of 2027 in
each zone plus two ordinary 2-day windows (about 150 monitors, 15 s). The
whole year, day by day:

    CRONMON_YEAR_SIMULATION=full .venv/bin/python -m pytest tests/test_year_simulation.py -q -s
"""

from __future__ import annotations

import os
import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from exporter.core import Core
from exporter.model import CLOCK_SKEW_ALLOWANCE, CheckIn, Kind

from .conftest import Clock, registry_from, write_config
from .test_schedule import _cronie_slots

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "America/Santiago", "Pacific/Chatham", "UTC"]
CRON = ["30 2 * * *", "0 1 * * *", "30 * * * *", "*/15 2 * * *", "0 * * * *", "0 3 * * *"]
INTERVALS = [3600, 86400]
GRACE = 300.0
JITTER = 60.0
SKIP_EVERY = 7
DAY = 86400.0
FULL = os.environ.get("CRONMON_YEAR_SIMULATION") == "full"


def windows(zone: str) -> list[tuple[float, float, float | None]]:
    """(start, end, the DST change in it or None) of the simulated
    stretches of 2027 in `zone`."""
    tz = ZoneInfo(zone)
    year_start, year_end = datetime(2027, 1, 1, tzinfo=tz).timestamp(), datetime(2028, 1, 1, tzinfo=tz).timestamp()
    if FULL:
        return [(year_start, year_end, None)]
    found: list[tuple[float, float, float | None]] = []
    t = year_start
    while t < year_end:
        if datetime.fromtimestamp(t, tz).utcoffset() != datetime.fromtimestamp(t + 3600, tz).utcoffset():
            # From 1.5 days before: a daily job's run on the day of the
            # change is not its first in the window (a first run cannot be
            # missed: nothing was expected before it).
            found.append((t - 1.5 * DAY, t + DAY, t + 3600))
        t += 3600
    for month in (2, 8):  # ordinary days
        day = datetime(2027, month, 10, tzinfo=tz).timestamp()
        found.append((day, day + 2 * DAY, None))
    return found


def runs_of(schedule: str | int, zone: str, start: float, end: float, rng: random.Random) -> list[float]:
    """When the job actually runs (before jitter): cronie's times for cron;
    for an interval job, `interval` after its previous run."""
    if isinstance(schedule, str):
        return _cronie_slots(schedule, zone, start, end)
    times, t = [], start
    while t <= end:
        times.append(t)
        t += schedule + rng.uniform(0, JITTER)  # its own cadence, drifting as a real one does
    return times


async def drive(
    core: Core, clock: Clock, monitor_id: str, runs: list[float], rng: random.Random, skip_near: float | None = None
) -> tuple[int, int]:
    """Drive one monitor through its runs, skipping one in SKIP_EVERY and
    the one nearest `skip_near` (never the first): (skipped runs, recorded
    misses)."""
    monitor = core.registry.monitors[monitor_id]
    events: list[tuple[float, int]] = []
    skipped = 0
    nearest = min(range(len(runs)), key=lambda i: abs(runs[i] - skip_near)) if skip_near and runs else None
    for index, run in enumerate(runs):
        if index and (index % SKIP_EVERY == 0 or index == nearest):
            skipped += 1
        else:
            events.append((run + rng.uniform(0, JITTER), 1))
        # A sweep once this run's deadline has passed; + JITTER because an
        # interval job's slot follows its previous (jittered) arrival.
        events.append((run + GRACE + CLOCK_SKEW_ALLOWANCE + JITTER + 1, 0))
    for at, is_checkin in sorted(events):
        clock.now = at
        if is_checkin:
            await core.record(CheckIn(monitor_id=monitor_id, kind=Kind.SUCCESS, received_at=at))
        else:
            await core.sweep(monitor, at)
    facts = await core.store.facts(monitor_id)
    return skipped, facts.outcomes.get("missed", 0)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@pytest.mark.parametrize("zone", ZONES)
async def test_a_year_of_jobs_gives_no_false_miss_and_one_per_skipped_run(zone, store, tmp_path, capsys):
    schedules: list[str | int] = [*CRON, *INTERVALS]
    stretches = windows(zone)
    monitors, plan = [], []
    for s_index, schedule in enumerate(schedules):
        for w_index, (start, end, change) in enumerate(stretches):
            monitor_id = f"m{s_index}-{w_index}"
            if isinstance(schedule, str):
                spec = f'{{cron: "{schedule}", timezone: {zone}}}'
            else:
                spec = f"{{interval: {schedule}s}}"
            monitors.append(f"  - {{id: {monitor_id}, schedule: {spec}, grace: {int(GRACE)}s}}\n")
            # Every other DST window skips the run nearest the change.
            skip_near = change if change is not None and w_index % 2 == 0 else None
            plan.append((monitor_id, schedule, start, end, skip_near))
    registry = registry_from(write_config(tmp_path, "monitors:\n" + "".join(monitors)), tmp_path)
    clock = Clock()
    core = Core(store, registry, clock)
    rng = random.Random(zone)
    table: dict[str | int, list[int]] = {}
    for monitor_id, schedule, start, end, skip_near in plan:
        runs = runs_of(schedule, zone, start, end, rng)
        skipped, missed = await drive(core, clock, monitor_id, runs, rng, skip_near)
        totals = table.setdefault(schedule, [0, 0, 0])
        totals[0] += len(runs)
        totals[1] += skipped
        totals[2] += missed
    with capsys.disabled():
        print(f"\n{zone}: schedule, runs, skipped (expected missed), recorded missed")
        for schedule, (runs, skipped, missed) in table.items():
            name = schedule if isinstance(schedule, str) else f"interval {schedule}s"
            print(f"  {name:>16}  {runs:6}  {skipped:5}  {missed:5}")
    wrong = {schedule: totals for schedule, totals in table.items() if totals[1] != totals[2]}
    assert wrong == {}, f"{zone}: schedule -> [runs, skipped, missed]: {wrong}"
