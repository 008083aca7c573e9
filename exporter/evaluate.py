"""Pure state math: status from facts, and what a sweep must record.

Nothing here reads a clock or talks to Redis: `now` is always an argument.

Thresholds. Each run outcome is good (ok, warning) or bad (error, missed,
timeout). After `failure_threshold` bad outcomes in a row the monitor flips
to alerting; after `recovery_threshold` good ones in a row it flips back.
While alerting, the status is `down` if the latest bad outcome was a missed
slot and `failed` otherwise. A missed slot whose deadline has passed but
that no sweeper has recorded yet counts here already ("pending"), so
/metrics is right even while the sweeper lags a little.
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
    Outcome,
    Schedule,
    Status,
)
from .schedule import latest_slot_at_or_before, missed_slots, next_slot

# Bound on slots walked per call: evaluation only needs enough to cross the
# failure threshold; the sweeper walks the rest in bounded batches.
SWEEP_BATCH = 1000


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
    """

    expected_version: int
    missed: int
    accounted_through: float | None
    next_slot: float | None
    timed_out_runs: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return self.accounted_through is None and not self.timed_out_runs


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


def plan_sweep(monitor: Monitor, facts: Facts, now: float) -> SweepPlan:
    """Missed slots and newly over-long runs as of `now`."""
    passed, accounted, upcoming = 0, None, None
    if facts.accounted_through is not None and facts.next_slot is not None:
        if facts.next_slot + monitor.miss_after <= now:
            passed, accounted, upcoming = missed_slots(
                monitor.schedule, monitor.miss_after, facts.accounted_through, now, SWEEP_BATCH
            )
    if monitor.paused:
        # Nothing is expected of a paused monitor: skip past its slots
        # without recording them, and time none of its runs out.
        return SweepPlan(facts.version, 0, accounted, upcoming, ())
    timed_out: tuple[str, ...] = ()
    if monitor.max_runtime is not None:
        timed_out = tuple(
            run.run_id
            for run in facts.open_runs
            # Strictly older: a run that ends at exactly max_runtime is in time.
            if not run.timed_out and run.started + monitor.max_runtime < now
        )
    if is_stuck(monitor, facts, now):
        # Slots that pass while a run hangs are skipped, not missed: the
        # page for a hung job is CronJobStuck, and counting them too paged
        # CronJobMissed again the moment the job started once more.
        passed = 0
    return SweepPlan(facts.version, passed, accounted, upcoming, timed_out)


def is_stuck(monitor: Monitor, facts: Facts, now: float) -> bool:
    """An open run is older than max_runtime (strictly: a run of exactly
    max_runtime is in time)."""
    return monitor.max_runtime is not None and any(
        run.started + monitor.max_runtime < now for run in facts.open_runs
    )


def evaluate(monitor: Monitor, facts: Facts, now: float) -> Evaluation:
    """The status of `monitor` at `now` (DESIGN.md, Runs and status)."""
    pending = 0
    next_expected, deadline = facts.next_slot, None
    if monitor.paused:
        next_expected = None  # nothing is expected of a paused monitor
    elif next_expected is not None:
        deadline = next_expected + monitor.grace
        if next_expected + monitor.miss_after <= now:
            pending, _, next_expected = missed_slots(
                monitor.schedule, monitor.miss_after, facts.accounted_through or 0.0, now, SWEEP_BATCH
            )
            deadline = next_expected + monitor.grace
            if is_stuck(monitor, facts, now):
                pending = 0  # skipped, as plan_sweep will record them
    elif facts.first_checkin is None:
        # Never checked in: show when the first run is expected, if the
        # schedule says (an interval schedule is anchored on arrivals).
        next_expected = _first_expected(monitor, now)
        deadline = next_expected + monitor.grace if next_expected is not None else None

    consecutive_bad = facts.consecutive_bad + pending
    alerting = facts.alerting or (pending > 0 and consecutive_bad >= monitor.failure_threshold)
    last_bad = Outcome.MISSED if pending else facts.last_bad_outcome
    running = len(facts.open_runs)

    if monitor.paused:
        status = Status.PAUSED
    elif facts.first_checkin is None and not alerting:
        status = Status.NEW
    elif is_stuck(monitor, facts, now):
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
