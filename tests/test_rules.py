"""The outcome rules (exporter/rules.py), and the Lua scripts applying them
as the rules say: common.lua's apply_outcome is the one mirror of
rules.after_outcomes (the scripts must count atomically with the
check-in), so real check-ins and sweeps through a real Redis are compared
with the rule, step by step."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from exporter.model import CheckIn, Kind, Outcome
from exporter.rules import (
    BAD_OUTCOMES,
    Thresholds,
    after_outcomes,
    completion_outcome,
    event_is_bad,
    is_bad,
)
from exporter.sweeper import Sweeper

from .conftest import T0


@given(
    steps=st.lists(st.tuples(st.booleans(), st.integers(1, 4)), max_size=30),
    failure=st.integers(1, 5), recovery=st.integers(1, 5),
)
def test_after_outcomes_is_the_streak_rule(steps, failure, recovery):
    """Outcome by outcome: alerting from the failure_threshold-th bad one in
    a row, until the recovery_threshold-th good one in a row."""
    state, alerting, bad_run, good_run = Thresholds(), False, 0, 0
    for bad, n in steps:
        state = after_outcomes(state, bad, n, failure, recovery)
        for _ in range(n):
            if bad:
                bad_run, good_run = bad_run + 1, 0
                alerting = alerting or bad_run >= failure
            else:
                good_run, bad_run = good_run + 1, 0
                alerting = alerting and good_run < recovery
        assert state == Thresholds(bad_run, good_run, alerting)
    assert after_outcomes(state, True, 0, failure, recovery) is state


def test_which_outcomes_are_bad():
    assert {o for o in Outcome if is_bad(o)} == BAD_OUTCOMES == {Outcome.ERROR, Outcome.MISSED, Outcome.TIMEOUT}
    assert completion_outcome(Kind.SUCCESS, silent_failure=True) is Outcome.SILENT_FAILURE
    assert not is_bad(completion_outcome(Kind.SUCCESS, silent_failure=True))  # an alert of its own
    # The status page: what went wrong is red, silent failures too.
    assert event_is_bad("success", "silent_failure") and event_is_bad("fail", "error")
    assert event_is_bad("missed", "missed") and event_is_bad("timeout", "")
    assert not event_is_bad("success", "ok") and not event_is_bad("warning", "warning")
    assert not event_is_bad("start", "") and not event_is_bad("log", "")


async def test_the_scripts_flip_thresholds_as_the_rule_says(make_core, store, clock):
    """Random completions (record.lua) and missed slots (sweep.lua) for
    monitors with random thresholds: after every step, the stored streaks
    and alerting flag are what rules.after_outcomes says."""
    rng = random.Random(20261204)
    for case in range(12):
        failure, recovery = rng.randint(1, 3), rng.randint(1, 3)
        monitor_id = f"m{case}"
        core = make_core(
            f"monitors:\n  - {{id: {monitor_id}, schedule: {{interval: 60s}}, grace: 0s,"
            f" failure_threshold: {failure}, recovery_threshold: {recovery}}}\n"
        )
        sweeper = Sweeper(core, clock=clock)
        expected, missed_so_far = Thresholds(), 0
        for _ in range(15):
            if rng.random() < 0.25:
                clock.advance(rng.choice([61, 130, 250]))  # one or more slots pass unreported
                await sweeper.run_once()
                missed = (await store.facts(monitor_id)).outcomes.get("missed", 0)
                expected = after_outcomes(expected, True, missed - missed_so_far, failure, recovery)
                missed_so_far = missed
            else:
                kind = rng.choice([Kind.SUCCESS, Kind.FAIL, Kind.WARNING])
                clock.advance(rng.uniform(1, 20))
                result = await core.record(CheckIn(monitor_id, kind, clock.now))
                assert result.status == "ok"
                missed = (await store.facts(monitor_id)).outcomes.get("missed", 0)
                # A check-in first sweeps what passed before it (sweep-first).
                expected = after_outcomes(expected, True, missed - missed_so_far, failure, recovery)
                missed_so_far = missed
                expected = after_outcomes(
                    expected, is_bad(completion_outcome(kind, False)), 1, failure, recovery
                )
            facts = await store.facts(monitor_id)
            assert Thresholds(facts.consecutive_bad, facts.consecutive_good, facts.alerting) == expected, (
                case, failure, recovery
            )
        clock.now = T0


async def test_a_script_given_a_bad_argument_table_fails_and_writes_nothing(make_core, store, clock, raw_redis, prefix):
    """Each script checks its named argument table before its first write
    (Redis keeps what a failing script wrote before it failed)."""
    import json

    import pytest
    from redis.exceptions import ResponseError

    from .conftest import redis_dump

    core = make_core("monitors:\n  - {id: job, schedule: {interval: 60s}}\n")
    await core.record(CheckIn("job", Kind.SUCCESS, clock.now))
    facts = await store.facts("job")
    k = store.key
    sweep_keys = [k("job", "state"), k("job", "runs"), k("job", "tmo"), k("job", "counters"), k("job", "history"),
                  store.keys.index_of("job", "due"), k("job", "uptime"), store.keys.index_of("job", "changes"),
                  store.keys.index_of("job", "changes:seq")]
    good = {"monitor": "job", "now": clock.now, "expected_version": facts.version, "missed": 1,
            "accounted_through": clock.now, "timed_out": [], "miss_after": 60, "failure_threshold": 1,
            "recovery_threshold": 1, "history_cap": 10, "forgiven": 0, "lost": [], "bad": {"missed": True}}
    before = await redis_dump(raw_redis, prefix)
    for field, value in [("missed", "1"), ("timed_out", "r1"), ("bad", None), ("now", [1])]:
        bad = {**good, field: value} if value is not None else {n: v for n, v in good.items() if n != field}
        with pytest.raises(ResponseError, match=f"argument {field} must be a"):
            await store._sweep(keys=sweep_keys, args=[json.dumps(bad)])
    resync_keys = [k("job", "state"), k("job", "runs"), k("job", "tmo"), *sweep_keys[5:6], *sweep_keys[7:]]
    with pytest.raises(ResponseError, match="argument accounted_through must be a number"):
        await store._resync(keys=resync_keys, args=[json.dumps(
            {"monitor": "job", "expected_version": facts.version, "accounting": "set", "miss_after": 60,
             "fingerprint": "x", "max_runtime": 5})])
    with pytest.raises(ResponseError, match="argument mode must be create, update or delete"):
        indexes = ("monitors", "monitors:revision", "due", "changes", "changes:seq", "monitors:changes")
        await store._define(keys=[*(store.keys.index_of("job", n) for n in indexes), k("job", "audit")],
            args=[json.dumps({"monitor": "job", "mode": "upsert", "audit_cap": 5, "quota_limits": []})])
    assert await redis_dump(raw_redis, prefix) == before
    # The good table is taken (so the bad ones failed for their field alone).
    await store._sweep(keys=sweep_keys, args=[json.dumps(good)])
    assert (await store.facts("job")).outcomes.get("missed") == 1
