"""Pure schedule math: which slot an arrival accounts for, when the next one is.

Every function takes the instants it needs as arguments (float epoch
seconds, UTC) and does no I/O, so DST and edge cases are tested exhaustively
without clocks or sleeps.

Cron and DST. A cron expression describes wall-clock times in the
monitor's zone, so we iterate it on *naive local* times (croniter never
sees a time zone) and convert each tick to an instant ourselves, the way
cronie (cron.c) runs jobs across a DST change of less than three hours.
cronie tells two kinds of job apart (entry.c: MIN_STAR / HR_STAR):

* Fixed-time jobs (neither the minute nor the hour field starts with `*`,
  e.g. `30 2 * * *`): a wall-clock time that happens twice (autumn
  fall-back) fires once, at its first occurrence (fold=0); one that does
  not exist (spring-forward gap) fires at the first instant after the gap,
  when cronie runs the jobs it skipped. Several ticks inside one gap
  collapse into that instant. With that mapping instants are a
  non-decreasing function of naive local times, which is what makes the
  forward and backward searches of `_fixed_*` correct.
* Wildcard jobs (`30 * * * *`, `*/15 2 * * *`, `@hourly`): they run by the
  wall clock. A tick inside a gap simply does not happen (no slot: the
  job does not run then, so expecting it would page falsely), and a tick
  inside a repeated hour happens in both passes (two slots: the job runs
  twice). See `_wild_*`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

from .model import CronSchedule, IntervalSchedule, Schedule

# Enough ticks to cross any DST gap or fold for an every-minute expression
# many times over; only an expression that can never fire exhausts it, and
# config validation rejects those.
_MAX_TICKS = 10_000

_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class ScheduleError(ValueError):
    """A schedule that cannot be used (bad expression, no next tick)."""


def validate_cron(expression: str, timezone: str, now: float) -> None:
    """Raise ScheduleError unless `expression` is a 5-field cron expression
    (or @macro) that fires at least once after `now` in `timezone`."""
    expr = expression.strip()
    if expr.lower() not in _MACROS and len(expr.split()) != 5:
        raise ScheduleError(
            f"cron expression {expression!r} must have 5 fields "
            "(minute hour day-of-month month day-of-week) or be an @macro such as @daily"
        )
    if not croniter.is_valid(expr):
        raise ScheduleError(f"cron expression {expression!r} is not valid")
    try:
        next_slot(CronSchedule(expr, timezone), now)
    except ScheduleError:
        raise
    except Exception as exc:  # croniter raises its own errors for e.g. "0 0 30 2 *"
        raise ScheduleError(f"cron expression {expression!r} never fires") from exc


_MACRO_FIELDS = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *",
}


@lru_cache(maxsize=4096)
def is_wildcard(expression: str) -> bool:
    """cronie's MIN_STAR / HR_STAR: the minute or the hour field starts with
    `*` (so `*/15 2 * * *` and `@hourly` are wildcard jobs, `30 2 * * *`
    and `@daily` fixed-time ones)."""
    text = expression.strip().lower()
    fields = _MACRO_FIELDS.get(text, text).split()
    return fields[0].startswith("*") or fields[1].startswith("*")


def next_slot(schedule: Schedule, after: float) -> float:
    """The first expected slot strictly after `after`.

    For an interval schedule `after` is the last accounted slot (an arrival
    or a missed slot), so the next one is one interval later.
    """
    if isinstance(schedule, IntervalSchedule):
        return after + schedule.seconds
    return _cron_next_slot(schedule, after)


# Cron iteration costs ~100 µs a call, and the same few ticks are asked for
# over and over (every ping of a monitor until its next slot). Ticks are a
# pure function of (schedule, instant), so caching them is always correct.
@lru_cache(maxsize=16384)
def _cron_next_slot(schedule: CronSchedule, after: float) -> float:
    if is_wildcard(schedule.expression):
        return _wild_next(schedule, after)
    return _fixed_next(schedule, after)


def _fixed_next(schedule: CronSchedule, after: float) -> float:
    zone = schedule.zone
    after_dt = datetime.fromtimestamp(after, UTC)
    start_local = after_dt.astimezone(zone).replace(tzinfo=None)
    # A naive tick later than the local time of `after` maps to an instant >=
    # `after` (the mapping is monotonic), except inside a fold where `after`
    # is the second occurrence: those ticks map to their first occurrence,
    # which is earlier, and are skipped by the comparison below.
    ticks = croniter(schedule.expression, start_local)
    for _ in range(_MAX_TICKS):
        instant = _local_to_instant(ticks.get_next(datetime), zone)
        if instant > after:
            return instant
    raise ScheduleError(f"cron expression {schedule.expression!r} never fires")


# Per schedule, the last (tick, next tick) found: most look-ups fall in it.
_last_window: dict[CronSchedule, tuple[float, float]] = {}


def latest_slot_at_or_before(schedule: CronSchedule, instant: float) -> float:
    window = _last_window.get(schedule)
    if window is not None and window[0] <= instant < window[1]:
        return window[0]
    if is_wildcard(schedule.expression):
        found = _wild_latest(schedule, instant)
    else:
        found = _fixed_latest(schedule, instant)
    _last_window[schedule] = (found, next_slot(schedule, found))
    return found


def _wall_instants(naive: datetime, zone: ZoneInfo) -> list[float]:
    """The instants at which the wall clock of `zone` reads `naive`, in
    order: none in a gap, two in a repeated hour, else one."""
    found: list[float] = []
    for fold in (0, 1):
        instant = naive.replace(tzinfo=zone, fold=fold).timestamp()
        if instant not in found and datetime.fromtimestamp(instant, zone).replace(tzinfo=None) == naive:
            found.append(instant)
    return sorted(found)


def _repeated_shift(moment: datetime) -> timedelta:
    """How much wall-clock time repeats at `moment` (an aware local time):
    the DST shift if it lies in a repeated hour, else zero."""
    other = moment.replace(fold=1 - moment.fold)
    shift = abs(moment.utcoffset() - other.utcoffset())  # type: ignore[operator]
    return shift


def _wild_next(schedule: CronSchedule, after: float) -> float:
    """The first instant after `after` at which the wall clock shows a tick."""
    zone = schedule.zone
    moment = datetime.fromtimestamp(after, zone)
    naive = moment.replace(tzinfo=None)
    shift = _repeated_shift(moment)
    ticks = croniter(schedule.expression, naive - shift if moment.fold == 0 and shift else naive)
    if moment.fold == 0 and shift:
        # `after` is in the first pass of a repeated hour: the second pass
        # replays wall times from before `naive`, and those slots may come
        # before the first pass's next ones. Take the least of both.
        best: float | None = None
        for _ in range(_MAX_TICKS):
            tick = ticks.get_next(datetime)
            if tick > naive + shift:
                break
            for instant in _wall_instants(tick, zone):
                if instant > after and (best is None or instant < best):
                    best = instant
        if best is not None:
            return best
        ticks = croniter(schedule.expression, naive + shift)
    for _ in range(_MAX_TICKS):
        later = [i for i in _wall_instants(ticks.get_next(datetime), zone) if i > after]
        if later:
            return later[0]
    raise ScheduleError(f"cron expression {schedule.expression!r} never fires")


def _wild_latest(schedule: CronSchedule, instant: float) -> float:
    """The last instant at or before `instant` at which the wall clock
    showed a tick."""
    zone = schedule.zone
    moment = datetime.fromtimestamp(instant, zone)
    naive = moment.replace(tzinfo=None)
    shift = _repeated_shift(moment)
    if moment.fold == 1 and shift:
        # In the second pass: first-pass instants of wall times after
        # `naive` are earlier than `instant` too. Take the greatest.
        ticks = croniter(schedule.expression, naive + shift + timedelta(seconds=1))
        best: float | None = None
        for _ in range(_MAX_TICKS):
            tick = ticks.get_prev(datetime)
            if tick < naive - shift:
                break
            for found in _wall_instants(tick, zone):
                if found <= instant and (best is None or found > best):
                    best = found
        if best is not None:
            return best
        ticks = croniter(schedule.expression, naive - shift)
    else:
        ticks = croniter(schedule.expression, naive + timedelta(seconds=1))
    for _ in range(_MAX_TICKS):
        earlier = [i for i in _wall_instants(ticks.get_prev(datetime), zone) if i <= instant]
        if earlier:
            return earlier[-1]
    raise ScheduleError(f"cron expression {schedule.expression!r} never fires")


def _fixed_latest(schedule: CronSchedule, instant: float) -> float:
    zone = schedule.zone
    at = datetime.fromtimestamp(instant, UTC).astimezone(zone)
    upper_local = at.replace(tzinfo=None)
    if at.fold:
        # `instant` is in the second pass of a repeated hour: ticks up to one
        # fold length later on the naive clock map to first-pass instants that
        # are still before `instant`, so start the backward search above them.
        first_pass = at.replace(fold=0)
        upper_local += _offset(first_pass) - _offset(at)
    ticks = croniter(schedule.expression, upper_local + timedelta(seconds=1))
    for _ in range(_MAX_TICKS):
        found = _local_to_instant(ticks.get_prev(datetime), zone)
        if found <= instant:
            return found
    raise ScheduleError(f"cron expression {schedule.expression!r} never fires")


def missed_slots(
    schedule: Schedule, grace: float, accounted_through: float, now: float, limit: int
) -> tuple[int, float, float]:
    """Slots after `accounted_through` whose deadline (slot + grace) is at or
    before `now`: returns (how many, the last of them, the slot after it).

    At most `limit` slots are walked; a caller that gets `limit` back calls
    again from the returned slot (the sweeper does, so work per call stays
    bounded even after a long outage).
    """
    count = 0
    last = accounted_through
    upcoming = next_slot(schedule, last)
    while count < limit and upcoming + grace <= now:
        count += 1
        last = upcoming
        upcoming = next_slot(schedule, last)
    return count, last, upcoming


def _local_to_instant(naive: datetime, zone: ZoneInfo) -> float:
    """Map a naive wall-clock time in `zone` to an instant (see module doc)."""
    first = naive.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        return first.timestamp()
    # `naive` falls in a gap. fold=0 reads it with the offset from before the
    # gap and fold=1 with the offset after it; the transition lies between
    # the two readings. Bisect to the exact second.
    low = naive.replace(tzinfo=zone, fold=1).timestamp()
    high = first.timestamp()
    low, high = min(low, high), max(low, high)
    before = datetime.fromtimestamp(low, zone).utcoffset()
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            low = mid
        else:
            high = mid
    return float(high)


def _offset(moment: datetime) -> timedelta:
    """The UTC offset of an aware datetime (never None for a ZoneInfo one)."""
    offset = moment.utcoffset()
    assert offset is not None
    return offset
