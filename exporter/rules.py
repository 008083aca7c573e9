"""The outcome rules, in one place: what a completion records, which
outcomes are bad, when a monitor flips to alerting and back, and which
column of the uptime figures an outcome counts in.

Everything else applies these: the store passes record.lua and sweep.lua
the outcome and whether it is bad (the scripts count; they decide
nothing), evaluate.py projects the thresholds over misses no sweep has
recorded yet with `after_outcomes`, uptime.py sums UPTIME_COLUMNS, and the
status page colours events with `event_is_bad`. Lua must count outcomes
atomically with the check-in, so common.lua's apply_outcome is the one
mirror of `after_outcomes`; tests/test_rules.py drives real scripts and
checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Kind, Outcome

# Bad for the failure and recovery thresholds. A silent failure is not: it
# has an alert of its own (CronJobSilentFailure), and a job that reports
# success with zero rows must not page as if it had crashed.
BAD_OUTCOMES = frozenset({Outcome.ERROR, Outcome.MISSED, Outcome.TIMEOUT})


def is_bad(outcome: Outcome) -> bool:
    return outcome in BAD_OUTCOMES


# Uptime (uptime.py): a check is a run's outcome or a missed slot, up if
# the run ended ok or with a warning (a slow but working job is up). A
# silent failure reported success but did not do its job: down. A timeout
# is not a check of its own: the run still ends in an outcome that counts.
UPTIME_COLUMNS = {
    Outcome.OK: "success", Outcome.WARNING: "warning", Outcome.ERROR: "error",
    Outcome.SILENT_FAILURE: "error", Outcome.MISSED: "missed",
}


def completion_outcome(kind: Kind, silent_failure: bool) -> Outcome:
    """What a completion of `kind` records: fail -> error, warning ->
    warning, success -> ok, or silent_failure for a success whose numeric
    meta broke one of the monitor's meta rules."""
    if kind is Kind.FAIL:
        return Outcome.ERROR
    if kind is Kind.WARNING:
        return Outcome.WARNING
    return Outcome.SILENT_FAILURE if silent_failure else Outcome.OK


def too_short_outcome(outcome: Outcome) -> Outcome | None:
    """What a completion that would record `outcome` records instead when
    it ran shorter than the monitor's min_runtime: a success did not do its
    job (silent_failure); any other outcome stands (a quick failure is a
    failure, a quick warning was already flagged). None: no change."""
    return Outcome.SILENT_FAILURE if outcome is Outcome.OK else None


@dataclass(frozen=True)
class Thresholds:
    """A monitor's place in its failure and recovery thresholds."""

    consecutive_bad: int = 0
    consecutive_good: int = 0
    alerting: bool = False


def after_outcomes(
    before: Thresholds, bad: bool, n: int, failure_threshold: int, recovery_threshold: int
) -> Thresholds:
    """`n` outcomes of one kind in a row: a bad one resets the good streak
    and, once `failure_threshold` bad ones are in a row, flips the monitor
    to alerting; a good one resets the bad streak and, once
    `recovery_threshold` good ones are in a row, flips it back. Neither
    flips the other way: a monitor alerting stays so until it recovers."""
    if n <= 0:
        return before
    if bad:
        streak = before.consecutive_bad + n
        return Thresholds(streak, 0, before.alerting or streak >= failure_threshold)
    streak = before.consecutive_good + n
    return Thresholds(0, streak, before.alerting and streak < recovery_threshold)


# Event kinds that are bad whatever outcome they carry (a fail check-in,
# a missed slot, a timeout), for the status page.
_BAD_KINDS = frozenset({Kind.FAIL.value, Outcome.MISSED.value, Outcome.TIMEOUT.value})


def event_is_bad(kind: str, outcome: str) -> bool:
    """Whether a history event (its kind and outcome as stored) shows
    something that went wrong: a bad outcome or a silent failure."""
    return (
        kind in _BAD_KINDS
        or outcome in {o.value for o in BAD_OUTCOMES}
        or outcome == Outcome.SILENT_FAILURE.value
    )
