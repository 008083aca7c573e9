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

    def test_sub_hourly_job_through_fall_back_skips_second_pass(self):
        zone = "America/New_York"
        got = ticks(CronSchedule("*/20 * * * *", zone), at(zone, 2026, 11, 1, 0, 50), 6)
        assert got == [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:20:00-04:00",
            "2026-11-01T01:40:00-04:00",
            "2026-11-01T02:00:00-05:00",  # the repeated 01:00-01:59 (EST) has no slots
            "2026-11-01T02:20:00-05:00",
            "2026-11-01T02:40:00-05:00",
        ]

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
        assert local(zone, got) == "2026-11-01T01:40:00-04:00"
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
