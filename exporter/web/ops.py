"""Operational endpoints: /metrics, /-/healthy, /-/ready, /-/reload, /."""

from __future__ import annotations

import asyncio
import itertools

from aiohttp import web

from ..collector import Snapshot, SnapshotCollector
from ..config import ConfigError
from ..evaluate import evaluate
from ..exposition import encoder_for
from ..store import StoreUnavailable
from .keys import CORE, RELOADER, SELF_REGISTRY, SETTINGS

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
        base_url=request.app[SETTINGS].base_url,
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


async def monitor_page(request: web.Request) -> web.Response:
    """A monitor's current state and recent events, as JSON: where alert
    links point. It shows what /metrics already shows, plus the event list;
    log bodies are not included."""
    core = request.app[CORE]
    monitor = core.registry.monitors.get(request.match_info["monitor"])
    if monitor is None:
        return web.json_response({"error": "no monitor with this id"}, status=404)
    try:
        facts = await core.store.facts(monitor.id)
        events = await core.store.history(monitor.id, 0, 25)
    except StoreUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=503)
    ev = evaluate(monitor, facts, core.clock())
    for event in events:
        if "log" in event:
            event["has_log"] = True
            del event["log"]
    return web.json_response(
        {
            "id": monitor.id,
            "name": monitor.display_name,
            "description": monitor.description,
            "schedule": monitor.schedule.describe(),
            "labels": dict(monitor.labels),
            "group": monitor.group,
            "status": ev.status.value,
            "next_expected": ev.next_expected,
            "deadline": ev.deadline,
            "consecutive_failures": ev.consecutive_failures,
            "running_runs": ev.running_runs,
            "last_checkin": facts.last_checkin,
            "last_success": facts.last_success,
            "last_failure": facts.last_failure,
            "last_duration": facts.last_duration,
            "last_exit_code": facts.last_exit_code,
            "recent_events": events,
        }
    )


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
            "GET  /monitors/<id>  one monitor's state and recent events (JSON)\n"
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
    app.router.add_get("/monitors/{monitor}", monitor_page)
    app.router.add_get("/", index)
