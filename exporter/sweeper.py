"""The sweeper: records missed slots and over-long runs as their time comes.

It never scans every monitor: the store keeps an index of when each monitor
next needs a look (its next deadline or first run timeout), and each tick
reads only the entries that are due. Any number of exporter processes may
sweep the same Redis; `Core.sweep` makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from .core import Core
from .errors import StoreUnavailable

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        core: Core,
        interval: float = 1.0,
        batch: int = 500,
        clock: Callable[[], float] = time.time,
    ):
        self.core = core
        self.interval = interval
        self.batch = batch
        self.clock = clock
        self.needs_resync = True  # set again by reload
        self.passes = 0  # completed run_once calls (tests wait on it)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask run() to return after the pass in progress (if any)."""
        self._stopping.set()

    async def run_once(self) -> int:
        """Sweep everything due now; returns how many monitors were looked at."""
        now = self.clock()
        # API monitors another replica (or this one) created, changed or
        # deleted: one GET a tick to notice. Only those are re-checked (a
        # create elsewhere must not cost a read of every monitor here); the
        # writer re-based them already, this covers a writer that died
        # between its write and its re-base.
        changes = await self.core.sync_api_monitors()
        if changes.everything:
            self.needs_resync = True
        elif changes.ids and not self.needs_resync:
            monitors = self.core.registry.monitors
            await self.core.resync_monitors([monitors[i] for i in changes.ids if i in monitors], now)
        if self.needs_resync:
            # Cleared before, not after: a reload that lands while this pass
            # runs sets it again and gets a pass of its own.
            self.needs_resync = False
            try:
                await self.core.resync_all(now)
            except BaseException:
                self.needs_resync = True
                raise
        due = await self.core.store.due(now, self.batch)
        registry = self.core.registry
        for monitor_id in due:
            monitor = registry.monitors.get(monitor_id)
            if monitor is None:
                await self.core.store.forget_due(monitor_id)
                continue
            await self.core.sweep(monitor, now)
        self.passes += 1
        return len(due)

    async def run(self) -> None:
        """Sweep until stop(). Stopping waits for the pass in progress rather
        than cancelling it: a cancelled Redis call can leave a connection in
        an unknown state, and on Python 3.11 a cancel arriving inside
        redis-py's timeouts can even be swallowed."""
        backoff = self.interval
        while not self._stopping.is_set():
            try:
                swept = await self.run_once()
                backoff = self.interval
                if swept >= self.batch:
                    continue  # more is due: keep going without sleeping
            except StoreUnavailable as exc:
                log.warning("sweeper: %s; retrying in %.0fs", exc, backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception:  # a bug must not stop sweeping for good
                log.exception("sweeper: unexpected error")
                backoff = min(backoff * 2, 30.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
