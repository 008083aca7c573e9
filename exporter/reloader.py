"""Config (re)load: parse into a new registry and swap it in whole.

Used at start-up (a bad config refuses to start) and on SIGHUP or
POST /-/reload (a bad config keeps the old one running and sets
cronmon_config_last_reload_successful to 0).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import credentials
from .config import Config, ConfigError, config_digest, load_config
from .config_child import parse_in_child
from .core import Registry
from .heap import freeze_long_lived
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ReloadState:
    successful: bool = False
    success_timestamp: float = 0.0
    last_error: str | None = None


class Reloader:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock
        self.state = ReloadState()
        self.on_swap: list[Callable[[Registry], None]] = []
        self._lock = asyncio.Lock()
        self._current: Registry | None = None  # the last registry loaded
        self._config: Config | None = None  # ... from this config
        self._config_digest: bytes | None = None  # ... with these file contents
        self._requested = False  # a request_reload() waits for its turn
        self._requests: set[asyncio.Task] = set()

    def load(self, parsed: tuple[Config, bytes] | None = None) -> Registry:
        """Parse config and resolve its secrets; ConfigError on any problem.
        `parsed`: the config (parsed by parse_in_child, or the running one
        when the files are unchanged) and the digest of its files.

        The cyclic garbage collector is off meanwhile: parsing 10,000
        monitors allocates half a million objects that all live on, and
        the collector's passes over them (measured: six, of 25 to 250 ms
        each) would stall the event loop during a reload; what parsing
        throws away is freed by refcounting. What was loaded is frozen
        (kept out of the collector's passes) before it is back on."""
        was_enabled = gc.isenabled()
        gc.disable()
        loaded = False
        try:
            # Config management often signals without changing anything;
            # unchanged files are not parsed again (10,000 monitors: ~2 s of
            # CPU). Secrets are always read again: a key file may rotate.
            if parsed is not None:
                config, digest = parsed
            else:
                digest = config_digest(self.settings.config_path)
                if digest == self._config_digest and self._config is not None:
                    config = self._config
                else:
                    config = load_config(self.settings.config_path, now=self.clock())
            secrets = credentials.resolve(config, self.settings.data_dir)
            current = self._current
            if config is self._config and current is not None and _same_secrets(secrets, current.secrets):
                # Nothing changed: the running registry stays, and whoever
                # swaps on a reload has nothing to do (a reload of 10,000
                # unchanged monitors used to rebuild the registry and
                # re-check every monitor's fingerprint in Redis). Nothing
                # new to freeze either.
                return current
            registry = Registry.build(config, secrets)
            if self._current is not None:
                # Unchanged monitors keep their objects: the scrape cache
                # then knows them unchanged by identity, not by comparing.
                old = self._current.yaml
                registry = replace(registry, yaml={
                    monitor_id: old[monitor_id] if old.get(monitor_id) == monitor else monitor
                    for monitor_id, monitor in registry.yaml.items()
                })
            self._current = registry
            self._config, self._config_digest = config, digest
            loaded = True
            return registry
        finally:
            if loaded:
                # Before the collector is back: its first pass would walk
                # all of the new config (see heap.py).
                freeze_long_lived(collect_young=False)
            if was_enabled:
                gc.enable()

    def load_initial(self) -> Registry:
        registry = self.load()
        self._succeeded()
        return registry

    async def reload(self) -> Registry:
        """Load and swap; on failure keep the running config and re-raise."""
        async with self._lock:  # two reloads at once would race on the swap
            previous = self._current
            try:
                registry = await asyncio.to_thread(self.load, await self._parse_if_changed())
            except ConfigError as exc:
                self.state.successful = False
                self.state.last_error = str(exc)
                log.error("config reload failed, keeping the running config:\n%s", exc)
                raise
            if registry is not previous:
                for callback in self.on_swap:
                    callback(registry)
            self._succeeded()
            log.info("config reloaded: %d monitors%s", len(registry.monitors),
                     " (unchanged)" if registry is previous else "")
            return registry

    async def _parse_if_changed(self) -> tuple[Config, bytes]:
        """The config and the digest of its files: parsed in a child process
        (config_child: a serving process never parses YAML itself), or the
        running one when the files are the ones already loaded. Files that
        change between the digest and the parse are parsed in their newer
        form, and parsed again by the next reload (their digest differs):
        never a stale config kept as current."""
        digest = await asyncio.to_thread(config_digest, self.settings.config_path)
        if digest == self._config_digest and self._config is not None:
            return self._config, digest
        return await parse_in_child(self.settings.config_path, self.clock()), digest

    def request_reload(self) -> None:
        """Reload soon (SIGHUP). Requests that arrive while one waits for
        its turn fold into it: a burst of signals costs at most the reload
        in progress plus one more, not one reload per signal (a 10,000
        monitor reload takes seconds of CPU)."""
        if self._requested:
            return
        self._requested = True

        async def run() -> None:
            async with self._lock:
                self._requested = False  # signals from now on need another pass
            try:
                await self.reload()
            except ConfigError:
                pass  # logged; the old config keeps running

        task = asyncio.ensure_future(run())
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    def _succeeded(self) -> None:
        self.state.successful = True
        self.state.success_timestamp = self.clock()
        self.state.last_error = None


def _same_secrets(new: credentials.ResolvedSecrets, old: credentials.ResolvedSecrets | None) -> bool:
    """The same secrets, whether or not this resolve generated the ping key
    (a key generated at start-up is read back from the data dir later)."""
    return old is not None and replace(new, generated_now=False) == replace(old, generated_now=False)
