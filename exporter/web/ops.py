"""Operational endpoints: /metrics, /-/healthy, /-/ready, /-/reload, /."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import exposition as prometheus_exposition
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from ..access import can_see
from ..collector import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, SelfState, render_self
from ..config import ConfigError
from ..errors import StoreUnavailable
from ..workers import ask_parent_to_reload
from .client import bearer_token
from .keys import CORE, RELOADER, SCRAPER, SELF_REGISTRY, SETTINGS

_TEXT = "text/plain"


def _wants_openmetrics(accept: str) -> bool:
    """client_golang's rule: the text format whenever the client accepts
    it (Prometheus always does); OpenMetrics only for a client that asks
    for it and accepts nothing else."""
    types = [part.split(";")[0].strip() for part in accept.split(",")] if accept else []
    if not types or any(t in ("text/plain", "*/*", "text/*") for t in types):
        return False
    return "application/openmetrics-text" in types


async def metrics(request: web.Request) -> web.Response:
    scraper = request.app[SCRAPER]
    store_up = await scraper.refresh()
    state = request.app[RELOADER].state
    own = render_self(
        SelfState(store_up, state.successful, state.success_timestamp, tuple(scraper.core.registry.monitors.values()))
    )
    self_registry = request.app[SELF_REGISTRY]
    if _wants_openmetrics(request.headers.get("Accept", "")):
        tail = own.encode() + openmetrics_exposition.generate_latest(self_registry)
        body = scraper.cache.openmetrics_body(tail) if store_up else tail
        return web.Response(body=body, headers={"Content-Type": OPENMETRICS_CONTENT_TYPE})
    tail = own.encode() + prometheus_exposition.generate_latest(self_registry)
    gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    body = scraper.cache.body(tail, gzip, include_monitors=store_up)
    headers = {"Content-Type": TEXT_CONTENT_TYPE, "Vary": "Accept-Encoding"}
    if gzip:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


# What an event shows without a token: what /metrics already tells anyone.
_PUBLIC_EVENT_FIELDS = ("seq", "t", "kind", "outcome", "duration", "exit_code", "has_log")


async def monitor_page(request: web.Request) -> web.Response:
    """A monitor's current state and recent events, as JSON: where alert
    links point, so it opens without credentials. Without a token it shows
    what /metrics already shows, and each event's time, kind, outcome,
    duration and exit code; what a job sent (messages, metadata, source
    addresses, User-Agents) needs a management token that can see the
    monitor (Authorization: Bearer). Log bodies are never included."""
    core = request.app[CORE]
    monitor = core.registry.monitors.get(request.match_info["monitor"])
    if monitor is None:
        return web.json_response({"error": "no monitor with this id"}, status=404)
    presented, token = bearer_token(request)
    if presented and token is None:
        return web.json_response({"error": "unknown token: send a token from api_tokens, or none"}, status=401)
    full = token is not None and can_see(token, monitor)
    try:
        facts = await core.facts(monitor.id)
        events = await core.recent_events(monitor.id, 25)
    except StoreUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=503)
    ev = core.evaluate(monitor, facts)
    for event in events:
        if "log" in event:
            event["has_log"] = True
            del event["log"]
    if not full:
        events = [{k: e[k] for k in _PUBLIC_EVENT_FIELDS if k in e} for e in events]
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
        await request.app[CORE].check_store()
    except StoreUnavailable as exc:
        return web.Response(status=503, text=f"not ready: {exc}\n", content_type=_TEXT)
    return web.Response(text="OK\n", content_type=_TEXT)


async def reload(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].enable_lifecycle:
        # Prometheus' answer and flag name, so runbooks carry over.
        return web.Response(
            status=403, text="Lifecycle API is not enabled: start cronmon with --web.enable-lifecycle, "
            "or send it SIGHUP\n", content_type=_TEXT,
        )
    try:
        registry = await request.app[RELOADER].reload()
    except ConfigError as exc:
        # Like Prometheus: 500 with the reason; the old config keeps running.
        return web.Response(
            status=500, text=f"failed to reload config, keeping the running one:\n{exc}\n", content_type=_TEXT
        )
    ask_parent_to_reload()  # the other workers of a supervisor reload too
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
            "POST /-/reload       reload the config (with --web.enable-lifecycle; SIGHUP always)\n"
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
