"""The core: the only entry points to monitor state.

`Core.record` takes canonical check-ins from every adapter; `Core.sweep`
records missed slots and over-long runs; `Core.resync` re-bases a monitor
whose schedule changed. The registry of monitors is swapped whole on
reload, so a request sees either the old or the new config, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .config import Config
from .credentials import ResolvedSecrets
from .evaluate import SWEEP_BATCH, SweepPlan, plan_arrival, plan_sweep
from .model import CheckIn, Monitor
from .schedule import next_slot
from .store import RecordResult, Store

log = logging.getLogger(__name__)

# Compare-and-set retries before giving up for this round (another replica
# keeps changing the monitor; the next sweeper tick tries again).
_CAS_ATTEMPTS = 5


class UnknownMonitor(LookupError):
    pass


@dataclass(frozen=True)
class Registry:
    """Every monitor cronmon knows, and the secrets that address them."""

    monitors: Mapping[str, Monitor] = field(default_factory=dict)
    secrets: ResolvedSecrets | None = None

    @classmethod
    def build(cls, config: Config, secrets: ResolvedSecrets) -> "Registry":
        return cls({m.id: m for m in config.monitors}, secrets)

    def by_uuid_digest(self, digest: bytes) -> Monitor | None:
        if self.secrets is None:
            return None
        monitor_id = self.secrets.uuid_digests.get(digest)
        return self.monitors.get(monitor_id) if monitor_id else None


class Core:
    def __init__(self, store: Store, registry: Registry, clock: Callable[[], float] = time.time):
        self.store = store
        self.registry = registry
        self.clock = clock
        # Told the id of every monitor whose state changed. They must not
        # block or raise: they run on the ingestion path (the alert bridge
        # only adds the id to a set).
        self.listeners: list[Callable[[str], None]] = []

    def _changed(self, monitor_id: str) -> None:
        for listener in self.listeners:
            listener(monitor_id)

    def swap(self, registry: Registry) -> None:
        self.registry = registry

    async def record(self, checkin: CheckIn) -> RecordResult:
        """Record one check-in: one store round trip; one more when a
        deadline passed that no sweeper has recorded yet (sweep first) or
        when the arrival's slot is not among the planned candidates."""
        monitor = self.registry.monitors.get(checkin.monitor_id)
        if monitor is None:
            raise UnknownMonitor(checkin.monitor_id)
        plan = plan_arrival(monitor, checkin.received_at)
        generated_run_id = str(uuid.uuid4())
        for _ in range(_CAS_ATTEMPTS):
            result = await self.store.record(monitor, checkin, plan, generated_run_id)
            if result.status == "sweep":
                await self.sweep(monitor, checkin.received_at)
            elif result.status == "slot":
                # The first unaccounted slot is further back than the plan
                # guessed (grace longer than the cron interval).
                plan = plan.with_slot(monitor.schedule, result.slot)
            else:
                if result.status == "ok":
                    self._changed(monitor.id)
                return result
        raise RuntimeError(f"monitor {monitor.id}: could not record a check-in: state kept changing")

    async def sweep(self, monitor: Monitor, now: float) -> int:
        """Record every missed slot and newly over-long run as of `now`.

        Safe to run from any number of processes at once: each plan is
        applied only if the monitor is unchanged since it was read, so a
        slot is recorded missed exactly once. Returns how many slots were
        recorded missed by this call.
        """
        recorded = 0
        for _ in range(_CAS_ATTEMPTS):
            facts = await self.store.facts(monitor.id)
            plan: SweepPlan = plan_sweep(monitor, facts, now)
            if plan.empty:
                return recorded
            if not await self.store.apply_sweep(monitor, plan, now):
                continue  # someone else changed it: re-read and re-plan
            self._changed(monitor.id)
            recorded += plan.missed
            if plan.missed < SWEEP_BATCH:
                return recorded
            # A full batch: more slots may have passed (a long outage);
            # loop to record the next batch.
        return recorded

    async def resync(self, monitor: Monitor, now: float) -> bool:
        """Re-base stored accounting after the monitor's schedule, grace,
        max_runtime or pause changed (or the first time we see it).

        A changed schedule counts from `now`: slots that the new schedule
        would have had in the past were never expected, so they are not
        recorded as missed.
        """
        fingerprint = monitor.schedule_fingerprint()
        for _ in range(_CAS_ATTEMPTS):
            facts = await self.store.facts(monitor.id)
            if facts.fingerprint == fingerprint:
                return False
            accounted = upcoming = None
            if facts.accounted_through is not None:
                accounted = now if facts.fingerprint is not None else facts.accounted_through
                upcoming = next_slot(monitor.schedule, accounted)
            if await self.store.resync(monitor, facts.version, accounted, upcoming):
                return True
        return False

    async def resync_all(self, now: float) -> None:
        monitors = list(self.registry.monitors.values())
        # Bounded concurrency: a few round trips in flight, not thousands.
        semaphore = asyncio.Semaphore(16)

        async def one(monitor: Monitor) -> None:
            async with semaphore:
                await self.resync(monitor, now)

        await asyncio.gather(*(one(m) for m in monitors))
