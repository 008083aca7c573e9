"""Driving cronmon through a Redis failover, as jobs would: check-ins at
~20/s, each retried on 503 with the same rid and Idempotency-Key (as
`curl --retry` would; a retry of a check-in that was written is a
duplicate), while a test kills a Redis primary. Shared by the Sentinel and
the cluster tests."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from aiohttp import web

from exporter.store import StoreLimits
from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import write_config

PING_KEY = "failover-test-ping-key"
CONFIG = """
monitors:
  - id: beat
    schedule: {interval: 1h}
"""
# A request is never answered later than this: socket timeout (5 s) plus
# margin; WAIT gives up after wait_timeout (1 s by default) before that.
ANSWER_BOUND = 6.5
# After the kill, cronmon answers 200 again within this (Sentinel needs
# ~1 s to see the primary down, then agrees, elects and promotes; a
# cluster's replicas take over after cluster-node-timeout and an election).
RECOVERY_BOUND = 25.0


@dataclass
class Answer:
    rid: str
    sent: float
    done: float
    status: int  # 0: no HTTP answer (timeout or connection error)


async def serve(aiohttp_server, app_settings, tmp_path, monkeypatch, url: str):
    monkeypatch.setenv("CRONMON_PING_KEY", PING_KEY)
    settings = app_settings(write_config(tmp_path, CONFIG), redis_url=url, limits=StoreLimits(history=5000))
    app = create_app(settings)
    server = await aiohttp_server(app, host="127.0.0.1")
    return app, f"http://127.0.0.1:{server.port}/ping/{PING_KEY}/beat"


async def ping_until_ok(client: httpx.AsyncClient, url: str, answers: list[Answer], give_up: float) -> None:
    """One check-in as a job sends it: retried on 503 with the same rid and
    Idempotency-Key until it is answered 200 (or `give_up`)."""
    rid = str(uuid.uuid4())
    while True:
        sent = time.monotonic()
        try:
            status = (await client.get(url, params={"rid": rid}, headers={"Idempotency-Key": rid})).status_code
        except httpx.HTTPError:
            status = 0
        answers.append(Answer(rid, sent, time.monotonic(), status))
        if status != 503 or time.monotonic() > give_up:
            return
        await asyncio.sleep(0.1)


async def acknowledged_once(app_or_store, answers: list[Answer]) -> None:
    """Every check-in answered 200 is in beat's history, and none twice
    (read through a test app's store, or a Store of the same Redis)."""
    store = app_or_store[CORE].store if isinstance(app_or_store, web.Application) else app_or_store
    history = await store.history("beat", 0, 5000)
    runs = collections.Counter(event.get("run") for event in history)
    acknowledged = {a.rid for a in answers if a.status == 200}
    assert acknowledged, "no ping was acknowledged"
    missing = sorted(rid for rid in acknowledged if runs[rid] == 0)
    assert not missing, f"{len(missing)} acknowledged pings lost, e.g. {missing[:3]}"
    twice = sorted(rid for rid, n in runs.items() if rid is not None and n > 1)
    assert not twice, f"{len(twice)} pings recorded more than once, e.g. {twice[:3]}"


@dataclass
class FailoverRun:
    answers: list[Answer]
    killed: float
    first_503: float
    back: float
    last_503: float
    slowest: float

    @property
    def window(self) -> float:
        """First 503 to the first 200 after it."""
        return self.back - self.first_503

    def summary(self) -> str:
        statuses = collections.Counter(a.status for a in self.answers)
        return (
            f"{len({a.rid for a in self.answers})} check-ins, {statuses[200]} answered 200 and {statuses[503]} 503"
            f" (slowest answer {self.slowest:.2f}s); failover window (first 503 to first 200 after it)"
            f" {self.window:.2f}s; kill to first 200 {self.back - self.killed:.2f}s; last 503"
            f" {self.last_503 - self.killed:.2f}s after the kill"
        )


async def ping_through_a_kill(url: str, kill: Callable[[], object]) -> FailoverRun:
    """Ping `url` for 2 s, call `kill`, ping until cronmon answers 200 again
    after its first 503, then 2 s more. Asserts that every answer was 200
    or 503 within ANSWER_BOUND, that cronmon recovered within
    RECOVERY_BOUND, and that every check-in was acknowledged in the end."""
    answers: list[Answer] = []
    tasks: set[asyncio.Task] = set()
    async with httpx.AsyncClient(timeout=ANSWER_BOUND + 5) as client:

        async def drive(seconds: float) -> None:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                task = asyncio.create_task(ping_until_ok(client, url, answers, time.monotonic() + RECOVERY_BOUND))
                tasks.add(task)
                await asyncio.sleep(0.05)  # ~20 check-ins a second

        await drive(2.0)
        assert answers and all(a.status == 200 for a in answers), collections.Counter(a.status for a in answers)
        killed = time.monotonic()
        kill()
        # Until cronmon answers 200 again after its first 503, then 2 s more.
        while True:
            await drive(0.5)
            first_503 = min((a.done for a in answers if a.status == 503 and a.sent >= killed), default=None)
            if first_503 is not None and any(a.status == 200 and a.done > first_503 for a in answers):
                break
            assert time.monotonic() - killed < RECOVERY_BOUND, "cronmon did not recover from the failover"
        await drive(2.0)
        await asyncio.gather(*tasks)

    statuses = collections.Counter(a.status for a in answers)
    assert set(statuses) <= {200, 503}, statuses
    slowest = max(a.done - a.sent for a in answers)
    assert slowest < ANSWER_BOUND, f"an answer took {slowest:.2f}s"
    first_503 = min(a.done for a in answers if a.status == 503)
    back = min(a.done for a in answers if a.status == 200 and a.done > first_503)
    last_503 = max(a.done for a in answers if a.status == 503)
    assert back - killed < RECOVERY_BOUND
    # Every check-in was acknowledged in the end (its retries got through).
    pings = collections.defaultdict(list)
    for a in answers:
        pings[a.rid].append(a.status)
    assert all(200 in got for got in pings.values()), [rid for rid, got in pings.items() if 200 not in got][:3]
    return FailoverRun(answers, killed, first_503, back, last_503, slowest)
