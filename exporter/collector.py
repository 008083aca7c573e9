"""Metric families for /metrics, built fresh per scrape from a snapshot.

The snapshot (facts of every monitor, read from Redis in one pipelined
round trip by the web handler) is taken *before* collection, so collect()
does no I/O at all. Every series is emitted on every scrape, with 0 for
"never happened", so alert expressions never see a series vanish.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from . import __version__
from .evaluate import evaluate
from .model import CronSchedule, Facts, Kind, Monitor, Outcome, Status
from .store import DURATION_BUCKETS

# Statuses for which cronmon_up is 0.
_NOT_UP = frozenset({Status.DOWN, Status.FAILED, Status.STUCK})


@dataclass(frozen=True)
class Snapshot:
    now: float
    monitors: tuple[Monitor, ...]
    facts: Mapping[str, Facts]
    store_up: bool
    reload_successful: bool
    reload_success_timestamp: float
    # Base of the monitor links in cronmon_monitor_info{url} (--public-url).
    base_url: str = ""


def _family(name: str, doc: str, typ: str, unit: str = "") -> Metric:
    return Metric(name, doc, typ, unit)


class SnapshotCollector:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self_metrics(self.snapshot)
        if self.snapshot.store_up:
            yield from monitor_metrics(self.snapshot)


def self_metrics(snap: Snapshot) -> Iterable[Metric]:
    build = _family("cronmon_build_info", "cronmon build information; always 1.", "gauge")
    build.add_sample(
        "cronmon_build_info",
        {"version": __version__, "python_version": platform.python_version()},
        1,
    )
    store = _family("cronmon_store_up", "1 if the last read from Redis succeeded, else 0.", "gauge")
    store.add_sample("cronmon_store_up", {}, 1 if snap.store_up else 0)
    reload_ok = _family(
        "cronmon_config_last_reload_successful", "1 if the last config (re)load succeeded, else 0.", "gauge"
    )
    reload_ok.add_sample("cronmon_config_last_reload_successful", {}, 1 if snap.reload_successful else 0)
    reload_ts = _family(
        "cronmon_config_last_reload_success_timestamp_seconds",
        "When the config was last loaded successfully.",
        "gauge",
    )
    reload_ts.add_sample("cronmon_config_last_reload_success_timestamp_seconds", {}, snap.reload_success_timestamp)
    count = _family("cronmon_monitors", "Number of monitors configured, by source.", "gauge")
    by_source: dict[str, int] = {}
    for monitor in snap.monitors:
        kind = "api" if monitor.source == "api" else "yaml"
        by_source[kind] = by_source.get(kind, 0) + 1
    for source in ("yaml", "api"):
        count.add_sample("cronmon_monitors", {"source": source}, by_source.get(source, 0))
    return (build, store, reload_ok, reload_ts, count)


def monitor_metrics(snap: Snapshot) -> Iterable[Metric]:
    g = {
        name: _family(f"cronmon_{name}", doc, "gauge")
        for name, doc in (
            ("monitor_info", "Monitor metadata; always 1."),
            ("monitor_status", "Current status: 1 for the monitor's status, 0 for the others."),
            ("up", "1 unless the monitor is down, failed or stuck."),
            ("last_checkin_timestamp_seconds", "Last check-in of any kind (0: never)."),
            ("last_start_timestamp_seconds", "Last start check-in (0: never)."),
            ("last_success_timestamp_seconds", "Last successful completion (0: never)."),
            ("last_failure_timestamp_seconds", "Last failed completion (0: never)."),
            ("last_duration_seconds", "Duration of the last completed run (0: none yet)."),
            ("last_exit_code", "Exit code of the last completion that reported one (0: none yet)."),
            ("next_expected_timestamp_seconds", "When the next (or overdue) arrival is expected (0: not known yet)."),
            ("deadline_timestamp_seconds", "next_expected + grace: after it the slot is missed (0: not known yet)."),
            ("grace_seconds", "Configured grace period."),
            ("max_runtime_seconds", "Configured maximum run time (0: none)."),
            ("running_runs", "Runs started and not yet finished."),
            ("consecutive_failures", "Bad outcomes (error, missed, timeout) in a row."),
            ("run_meta", "Last value of each numeric meta key reported by the job."),
            ("last_outcome", "The latest recorded outcome: 1 for it, 0 for the others (all 0 before the first)."),
            ("probe_success", "Active monitors: 1 if the latest HTTP check succeeded (a slow answer too), else 0."),
            ("probe_duration_seconds", "Active monitors: duration of the latest HTTP check (0: none yet)."),
            ("probe_status_code", "Active monitors: HTTP status of the latest check (0: no answer, or none yet)."),
            ("probe_last_timestamp_seconds", "Active monitors: when the latest HTTP check finished (0: never)."),
        )
    }
    checkins = _family("cronmon_checkins", "Check-ins received, by kind.", "counter")
    runs = _family("cronmon_runs", "Run outcomes recorded (missed slots and timeouts included), by outcome.", "counter")
    durations = _family("cronmon_run_duration_seconds", "Durations of completed runs.", "histogram")
    bucket_bounds = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]

    for monitor in snap.monitors:
        facts = snap.facts.get(monitor.id, Facts())
        ev = evaluate(monitor, facts, snap.now)
        base = {"monitor": monitor.id, **dict(monitor.labels)}

        def gauge(family: str, value: float, extra: dict[str, str] | None = None) -> None:
            g[family].add_sample(f"cronmon_{family}", {**base, **extra} if extra else base, value)

        schedule = monitor.schedule
        gauge(
            "monitor_info",
            1,
            {
                "name": monitor.display_name,
                "schedule": schedule.expression if isinstance(schedule, CronSchedule) else f"@every {schedule.seconds:g}s",
                "timezone": schedule.timezone if isinstance(schedule, CronSchedule) else "UTC",
                "source": "api" if monitor.source == "api" else "yaml",
                "group": monitor.group,
                "url": f"{snap.base_url}/monitors/{monitor.id}",
            },
        )
        for status in Status:
            gauge("monitor_status", 1 if ev.status is status else 0, {"status": status.value})
        gauge("up", 0 if ev.status in _NOT_UP else 1)
        for outcome in Outcome:
            gauge("last_outcome", 1 if facts.last_outcome is outcome else 0, {"outcome": outcome.value})
        gauge("last_checkin_timestamp_seconds", facts.last_checkin or 0)
        gauge("last_start_timestamp_seconds", facts.last_start or 0)
        gauge("last_success_timestamp_seconds", facts.last_success or 0)
        gauge("last_failure_timestamp_seconds", facts.last_failure or 0)
        gauge("last_duration_seconds", facts.last_duration or 0)
        gauge("last_exit_code", facts.last_exit_code or 0)
        gauge("next_expected_timestamp_seconds", ev.next_expected or 0)
        gauge("deadline_timestamp_seconds", ev.deadline or 0)
        gauge("grace_seconds", monitor.grace)
        gauge("max_runtime_seconds", monitor.max_runtime or 0)
        gauge("running_runs", ev.running_runs)
        gauge("consecutive_failures", ev.consecutive_failures)
        for key in sorted(facts.meta):
            gauge("run_meta", facts.meta[key], {"key": key})
        if monitor.probe is not None:
            gauge("probe_success", 1 if facts.probe_success else 0)
            gauge("probe_duration_seconds", facts.probe_duration or 0)
            gauge("probe_status_code", facts.probe_status_code or 0)
            gauge("probe_last_timestamp_seconds", facts.probe_last or 0)

        for kind in Kind:
            checkins.add_sample("cronmon_checkins_total", {**base, "kind": kind.value}, facts.checkins.get(kind.value, 0))
        for outcome in Outcome:
            # Pending misses are not counted here: counters only move when
            # the sweeper records them, so a counter never goes back down.
            runs.add_sample("cronmon_runs_total", {**base, "outcome": outcome.value}, facts.outcomes.get(outcome.value, 0))
        cumulative = 0
        buckets = facts.duration_buckets or (0,) * (len(DURATION_BUCKETS) + 1)
        for bound, count in zip(bucket_bounds, buckets):
            cumulative += count
            durations.add_sample("cronmon_run_duration_seconds_bucket", {**base, "le": bound}, cumulative)
        durations.add_sample("cronmon_run_duration_seconds_count", base, facts.duration_count)
        durations.add_sample("cronmon_run_duration_seconds_sum", base, facts.duration_sum)

    return (*g.values(), checkins, runs, durations)
