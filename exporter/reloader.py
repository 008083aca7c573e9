"""Config (re)load: parse into a new registry and swap it in whole.

Used at start-up (a bad config refuses to start) and on SIGHUP or
POST /-/reload (a bad config keeps the old one running and sets
cronmon_config_last_reload_successful to 0).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from . import credentials
from .config import ConfigError, load_config
from .core import Registry
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

    def load(self) -> Registry:
        """Parse config and resolve its secrets; ConfigError on any problem."""
        config = load_config(self.settings.config_path, now=self.clock())
        secrets = credentials.resolve(config, self.settings.data_dir)
        return Registry.build(config, secrets)

    def load_initial(self) -> Registry:
        registry = self.load()
        self._succeeded()
        return registry

    async def reload(self) -> Registry:
        """Load and swap; on failure keep the running config and re-raise."""
        async with self._lock:  # two reloads at once would race on the swap
            try:
                registry = await asyncio.to_thread(self.load)
            except ConfigError as exc:
                self.state.successful = False
                self.state.last_error = str(exc)
                log.error("config reload failed, keeping the running config:\n%s", exc)
                raise
            for callback in self.on_swap:
                callback(registry)
            self._succeeded()
            log.info("config reloaded: %d monitors", len(registry.monitors))
            return registry

    def _succeeded(self) -> None:
        self.state.successful = True
        self.state.success_timestamp = self.clock()
        self.state.last_error = None
