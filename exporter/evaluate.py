"""Pure state math: status from facts, and what a sweep must record.

Nothing here reads a clock or talks to Redis: `now` is always an argument.

Thresholds (the rule: rules.after_outcomes). Each run outcome is good
(ok, warning, silent_failure) or bad (error, missed, timeout). After
`failure_threshold` bad outcomes in a row the monitor flips to alerting;
after `recovery_threshold` good ones in a row it flips back.
While alerting, the status is `down` if the latest bad outcome was a missed
slot and `failed` otherwise. A missed slot whose deadline has passed but
that no sweeper has recorded yet counts here already ("pending"), so
/metrics is right even while the sweeper lags a little.

Outages. A slot whose arrival window (from CLOCK_SKEW_ALLOWANCE before the
slot to its miss deadline) overlaps an outage, a time when no cronmon
could take check-ins, is forgiven: skipped, not missed, because the job's
check-in may have been refused. Likewise a run that was open during an
outage and passes max_runtime is given up ("lost"), not timed out: its
completion may have been refused. Which way this errs: a job that really
failed during an outage pages one slot later, at its first slot after
cronmon is back, instead of paging falsely for every healthy job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .model import (
    CLOCK_SKEW_ALLOWANCE,
    CronSchedule,
    Evaluation,
    Facts,
    IntervalSchedule,
    Monitor,
    OpenRun,
    Outage,
    Outcome,
    Schedule,
    Status,
    during_outage,
    quick_init,
)
from .rules import Thresholds, after_outcomes
from .schedule import latest_slot_at_or_before, missed_slots, next_slot

Outages = tuple[Outage, ...]

# Bound on slots walked per call: evaluation only needs enough to cross the
# failure threshold; the sweeper walks the rest in bounded batches.
SWEEP_BATCH = 1000


@quick_init
@dataclass(frozen=True)
class ArrivalPlan:
    """Where an arrival may land in the schedule, computed before the store
    call from config and clock alone; the store picks using the monitor's
    state (which slot is the first one not yet accounted for).

    * `anchored` (interval schedules): the arrival is its own slot.
    * `first`: (slot, next slot) for a monitor with nothing accounted yet:
      of the candidates, the tick nearest to the arrival.
    * `candidates`: (slot, next slot) pairs the first unaccounted slot is
      likely to be: the tick at or before the arrival and the next tick if
      it is within `grace`. An arrival accounts for the *first* unaccounted
      slot (so with a grace longer than the cron interval, no slot is
      skipped); when that slot is none of these, the store names it and
      `with_slot` adds it for a second try.
    """

    anchored: bool
    first: tuple[float, float]
    candidates: tuple[tuple[float, float], ...] = ()

    def with_slot(self, schedule: Schedule, slot: float) -> ArrivalPlan:
        return replace(self, candidates=(*self.candidates, (slot, next_slot(schedule, slot))))


@dataclass(frozen=True)
class SweepPlan:
    """What one sweep of one monitor records, computed from one read of its
    facts; applied only if the facts are still at `expected_version`.

    `accounted_through` / `next_slot` are the new accounting (None: keep
    it); `missed` slots are recorded as missed outcomes, except for a
    paused monitor, whose passed slots are skipped without a record.
    `forgiven` slots (an outage overlapped them) are skipped with a history
    entry; `lost_runs` (open during an outage, now past max_runtime) are
    dropped without a timeout.
    """

    expected_version: int
    missed: int
    accounted_through: float | None
    next_slot: float | None
    timed_out_runs: tuple[str, ...]
    forgiven: int = 0
    lost_runs: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.accounted_through is None and not self.timed_out_runs and not self.lost_runs


def plan_arrival(monitor: Monitor, received_at: float) -> ArrivalPlan:
    schedule = monitor.schedule
    if isinstance(schedule, IntervalSchedule):
        return ArrivalPlan(anchored=True, first=(received_at, next_slot(schedule, received_at)))
    before = latest_slot_at_or_before(schedule, received_at)
    after = next_slot(schedule, before)
    candidates = [(before, after)]
    if after <= received_at + monitor.grace:
        candidates.append((after, next_slot(schedule, after)))
    # Before anything is accounted, the nearest tick is the best guess.
    first = min(candidates, key=lambda candidate: abs(candidate[0] - received_at))
    return ArrivalPlan(anchored=False, first=first, candidates=tuple(candidates))


def passed_slots(
    monitor: Monitor, accounted_through: float, now: float, outages: Outages = ()
) -> tuple[int, int, float, float]:
    """Slots after `accounted_through` whose miss deadline is at or before
    `now`, at most SWEEP_BATCH of them: (missed, forgiven for an outage,
    the last of them, the slot after it)."""
    schedule, miss_after = monitor.schedule, monitor.miss_after
    if not during_outage(outages, accounted_through - CLOCK_SKEW_ALLOWANCE, now):
        missed, last, upcoming = missed_slots(schedule, miss_after, accounted_through, now, SWEEP_BATCH)
        return missed, 0, last, upcoming
    missed = forgiven = 0
    last, upcoming = accounted_through, next_slot(schedule, accounted_through)
    while missed + forgiven < SWEEP_BATCH and upcoming + miss_after <= now:
        # The job's check-in for this slot lands between (a little before)
        # the slot and its deadline; if cronmon refused check-ins for any of
        # that time, the slot's absence proves nothing.
        if during_outage(outages, upcoming - CLOCK_SKEW_ALLOWANCE, upcoming + miss_after):
            forgiven += 1
        else:
            missed += 1
        last, upcoming = upcoming, next_slot(schedule, upcoming)
    return missed, forgiven, last, upcoming


def plan_sweep(monitor: Monitor, facts: Facts, now: float, outages: Outages = ()) -> SweepPlan:
    """Missed (and outage-forgiven) slots and newly over-long runs as of `now`."""
    passed = forgiven = 0
    accounted = upcoming = None
    if facts.accounted_through is not None and facts.next_slot is not None:
        if facts.next_slot + monitor.miss_after <= now:
            passed, forgiven, accounted, upcoming = passed_slots(monitor, facts.accounted_through, now, outages)
    if monitor.paused:
        # Nothing is expected of a paused monitor: skip past its slots
        # without recording them, and time none of its runs out.
        return SweepPlan(facts.version, 0, accounted, upcoming, ())
    timed_out: list[str] = []
    lost: list[str] = []
    if monitor.max_runtime is not None:
        for run in facts.open_runs:
            # Strictly older: a run that ends at exactly max_runtime is in time.
            if not run.timed_out and run.started + monitor.max_runtime < now:
                (lost if _lost(monitor, run, outages) else timed_out).append(run.run_id)
    if is_stuck(monitor, facts, now, outages):
        # Slots that pass while a run hangs are skipped, not missed: the
        # page for a hung job is CronJobStuck, and counting them too paged
        # CronJobMissed again the moment the job started once more.
        passed = forgiven = 0
    return SweepPlan(facts.version, passed, accounted, upcoming, tuple(timed_out), forgiven, tuple(lost))


def _lost(monitor: Monitor, run: OpenRun, outages: Outages) -> bool:
    """An open run whose completion may have been refused: an outage
    overlapped the time in which it was due to finish."""
    assert monitor.max_runtime is not None
    return during_outage(outages, run.started, run.started + monitor.max_runtime)


def is_stuck(monitor: Monitor, facts: Facts, now: float, outages: Outages = ()) -> bool:
    """An open run is older than max_runtime (strictly: a run of exactly
    max_runtime is in time), and is not lost to an outage."""
    return monitor.max_runtime is not None and any(
        run.started + monitor.max_runtime < now and (run.timed_out or not _lost(monitor, run, outages))
        for run in facts.open_runs
    )


def evaluate(monitor: Monitor, facts: Facts, now: float, outages: Outages = ()) -> Evaluation:
    """The status of `monitor` at `now` (DESIGN.md, Runs and status), with
    the outages known (Core.current_outages)."""
    pending = 0
    next_expected, deadline = facts.next_slot, None
    if monitor.paused:
        next_expected = None  # nothing is expected of a paused monitor
    elif next_expected is not None:
        deadline = next_expected + monitor.grace
        if next_expected + monitor.miss_after <= now:
            pending, _, _, next_expected = passed_slots(monitor, facts.accounted_through or 0.0, now, outages)
            deadline = next_expected + monitor.grace
            if is_stuck(monitor, facts, now, outages):
                pending = 0  # skipped, as plan_sweep will record them
    elif facts.first_checkin is None:
        # Never checked in: show when the first run is expected, if the
        # schedule says (an interval schedule is anchored on arrivals).
        next_expected = _first_expected(monitor, now)
        deadline = next_expected + monitor.grace if next_expected is not None else None

    # Misses no sweep has recorded yet count already (the rule: rules.py).
    projected = after_outcomes(
        Thresholds(facts.consecutive_bad, facts.consecutive_good, facts.alerting), True, pending,
        monitor.failure_threshold, monitor.recovery_threshold,
    )
    consecutive_bad, alerting = projected.consecutive_bad, projected.alerting
    last_bad = Outcome.MISSED if pending else facts.last_bad_outcome
    running = len(facts.open_runs)

    if monitor.paused:
        status = Status.PAUSED
    elif facts.first_checkin is None and not alerting:
        status = Status.NEW
    elif is_stuck(monitor, facts, now, outages):
        status = Status.STUCK
    elif alerting:
        status = Status.DOWN if last_bad == Outcome.MISSED else Status.FAILED
    elif next_expected is not None and next_expected <= now:
        status = Status.LATE
    elif running:
        status = Status.RUNNING
    else:
        status = Status.UP
    return Evaluation(
        status=status,
        next_expected=next_expected,
        deadline=deadline,
        consecutive_failures=consecutive_bad,
        running_runs=running,
        pending_missed=pending,
    )


def _first_expected(monitor: Monitor, now: float) -> float | None:
    if isinstance(monitor.schedule, CronSchedule):
        return next_slot(monitor.schedule, now)
    return None


def next_change(monitor: Monitor, facts: Facts, ev: Evaluation, now: float) -> float:
    """The first instant after `now` at which `evaluate(monitor, facts, t)`
    can differ from `ev` (= evaluate at `now`) with no new fact: when the
    expected arrival passes (late), its deadline passes (a pending miss,
    down), or an open run passes max_runtime (stuck). Until then a rendered
    block stays right, which is what lets the scrape cache skip it.
    `inf` when only a new fact can change it."""
    if monitor.paused:
        return math.inf
    # The status turns down when the deadline is CLOCK_SKEW_ALLOWANCE behind.
    missed_at = ev.deadline + CLOCK_SKEW_ALLOWANCE if ev.deadline is not None else None
    if missed_at is not None and missed_at <= now:
        # More slots passed than one evaluation walks (SWEEP_BATCH): the
        # answer moves with every call until the sweeper catches up.
        return now
    candidates = [t for t in (ev.next_expected, missed_at) if t is not None and t > now]
    if monitor.max_runtime is not None:
        # Stuck once strictly past max_runtime: from the next float after it.
        candidates.extend(
            stuck for run in facts.open_runs
            if (stuck := math.nextafter(run.started + monitor.max_runtime, math.inf)) > now
        )
    return min(candidates, default=math.inf)
