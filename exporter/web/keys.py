"""Typed application state keys, all in one place."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..bridge import AlertBridge
from ..core import Core
from ..embedded import EmbeddedRedis
from ..probes import Prober
from ..reloader import Reloader
from ..scrape import Scraper
from ..settings import Settings
from ..sweeper import Sweeper

SETTINGS = web.AppKey("settings", Settings)
CORE = web.AppKey("core", Core)
RELOADER = web.AppKey("reloader", Reloader)
SWEEPER = web.AppKey("sweeper", Sweeper)
PROBER = web.AppKey("prober", Prober)
# Optional parts: None when not configured (the bridge) or not used (an
# external Redis). AppKey's type argument is the value's type.
BRIDGE: web.AppKey[AlertBridge | None] = web.AppKey("bridge")
EMBEDDED: web.AppKey[EmbeddedRedis | None] = web.AppKey("embedded")
# Metrics about cronmon's own HTTP handling and process.
SELF_REGISTRY = web.AppKey("self_registry", CollectorRegistry)
# /metrics' cache of rendered monitors (see scrape.py).
SCRAPER = web.AppKey("scraper", Scraper)
# Counts and times one request: (route name, status code, seconds), for
# answers written outside aiohttp's routes (fast_ping).
ObserveRequest = Callable[[str, int, float], None]
OBSERVE_REQUEST: web.AppKey[ObserveRequest] = web.AppKey("observe_request")
