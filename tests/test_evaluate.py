"""Pure status math: evaluate() and plan_sweep() with `now` injected. No I/O."""

import pytest

from exporter.evaluate import evaluate, next_change, plan_sweep
from exporter.model import CLOCK_SKEW_ALLOWANCE as SKEW
from exporter.model import CronSchedule, Facts, IntervalSchedule, Monitor, OpenRun, Outcome, Status

from .conftest import T0

HOUR = 3600.0


def monitor(**overrides) -> Monitor:
    values = dict(id="job", schedule=IntervalSchedule(HOUR), grace=300.0, max_runtime=600.0)
    values.update(overrides)
    return Monitor(**values)


def facts(**overrides) -> Facts:
    """Facts of a monitor that arrived (and succeeded) at T0."""
    values = dict(
        first_checkin=T0 - 86400, last_checkin=T0, last_success=T0,
        accounted_through=T0, next_slot=T0 + HOUR, last_outcome=Outcome.OK,
    )
    values.update(overrides)
    return Facts(**values)


def status(m: Monitor, f: Facts, now: float) -> Status:
    return evaluate(m, f, now).status


class TestStatus:
    def test_up_between_slots(self):
        assert status(monitor(), facts(), T0 + 60) is Status.UP

    def test_new_until_first_checkin(self):
        ev = evaluate(monitor(), Facts(), T0)
        assert ev.status is Status.NEW
        assert ev.next_expected is None  # interval schedules anchor on arrivals

    def test_new_cron_monitor_shows_first_expected_slot(self):
        m = monitor(schedule=CronSchedule("0 * * * *"))
        ev = evaluate(m, Facts(), T0 + 10)
        assert ev.status is Status.NEW and ev.next_expected == T0 + HOUR

    def test_paused_wins_over_everything(self):
        f = facts(alerting=True, last_bad_outcome=Outcome.ERROR, open_runs=(OpenRun("r", T0 - 9999),))
        ev = evaluate(monitor(paused=True), f, T0 + 10 * HOUR)
        assert ev.status is Status.PAUSED
        assert ev.pending_missed == 0

    def test_late_after_slot_within_grace(self):
        assert status(monitor(), facts(), T0 + HOUR + 1) is Status.LATE

    def test_slot_exactly_now_is_late(self):
        assert status(monitor(), facts(), T0 + HOUR) is Status.LATE

    def test_down_at_deadline_with_pending_miss(self):
        ev = evaluate(monitor(), facts(), T0 + HOUR + 300 + SKEW)
        assert ev.status is Status.DOWN
        assert ev.pending_missed == 1
        assert ev.consecutive_failures == 1
        # the next expectation moves on to the following slot
        assert ev.next_expected == T0 + 2 * HOUR

    def test_pending_miss_below_threshold_is_not_down(self):
        ev = evaluate(monitor(failure_threshold=2), facts(), T0 + HOUR + 301 + SKEW)
        assert ev.status is Status.UP
        assert ev.consecutive_failures == 1

    def test_two_pending_misses_reach_threshold_two(self):
        ev = evaluate(monitor(failure_threshold=2), facts(), T0 + 2 * HOUR + 301 + SKEW)
        assert ev.status is Status.DOWN and ev.pending_missed == 2

    def test_failed_when_alerting_on_error(self):
        f = facts(alerting=True, last_bad_outcome=Outcome.ERROR, consecutive_bad=1)
        assert status(monitor(), f, T0 + 60) is Status.FAILED

    def test_timeout_counts_as_failed(self):
        f = facts(alerting=True, last_bad_outcome=Outcome.TIMEOUT, consecutive_bad=1)
        assert status(monitor(), f, T0 + 60) is Status.FAILED

    def test_recorded_miss_while_alerting_is_down(self):
        f = facts(alerting=True, last_bad_outcome=Outcome.MISSED, consecutive_bad=1)
        assert status(monitor(), f, T0 + 60) is Status.DOWN

    def test_new_miss_after_error_makes_it_down(self):
        f = facts(alerting=True, last_bad_outcome=Outcome.ERROR, consecutive_bad=1)
        assert status(monitor(), f, T0 + HOUR + 300 + SKEW) is Status.DOWN

    def test_running_within_max_runtime(self):
        f = facts(open_runs=(OpenRun("r1", T0),), last_start=T0)
        assert status(monitor(), f, T0 + 599) is Status.RUNNING

    def test_stuck_only_past_max_runtime(self):
        # A run that lasts exactly max_runtime is in time (issue: the
        # boundary counted as a timeout); a moment later it is stuck.
        f = facts(open_runs=(OpenRun("r1", T0),), last_start=T0)
        assert status(monitor(), f, T0 + 600) is Status.RUNNING
        assert status(monitor(), f, T0 + 600.001) is Status.STUCK
        assert plan_sweep(monitor(), f, T0 + 600).timed_out_runs == ()
        assert plan_sweep(monitor(), f, T0 + 600.001).timed_out_runs == ("r1",)

    def test_stuck_beats_failed(self):
        f = facts(open_runs=(OpenRun("r1", T0),), alerting=True, last_bad_outcome=Outcome.ERROR)
        assert status(monitor(), f, T0 + 601) is Status.STUCK

    def test_no_max_runtime_never_stuck(self):
        f = facts(open_runs=(OpenRun("r1", T0 - 86400),))
        assert status(monitor(max_runtime=None), f, T0 + 60) is Status.RUNNING

    def test_overlapping_runs_one_over_limit_is_stuck(self):
        runs = (OpenRun("old", T0 - 700), OpenRun("new", T0))
        ev = evaluate(monitor(), facts(open_runs=runs), T0 + 10)
        assert ev.status is Status.STUCK and ev.running_runs == 2

    def test_failed_beats_late(self):
        f = facts(alerting=True, last_bad_outcome=Outcome.ERROR)
        assert status(monitor(), f, T0 + HOUR + 10) is Status.FAILED


class TestSweepPlan:
    def test_nothing_due(self):
        assert plan_sweep(monitor(), facts(), T0 + 10).empty

    def test_missed_slots_are_planned_with_new_accounting(self):
        plan = plan_sweep(monitor(), facts(version=7), T0 + 3 * HOUR + 300 + SKEW)
        assert (plan.expected_version, plan.missed) == (7, 3)
        assert plan.accounted_through == T0 + 3 * HOUR
        assert plan.next_slot == T0 + 4 * HOUR

    def test_timed_out_runs_planned_once(self):
        runs = (OpenRun("a", T0 - 700), OpenRun("b", T0 - 700, timed_out=True), OpenRun("c", T0))
        plan = plan_sweep(monitor(), facts(open_runs=runs), T0 + 10)
        assert plan.timed_out_runs == ("a",)

    def test_paused_advances_silently(self):
        plan = plan_sweep(monitor(paused=True), facts(), T0 + 3 * HOUR + 300 + SKEW)
        assert plan.missed == 0 and not plan.empty
        assert plan.accounted_through == T0 + 3 * HOUR

    def test_never_arrived_monitor_has_nothing_to_sweep(self):
        assert plan_sweep(monitor(), Facts(), T0 + 99 * HOUR).empty


@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_threshold_controls_when_pending_misses_flip(threshold):
    m = monitor(failure_threshold=threshold)
    for missed in range(1, 5):
        now = T0 + missed * HOUR + 300 + SKEW
        expected = Status.DOWN if missed >= threshold else Status.UP
        assert status(m, facts(), now) is expected, (threshold, missed)


def test_a_miss_waits_for_the_clock_skew_allowance():
    """Between the deadline and deadline + SKEW the slot is late, not
    missed: a replica whose clock is a little ahead must not record a miss
    for a check-in another replica takes just before the deadline."""
    deadline = T0 + HOUR + 300
    for now in (deadline, deadline + SKEW - 0.001):
        ev = evaluate(monitor(), facts(), now)
        assert ev.status is Status.LATE and ev.pending_missed == 0 and ev.deadline == deadline
        assert plan_sweep(monitor(), facts(), now).missed == 0
        assert next_change(monitor(), facts(), ev, now) == deadline + SKEW
    assert evaluate(monitor(), facts(), deadline + SKEW).status is Status.DOWN
    assert plan_sweep(monitor(), facts(), deadline + SKEW).missed == 1
