"""What /metrics says: the metric families, and each monitor's rendered block.

A monitor's block is its samples in the Prometheus text format, one
fragment per family (FAMILIES order), plus the instant until which the
block stays right without any new fact (`valid_until`, from
evaluate.next_change). Blocks are pure functions of (monitor, facts, now):
the scrape cache (scrape.py) keeps them and re-renders a monitor only when
its facts, its config or the clock say so, so a scrape costs what changed.

Series budget. A default passive monitor has 29 series; the richer sets in
OPTIONAL_SERIES are opt-in per monitor (`metrics:`) or YAML group. The
README's "Metric reference" lists every series.

Every series of a monitor is emitted on every scrape, with 0 for "never
happened", so alert expressions never see a series vanish.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass

from . import __version__
from .evaluate import Outages, evaluate, next_change
from .model import CronSchedule, Facts, Kind, Monitor, Outcome, Status
from .storage import DURATION_BUCKETS

# Statuses for which cronmon_up is 0.
_NOT_UP = frozenset({Status.DOWN, Status.FAILED, Status.STUCK})
# cronmon_last_exit_code when the last completion reported no exit code (a
# plain ping, a Sentry check-in): exit statuses are 0-255, so it cannot be
# read as one, and 0 stays "the job said it exited 0".
UNKNOWN_EXIT_CODE = -1

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Family:
    """A per-monitor metric family. `name` is the family name (a counter's
    samples add `_total`); `option` is None for the default set, else the
    opt-in set it belongs to."""

    name: str
    type: str
    help: str
    option: str | None = None

    def text_header(self) -> str:
        name = self.name + "_total" if self.type == "counter" else self.name
        return f"# HELP {name} {_escape_help(self.help)}\n# TYPE {name} {self.type}\n"

    def openmetrics_header(self) -> str:
        return f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.type}\n"


# Opt-in series sets: name -> (series per monitor, what they are).
OPTIONAL_SERIES: Mapping[str, tuple[int, str]] = {
    "checkins": (len(Kind), "cronmon_checkins_total{kind}: check-ins received, by kind"),
    "duration_histogram": (len(DURATION_BUCKETS) + 3, "cronmon_run_duration_seconds: histogram of run durations"),
    "last_outcome": (len(Outcome), "cronmon_last_outcome{outcome}: the latest recorded outcome"),
}

FAMILIES: tuple[Family, ...] = (
    Family("cronmon_monitor_info", "gauge", "Monitor metadata; always 1."),
    Family("cronmon_monitor_status", "gauge", "Current status: 1 for the monitor's status, 0 for the others."),
    Family("cronmon_up", "gauge", "1 unless the monitor is down, failed or stuck."),
    Family(
        "cronmon_silent_failure",
        "gauge",
        "1 while the latest completed run reported success but broke a meta rule, else 0.",
    ),
    Family("cronmon_last_checkin_timestamp_seconds", "gauge", "Last check-in of any kind (0: never)."),
    Family("cronmon_last_start_timestamp_seconds", "gauge", "Last start check-in (0: never)."),
    Family("cronmon_last_success_timestamp_seconds", "gauge", "Last successful completion (0: never)."),
    Family("cronmon_last_failure_timestamp_seconds", "gauge", "Last failed completion (0: never)."),
    Family("cronmon_last_duration_seconds", "gauge", "Duration of the last completed run (0: none yet)."),
    Family(
        "cronmon_last_exit_code", "gauge",
        "Exit code the last completion reported; -1 when it reported none (or nothing completed yet).",
    ),
    Family(
        "cronmon_next_expected_timestamp_seconds",
        "gauge",
        "When the next (or overdue) arrival is expected (0: not known yet).",
    ),
    Family(
        "cronmon_deadline_timestamp_seconds",
        "gauge",
        "next_expected + grace: after it the slot is missed (0: not known yet).",
    ),
    Family("cronmon_grace_seconds", "gauge", "Configured grace period."),
    Family("cronmon_max_runtime_seconds", "gauge", "Configured maximum run time (0: none)."),
    Family(
        "cronmon_min_runtime_seconds",
        "gauge",
        "Configured minimum run time: a success that ran shorter is a silent failure; no series without one.",
    ),
    Family("cronmon_running_runs", "gauge", "Runs started and not yet finished."),
    Family(
        "cronmon_consecutive_failures", "gauge",
        "Bad outcomes (error, missed, timeout) in a row, as recorded in cronmon_runs_total.",
    ),
    Family("cronmon_runs", "counter", "Run outcomes recorded (missed slots and timeouts included), by outcome."),
    Family("cronmon_run_meta", "gauge", "Last value of each numeric meta key reported by the job."),
    Family(
        "cronmon_probe_success",
        "gauge",
        "Active monitors: 1 if the latest HTTP check succeeded (a slow answer too), else 0.",
    ),
    Family(
        "cronmon_probe_duration_seconds", "gauge", "Active monitors: duration of the latest HTTP check (0: none yet)."
    ),
    Family(
        "cronmon_probe_status_code",
        "gauge",
        "Active monitors: HTTP status of the latest check (0: no answer, or none yet).",
    ),
    Family(
        "cronmon_probe_last_timestamp_seconds",
        "gauge",
        "Active monitors: when the latest HTTP check finished (0: never).",
    ),
    Family(
        "cronmon_alert_muted",
        "gauge",
        "1 for each alert switched off for the monitor (mute: or alerts:); no series otherwise.",
    ),
    Family("cronmon_checkins", "counter", "Check-ins received, by kind (opt-in: checkins).", "checkins"),
    Family(
        "cronmon_last_outcome",
        "gauge",
        "The latest recorded outcome: 1 for it, 0 for the others (all 0 before the first; opt-in: last_outcome).",
        "last_outcome",
    ),
    Family(
        "cronmon_run_duration_seconds",
        "histogram",
        "Durations of completed runs (opt-in: duration_histogram).",
        "duration_histogram",
    ),
)
_INDEX = {family.name: i for i, family in enumerate(FAMILIES)}


@dataclass(frozen=True)
class MonitorBlock:
    """One monitor's samples, one text fragment per family (FAMILIES order),
    right until `valid_until` unless its facts or config change."""

    fragments: tuple[str, ...]
    valid_until: float


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _num(value: float | int) -> str:
    """A sample value as Go's strconv would print it (what Prometheus and
    promtool parse): integers without a fraction, floats in full precision."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _ms(value: float | None) -> float:
    """A time or duration rounded to the millisecond (0 for none)."""
    return round(value, 3) if value else 0


# Bucket bounds as prometheus_client writes them (le="10.0"), so queries keep matching.
_BUCKET_BOUNDS = tuple(repr(float(b)) for b in DURATION_BUCKETS) + ("+Inf",)


def label_string(monitor: Monitor) -> str:
    """`monitor="id",team="..."`: the labels every series of `monitor` carries."""
    pairs = [("monitor", monitor.id), *monitor.labels]
    return ",".join(f'{name}="{_escape_value(value)}"' for name, value in pairs)


def render_monitor(
    monitor: Monitor, facts: Facts, now: float, base_url: str, outages: Outages = ()
) -> MonitorBlock:
    """Every sample of one monitor at `now` (with the outages known), and
    until when they hold."""
    ev = evaluate(monitor, facts, now, outages)
    base = label_string(monitor)
    out = [""] * len(FAMILIES)

    def put(family: str, value: float | int) -> None:
        out[_INDEX[family]] = f"{family}{{{base}}} {_num(value)}\n"

    schedule = monitor.schedule
    info = {
        "name": monitor.display_name,
        "schedule": schedule.expression if isinstance(schedule, CronSchedule) else f"@every {schedule.seconds:g}s",
        "timezone": schedule.timezone if isinstance(schedule, CronSchedule) else "UTC",
        "source": "api" if monitor.source == "api" else "yaml",
        "group": monitor.group,
        "url": f"{base_url}/monitors/{monitor.id}",
    }
    extra = ",".join(f'{name}="{_escape_value(value)}"' for name, value in info.items())
    out[_INDEX["cronmon_monitor_info"]] = f"cronmon_monitor_info{{{base},{extra}}} 1\n"
    out[_INDEX["cronmon_monitor_status"]] = "".join(
        f'cronmon_monitor_status{{{base},status="{status.value}"}} {1 if ev.status is status else 0}\n'
        for status in Status
    )
    put("cronmon_up", 0 if ev.status in _NOT_UP else 1)
    put("cronmon_silent_failure", 1 if facts.last_outcome is Outcome.SILENT_FAILURE else 0)
    # Times and durations to the millisecond: the microseconds of a
    # server clock mean nothing to an alert, and they are most of what
    # gzip cannot squeeze out of a large /metrics.
    put("cronmon_last_checkin_timestamp_seconds", _ms(facts.last_checkin))
    put("cronmon_last_start_timestamp_seconds", _ms(facts.last_start))
    put("cronmon_last_success_timestamp_seconds", _ms(facts.last_success))
    put("cronmon_last_failure_timestamp_seconds", _ms(facts.last_failure))
    put("cronmon_last_duration_seconds", _ms(facts.last_duration))
    put("cronmon_last_exit_code", UNKNOWN_EXIT_CODE if facts.last_exit_code is None else facts.last_exit_code)
    put("cronmon_next_expected_timestamp_seconds", _ms(ev.next_expected))
    put("cronmon_deadline_timestamp_seconds", _ms(ev.deadline))
    put("cronmon_grace_seconds", monitor.grace)
    put("cronmon_max_runtime_seconds", monitor.max_runtime or 0)
    if monitor.min_runtime:  # a setting, not a fact: the series is there for as long as the setting is
        put("cronmon_min_runtime_seconds", monitor.min_runtime)
    put("cronmon_running_runs", ev.running_runs)
    # Recorded outcomes only, as cronmon_runs_total: a miss that is pending
    # (its deadline passed, the sweeper records it within a sweep interval)
    # moves both at once, so within one scrape they never disagree. (The
    # status counts a pending miss at once; see evaluate.) Counters only move
    # when the sweeper records a miss, so a counter never goes back down.
    put("cronmon_consecutive_failures", facts.consecutive_bad)
    out[_INDEX["cronmon_runs"]] = "".join(
        f'cronmon_runs_total{{{base},outcome="{o.value}"}} {facts.outcomes.get(o.value, 0)}\n' for o in Outcome
    )
    if facts.meta:
        out[_INDEX["cronmon_run_meta"]] = "".join(
            f'cronmon_run_meta{{{base},key="{_escape_value(key)}"}} {_num(facts.meta[key])}\n'
            for key in sorted(facts.meta)
        )
    if monitor.muted:
        out[_INDEX["cronmon_alert_muted"]] = "".join(
            f'cronmon_alert_muted{{{base},alert="{name}"}} 1\n' for name in sorted(monitor.muted)
        )
    if monitor.probe is not None:
        put("cronmon_probe_success", 1 if facts.probe_success else 0)
        put("cronmon_probe_duration_seconds", _ms(facts.probe_duration))
        put("cronmon_probe_status_code", facts.probe_status_code or 0)
        put("cronmon_probe_last_timestamp_seconds", _ms(facts.probe_last))
    options = monitor.metrics
    if "checkins" in options:
        out[_INDEX["cronmon_checkins"]] = "".join(
            f'cronmon_checkins_total{{{base},kind="{k.value}"}} {facts.checkins.get(k.value, 0)}\n' for k in Kind
        )
    if "last_outcome" in options:
        out[_INDEX["cronmon_last_outcome"]] = "".join(
            f'cronmon_last_outcome{{{base},outcome="{o.value}"}} {1 if facts.last_outcome is o else 0}\n'
            for o in Outcome
        )
    if "duration_histogram" in options:
        buckets = facts.duration_buckets or (0,) * (len(DURATION_BUCKETS) + 1)
        lines, cumulative = [], 0
        for bound, count in zip(_BUCKET_BOUNDS, buckets):
            cumulative += count
            lines.append(f'cronmon_run_duration_seconds_bucket{{{base},le="{bound}"}} {cumulative}\n')
        lines.append(f"cronmon_run_duration_seconds_count{{{base}}} {facts.duration_count}\n")
        lines.append(f"cronmon_run_duration_seconds_sum{{{base}}} {_num(facts.duration_sum)}\n")
        out[_INDEX["cronmon_run_duration_seconds"]] = "".join(lines)
    return MonitorBlock(tuple(out), next_change(monitor, facts, ev, now))


def default_series_count(monitor: Monitor) -> int:
    """How many series `monitor` costs Prometheus without reported meta."""
    count = 1 + len(Status) + 14 + len(Outcome)
    if monitor.probe is not None:
        count += 4
    return count + sum(OPTIONAL_SERIES[name][0] for name in monitor.metrics)


@dataclass(frozen=True)
class SelfState:
    """cronmon's own state at scrape time (not per monitor)."""

    store_up: bool
    reload_successful: bool
    reload_success_timestamp: float
    monitors: tuple[Monitor, ...] = ()


def render_self(state: SelfState) -> str:
    """cronmon_build_info, store and reload state, monitor counts."""
    by_source = {"yaml": 0, "api": 0}
    for monitor in state.monitors:
        by_source["api" if monitor.source == "api" else "yaml"] += 1
    python = _escape_value(platform.python_version())
    return "".join(
        (
            "# HELP cronmon_build_info cronmon build information; always 1.\n# TYPE cronmon_build_info gauge\n",
            f'cronmon_build_info{{version="{_escape_value(__version__)}",python_version="{python}"}} 1\n',
            "# HELP cronmon_store_up 1 if the last read from Redis succeeded, else 0.\n",
            "# TYPE cronmon_store_up gauge\n",
            f"cronmon_store_up {1 if state.store_up else 0}\n",
            "# HELP cronmon_config_last_reload_successful 1 if the last config (re)load succeeded, else 0.\n",
            "# TYPE cronmon_config_last_reload_successful gauge\n",
            f"cronmon_config_last_reload_successful {1 if state.reload_successful else 0}\n",
            "# HELP cronmon_config_last_reload_success_timestamp_seconds "
            "When the config was last loaded successfully.\n",
            "# TYPE cronmon_config_last_reload_success_timestamp_seconds gauge\n",
            f"cronmon_config_last_reload_success_timestamp_seconds {_num(state.reload_success_timestamp)}\n",
            "# HELP cronmon_monitors Number of monitors configured, by source.\n# TYPE cronmon_monitors gauge\n",
            f'cronmon_monitors{{source="yaml"}} {by_source["yaml"]}\n',
            f'cronmon_monitors{{source="api"}} {by_source["api"]}\n',
        )
    )


def render_full(
    monitors: Mapping[str, Monitor], facts: Mapping[str, Facts], now: float, base_url: str, openmetrics: bool = False,
    outages: Outages = (),
) -> str:
    """The per-monitor part of /metrics rendered from scratch: what the
    scrape cache must always equal (its tests compare the two)."""
    blocks = [render_monitor(m, facts.get(m.id, Facts()), now, base_url, outages) for m in monitors.values()]
    parts = []
    for i, family in enumerate(FAMILIES):
        body = "".join(block.fragments[i] for block in blocks)
        if body:
            parts.append((family.openmetrics_header() if openmetrics else family.text_header()) + body)
    return "".join(parts)
