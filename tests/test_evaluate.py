"""Pure status math: evaluate() and plan_sweep() with `now` injected. No I/O."""

import pytest

from exporter.evaluate import evaluate, next_change, plan_sweep
from exporter.model import CLOCK_SKEW_ALLOWANCE as SKEW
from exporter.model import CronSchedule, Facts, IntervalSchedule, Monitor, OpenRun, Outage, Outcome, Status

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


class TestOutages:
    """A slot or run that an outage of every cronmon overlapped is not
    evidence against the job (issue 10, case 5); one after it is."""

    # Monitor: interval 1 h, grace 300 s; arrived at T0, so the next slot is
    # T0 + 1 h, missed once T0 + 1 h + 300 s + SKEW has passed.
    SLOT = T0 + HOUR
    DEADLINE = SLOT + 300 + SKEW

    def test_a_slot_whose_check_in_would_have_landed_in_an_outage_is_forgiven(self):
        outage = (Outage(self.SLOT - 60, self.SLOT + 60),)  # cronmon down across the slot
        plan = plan_sweep(monitor(), facts(), self.DEADLINE + 1, outage)
        assert (plan.missed, plan.forgiven) == (0, 1)
        assert plan.accounted_through == self.SLOT and plan.next_slot == self.SLOT + HOUR
        ev = evaluate(monitor(), facts(), self.DEADLINE + 1, outage)
        # Not down: the next slot is what is expected now.
        assert ev.status is Status.UP and ev.pending_missed == 0 and ev.next_expected == self.SLOT + HOUR

    def test_an_outage_anywhere_in_the_arrival_window_forgives_it(self):
        # A job that reports only at the end of its run checks in anywhere
        # up to the deadline: an outage just before the deadline counts too.
        for start, end in ((self.DEADLINE - 2, self.DEADLINE + 30), (self.SLOT - SKEW - 30, self.SLOT - SKEW + 1)):
            plan = plan_sweep(monitor(), facts(), self.DEADLINE + 60, (Outage(start, end),))
            assert (plan.missed, plan.forgiven) == (0, 1), (start, end)

    def test_an_outage_outside_the_window_forgives_nothing(self):
        for start, end in ((T0 + 60, self.SLOT - SKEW - 1), (self.DEADLINE + 1, self.DEADLINE + 30)):
            plan = plan_sweep(monitor(), facts(), self.DEADLINE + 60, (Outage(start, end),))
            assert (plan.missed, plan.forgiven) == (1, 0), (start, end)
            assert status(monitor(), facts(), self.DEADLINE + 60) is Status.DOWN

    def test_a_job_that_stays_dead_after_the_outage_is_missed_at_its_next_slot(self):
        outage = (Outage(T0 + 60, self.SLOT + 120),)
        now = self.DEADLINE + HOUR  # the slot after the outage has passed too
        plan = plan_sweep(monitor(), facts(), now, outage)
        assert (plan.missed, plan.forgiven) == (1, 1)
        assert evaluate(monitor(), facts(), now, outage).status is Status.DOWN

    def test_cron_slots_are_forgiven_one_by_one(self):
        m = monitor(schedule=CronSchedule("*/10 * * * *"), grace=60.0)
        f = facts(accounted_through=T0, next_slot=T0 + 600)
        # Down from T0 + 15 min to T0 + 35 min: the slots at 20 and 30 min
        # are forgiven, 10 min (deadline passed before it) and 40, 50 missed.
        outage = (Outage(T0 + 900, T0 + 2100),)
        plan = plan_sweep(m, f, T0 + 3000 + 60 + SKEW, outage)
        assert (plan.missed, plan.forgiven, plan.accounted_through) == (3, 2, T0 + 3000)

    def test_a_run_open_during_an_outage_is_lost_not_timed_out(self):
        # Started before the outage; its completion may have been refused.
        f = facts(open_runs=(OpenRun("r", T0 + 10),), next_slot=T0 + HOUR, accounted_through=T0)
        outage = (Outage(T0 + 100, T0 + 200),)
        now = T0 + 10 + 600 + 1  # past max_runtime (600 s)
        plan = plan_sweep(monitor(), f, now, outage)
        assert plan.timed_out_runs == () and plan.lost_runs == ("r",)
        assert evaluate(monitor(), f, now, outage).status is Status.RUNNING
        # Without the outage the same run times out and the monitor is stuck.
        assert plan_sweep(monitor(), f, now).timed_out_runs == ("r",)
        assert status(monitor(), f, now) is Status.STUCK

    def test_a_run_that_timed_out_before_the_outage_stays_stuck(self):
        f = facts(open_runs=(OpenRun("r", T0 + 10, timed_out=True),))
        outage = (Outage(T0 + 1000, T0 + 1100),)  # after the timeout at T0 + 610
        assert evaluate(monitor(), f, T0 + 1200, outage).status is Status.STUCK
        assert plan_sweep(monitor(), f, T0 + 1200, outage).lost_runs == ()
