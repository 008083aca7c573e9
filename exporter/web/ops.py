"""Operational endpoints: /metrics, /-/healthy, /-/ready, /-/reload, /."""

from __future__ import annotations

import asyncio
import itertools

from aiohttp import web

from ..collector import Snapshot, SnapshotCollector
from ..config import ConfigError
from ..exposition import encoder_for
from ..store import StoreUnavailable
from .keys import CORE, RELOADER, SELF_REGISTRY

_TEXT = "text/plain"


async def metrics(request: web.Request) -> web.Response:
    core = request.app[CORE]
    registry = core.registry  # one registry for the whole scrape
    monitors = tuple(registry.monitors.values())
    try:
        facts = await core.store.snapshot(m.id for m in monitors)
        store_up = True
    except StoreUnavailable:
        facts, store_up = {}, False
    state = request.app[RELOADER].state
    snapshot = Snapshot(
        now=core.clock(),
        monitors=monitors,
        facts=facts,
        store_up=store_up,
        reload_successful=state.successful,
        reload_success_timestamp=state.success_timestamp,
    )
    encode, content_type = encoder_for(request.headers.get("Accept", ""))
    self_registry = request.app[SELF_REGISTRY]

    def build() -> bytes:
        families = itertools.chain(SnapshotCollector(snapshot).collect(), self_registry.collect())
        return encode(families)

    # Evaluating and encoding tens of thousands of series is CPU work; keep
    # it off the event loop so pings are not queued behind a scrape.
    body = await asyncio.get_running_loop().run_in_executor(None, build)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n", content_type=_TEXT)


async def ready(request: web.Request) -> web.Response:
    try:
        await request.app[CORE].store.ping()
    except StoreUnavailable as exc:
        return web.Response(status=503, text=f"not ready: {exc}\n", content_type=_TEXT)
    return web.Response(text="OK\n", content_type=_TEXT)


async def reload(request: web.Request) -> web.Response:
    try:
        registry = await request.app[RELOADER].reload()
    except ConfigError as exc:
        # Like Prometheus: 500 with the reason; the old config keeps running.
        return web.Response(
            status=500, text=f"failed to reload config, keeping the running one:\n{exc}\n", content_type=_TEXT
        )
    return web.Response(text=f"OK: {len(registry.monitors)} monitors\n", content_type=_TEXT)


async def index(request: web.Request) -> web.Response:
    monitors = len(request.app[CORE].registry.monitors)
    return web.Response(
        text=(
            "cronmon: cron and heartbeat monitoring for Prometheus\n\n"
            f"{monitors} monitors configured\n\n"
            "GET  /metrics        Prometheus metrics\n"
            "GET  /-/healthy      liveness\n"
            "GET  /-/ready        readiness (503 while Redis is unreachable)\n"
            "POST /-/reload       reload the config (also: SIGHUP)\n"
            "     /ping/...       Healthchecks-compatible pings (see README)\n"
        ),
        content_type=_TEXT,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/", index)
