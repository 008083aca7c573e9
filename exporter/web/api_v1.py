"""Native management API, /api/v1 (bearer tokens from the config).

    GET    /api/v1/monitors                         monitors this token sees
    POST   /api/v1/monitors                         create (write scope)
    GET    /api/v1/monitors/{id}                    one monitor, with its state
    PUT    /api/v1/monitors/{id}                    replace its definition
    PATCH  /api/v1/monitors/{id}                    change some fields
    DELETE /api/v1/monitors/{id}                    delete it with its history
    GET    /api/v1/monitors/{id}/runs?limit=&before=   events, newest first
    GET    /api/v1/monitors/{id}/runs/{seq}/log     the log sent with one event

Bodies use the YAML fields as JSON. A monitor's `ping_urls` (and
`ping_url`, the first of them) are shown to tokens that may record
check-ins on it (access.can_check_in): its own UUID URL, never a ping key,
which addresses every monitor that accepts it. Every time in an answer,
run entries included (`time`, `started`, `through`), is an RFC 3339 UTC
string. Every error has one shape:
``{"error": {"code": "...", "message": "...", "issues": [{"field", "reason"}]}}``
(issues only on validation_failed). A monitor the token may not see is
404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..access import can_change, can_check_in, can_see
from ..config import MonitorSpec, SpecError, parse_monitor_spec
from ..credentials import ApiToken
from ..errors import MonitorExists, QuotaExceeded, ReadOnlyMonitor, StoreUnavailable, UnknownMonitor
from ..model import MUTABLE_ALERTS, CronSchedule, Facts, Monitor, iso_utc_or_none
from . import client
from .client import ParamError, answering, bearer_token, int_param
from .keys import CORE, SETTINGS

MAX_PAGE = 200
# Unix times in stored run entries besides `t` (shown as `time`).
_RUN_TIMES = ("started", "through")


class ApiError(Exception):
    """An error response in the API's one shape (rendered by `api_errors`)."""

    def __init__(self, status: int, code: str, message: str, issues: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"code": code, "message": message}
        if issues is not None:
            self.body["issues"] = [{"field": field, "reason": reason} for field, reason in issues]

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": 'Bearer realm="cronmon"'} if self.status == 401 else None
        return web.json_response({"error": self.body}, status=self.status, headers=headers)


def authenticate(request: web.Request, write: bool = False) -> ApiToken:
    sent, token = bearer_token(request)
    if not sent:
        raise ApiError(401, "unauthorized", "send an API token as 'Authorization: Bearer <token>'")
    if token is None:
        raise ApiError(401, "unauthorized", "unknown API token")
    if write and not token.can_write:
        raise ApiError(403, "forbidden", f'API token "{token.name}" has the read scope; this needs write')
    return token


def visible_monitor(request: web.Request, token: ApiToken) -> Monitor:
    monitor_id = request.match_info["monitor"]
    monitor = request.app[CORE].registry.monitors.get(monitor_id)
    if monitor is None or not can_see(token, monitor):
        raise ApiError(404, "not_found", f'no monitor "{monitor_id}"')
    return monitor


async def read_json(request: web.Request) -> Any:
    try:
        return await client.read_json(request, request.app[SETTINGS].max_body_bytes)
    except client.BodyError as exc:
        raise ApiError(exc.status, "too_large" if exc.status == 413 else "invalid_json", exc.reason) from None


def parse_spec(request: web.Request, data: Any) -> MonitorSpec:
    try:
        return parse_monitor_spec(data, request.app[CORE].clock())
    except SpecError as exc:
        raise ApiError(400, "validation_failed", "the monitor is not valid", exc.issues) from None


async def monitor_json(request: web.Request, monitor: Monitor, token: ApiToken, facts: Facts | None = None) -> dict:
    core = request.app[CORE]
    if facts is None:
        facts = await core.facts(monitor.id)
    ev = core.evaluate(monitor, facts)
    schedule = monitor.schedule
    body: dict[str, Any] = {
        "id": monitor.id,
        "name": monitor.name,
        "description": monitor.description,
        "schedule": (
            {"cron": schedule.expression, "timezone": schedule.timezone}
            if isinstance(schedule, CronSchedule) else {"interval": schedule.seconds}
        ),
        "grace": monitor.grace,
        "max_runtime": monitor.max_runtime,
        "min_runtime": monitor.min_runtime,
        # `mute:` and `alerts:` are two spellings of one setting: shown as the switches.
        "alerts": {name: alert not in monitor.muted for name, alert in MUTABLE_ALERTS.items()},
        "failure_threshold": monitor.failure_threshold,
        "recovery_threshold": monitor.recovery_threshold,
        "labels": dict(monitor.labels),
        "group": monitor.group,
        "paused": monitor.paused,
        "source": "yaml" if monitor.from_yaml else "api",
        "file": monitor.source if monitor.from_yaml else None,
        "owner": monitor.owner,
        "team": monitor.team,
        "writable": can_change(token, monitor),
        "status": ev.status.value,
        "next_expected": iso_utc_or_none(ev.next_expected),
        "deadline": iso_utc_or_none(ev.deadline),
        "last_checkin": iso_utc_or_none(facts.last_checkin),
        "last_start": iso_utc_or_none(facts.last_start),
        "last_success": iso_utc_or_none(facts.last_success),
        "last_failure": iso_utc_or_none(facts.last_failure),
        "last_duration": facts.last_duration,
        "last_exit_code": facts.last_exit_code,
        "running_runs": ev.running_runs,
        "consecutive_failures": ev.consecutive_failures,
    }
    if can_check_in(token, monitor):
        # Ping URLs are check-in credentials: shown to the tokens that may
        # record check-ins on the monitor anyway (for a YAML monitor, those
        # its ping.tokens names), not to read-scope ones.
        urls = ping_urls(request, monitor)
        body["ping_urls"] = urls
        if urls:
            body["ping_url"] = urls[0]
    return body


def ping_urls(request: web.Request, monitor: Monitor) -> list[str]:
    """The URLs a job can ping `monitor` on with no other secret (Registry.served_ping_uuid)."""
    uuid = request.app[CORE].registry.served_ping_uuid(monitor)
    return [f"{request.app[SETTINGS].base_url}/ping/{uuid}"] if uuid else []


async def list_monitors(request: web.Request) -> web.Response:
    token = authenticate(request)
    monitors = [m for m in request.app[CORE].registry.monitors.values() if can_see(token, m)]
    facts = await request.app[CORE].snapshot(m.id for m in monitors)  # one round trip
    return web.json_response({"monitors": [await monitor_json(request, m, token, facts[m.id]) for m in monitors]})


async def create_monitor(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    spec = parse_spec(request, await read_json(request))
    try:
        monitor = await request.app[CORE].create_monitor(spec, token.owner, token.team)
    except ReadOnlyMonitor as exc:
        raise ApiError(409, "read_only", str(exc)) from None
    except MonitorExists:
        raise ApiError(409, "conflict", f'a monitor "{spec.id}" exists already') from None
    except QuotaExceeded as exc:
        raise ApiError(403, "quota_exceeded", str(exc)) from None
    return web.json_response({"monitor": await monitor_json(request, monitor, token)}, status=201)


async def get_monitor(request: web.Request) -> web.Response:
    token = authenticate(request)
    monitor = visible_monitor(request, token)
    return web.json_response({"monitor": await monitor_json(request, monitor, token)})


async def replace_monitor(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    monitor = writable_monitor(request, token)
    data = await read_json(request)
    if isinstance(data, dict):
        if data.setdefault("id", monitor.id) != monitor.id:
            raise ApiError(400, "validation_failed", "the id cannot change", [("id", "must be " + monitor.id)])
    return await _update(request, token, monitor, parse_spec(request, data))


async def patch_monitor(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    monitor = writable_monitor(request, token)
    changes = await read_json(request)
    if not isinstance(changes, dict) or not changes:
        raise ApiError(400, "validation_failed", "send a JSON object with the fields to change", [])
    if changes.get("id", monitor.id) != monitor.id:
        raise ApiError(400, "validation_failed", "the id cannot change", [("id", "must be " + monitor.id)])
    current = ((await request.app[CORE].monitor_definition(monitor.id)) or {}).get("spec", {})
    merged = {**current, **changes}
    # A change of `alerts` replaces a stored `mute` and the other way round:
    # they are one setting, and the spec refuses both at once.
    for sent, stored in (("alerts", "mute"), ("mute", "alerts")):
        if sent in changes and stored not in changes:
            merged.pop(stored, None)
    return await _update(request, token, monitor, parse_spec(request, merged))


async def _update(request: web.Request, token: ApiToken, monitor: Monitor, spec: MonitorSpec) -> web.Response:
    try:
        updated = await request.app[CORE].update_monitor(monitor, spec)
    except UnknownMonitor:
        raise ApiError(404, "not_found", f'no monitor "{monitor.id}"') from None
    return web.json_response({"monitor": await monitor_json(request, updated, token)})


async def delete_monitor(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    monitor = writable_monitor(request, token)
    try:
        await request.app[CORE].delete_monitor(monitor)
    except UnknownMonitor:
        raise ApiError(404, "not_found", f'no monitor "{monitor.id}"') from None
    return web.Response(status=204)


def writable_monitor(request: web.Request, token: ApiToken) -> Monitor:
    monitor = visible_monitor(request, token)
    if monitor.from_yaml:
        raise ApiError(409, "read_only", str(ReadOnlyMonitor(monitor)))
    if not can_change(token, monitor):
        raise ApiError(403, "forbidden", f'API token "{token.name}" may not change monitor "{monitor.id}"')
    return monitor


async def list_runs(request: web.Request) -> web.Response:
    """Events newest first, `limit` at a time; pass the returned
    `next_before` as `before` for the next page (stable while new events
    arrive, unlike an offset)."""
    token = authenticate(request)
    monitor = visible_monitor(request, token)
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
    assert limit is not None  # it has a default
    before = _int_param(request, "before", None, 1, None)
    page, more = await request.app[CORE].events(monitor.id, limit=limit, before=before)
    for event in page:
        event["time"] = iso_utc_or_none(event.pop("t", None))
        # The other times an entry holds: a run's start (on its end or
        # timeout), the last slot a missed or outage entry accounts for.
        for name in _RUN_TIMES:
            if isinstance(event.get(name), int | float):
                event[name] = iso_utc_or_none(event[name])
        if "log" in event:
            event["has_log"] = True
            del event["log"]
    return web.json_response({"runs": page, "next_before": page[-1]["seq"] if more and page else None})


async def run_log(request: web.Request) -> web.Response:
    """The log of one event (by seq) or of one run (by run id: its newest
    event with a log). Crontify's GET /monitors/<id>/runs/<runId>/log has
    the same path, so the answer carries its `hasLog`/`content` too."""
    token = authenticate(request)
    monitor = visible_monitor(request, token)
    ref = request.match_info["seq"]
    core = request.app[CORE]
    if ref.isdigit():
        matching, _ = await core.events(monitor.id, limit=1, seq=int(ref))
    else:
        # A run has a handful of events (start, log lines, its end).
        matching, _ = await core.events(monitor.id, limit=core.limits.history, run=ref)
    if not matching:
        raise ApiError(404, "not_found", f"no event or run {ref} in the kept history of {monitor.id}")
    event = next((e for e in matching if "log" in e), matching[0])
    content = await core.log(monitor.id, event["log"]) if "log" in event else None
    has_log = content is not None
    return web.json_response(
        {
            "hasLog": has_log, "content": content,
            "seq": event.get("seq"), "run": event.get("run"), "has_log": has_log,
            "truncated": bool(event.get("log_truncated")) if has_log else False,
        }
    )


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int | None) -> int | None:
    try:
        return int_param(request.query, name, default, low, high)
    except ParamError as exc:
        if exc.not_a_number:
            problem = (f"{name} must be a whole number", [(name, "not a number")])
            raise ApiError(400, "validation_failed", *problem) from None
        raise ApiError(
            400, "validation_failed", f"{name} must be {exc.bounds}", [(name, f"out of range: {exc.bounds}")]
        ) from None


def _render(exc: Exception) -> web.StreamResponse | None:
    """ApiError, and Redis being unreachable (503: nothing was changed), in
    this API's error shape."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, "store_unavailable", str(exc)).response()
    return None


api_errors = answering(_render)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/monitors", api_errors(list_monitors))
    app.router.add_post("/api/v1/monitors", api_errors(create_monitor))
    app.router.add_get("/api/v1/monitors/{monitor}", api_errors(get_monitor))
    app.router.add_put("/api/v1/monitors/{monitor}", api_errors(replace_monitor))
    app.router.add_patch("/api/v1/monitors/{monitor}", api_errors(patch_monitor))
    app.router.add_delete("/api/v1/monitors/{monitor}", api_errors(delete_monitor))
    app.router.add_get("/api/v1/monitors/{monitor}/runs", api_errors(list_runs))
    app.router.add_get("/api/v1/monitors/{monitor}/runs/{seq}/log", api_errors(run_log))
