"""Core + store against a real redis-server: pairing, accounting, sweeps,
thresholds, caps, restarts. `now` is injected; nothing sleeps."""

import asyncio
import random

import pytest

from exporter.core import Core
from exporter.errors import StoreUnavailable
from exporter.evaluate import SWEEP_BATCH, evaluate
from exporter.model import CLOCK_SKEW_ALLOWANCE as SKEW
from exporter.model import CheckIn, Kind, Status
from exporter.store import Store, StoreLimits, connect
from exporter.sweeper import Sweeper

from .conftest import BACKENDS, T0, free_port, registry_from, write_config


async def _keys(client, pattern: str) -> list[str]:
    """Every key matching `pattern`, on every primary of a cluster too."""
    if hasattr(client, "get_primaries"):
        await client.initialize()  # the nodes are known once it connected
        return [key for node in client.get_primaries()
                for key in await client.keys(pattern, target_nodes=node)]
    return await client.keys(pattern)


def pytest_generate_tests(metafunc):
    """The core test-suite runs on one Redis, on Sentinel and on a cluster
    (every test of this module that uses the store)."""
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)

HOURLY = """
monitors:
  - id: job
    schedule: {interval: 1h}
    grace: 5m
    max_runtime: 10m
"""


def ci(kind: Kind, at: float, **kw) -> CheckIn:
    return CheckIn(monitor_id=kw.pop("monitor_id", "job"), kind=kind, received_at=at, **kw)


async def status(core: Core, monitor_id: str = "job", now: float | None = None) -> Status:
    facts = await core.store.facts(monitor_id)
    return evaluate(core.registry.monitors[monitor_id], facts, core.clock() if now is None else now).status


class TestRuns:
    async def test_start_then_success_pairs_and_measures(self, make_core, clock):
        core = make_core(HOURLY)
        await core.record(ci(Kind.START, T0))
        assert await status(core, now=T0 + 1) is Status.RUNNING
        result = await core.record(ci(Kind.SUCCESS, T0 + 42.5))
        assert result.duration == pytest.approx(42.5)
        facts = await core.store.facts("job")
        assert facts.open_runs == ()
        assert facts.last_duration == pytest.approx(42.5)
        assert facts.last_start == T0 and facts.last_success == T0 + 42.5
        assert facts.outcomes == {"ok": 1}
        assert facts.checkins == {"start": 1, "success": 1}
        assert facts.accounted_through == T0  # the start was the arrival
        assert facts.next_slot == T0 + 3600
        assert facts.duration_count == 1 and facts.duration_sum == pytest.approx(42.5)
        # 42.5s falls in the le=60 bucket (index 4 of DURATION_BUCKETS)
        assert facts.duration_buckets[4] == 1 and sum(facts.duration_buckets) == 1

    async def test_overlapping_runs_pair_by_run_id(self, make_core):
        core = make_core(HOURLY)
        await core.record(ci(Kind.START, T0, run_id="r1"))
        await core.record(ci(Kind.START, T0 + 10, run_id="r2"))
        assert len((await core.store.facts("job")).open_runs) == 2
        r2 = await core.record(ci(Kind.FAIL, T0 + 15, run_id="r2", exit_code=3))
        assert r2.duration == pytest.approx(5)
        facts = await core.store.facts("job")
        assert [run.run_id for run in facts.open_runs] == ["r1"]
        assert facts.last_exit_code == 3 and facts.last_failure == T0 + 15
        r1 = await core.record(ci(Kind.SUCCESS, T0 + 100, run_id="r1"))
        assert r1.duration == pytest.approx(100)
        assert (await core.store.facts("job")).outcomes == {"error": 1, "ok": 1}

    async def test_completion_without_run_id_closes_newest_open_run(self, make_core):
        core = make_core(HOURLY)
        await core.record(ci(Kind.START, T0, run_id="old"))
        await core.record(ci(Kind.START, T0 + 20, run_id="new"))
        result = await core.record(ci(Kind.SUCCESS, T0 + 30))
        assert result.run_id == "new" and result.duration == pytest.approx(10)
        assert [r.run_id for r in (await core.store.facts("job")).open_runs] == ["old"]

    async def test_completion_without_start_is_an_arrival(self, make_core):
        core = make_core(HOURLY)
        result = await core.record(ci(Kind.SUCCESS, T0))
        facts = await core.store.facts("job")
        assert result.duration is None and facts.last_duration is None
        assert facts.accounted_through == T0 and facts.outcomes == {"ok": 1}

    async def test_new_anonymous_start_replaces_the_previous_one(self, make_core):
        core = make_core(HOURLY)
        await core.record(ci(Kind.START, T0))
        await core.record(ci(Kind.START, T0 + 60))
        facts = await core.store.facts("job")
        assert len(facts.open_runs) == 1 and facts.open_runs[0].started == T0 + 60
        result = await core.record(ci(Kind.SUCCESS, T0 + 70))
        assert result.duration == pytest.approx(10)
        history = await core.store.history("job")
        assert "replaced" in history[1]

    async def test_a_run_id_of_any_text_comes_back_whole(self, make_core):
        """record.lua answers one text with the run id last: an id with
        line breaks and spaces (adapters pass clients' ids through) comes
        back as it went in, in an answer and in a duplicate's."""
        core = make_core(HOURLY)
        odd = "run 1\nok\n7\n"
        started = await core.record(ci(Kind.START, T0, run_id=odd))
        assert (started.status, started.run_id) == ("ok", odd)
        again = await core.record(ci(Kind.START, T0 + 1, run_id=odd))
        assert (again.status, again.run_id) == ("duplicate", odd)
        done = await core.record(ci(Kind.SUCCESS, T0 + 5, run_id=odd))
        assert (done.status, done.run_id, done.duration) == ("ok", odd, pytest.approx(5))

    async def test_retried_start_and_completion_change_nothing(self, make_core):
        core = make_core(HOURLY)
        await core.record(ci(Kind.START, T0, run_id="r"))
        assert (await core.record(ci(Kind.START, T0 + 1, run_id="r"))).status == "duplicate"
        await core.record(ci(Kind.SUCCESS, T0 + 5, run_id="r"))
        before = await core.store.facts("job")
        assert (await core.record(ci(Kind.SUCCESS, T0 + 6, run_id="r"))).status == "duplicate"
        after = await core.store.facts("job")
        assert after == before
        assert after.outcomes == {"ok": 1} and after.open_runs[0:] == ()

    async def test_log_checkin_keeps_body_and_is_no_arrival(self, make_core):
        core = make_core(HOURLY)
        result = await core.record(ci(Kind.LOG, T0, log="step 1 done"))
        facts = await core.store.facts("job")
        assert facts.accounted_through is None and facts.checkins == {"log": 1}
        assert await core.store.log("job", result.seq) == "step 1 done"
        # A log says nothing about the job running: still new (as in Healthchecks).
        assert await status(core, now=T0 + 1) is Status.NEW

    async def test_open_runs_are_capped(self, make_core):
        core = make_core(HOURLY)  # test store caps open runs at 5
        for i in range(7):
            await core.record(ci(Kind.START, T0 + i, run_id=f"r{i}"))
        runs = (await core.store.facts("job")).open_runs
        assert [r.run_id for r in runs] == ["r2", "r3", "r4", "r5", "r6"]


class TestMissedAndThresholds:
    async def test_missed_slot_recorded_once_and_recovery(self, make_core, clock):
        core = make_core(HOURLY)
        await core.record(ci(Kind.SUCCESS, T0))
        for clock.now in (T0 + 3600 + 299, T0 + 3600 + 300 + SKEW - 0.01):  # late, within the skew allowance
            assert await core.sweep(core.registry.monitors["job"], clock.now) == 0
            assert await status(core) is Status.LATE
        clock.now = T0 + 3600 + 300 + SKEW
        assert await core.sweep(core.registry.monitors["job"], clock.now) == 1
        assert await core.sweep(core.registry.monitors["job"], clock.now) == 0
        facts = await core.store.facts("job")
        assert facts.outcomes["missed"] == 1 and facts.consecutive_bad == 1 and facts.alerting
        assert await status(core) is Status.DOWN
        clock.now += 10
        await core.record(ci(Kind.SUCCESS, clock.now))
        assert await status(core) is Status.UP
        facts = await core.store.facts("job")
        assert facts.consecutive_bad == 0 and not facts.alerting
        assert facts.next_slot == clock.now + 3600  # interval re-anchors on the arrival

    async def test_failure_and_recovery_thresholds(self, make_core, clock):
        core = make_core(HOURLY.replace("max_runtime: 10m", "failure_threshold: 3\n    recovery_threshold: 2"))
        t = T0
        for i in range(2):
            await core.record(ci(Kind.FAIL, t + i))
        assert await status(core, now=t + 5) is Status.UP  # 2 of 3 bad
        await core.record(ci(Kind.FAIL, t + 3))
        assert await status(core, now=t + 5) is Status.FAILED
        await core.record(ci(Kind.SUCCESS, t + 6))
        assert await status(core, now=t + 7) is Status.FAILED  # 1 of 2 good
        await core.record(ci(Kind.WARNING, t + 8))
        assert await status(core, now=t + 9) is Status.UP  # warning is good
        facts = await core.store.facts("job")
        assert facts.outcomes == {"error": 3, "ok": 1, "warning": 1}

    async def test_deadline_passed_before_checkin_is_recorded_first(self, make_core, clock):
        core = make_core(HOURLY)
        await core.record(ci(Kind.SUCCESS, T0))
        # No sweeper ran; the job comes back after its deadline passed.
        late = T0 + 3600 + 400
        await core.record(ci(Kind.SUCCESS, late))
        facts = await core.store.facts("job")
        assert facts.outcomes == {"ok": 2, "missed": 1}
        history = await core.store.history("job")
        assert [h["kind"] for h in history[:3]] == ["success", "missed", "success"]
        assert not facts.alerting  # missed, then recovered by the late success

    async def test_long_outage_counts_every_slot_across_batches(self, make_core, clock):
        core = make_core("monitors: [{id: job, schedule: {interval: 1s}, grace: 0}]")
        await core.record(ci(Kind.SUCCESS, T0))
        outage = 2 * SWEEP_BATCH + 345
        recorded = await core.sweep(core.registry.monitors["job"], T0 + outage + SKEW)
        recorded += await core.sweep(core.registry.monitors["job"], T0 + outage + SKEW)
        assert recorded == outage
        assert (await core.store.facts("job")).outcomes["missed"] == outage

    async def test_stuck_run_times_out_once_then_recovers(self, make_core, clock):
        core = make_core(HOURLY)
        job = core.registry.monitors["job"]
        await core.record(ci(Kind.START, T0, run_id="r"))
        clock.now = T0 + 600
        assert await status(core) is Status.RUNNING  # exactly max_runtime: still in time
        clock.now = T0 + 600.5
        assert await status(core) is Status.STUCK
        await core.sweep(job, clock.now)
        await core.sweep(job, clock.now + 1)
        facts = await core.store.facts("job")
        assert facts.outcomes == {"timeout": 1}
        assert facts.open_runs[0].timed_out
        assert await status(core) is Status.STUCK  # still open: still stuck
        clock.now = T0 + 900
        await core.record(ci(Kind.SUCCESS, clock.now, run_id="r"))
        assert await status(core) is Status.UP
        facts = await core.store.facts("job")
        assert facts.outcomes == {"timeout": 1, "ok": 1} and facts.last_duration == pytest.approx(900)

    async def test_a_timed_out_run_that_finishes_after_the_next_start_keeps_its_duration(self, make_core, clock):
        """With run ids the late end of a timed-out run still counts (its
        duration was lost when the next start gave it up): CronJobTooLong
        sees it, and it is not an arrival for any slot."""
        core = make_core(HOURLY)  # hourly, max_runtime 10m
        job = core.registry.monitors["job"]
        await core.record(ci(Kind.START, T0, run_id="a"))
        await core.sweep(job, T0 + 601)  # a times out
        await core.record(ci(Kind.START, T0 + 3600, run_id="b"))  # the next run; a is given up
        before = await core.store.facts("job")
        result = await core.record(ci(Kind.SUCCESS, T0 + 4300, run_id="a"))  # a finally ends
        facts = await core.store.facts("job")
        assert result.duration == pytest.approx(4300) and facts.last_duration == pytest.approx(4300)
        assert facts.accounted_through == before.accounted_through  # no slot taken
        assert [r.run_id for r in facts.open_runs] == ["b"]
        assert (await core.store.history("job"))[0]["started"] == T0
        assert (await core.record(ci(Kind.SUCCESS, T0 + 4301, run_id="a"))).status == "duplicate"
        await core.record(ci(Kind.SUCCESS, T0 + 3720 + 1000, run_id="b"))
        assert (await core.store.facts("job")).outcomes == {"timeout": 1, "ok": 2}

    async def test_hung_run_is_abandoned_when_the_job_runs_again(self, make_core, clock):
        core = make_core(HOURLY)
        await core.record(ci(Kind.START, T0, run_id="hung"))
        await core.sweep(core.registry.monitors["job"], T0 + 601)
        await core.record(ci(Kind.START, T0 + 3600, run_id="next"))
        facts = await core.store.facts("job")
        assert [r.run_id for r in facts.open_runs] == ["next"]
        assert await status(core, now=T0 + 3601) is Status.FAILED  # the timeout still counts
        await core.record(ci(Kind.SUCCESS, T0 + 3700, run_id="next"))
        assert await status(core, now=T0 + 3701) is Status.UP

    async def test_paused_monitor_skips_slots_without_recording(self, make_core, clock):
        core = make_core(HOURLY.replace("max_runtime: 10m", "paused: true"))
        await core.record(ci(Kind.SUCCESS, T0))
        await core.sweep(core.registry.monitors["job"], T0 + 5 * 3600)
        facts = await core.store.facts("job")
        assert "missed" not in facts.outcomes
        assert facts.accounted_through == T0 + 4 * 3600
        assert await status(core, now=T0 + 5 * 3600) is Status.PAUSED


class TestCronAccounting:
    """An arrival accounts for the first slot not yet accounted for."""

    FIVE_MINUTES = """
    monitors:
      - id: job
        schedule: {cron: "*/5 * * * *"}
        grace: 15m
    """

    async def test_grace_longer_than_interval_skips_no_slot(self, make_core, clock):
        core = make_core(self.FIVE_MINUTES)
        await core.record(ci(Kind.SUCCESS, T0))  # the 12:00 slot
        facts = await core.store.facts("job")
        assert (facts.accounted_through, facts.next_slot) == (T0, T0 + 300)
        await core.record(ci(Kind.SUCCESS, T0 + 300))  # on time for 12:05
        assert (await core.store.facts("job")).accounted_through == T0 + 300
        # The job dies: 12:10 is missed at 12:25, 12:15 at 12:30 - each one.
        job = core.registry.monitors["job"]
        assert await core.sweep(job, T0 + 600 + 900 + SKEW - 1) == 0
        assert await core.sweep(job, T0 + 600 + 900 + SKEW) == 1
        assert await core.sweep(job, T0 + 900 + 900 + SKEW) == 1

    async def test_late_arrival_counts_for_the_oldest_outstanding_slot(self, make_core, clock):
        core = make_core(self.FIVE_MINUTES)
        await core.record(ci(Kind.SUCCESS, T0))
        # 12 minutes later: late for 12:05 (and 12:10 is also due). It is not
        # among the planned candidates (12:10, 12:15): the store asks for it.
        await core.record(ci(Kind.SUCCESS, T0 + 720))
        facts = await core.store.facts("job")
        assert (facts.accounted_through, facts.next_slot) == (T0 + 300, T0 + 600)
        await core.record(ci(Kind.SUCCESS, T0 + 725))
        assert (await core.store.facts("job")).accounted_through == T0 + 600
        assert "missed" not in (await core.store.facts("job")).outcomes

    async def test_a_skipped_run_is_absorbed_when_grace_is_longer_than_the_interval(self, make_core, clock):
        """The documented trade-off (README, "How status is worked out"):
        with grace (15m) longer than the cron interval (5m), an arrival
        cannot tell a late run of an earlier slot from an on-time run of a
        later one. cronmon counts it for the oldest outstanding slot, so a
        job that is late never pages falsely; the price is that one skipped
        run followed by on-time runs is not a miss. It is not silent: the
        monitor stays one slot behind, `late` after every run."""
        core = make_core(self.FIVE_MINUTES)
        await core.record(ci(Kind.SUCCESS, T0))  # 12:00
        # 12:05 is skipped; the job runs on time at 12:10 and 12:15.
        for arrival in (T0 + 600, T0 + 900):
            await core.record(ci(Kind.SUCCESS, arrival))
            assert await status(core, now=arrival + 1) is Status.LATE
        facts = await core.store.facts("job")
        assert "missed" not in facts.outcomes
        assert facts.accounted_through == T0 + 600  # one behind: 12:10 is outstanding at 12:15
        # With a grace shorter than the interval the same skip is a miss.
        short = make_core(self.FIVE_MINUTES.replace("grace: 15m", "grace: 2m").replace("id: job", "id: job2"))
        await short.record(ci(Kind.SUCCESS, T0, monitor_id="job2"))
        await short.record(ci(Kind.SUCCESS, T0 + 600, monitor_id="job2"))
        assert (await short.store.facts("job2")).outcomes.get("missed") == 1

    async def test_extra_run_long_before_the_slot_accounts_for_nothing(self, make_core, clock):
        core = make_core(HOURLY.replace("interval: 1h", 'cron: "0 * * * *"'))
        await core.record(ci(Kind.SUCCESS, T0))
        await core.record(ci(Kind.SUCCESS, T0 + 1200))  # a manual re-run at 12:20
        facts = await core.store.facts("job")
        assert (facts.accounted_through, facts.next_slot) == (T0, T0 + 3600)
        assert facts.outcomes == {"ok": 2}

    async def test_first_arrival_slightly_early_counts_for_the_coming_slot(self, make_core, clock):
        core = make_core(HOURLY.replace("interval: 1h", 'cron: "0 * * * *"'))
        await core.record(ci(Kind.START, T0 - 20))
        facts = await core.store.facts("job")
        assert (facts.accounted_through, facts.next_slot) == (T0, T0 + 3600)


class TestCapsAndMeta:
    async def test_history_and_log_caps(self, make_core):
        core = make_core(HOURLY)  # test limits: history 20, logs 3
        seqs = []
        for i in range(25):
            seqs.append((await core.record(ci(Kind.LOG, T0 + i, log=f"line {i}"))).seq)
        history = await core.store.history("job", 0, 100)
        assert len(history) == 20 and history[0]["seq"] == seqs[-1]
        assert [await core.store.log("job", s) for s in seqs[-4:]] == [None, "line 22", "line 23", "line 24"]
        # The list is trimmed once a tenth over the cap (push_history), but
        # nothing past the cap is ever read: by offset, in pages, in details.
        length = await core.store.client.llen(core.store.key("job", "history"))
        assert 20 < length <= 22
        assert [e["seq"] for e in history] == seqs[:4:-1]
        assert await core.store.history("job", 19, 10) == history[19:]
        assert await core.store.history("job", 20, 10) == []
        page, more = await core.store.history_page("job", limit=100)
        assert page == history and not more
        details = await core.store.details(["job"], history=100)
        assert details["job"].history == history
        for i in range(25, 40):  # past cap + a tenth: trimmed back to the cap
            await core.record(ci(Kind.LOG, T0 + i))
        assert await core.store.client.llen(core.store.key("job", "history")) <= 22

    async def test_counts_kept_before_the_combined_fields_still_add_up(self, make_core):
        """A completion is counted once, by kind and outcome together
        (c:<kind>:<outcome>); stores written before counted it twice
        (c:<kind> and o:<outcome>). Counts in either form add up."""
        core = make_core(HOURLY)
        old = {"c:success": "5", "o:ok": "4", "o:silent_failure": "1", "c:start": "2"}
        await core.store.client.hset(core.store.key("job", "counters"), mapping=old)
        await core.record(ci(Kind.SUCCESS, T0))
        await core.record(ci(Kind.FAIL, T0 + 60))
        await core.record(ci(Kind.START, T0 + 120))
        facts = await core.store.facts("job")
        assert facts.checkins == {"success": 6, "fail": 1, "start": 3}
        assert facts.outcomes == {"ok": 5, "silent_failure": 1, "error": 1}

    async def test_only_run_ids_a_client_sent_are_remembered_as_closed(self, make_core):
        """A retried start or completion is known by its run id, so the
        recently closed runs hold the ids clients sent, also when the
        completion that closed the run came without it. An id cronmon made
        (a plain ping's, an anonymous start's) reaches no client to retry
        with: not kept, and not a duplicate if a client ever sends it."""
        core = make_core(HOURLY)
        closed_key = core.store.key("job", "closed")
        plain = await core.record(ci(Kind.SUCCESS, T0))  # a plain ping: the run id is made here
        await core.record(ci(Kind.START, T0 + 10))  # an anonymous start ...
        anonymous = await core.record(ci(Kind.SUCCESS, T0 + 20))  # ... closed without a run id
        await core.record(ci(Kind.START, T0 + 30, run_id="client-run"))
        await core.record(ci(Kind.SUCCESS, T0 + 40))  # closes client-run, without its id
        assert plain.run_id and anonymous.run_id
        assert await core.store.client.zrange(closed_key, 0, -1) == ["client-run"]
        assert (await core.record(ci(Kind.START, T0 + 50, run_id="client-run"))).status == "duplicate"
        assert (await core.record(ci(Kind.SUCCESS, T0 + 50, run_id="client-run"))).status == "duplicate"
        assert (await core.record(ci(Kind.SUCCESS, T0 + 60, run_id=plain.run_id))).status == "ok"
        # An anonymous start's id that a client then sent (it may have read
        # it in the events API) is the client's from then on: remembered.
        await core.record(ci(Kind.START, T0 + 70))
        (start_event,) = [e for e in await core.store.history("job") if e.get("kind") == "start" and e["t"] == T0 + 70]
        learned = start_event["run"]
        assert (await core.record(ci(Kind.SUCCESS, T0 + 80, run_id=learned))).status == "ok"
        assert (await core.record(ci(Kind.SUCCESS, T0 + 90, run_id=learned))).status == "duplicate"

    async def test_closed_runs_are_kept_to_their_cap_with_some_slack(self, make_core):
        """record.lua trims the recently closed runs at every 16th check-in:
        the set never holds more than 15 over the cap, and every run within
        the cap is still known, so its retried completion is a duplicate."""
        core = make_core(HOURLY)
        cap = core.store.limits.closed_runs
        closed_key = core.store.key("job", "closed")
        sizes = []
        for i in range(cap + 40):
            result = await core.record(ci(Kind.SUCCESS, T0 + i, run_id=f"run-{i}"))
            assert result.status == "ok"
            sizes.append(await core.store.client.zcard(closed_key))
        assert max(sizes) <= cap + 15 and min(sizes[cap:]) >= cap
        for i in range(40, cap + 40, 37):  # the newest `cap` runs
            again = await core.record(ci(Kind.SUCCESS, T0 + cap + 40, run_id=f"run-{i}"))
            assert again.status == "duplicate"
        first = await core.record(ci(Kind.SUCCESS, T0 + cap + 41, run_id="run-0"))
        assert first.status == "ok"  # long forgotten: a new completion

    async def test_truncated_log_is_flagged(self, make_core):
        core = make_core(HOURLY)
        await core.record(ci(Kind.SUCCESS, T0, log="x" * 10, log_truncated=True))
        assert (await core.store.history("job"))[0]["log_truncated"] is True

    async def test_meta_values_kept_and_capped(self, make_core):
        core = make_core(HOURLY)  # meta cap 4
        await core.record(ci(Kind.SUCCESS, T0, meta={"a": 1, "b": 2.5, "c": 3, "d": 4}))
        await core.record(ci(Kind.SUCCESS, T0 + 1, meta={"a": 7, "e": 5}))
        facts = await core.store.facts("job")
        assert facts.meta == {"a": 7.0, "b": 2.5, "c": 3.0, "d": 4.0}
        assert (await core.store.history("job"))[0]["meta_dropped"] is True


class TestConcurrency:
    async def test_two_sweepers_record_each_missed_slot_exactly_once(self, make_core, backend, prefix, clock):
        yaml = "monitors:\n" + "".join(
            f"  - {{id: m{i}, schedule: {{interval: {10 + i}s}}, grace: 1s}}\n" for i in range(30)
        )
        core_a = make_core(yaml)
        store_b = Store(connect(backend.url), prefix, core_a.store.limits)
        core_b = Core(store_b, core_a.registry, clock)
        for monitor_id in core_a.registry.monitors:
            await core_a.record(ci(Kind.SUCCESS, T0, monitor_id=monitor_id))
        sweeper_a, sweeper_b = Sweeper(core_a, clock=clock), Sweeper(core_b, clock=clock)
        rng = random.Random(7)
        for _ in range(60):
            clock.advance(rng.uniform(1, 9))
            await asyncio.gather(sweeper_a.run_once(), sweeper_b.run_once())
        end = clock.now
        for monitor in core_a.registry.monitors.values():
            interval = monitor.schedule.seconds
            # slots at T0 + k*interval whose deadline (+1s grace) is SKEW behind `end`
            expected = int((end - 1 - SKEW - T0) // interval)
            facts = await core_a.store.facts(monitor.id)
            assert facts.outcomes.get("missed", 0) == expected, monitor.id
        await store_b.close()

    async def test_restart_keeps_state_and_counters(self, make_core, backend, prefix, clock):
        core = make_core(HOURLY)
        await core.record(ci(Kind.START, T0, run_id="r"))
        await core.record(ci(Kind.FAIL, T0 + 5, run_id="r", exit_code=2))
        before = await core.store.facts("job")
        await core.store.close()
        reopened = Store(connect(backend.url), prefix)
        assert await reopened.facts("job") == before
        await reopened.close()


async def test_store_unavailable_is_reported_and_changes_nothing(make_core, tmp_path):
    dead = Store(connect(f"redis://127.0.0.1:{free_port()}/0"), "x", StoreLimits())
    core = make_core(HOURLY)
    core.store = dead
    with pytest.raises(StoreUnavailable, match="store unavailable"):
        await core.record(ci(Kind.SUCCESS, T0))
    with pytest.raises(StoreUnavailable):
        await dead.ping()
    await dead.close()


async def test_schedule_change_rebases_without_spurious_misses(store, clock, tmp_path):
    from .conftest import registry_from, write_config

    old = Core(store, registry_from(write_config(tmp_path, HOURLY), tmp_path), clock)
    await old.resync_all(T0)
    await old.record(ci(Kind.SUCCESS, T0))
    # An hour later the job becomes a 1-minute heartbeat: the minutes that
    # passed under the old schedule were never expected.
    new_yaml = HOURLY.replace("interval: 1h", "interval: 1m").replace("grace: 5m", "grace: 10s")
    new = Core(store, registry_from(write_config(tmp_path, new_yaml), tmp_path), clock)
    assert await new.resync(new.registry.monitors["job"], T0 + 3000) is True
    assert await new.resync(new.registry.monitors["job"], T0 + 3000) is False  # already in sync
    assert await new.sweep(new.registry.monitors["job"], T0 + 3000 + 30) == 0
    assert await new.sweep(new.registry.monitors["job"], T0 + 3000 + 70 + SKEW) == 1


async def test_month_of_slots_with_jitter_never_goes_down(store, clock, tmp_path):
    """A month (across the EU spring-forward) of a daily Berlin cron job and a
    15-minute heartbeat, arriving up to half the grace early or late, with
    sweeps at random moments: never down, never a missed slot."""
    from exporter.model import CronSchedule
    from exporter.schedule import next_slot

    from .conftest import registry_from, write_config

    yaml = """
    monitors:
      - id: daily
        schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
        grace: 10m
        max_runtime: 1h
      - id: beat
        schedule: {interval: 15m}
        grace: 2m
    """
    core = Core(store, registry_from(write_config(tmp_path, yaml), tmp_path), clock)
    rng = random.Random(2026)
    start = 1773576000.0  # 2026-03-15 12:00 UTC; spring-forward is 2026-03-29
    daily, beat = core.registry.monitors["daily"], core.registry.monitors["beat"]
    events = []
    slot = start
    for _ in range(31):
        slot = next_slot(CronSchedule("0 3 * * *", "Europe/Berlin"), slot)
        begin = slot + rng.uniform(-300, 300)
        events.append((begin, "daily", Kind.START))
        events.append((begin + rng.uniform(60, 1800), "daily", Kind.SUCCESS))
    t = start
    while t < start + 31 * 86400:
        t += 900 + rng.uniform(-60, 60)  # interval measured from the last arrival
        events.append((t, "beat", Kind.SUCCESS))
    events.sort()
    for at, monitor_id, kind in events:
        clock.now = at
        await core.record(ci(kind, at, monitor_id=monitor_id))
        if rng.random() < 0.3:
            probe = at + rng.uniform(0, 60)
            for monitor in (daily, beat):
                await core.sweep(monitor, probe)
                facts = await store.facts(monitor.id)
                assert evaluate(monitor, facts, probe).status not in (Status.DOWN, Status.FAILED, Status.STUCK)
    for monitor_id in ("daily", "beat"):
        facts = await store.facts(monitor_id)
        assert "missed" not in facts.outcomes and "timeout" not in facts.outcomes
    assert (await store.facts("daily")).outcomes == {"ok": 31}


async def test_paused_monitor_runs_do_not_wake_the_sweeper(make_core, clock):
    core = make_core(HOURLY.replace("max_runtime: 10m", "max_runtime: 10m\n    paused: true"))
    await core.record(ci(Kind.START, T0, run_id="r"))
    assert await core.store.due(T0 + 601, 10) == []


class TestBatchingAndPool:
    """Check-ins that arrive together share one pipeline; a burst larger
    than the connection pool waits for a connection instead of failing."""

    async def test_a_burst_is_recorded_exactly_once_through_a_tiny_pool(self, backend, prefix, clock, tmp_path):
        from .conftest import registry_from, write_config

        yaml = "monitors:\n" + "".join(f"  - {{id: m{i}, schedule: {{interval: 1h}}}}\n" for i in range(20))
        store = Store(connect(backend.url, max_connections=2), prefix, StoreLimits())
        core = Core(store, registry_from(write_config(tmp_path, yaml), tmp_path), clock)
        try:
            checkins = [
                ci(kind, T0 + n * 0.001, monitor_id=f"m{(n // 2) % 20}", run_id=f"r{n // 2}")
                for n in range(600)
                for kind in ([Kind.START] if n % 2 == 0 else [Kind.SUCCESS])
            ]
            # Starts first, then their completions, each wave concurrent.
            starts = [c for c in checkins if c.kind is Kind.START]
            finishes = [c for c in checkins if c.kind is Kind.SUCCESS]
            results = await asyncio.gather(*(core.record(c) for c in starts))
            results += await asyncio.gather(*(core.record(c) for c in finishes))
            # ...and a retried wave changes nothing (run id dedupe, batched too).
            retried = await asyncio.gather(*(core.record(c) for c in finishes))
        finally:
            facts = await store.snapshot(f"m{i}" for i in range(20))
            await store.close()
        assert [r.status for r in results] == ["ok"] * 600
        assert {r.status for r in retried} == {"duplicate"}
        assert sum(f.outcomes.get("ok", 0) for f in facts.values()) == 300
        assert sum(f.checkins.get("start", 0) for f in facts.values()) == 300
        assert all(not f.open_runs for f in facts.values())

    async def test_scripts_flushed_from_redis_are_loaded_again(self, make_core, raw_redis):
        core = make_core(HOURLY)
        await raw_redis.script_flush()
        assert (await core.record(ci(Kind.SUCCESS, T0))).status == "ok"
        assert (await core.store.facts("job")).outcomes == {"ok": 1}


async def test_replicas_load_only_the_api_definitions_that_changed(make_core, backend, prefix, clock, raw_redis):
    """Creating, changing or deleting one API monitor costs a replica one
    read of that definition, not a reload of all of them; after Redis lost
    its data, everything is read again."""
    from exporter.config import parse_monitor_spec

    core_a = make_core(HOURLY)
    core_b = Core(Store(connect(backend.url), prefix, core_a.store.limits), core_a.registry, clock)
    try:
        def spec(monitor_id, interval="1h"):
            return parse_monitor_spec({"id": monitor_id, "schedule": {"interval": interval}}, T0)

        for i in range(3):
            await core_a.create_monitor(spec(f"api{i}"), "owner", None)
        assert await core_b.sync_api_monitors()  # first load: all of them
        full_reads = []
        original = core_b.store.monitor_definitions

        async def counted():
            full_reads.append(1)
            return await original()

        core_b.store.monitor_definitions = counted
        await core_a.update_monitor(core_a.registry.monitors["api1"], spec("api1", "2h"))
        await core_a.delete_monitor(core_a.registry.monitors["api2"])
        assert await core_b.sync_api_monitors()
        assert not await core_b.sync_api_monitors()  # nothing new
        assert core_b.registry.monitors["api1"].schedule.seconds == 7200
        assert "api2" not in core_b.registry.monitors and "api0" in core_b.registry.monitors
        assert full_reads == []
        for key in await _keys(raw_redis, f"{prefix}:*monitors*"):
            await raw_redis.delete(key)  # the definitions are lost
        assert await core_b.sync_api_monitors()
        assert full_reads == [1] and not set(core_b.registry.api)
    finally:
        await core_b.store.close()


async def test_a_replicas_sweeper_rechecks_only_the_api_monitors_that_changed(make_core, backend, prefix, clock):
    """Another replica's API change makes this sweeper read the fingerprints
    of just the changed monitors (not of every monitor: at 10,000 monitors
    that read was most of a create's cost), and still re-bases one whose
    writer died between writing it and re-basing it."""
    from exporter.config import parse_monitor_spec

    core_a = make_core("monitors:\n" + "".join(f"  - {{id: y{i}, schedule: {{interval: 1h}}}}\n" for i in range(40)))
    core_b = Core(Store(connect(backend.url), prefix, core_a.store.limits), core_a.registry, clock)
    sweeper_b = Sweeper(core_b, clock=clock)
    try:
        def spec(monitor_id, interval="1h"):
            return parse_monitor_spec({"id": monitor_id, "schedule": {"interval": interval}}, T0)

        await core_a.create_monitor(spec("api0"), "owner", None)
        await sweeper_b.run_once()  # the first pass: the start-up resync of everything
        read: list[list[str]] = []
        original = core_b.store.fingerprints

        async def spied(ids):
            read.append(list(ids))
            return await original(ids)

        core_b.store.fingerprints = spied
        await core_a.update_monitor(core_a.registry.monitors["api0"], spec("api0", "2h"))
        await core_a.create_monitor(spec("api1"), "owner", None)
        await sweeper_b.run_once()
        assert read == [["api0", "api1"]]
        # A writer that died after the definition, before its re-base.
        definition = {"spec": {"id": "api2", "schedule": {"interval": 3600.0}}, "owner": "owner", "team": None,
                      "created_at": T0, "extras": {}, "quotas": []}
        assert await core_a.store.define_monitor("api2", "create", definition) == "ok"
        assert (await original(["api2"])) == {"api2": None}  # not re-based
        read.clear()
        await sweeper_b.run_once()
        assert read[0] == ["api2"]
        monitor = core_b.registry.monitors["api2"]
        assert (await original(["api2"])) == {"api2": monitor.schedule_fingerprint()}
    finally:
        await core_b.store.close()


@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, 2, "cronmon:{m}:state", "cronmon:due", '{"now": 1781524800.5}', ""),
    ("ZRANGEBYSCORE", "cronmon:due", "-inf", "1781524800.123456"),
    ("HSET", "h", "f", -3), ("SET", "k", "é"), ("SET", b"k", b"\x00v"), ("CONFIG GET", "maxmemory"),
])
def test_commands_are_packed_exactly_as_redis_py_packs_them(args):
    from redis.asyncio.connection import Connection

    from exporter.store import _HiredisPacking

    assert b"".join(_HiredisPacking().pack_command(*args)) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("url", ["unix:///run/cronmon/redis.sock", "redis://127.0.0.1:6379/0", "rediss://h:6380/0"])
def test_every_kind_of_connection_packs_with_hiredis(url):
    from exporter.store import _HiredisPacking

    client = connect(url)
    assert issubclass(client.connection_pool.connection_class, _HiredisPacking)


async def test_a_monitor_removed_and_added_back_unchanged_is_not_down(make_core, store, clock, tmp_path):
    """Slots that passed while the monitor was not configured were never
    expected of it: its return re-bases instead of counting them (it was
    `down` at once, with every slot since its removal counted)."""
    from .conftest import registry_from, write_config

    core = make_core(HOURLY)
    sweeper = Sweeper(core, clock=clock)
    await core.record(ci(Kind.SUCCESS, T0))
    await sweeper.run_once()
    core.swap(registry_from(write_config(tmp_path, "monitors: []\n", "empty.yaml"), tmp_path))
    sweeper.needs_resync = True
    clock.advance(2 * 86400)
    await sweeper.run_once()  # its deadline comes up: it is not configured
    core.swap(registry_from(write_config(tmp_path, HOURLY, "back.yaml"), tmp_path))
    # A ping before the sweeper's resync pass must not count the gap either.
    await core.record(ci(Kind.SUCCESS, clock.now))
    sweeper.needs_resync = True
    await sweeper.run_once()
    facts = await store.facts("job")
    assert "missed" not in facts.outcomes
    assert await status(core) is Status.UP
    clock.advance(3600 + 300 + SKEW)  # and a real miss afterwards still counts
    await sweeper.run_once()
    assert (await store.facts("job")).outcomes.get("missed") == 1


async def test_a_hung_job_that_starts_again_does_not_page_missed(make_core, clock):
    """Slots that pass while a run is stuck are skipped: CronJobStuck is
    the page; counting them paged CronJobMissed when the job came back."""
    core = make_core(HOURLY)  # hourly, grace 5m, max_runtime 10m
    sweeper = Sweeper(core, clock=clock)
    await core.record(ci(Kind.START, T0, run_id="hung"))
    for step in (601, 3600, 3600):  # timed out, then two slots pass while it hangs
        clock.advance(step)
        await sweeper.run_once()
        assert await status(core) is Status.STUCK
    facts = await core.store.facts("job")
    assert "missed" not in facts.outcomes and facts.outcomes["timeout"] == 1
    await core.record(ci(Kind.START, clock.now, run_id="again"))
    assert await status(core) is not Status.DOWN  # no CronJobMissed on recovery
    await core.record(ci(Kind.SUCCESS, clock.now + 60, run_id="again"))
    assert await status(core, now=clock.now + 61) is Status.UP
    # Once no run hangs, a slot without a run is missed as always.
    clock.advance(60 + 3600 + 301)
    await sweeper.run_once()
    assert (await core.store.facts("job")).outcomes.get("missed") == 1


@pytest.mark.parametrize(
    "old, new",
    [
        ("grace: 5m", "grace: 10m"),
        ("max_runtime: 10m", "max_runtime: 20m"),
        ("grace: 5m", "grace: 5m\n    failure_threshold: 1"),
    ],
)
async def test_editing_grace_or_max_runtime_while_late_does_not_forgive_the_slot(
    make_core, store, clock, tmp_path, old, new
):
    from .conftest import registry_from, write_config

    core = make_core(HOURLY)  # hourly, grace 5m
    sweeper = Sweeper(core, clock=clock)
    await core.record(ci(Kind.SUCCESS, T0))
    await sweeper.run_once()  # the start-up resync stores the fingerprint
    assert (await store.facts("job")).fingerprint == core.registry.monitors["job"].schedule_fingerprint()
    clock.advance(3600 + 60)  # late: past the slot, within grace
    assert await status(core) is Status.LATE
    core.swap(registry_from(write_config(tmp_path, HOURLY.replace(old, new), "edited.yaml"), tmp_path))
    sweeper.needs_resync = True
    await sweeper.run_once()
    grace = 600 if new == "grace: 10m" else 300
    clock.now = T0 + 3600 + grace + SKEW  # the same slot's (new) deadline, skew allowance passed
    await sweeper.run_once()
    assert (await store.facts("job")).outcomes.get("missed") == 1
    assert await status(core) is Status.DOWN


async def test_a_changed_schedule_still_counts_from_the_change(make_core, store, clock, tmp_path):
    from .conftest import registry_from, write_config

    core = make_core(HOURLY)
    sweeper = Sweeper(core, clock=clock)
    await core.record(ci(Kind.SUCCESS, T0))
    await sweeper.run_once()
    clock.advance(3600 + 60)
    core.swap(registry_from(write_config(tmp_path, HOURLY.replace("1h", "2h"), "edited.yaml"), tmp_path))
    sweeper.needs_resync = True
    await sweeper.run_once()
    clock.advance(600)
    await sweeper.run_once()
    assert "missed" not in (await store.facts("job")).outcomes  # next slot: 2h after the change


async def test_a_monitor_that_never_reports_is_missed_not_new_forever(make_core, store, clock, raw_redis, prefix):
    """`new` never pages. A YAML monitor says the job must run: if it never
    reports, its first deadline is a miss, also after Redis lost its data."""
    core = make_core(HOURLY)  # hourly, grace 5m
    sweeper = Sweeper(core, clock=clock)
    await sweeper.run_once()  # first sight
    assert await status(core) is Status.NEW
    clock.advance(3600 + 300 + SKEW)
    await sweeper.run_once()
    assert await status(core) is Status.DOWN
    assert (await store.facts("job")).outcomes == {"missed": 1}
    await core.record(ci(Kind.SUCCESS, clock.now))
    assert await status(core) is Status.UP
    # Redis loses everything (no persistence, a flush): the same again.
    for key in await _keys(raw_redis, f"{prefix}:*"):
        await raw_redis.delete(key)
    await resync_then_miss_the_first_deadline(core, sweeper, clock)


async def resync_then_miss_the_first_deadline(core: Core, sweeper: Sweeper, clock) -> None:
    """An hourly monitor (grace 5m) the sweeper sees as if for the first
    time: `new` until its first deadline, `down` once it passed."""
    sweeper.needs_resync = True
    await sweeper.run_once()
    assert await status(core) is Status.NEW
    clock.advance(3600 + 300 + SKEW)
    await sweeper.run_once()
    assert await status(core) is Status.DOWN


async def test_quiet_until_first_checkin_opts_out_of_paging_while_new(make_core, store, clock, tmp_path):
    """The opt-out of the test above: a monitor declared before its job is
    deployed stays `new` until the first check-in, then counts as usual;
    turning the opt-out off makes it expected from then on."""
    quiet = HOURLY.replace("max_runtime: 10m", "max_runtime: 10m\n    quiet_until_first_checkin: true")
    core = make_core(quiet)
    sweeper = Sweeper(core, clock=clock)
    await sweeper.run_once()
    clock.advance(3 * 3600)
    await sweeper.run_once()
    assert await status(core) is Status.NEW and (await store.facts("job")).outcomes == {}
    # Turned off: expected from now on, missed at the first deadline.
    core.swap(registry_from(write_config(tmp_path, HOURLY, "loud.yaml"), tmp_path))
    await resync_then_miss_the_first_deadline(core, sweeper, clock)
    # On again while it never checked in: nothing is expected any more (the
    # miss already recorded stays recorded).
    core.swap(registry_from(write_config(tmp_path, quiet, "quiet-again.yaml"), tmp_path))
    sweeper.needs_resync = True
    await sweeper.run_once()
    assert (await store.facts("job")).next_slot is None
    # The first check-in starts the schedule; a skipped run then pages.
    await core.record(ci(Kind.SUCCESS, clock.now))
    assert await status(core) is Status.UP
    clock.advance(3600 + 300 + SKEW)
    await sweeper.run_once()
    assert (await store.facts("job")).outcomes == {"missed": 2, "ok": 1}


async def test_a_sweeper_ahead_of_the_replica_that_took_the_check_in_records_no_miss(
    make_core, backend, prefix, clock
):
    """Issue: a sweeper whose clock ran 2 s ahead recorded a miss for a
    check-in that landed 1 s before the deadline on the replica that took
    it, and CronJobMissed paged on one scrape. With the skew allowance the
    ahead sweeper waits; the check-in counts; nothing is missed. A job that
    really does not run is still missed once the allowance has passed."""
    from .conftest import Clock

    ingest = make_core(HOURLY)  # hourly, grace 5m
    ahead = Clock(clock.now)
    sweeping = Core(Store(connect(backend.url), prefix, ingest.store.limits), ingest.registry, ahead)
    sweeper = Sweeper(sweeping, clock=ahead)
    await ingest.record(ci(Kind.SUCCESS, T0))
    deadline = T0 + 3600 + 300
    clock.now, ahead.now = deadline - 1.5, deadline + 0.5  # the sweeper is 2 s ahead
    await sweeper.run_once()
    assert "missed" not in (await ingest.store.facts("job")).outcomes
    clock.now, ahead.now = deadline - 1, deadline + 1
    await ingest.record(ci(Kind.SUCCESS, clock.now))  # 1 s before the deadline, by its replica's clock
    ahead.now = deadline + 10
    await sweeper.run_once()
    facts = await ingest.store.facts("job")
    assert "missed" not in facts.outcomes and facts.accounted_through == deadline - 1  # it re-anchors
    assert evaluate(ingest.registry.monitors["job"], facts, ahead.now).status is Status.UP
    # The next slot the job skips is missed at its deadline + SKEW.
    next_deadline = deadline - 1 + 3600 + 300
    ahead.now = next_deadline + SKEW - 0.1
    await sweeper.run_once()
    assert "missed" not in (await ingest.store.facts("job")).outcomes
    ahead.now = next_deadline + SKEW
    await sweeper.run_once()
    assert (await ingest.store.facts("job")).outcomes["missed"] == 1
    await sweeping.store.close()


async def test_a_check_in_within_the_allowance_after_the_deadline_counts_for_the_slot(make_core, clock):
    """The other side of the allowance: on the replica that takes it, a
    check-in up to SKEW after the deadline is on time (record.lua's
    sweep-first rule waits as long as the sweeper does)."""
    core = make_core(HOURLY)
    await core.record(ci(Kind.SUCCESS, T0))
    clock.now = T0 + 3600 + 300 + SKEW - 0.5
    await core.record(ci(Kind.SUCCESS, clock.now))
    facts = await core.store.facts("job")
    assert "missed" not in facts.outcomes and facts.accounted_through == clock.now


MINUTELY = """
monitors:
  - id: job
    schedule: {interval: 1m}
    grace: 10s
    max_runtime: 30s
"""


async def beat_until(core: Core, clock, until: float, step: float = 2.0) -> None:
    """A live cronmon: heartbeats every `step` seconds of the simulated clock."""
    while clock.now < until:
        clock.now = min(until, clock.now + step)
        await core.heartbeat()


class TestOutages:
    """Issue 10, case 5: after an outage of every cronmon longer than grace,
    healthy jobs paged once CronmonDown's inhibition ended. Slots and runs
    an outage overlapped are now forgiven; a job dead after it still pages."""

    async def test_a_gap_in_heartbeats_is_an_outage_that_forgives_what_it_overlapped(self, make_core, clock):
        core = make_core(MINUTELY)
        core.track_outages = True
        await core.heartbeat()
        await core.record(ci(Kind.SUCCESS, T0))
        await core.record(ci(Kind.START, T0 + 1, run_id="r"))  # its end falls in the outage
        # Every cronmon is down from T0 (its last heartbeat) to T0 + 100.
        clock.now = T0 + 100
        await core.heartbeat()
        assert [(o.start, o.end) for o in core.outages] == [(T0, T0 + 100)]
        job = core.registry.monitors["job"]
        assert await core.sweep(job, clock.now) == 0
        facts = await core.store.facts("job")
        # The slot at T0 + 61 (a minute after the start, the latest arrival;
        # its check-in was due in the outage) is forgiven; the run r, open
        # across it and past max_runtime, is lost, not timed out.
        assert "missed" not in facts.outcomes and "timeout" not in facts.outcomes
        assert facts.accounted_through == T0 + 61 and facts.open_runs == ()
        outage = (await core.store.history("job", 0, 1))[0]
        assert outage["kind"] == "outage" and outage["slots"] == 1 and outage["runs"] == ["r"]
        assert core.evaluate(job, facts).status is Status.UP
        # cronmon is back; the job stays dead: its next slot (T0 + 121, due
        # after the outage) is missed once its deadline passes.
        await beat_until(core, clock, T0 + 121 + 10 + SKEW)
        assert await core.sweep(job, clock.now) == 1
        assert (await status(core)) is Status.DOWN

    async def test_a_healthy_job_back_after_the_outage_is_not_missed(self, make_core, clock):
        core = make_core(MINUTELY)
        core.track_outages = True
        await core.heartbeat()
        await core.record(ci(Kind.SUCCESS, T0))
        clock.now = T0 + 100  # back after a 100 s outage; the first ping sweeps first
        await core.record(ci(Kind.SUCCESS, T0 + 100))
        facts = await core.store.facts("job")
        assert facts.outcomes == {"ok": 2} and facts.accounted_through == T0 + 100

    async def test_without_an_outage_the_same_gap_is_missed(self, make_core, clock):
        """The control: the same schedule and check-ins with cronmon up all
        along (heartbeats every 2 s) count the slot as missed."""
        core = make_core(MINUTELY)
        core.track_outages = True
        await core.heartbeat()
        await core.record(ci(Kind.SUCCESS, T0))
        await beat_until(core, clock, T0 + 100)
        assert core.outages == ()
        assert await core.sweep(core.registry.monitors["job"], clock.now) == 1

    async def test_a_replica_that_missed_the_outage_learns_it_before_deciding(
        self, make_core, backend, prefix, clock
    ):
        """Redis was unreachable for every replica. The first heartbeat after
        it records the outage; a replica whose own last heartbeat is older
        must not decide with what it knew before: it beats first."""
        core = make_core(MINUTELY)
        core.track_outages = True
        other = Core(Store(connect(backend.url), prefix, core.store.limits), core.registry, clock)
        other.track_outages = True
        await core.heartbeat()
        await other.heartbeat()
        await core.record(ci(Kind.SUCCESS, T0))
        clock.now = T0 + 100
        await core.heartbeat()  # records the outage T0 .. T0 + 100
        assert other.outages == ()
        assert await other.sweep(other.registry.monitors["job"], clock.now) == 0
        assert len(other.outages) == 1
        assert "missed" not in (await core.store.facts("job")).outcomes
        await other.store.close()

    async def test_a_heartbeat_from_a_clock_behind_does_not_open_a_gap(self, make_core, backend, prefix, clock):
        from .conftest import Clock

        core = make_core(MINUTELY)
        behind = Clock(clock.now - 3)
        other = Core(Store(connect(backend.url), prefix, core.store.limits), core.registry, behind)
        await core.heartbeat()  # T0
        await other.heartbeat()  # T0 - 3: must not move the latest heartbeat back
        clock.now = T0 + 4.5
        await core.heartbeat()  # 4.5 s after T0: no outage (it would be 7.5 s after T0 - 3)
        assert core.outages == ()
        await other.store.close()

    async def test_outages_kept_are_bounded(self, make_core, clock):
        from exporter.store import OUTAGES_KEPT

        core = make_core(MINUTELY)
        for _ in range(OUTAGES_KEPT + 5):
            clock.now += 10
            await core.heartbeat()
        assert len(core.outages) == OUTAGES_KEPT
        assert core.outages[-1].end == clock.now  # the newest are kept


async def test_history_is_filtered_in_redis_as_python_would(make_core, clock):
    """history.lua (kinds, run id, seq, before cursor, offset, limit, more)
    against the same filter over the whole history in Python."""
    core = make_core(HOURLY)
    rng = random.Random(7)
    for i in range(120):
        kind = rng.choice([Kind.START, Kind.SUCCESS, Kind.FAIL, Kind.LOG])
        await core.record(ci(kind, T0 + i, run_id=rng.choice([None, "a", "b"])))
    everything = await core.store.history("job", 0, 1000)  # what the cap kept
    assert len(everything) == core.store.limits.history
    cases = [
        {}, {"kinds": ["log"]}, {"kinds": ["start", "fail"]}, {"kinds": []}, {"run": "a"}, {"run": "zz"},
        {"seq": 60}, {"seq": 999}, {"before": 50}, {"before": 50, "kinds": ["success"]},
        {"run": "b", "before": 100, "kinds": ["start", "success"]},
    ]
    for filters in cases:
        matching = [
            e for e in everything
            if ("kinds" not in filters or e["kind"] in filters["kinds"])
            and ("run" not in filters or e.get("run") == filters["run"])
            and ("seq" not in filters or e["seq"] == filters["seq"])
            and ("before" not in filters or e["seq"] < filters["before"])
        ]
        for offset, limit in ((0, 10), (5, 3), (0, 500), (len(matching), 5), (1, 1)):
            page, more = await core.store.history_page("job", limit=limit, offset=offset, **filters)
            assert page == matching[offset:offset + limit], (filters, offset, limit)
            assert more == (len(matching) > offset + limit), (filters, offset, limit)


async def test_quotas_hold_exactly_and_a_refusal_takes_no_place(make_core, store, raw_redis, prefix):
    """monitors_per_owner and an API's own quota, on every backend (on a
    cluster the quota sets live in another slot than the monitor, and the
    places are taken before the monitor's own script): creates racing for
    the last places get exactly the limit; a refused create, or a create
    of an id that exists, takes no place; a delete gives its place back."""
    from exporter.config import parse_monitor_spec
    from exporter.errors import MonitorExists, QuotaExceeded

    core = make_core(HOURLY)
    core.monitors_per_owner = 5

    def spec(monitor_id):
        return parse_monitor_spec({"id": monitor_id, "schedule": {"interval": "1h"}}, T0)

    results = await asyncio.gather(
        *(core.create_monitor(spec(f"q{i}"), "alice", None, quotas={"plan": 4}) for i in range(12)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(created) == 4 and len(refused) == 8, results
    assert all("for plan" in str(r) for r in refused)
    # Another owner is not counted against alice; alice's own limit is 5.
    await core.create_monitor(spec("bob1"), "bob", None)
    await core.create_monitor(spec("q-extra"), "alice", None)  # no plan quota: 5 of 5
    with pytest.raises(QuotaExceeded, match='owner "alice" already has 5 monitors'):
        await core.create_monitor(spec("q-over"), "alice", None)
    with pytest.raises(MonitorExists):
        await core.create_monitor(spec(created[0].id), "alice", None, quotas={"plan": 4})
    assert await store.monitor_definition("q-over") is None
    # Nothing leaked: deleting one gives exactly one place back, for each quota.
    await core.delete_monitor(core.registry.monitors[created[0].id])
    await core.create_monitor(spec("q-again"), "alice", None, quotas={"plan": 4})
    with pytest.raises(QuotaExceeded):
        await core.create_monitor(spec("q-again2"), "alice", None)


def test_generated_run_ids_are_random_version_4_uuids():
    """A start without a run id gets one (returned to Sentry and CrossCheck
    clients, which send it back): it must read as a UUID of version 4,
    in canonical form, and never repeat."""
    import uuid

    from exporter.core import _random_run_id

    ids = [_random_run_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every hex digit outside the fixed version and variant bits varies.
    for position in (0, 9, 15, 20, 35):
        assert len({text[position] for text in ids}) > 8


def test_a_forked_child_does_not_repeat_its_parents_run_ids():
    """Run ids come from random bytes read ahead in bulk: a child forked
    with some of them unused must read its own, not hand out the ids its
    parent is about to."""
    import os

    from exporter.core import _random_run_id

    _random_run_id()  # the parent now holds unused random bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(_random_run_id() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_ids = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent_ids = {_random_run_id() for _ in range(4)}
    assert len(child_ids) == 4
    assert not child_ids & parent_ids


def test_checkin_json_is_strict_json_faster():
    """record.lua's check-in argument: orjson's text must decode to what
    the standard library's strict encoder makes, and whatever that encoder
    refuses (NaN, infinities) must still be refused before any write;
    what orjson cannot encode (a lone surrogate, a huge int) and a real
    null still come out as the standard library writes them."""
    import json
    import math

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from exporter.store import _checkin_json, _strict_json

    leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(), st.text())
    values = st.recursive(
        leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12)

    def finite(value):
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, list):
            return all(finite(v) for v in value)
        if isinstance(value, dict):
            return all(finite(v) for v in value.values())
        return True

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.text(max_size=8), values, max_size=6))
    def check(fields):
        if not finite(fields):
            with pytest.raises(ValueError):
                _checkin_json(fields)
            with pytest.raises(ValueError):
                _strict_json(fields)
            return
        encoded = _checkin_json(fields)
        assert json.loads(encoded) == json.loads(_strict_json(fields))

    check()
    import orjson

    plain = {"now": 1.5, "kind": "success"}
    assert _checkin_json(plain) == orjson.dumps(plain)  # the fast way, usually
    with pytest.raises(ValueError):
        _checkin_json({"duration": float("nan")})
    assert json.loads(_checkin_json({"ua": "bad \udcff byte"})) == {"ua": "bad \udcff byte"}


async def test_lua_fmt_writes_every_number_back_exactly(redis_server):
    """common.lua's fmt: the text Redis stores for a number reads back as
    that same double, and a whole number (0 included) is written as '%d'
    writes it (no exponent, no '.0'), as Python's '%.17g' would."""
    from importlib import resources

    import redis.asyncio as redis

    common = resources.files("exporter").joinpath("lua/common.lua").read_text()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        sha = await client.script_load(common + "\nreturn fmt(tonumber(ARGV[1]))\n")
        values = [0.0, 1.0, 42.0, 300.0, 1796650800.0, 1e15 - 1, 1e15, 1e17, 0.5, 1e-7,
                  1796650901.8152668, 1796654501.8152668, 305.25, -3.0, -0.0, -1796650901.5]
        for value in values:
            text = await client.evalsha(sha, 0, repr(value))
            assert float(text) == value, (value, text)
            if value == int(value) and 0 <= value < 1e15:
                assert text == str(int(value))
            else:
                assert float(text) == float(f"{value:.17g}")
    finally:
        await client.aclose()


def test_record_numbers_are_doubles_and_never_nan():
    """record.lua's settings and a check-in's numbers go as little-endian
    doubles (struct.unpack in Lua): exact, and a NaN or an infinity is
    refused before anything is sent."""
    import struct

    from exporter.store import _doubles

    values = (1796650901.8152668, 1.0, 0.1 + 0.2, -1.0, 0.0, 86400.0)
    assert struct.unpack("<6d", _doubles(*values)) == values
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="not a finite number"):
            _doubles(1.0, bad)


async def test_record_lua_refuses_binary_arguments_of_the_wrong_size_writing_nothing(redis_server, prefix, tmp_path):
    """struct.unpack reads a short string as other numbers rather than fail:
    record.lua checks its binary arguments' sizes before anything else."""
    import struct

    from redis import exceptions as redis_errors

    store = Store(connect(redis_server.url), prefix)
    try:
        config = write_config(tmp_path, "monitors:\n  - {id: job, schedule: {interval: 1h}}\n")
        registry = registry_from(config, tmp_path / "data")
        constants = store._record_constants(registry.monitors["job"])
        numbers = struct.pack("<4d", T0, 1.0, T0, T0 + 3600)
        checkin = '{"kind": "success", "generated_run_id": "g", "outcome": "ok", "bad": false}'
        good = [constants.settings, "job", numbers, checkin, ""]
        for index, bad in ((0, constants.settings[:-8]), (2, numbers[:-8]), (2, numbers + b"\0" * 8), (2, b"")):
            args = list(good)
            args[index] = bad
            with pytest.raises(redis_errors.ResponseError, match="8 doubles of settings"):
                await store._record(keys=constants.keys, args=args)
        assert await store.client.keys(f"{prefix}*") == []
        reply = await store._record(keys=constants.keys, args=good)  # the same call, well-formed
        assert reply.split("\n")[:2] == ["ok", "1"], reply
    finally:
        await store.close()
