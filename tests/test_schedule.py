"""Pure schedule math: slots, arrivals, DST in several zones. No I/O."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from exporter.evaluate import plan_arrival
from exporter.model import CronSchedule, IntervalSchedule, Monitor
from exporter.schedule import ScheduleError, latest_slot_at_or_before, missed_slots, next_slot, validate_cron


def at(zone: str, *args, fold: int = 0) -> float:
    return datetime(*args, tzinfo=ZoneInfo(zone), fold=fold).timestamp()


def local(zone: str, instant: float) -> str:
    return datetime.fromtimestamp(instant, ZoneInfo(zone)).isoformat()


def ticks(schedule, start: float, count: int) -> list[str]:
    out, t = [], start
    for _ in range(count):
        t = next_slot(schedule, t)
        out.append(local(schedule.timezone, t))
    return out


class TestInterval:
    def test_next_slot_is_one_interval_after(self):
        assert next_slot(IntervalSchedule(300), 1000.0) == 1300.0

    def test_missed_slots_counts_every_passed_deadline(self):
        # accounted at 0, interval 10, grace 2: deadlines at 12, 22, 32 are <= 35
        assert missed_slots(IntervalSchedule(10), 2, 0.0, 35.0, 100) == (3, 30.0, 40.0)

    def test_missed_slots_deadline_exactly_now_counts(self):
        assert missed_slots(IntervalSchedule(10), 2, 0.0, 12.0, 100) == (1, 10.0, 20.0)

    def test_missed_slots_is_bounded(self):
        count, last, upcoming = missed_slots(IntervalSchedule(1), 0, 0.0, 1e6, 50)
        assert (count, last, upcoming) == (50, 50.0, 51.0)


class TestCronDst:
    """Spring-forward and fall-back in two zones each side of the Atlantic
    (different transition dates and times) and one half-hour shift."""

    @pytest.mark.parametrize(
        "zone, day_before, expected",
        [
            # US: 2026-03-08 02:00 -> 03:00. 02:30 does not exist: fires at 03:00.
            ("America/New_York", (2026, 3, 7, 12), ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
            # EU: 2026-03-29 02:00 -> 03:00.
            ("Europe/Berlin", (2026, 3, 28, 12), ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
        ],
    )
    def test_spring_forward_skipped_time_fires_after_the_gap(self, zone, day_before, expected):
        schedule = CronSchedule("30 2 * * *", zone)
        assert ticks(schedule, at(zone, *day_before), 2) == expected

    @pytest.mark.parametrize(
        "zone, day_before, expected",
        [
            # US: 2026-11-01 02:00 EDT -> 01:00 EST; 01:30 happens twice, fires once.
            ("America/New_York", (2026, 10, 31, 12), ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
            # EU: 2026-10-25 03:00 CEST -> 02:00 CET; 02:30 happens twice.
            ("Europe/Berlin", (2026, 10, 24, 12), ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
        ],
    )
    def test_fall_back_repeated_time_fires_once(self, zone, day_before, expected):
        schedule = CronSchedule("30 2 * * *" if zone == "Europe/Berlin" else "30 1 * * *", zone)
        assert ticks(schedule, at(zone, *day_before), 2) == expected

    def test_fixed_time_job_keeps_local_time_across_both_transitions(self):
        schedule = CronSchedule("0 3 * * *", "Europe/Berlin")
        got = ticks(schedule, at("Europe/Berlin", 2026, 3, 27, 12), 3)
        assert got == ["2026-03-28T03:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T03:00:00+02:00"]
        got = ticks(schedule, at("Europe/Berlin", 2026, 10, 24, 12), 2)
        assert got == ["2026-10-25T03:00:00+01:00", "2026-10-26T03:00:00+01:00"]

    def test_wildcard_job_runs_in_both_passes_of_a_repeated_hour(self):
        # cronie runs wildcard jobs by the wall clock: the repeated
        # 01:00-01:59 happens twice, and so do its ticks.
        zone = "America/New_York"
        got = ticks(CronSchedule("*/20 * * * *", zone), at(zone, 2026, 11, 1, 0, 50), 7)
        assert got == [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:20:00-04:00",
            "2026-11-01T01:40:00-04:00",
            "2026-11-01T01:00:00-05:00",
            "2026-11-01T01:20:00-05:00",
            "2026-11-01T01:40:00-05:00",
            "2026-11-01T02:00:00-05:00",
        ]

    @pytest.mark.parametrize("expression, zone, start, expected", [
        # The example: cronie's next run is 03:30, not 03:00.
        ("30 * * * *", "Europe/Berlin", (2027, 3, 28, 1, 30), ["2027-03-28T03:30:00+02:00"]),
        # Every tick of the 02:xx hour is in the gap: none that day.
        ("*/15 2 * * *", "Europe/Berlin", (2027, 3, 27, 12), ["2027-03-29T02:00:00+02:00"]),
        ("*/15 2 * * *", "America/New_York", (2027, 3, 13, 12), ["2027-03-15T02:00:00-04:00"]),
        ("*/15 2 * * *", "Australia/Sydney", (2027, 10, 2, 12), ["2027-10-04T02:00:00+11:00"]),
        # Chatham (+12:45 -> +13:45 at 02:45): @hourly has no 03:00 that day.
        ("@hourly", "Pacific/Chatham", (2027, 9, 26, 2, 30), ["2027-09-26T04:00:00+13:45"]),
        # A fixed-time job still runs right after the gap.
        ("30 2 * * *", "Europe/Berlin", (2027, 3, 27, 12), ["2027-03-28T03:00:00+02:00"]),
    ])
    def test_wildcard_ticks_in_a_gap_do_not_happen(self, expression, zone, start, expected):
        assert ticks(CronSchedule(expression, zone), at(zone, *start), len(expected)) == expected

    def test_fixed_time_job_runs_once_in_a_repeated_hour(self):
        zone = "Europe/Berlin"
        got = ticks(CronSchedule("30 2 * * *", zone), at(zone, 2027, 10, 30, 12), 2)
        assert got == ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"]

    def test_sub_hourly_job_through_spring_forward_collapses_gap(self):
        zone = "America/New_York"
        got = ticks(CronSchedule("*/20 * * * *", zone), at(zone, 2026, 3, 8, 1, 30), 3)
        assert got == ["2026-03-08T01:40:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:20:00-04:00"]

    def test_half_hour_dst_zone(self):
        # Lord Howe Island shifts by 30 minutes: 2026-10-04 02:00 -> 02:30.
        zone = "Australia/Lord_Howe"
        got = ticks(CronSchedule("15 2 * * *", zone), at(zone, 2026, 10, 3, 12), 2)
        assert got == ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]

    def test_hourly_job_has_no_duplicate_slot_in_gap(self):
        zone = "Europe/Berlin"
        got = ticks(CronSchedule("0 * * * *", zone), at(zone, 2026, 3, 29, 0, 30), 3)
        assert got == ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]

    def test_latest_slot_inside_second_pass_of_fold(self):
        zone = "America/New_York"
        second_pass = at(zone, 2026, 11, 1, 1, 10, fold=1)  # 01:10 EST, after 01:40 EDT
        got = latest_slot_at_or_before(CronSchedule("*/20 * * * *", zone), second_pass)
        assert local(zone, got) == "2026-11-01T01:00:00-05:00"  # the second pass's own tick
        got = latest_slot_at_or_before(CronSchedule("50 * * * *", zone), second_pass)
        assert local(zone, got) == "2026-11-01T01:50:00-04:00"  # first pass, 20 minutes earlier
        got = latest_slot_at_or_before(CronSchedule("30 1 * * *", zone), second_pass)
        assert local(zone, got) == "2026-11-01T01:30:00-04:00"

    def test_latest_slot_after_gap_maps_to_gap_end(self):
        zone = "America/New_York"
        got = latest_slot_at_or_before(CronSchedule("30 2 * * *", zone), at(zone, 2026, 3, 8, 3, 5))
        assert local(zone, got) == "2026-03-08T03:00:00-04:00"

    def test_every_slot_is_strictly_increasing_over_a_year(self):
        for zone in ("America/New_York", "Australia/Sydney"):
            schedule = CronSchedule("0 * * * *", zone)
            t = at(zone, 2026, 1, 1, 0, 0)
            previous = t
            for _ in range(365 * 24):
                t = next_slot(schedule, t)
                assert t > previous
                # an hour apart, except across a fall-back fold (the repeated
                # wall-clock hour has no slots of its own)
                assert t - previous in (3600, 7200)
                previous = t


class TestArrivalPlan:
    schedule = CronSchedule("0 3 * * *", "UTC")
    slot = at("UTC", 2026, 6, 15, 3, 0)
    day = 86400.0

    def plan(self, arrival, grace=300.0):
        return plan_arrival(Monitor(id="m", schedule=self.schedule, grace=grace), arrival)

    def test_on_time(self):
        plan = self.plan(self.slot + 5)
        assert plan.first == (self.slot, self.slot + self.day)
        assert plan.candidates == ((self.slot, self.slot + self.day),)

    def test_early_within_grace_offers_the_coming_slot(self):
        plan = self.plan(self.slot - 299)
        assert plan.first == (self.slot, self.slot + self.day)
        assert plan.candidates == ((self.slot - self.day, self.slot), (self.slot, self.slot + self.day))

    def test_too_early_offers_only_the_previous_slot(self):
        plan = self.plan(self.slot - 301)
        assert plan.candidates == ((self.slot - self.day, self.slot),)

    def test_late_offers_the_slot_it_is_late_for(self):
        assert self.plan(self.slot + 3600).first == (self.slot, self.slot + self.day)

    def test_interval_arrival_anchors(self):
        plan = plan_arrival(Monitor(id="m", schedule=IntervalSchedule(60)), 1000.0)
        assert plan.anchored and plan.first == (1000.0, 1060.0)

    def test_with_slot_adds_a_candidate(self):
        plan = self.plan(self.slot).with_slot(self.schedule, self.slot - self.day)
        assert plan.candidates[-1] == (self.slot - self.day, self.slot)


class TestValidation:
    def test_never_firing_expression(self):
        with pytest.raises(ScheduleError, match="never fires"):
            validate_cron("0 0 30 2 *", "UTC", at("UTC", 2026, 1, 1))

    def test_six_fields_rejected(self):
        with pytest.raises(ScheduleError, match="must have 5 fields"):
            validate_cron("0 0 3 * * *", "UTC", 0)

    def test_bad_field(self):
        with pytest.raises(ScheduleError, match="is not valid"):
            validate_cron("61 * * * *", "UTC", 0)

    def test_macro_accepted(self):
        validate_cron("@daily", "Europe/Berlin", at("UTC", 2026, 1, 1))
        assert next_slot(CronSchedule("@daily", "UTC"), at("UTC", 2026, 1, 1, 12)) == at("UTC", 2026, 1, 2)


def test_month_of_daily_slots_is_exactly_one_per_day_across_dst():
    zone = "Europe/Berlin"
    schedule = CronSchedule("0 3 * * *", zone)
    start = at(zone, 2026, 3, 15, 12)
    got = ticks(schedule, start, 31)
    days = [datetime.fromisoformat(s) for s in got]
    assert all(d.hour == 3 and d.minute == 0 for d in days)
    assert [d.date() for d in days] == [(days[0] + timedelta(days=i)).date() for i in range(31)]


def _field_matches(field: str, value: int) -> bool:
    """A cron field against a value: `*`, `*/n`, `a`, `a-b`, lists (enough
    for the expressions below; written apart from croniter on purpose)."""
    for part in field.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            low, high = 0, 59
        elif "-" in base:
            low, high = map(int, base.split("-"))
        else:
            low = high = int(base)
        if low <= value <= high and (value - low) % int(step or 1) == 0:
            return True
    return False


def _cronie_slots(expression: str, zone: str, start: float, end: float) -> list[float]:
    """The oracle: every minute of real time the job runs under cronie's
    DST rules, found by walking UTC minute by minute. Wildcard jobs run
    whenever the wall clock shows a matching minute; fixed-time jobs once
    per matching wall time, and right after a gap that swallowed it."""
    minute_field, hour_field = expression.split()[:2]
    wildcard = minute_field.startswith("*") or hour_field.startswith("*")
    tz = ZoneInfo(zone)
    found, seen, t = [], set(), start - start % 60 + 60
    previous_wall = datetime.fromtimestamp(t - 60, tz).replace(tzinfo=None)
    while t <= end:
        wall = datetime.fromtimestamp(t, tz).replace(tzinfo=None)
        due = _field_matches(minute_field, wall.minute) and _field_matches(hour_field, wall.hour)
        if wildcard:
            if due:
                found.append(t)
        else:
            skipped = [
                previous_wall + timedelta(minutes=m)
                for m in range(1, int((wall - previous_wall).total_seconds() // 60))
            ]
            if (due and wall not in seen) or any(
                _field_matches(minute_field, w.minute) and _field_matches(hour_field, w.hour) for w in skipped
            ):
                found.append(t)
            seen.add(wall)
        previous_wall = wall
        t += 60
    return found


@pytest.mark.parametrize("zone", [
    "Europe/Berlin", "America/New_York", "Australia/Sydney", "America/Santiago", "Pacific/Chatham", "UTC",
])
@pytest.mark.parametrize("expression", ["30 * * * *", "*/15 2 * * *", "0 * * * *", "30 2 * * *", "0 1 * * *"])
def test_slots_match_cronie_around_every_dst_change_of_2027(zone, expression):
    """Two days around each transition of 2027 in six zones (a half-hour
    DST and a 45-minute-offset zone, both hemispheres), against the oracle."""
    tz = ZoneInfo(zone)
    hour, transitions = 3600.0, []
    t = datetime(2027, 1, 1, tzinfo=tz).timestamp()
    while t < datetime(2028, 1, 1, tzinfo=tz).timestamp():
        if datetime.fromtimestamp(t, tz).utcoffset() != datetime.fromtimestamp(t + hour, tz).utcoffset():
            transitions.append(t)
        t += hour
    if zone == "UTC":
        transitions = [datetime(2027, 6, 15, tzinfo=tz).timestamp()]
    assert transitions
    schedule = CronSchedule(expression, zone)
    for transition in transitions:
        start, end = transition - 86400, transition + 86400
        expected = _cronie_slots(expression, zone, start, end)
        got, t = [], start
        while True:
            t = next_slot(schedule, t)
            if t > end:
                break
            got.append(t)
        assert [local(zone, x) for x in got] == [local(zone, x) for x in expected], local(zone, transition)
        # ... and the backward search agrees with the forward one.
        for slot in got[1:]:
            assert latest_slot_at_or_before(schedule, slot + 59) == slot
