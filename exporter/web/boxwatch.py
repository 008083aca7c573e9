"""Boxwatch-compatible cron checks (seeds/boxwatch-cron-checks.txt).

    GET/POST /cron-checks,  GET/PUT/DELETE /cron-checks/<id>     bearer token

A check is an API monitor (interval schedule) whose Boxwatch fields (the
integer id, server_id, alert switches) are kept with its definition. Its
`slug` is the monitor's ping UUID, so the documented ping URLs
(`/ping/<slug>`, `/start`, `/fail`) are served by the Healthchecks-style
ping routes, which record exit code (`/<code>` or `?exit_code=`), duration
(`?duration=` or start/finish pairing), source IP and user agent.

Boxwatch's plan limit becomes a configurable maximum number of checks per
owner (402 plan_limit_reached). Errors keep the document's shapes:
400 {"error": "validation_failed", "issues": [{field, reason}]} (`field` a
request field's name), 402 {"error", "current", "limit", "plan"},
404 {"error": "not_found"}; the undocumented ones are {"error": <code>}.

JSON types are the document's (a typed client decodes them): every number
the document shows as an integer is one. Durations are whole seconds,
rounded half up (2.49 s -> 2, 2.5 s -> 3); timestamps are whole seconds,
`2026-05-24T03:00:14Z` (UTC, `Z`, no fraction; the second it happened in,
i.e. truncated); `user_id` is an integer derived from the token's owner
(see _user_id). Metrics and the native API keep the exact values.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError

from ..access import can_change, can_see
from ..config import SpecError, parse_monitor_spec
from ..credentials import ApiToken
from ..errors import QuotaExceeded, StoreUnavailable, UnknownMonitor
from ..model import Facts, Monitor
from .client import BodyError, answering, bearer_token, read_json, slugify
from .keys import CORE, SETTINGS

PINGS_PAGE = 25
PLAN_QUOTA = "boxwatch"
_MIN_INTERVAL, _MAX_INTERVAL = 60, 7_776_000
_ALERTS = ("alert_on_missed", "alert_on_fail", "alert_on_stuck", "alert_on_long")
_MUTES = {
    "alert_on_missed": "missed",
    "alert_on_fail": "failed",
    "alert_on_stuck": "stuck",
    "alert_on_long": "too_long",
}
_UPDATABLE = ("name", "server_id", "interval_seconds", "grace_seconds", "max_duration_seconds", "enabled", *_ALERTS)


def _timestamp(value: float | None) -> str | None:
    """The document's timestamps: `2026-05-24T03:00:14Z`, whole seconds
    (truncated: the second the thing happened in), None for never."""
    if value is None:
        return None
    return datetime.fromtimestamp(math.floor(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _whole_seconds(value: float | None) -> int | None:
    """A duration as the document's integer seconds, rounded half up (not
    Python's round(), which rounds 2.5 to 2): 2.013 -> 2, 7.5 -> 8."""
    if value is None:
        return None
    return max(0, math.floor(float(value) + 0.5))


def _integer(value: Any) -> int | None:
    return int(value) if value is not None else None


def _user_id(owner: str | None) -> int | None:
    """Boxwatch's integer user_id for a cronmon owner (a name): the first 31
    bits of its SHA-256, so the same owner has the same id on every replica
    and after restarts, without storing a mapping, and it fits a signed
    32-bit integer. 0 is never produced (0 -> 1)."""
    if owner is None:
        return None
    return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big") & 0x7FFFFFFF or 1


def _issues(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"error": "validation_failed", "issues": [{"field": f, "reason": r} for f, r in pairs]}


class _Error(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(body.get("error"))
        self.status, self.body = status, body


class CheckFields(BaseModel):
    """Every field optional here; create() checks the required ones."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    interval_seconds: StrictInt | None = None
    grace_seconds: StrictInt | None = None
    max_duration_seconds: StrictInt | None = None
    server_id: StrictInt | None = None
    enabled: StrictBool | StrictInt | None = None
    alert_on_missed: StrictBool | StrictInt | None = None
    alert_on_fail: StrictBool | StrictInt | None = None
    alert_on_stuck: StrictBool | StrictInt | None = None
    alert_on_long: StrictBool | StrictInt | None = None


def _token(request: web.Request, write: bool = False) -> ApiToken:
    _, token = bearer_token(request)
    if token is None:
        raise _Error(401, {"error": "unauthorized"})
    if write and not token.can_write:
        raise _Error(403, {"error": "forbidden"})
    return token


def _checks(request: web.Request, token: ApiToken) -> list[Monitor]:
    monitors = request.app[CORE].registry.monitors.values()
    found = [m for m in monitors if "boxwatch_id" in m.extras and can_see(token, m)]
    return sorted(found, key=lambda m: m.extras["boxwatch_id"])


def _check(request: web.Request, token: ApiToken) -> Monitor:
    try:
        wanted = int(request.match_info["id"])
    except ValueError:
        raise _Error(404, {"error": "not_found"}) from None
    for monitor in _checks(request, token):
        if monitor.extras["boxwatch_id"] == wanted:
            return monitor
    raise _Error(404, {"error": "not_found"})


async def _body(request: web.Request) -> CheckFields:
    try:
        data = await read_json(request, request.app[SETTINGS].max_body_bytes)
    except BodyError as exc:
        if exc.status == 413:
            raise _Error(413, {"error": "payload_too_large"}) from None
        raise _Error(400, _issues(("body", exc.reason))) from None
    if not isinstance(data, dict):
        raise _Error(400, _issues(("body", "must be a JSON object")))
    try:
        return CheckFields.model_validate(data)
    except ValidationError as exc:
        # One issue per request field, named as the client sent it: a union
        # (boolean or integer) fails once per member, at ("enabled", "bool").
        reasons: dict[str, list[str]] = {}
        for e in exc.errors(include_url=False):
            field = str(e["loc"][0]) if e["loc"] else "body"
            reason = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            if reason not in reasons.setdefault(field, []):
                reasons[field].append(reason)
        raise _Error(400, _issues(*((f, " or ".join(r)) for f, r in reasons.items()))) from None


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    """Apply the document's rules to a complete set of fields."""
    issues = []
    name = fields["name"]
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
        issues.append(("name", "must be 1-100 characters"))
    interval = fields["interval_seconds"]
    if not isinstance(interval, int) or not _MIN_INTERVAL <= interval <= _MAX_INTERVAL:
        issues.append(("interval_seconds", f"must be between {_MIN_INTERVAL} and {_MAX_INTERVAL}"))
        interval = None
    grace = fields["grace_seconds"]
    if grace is None:
        # The document's default (300) cannot break its own rule (<= half
        # the interval): a short interval gets half of it instead.
        grace = min(300, interval // 2) if interval else 300
    if grace < 0 or (interval and grace > interval // 2):
        issues.append(("grace_seconds", "must be >= 0 and <= floor(interval_seconds / 2)"))
    max_duration = fields["max_duration_seconds"]
    if max_duration is not None and (max_duration <= 0 or (interval and max_duration >= interval)):
        issues.append(("max_duration_seconds", "must be > 0 and < interval_seconds"))
    flags = {key: bool(fields[key]) for key in (*_ALERTS, "enabled")}
    if flags["alert_on_long"] and max_duration is None:
        issues.append(("alert_on_long", "requires max_duration_seconds"))
    if issues:
        raise _Error(400, _issues(*issues))
    return {**fields, "grace_seconds": grace, **flags}


def _spec(monitor_id: str, fields: dict[str, Any]) -> Any:
    data = {
        "id": monitor_id,
        "name": fields["name"].strip(),
        "schedule": {"interval": fields["interval_seconds"]},
        "grace": fields["grace_seconds"],
        "max_runtime": fields["max_duration_seconds"],
        "paused": not fields["enabled"],
        # A switch that is off mutes its alert (cronmon_alert_muted; the
        # rules and the bridge skip it).
        "mute": [mute for switch, mute in _MUTES.items() if not fields[switch]],
    }
    try:
        return parse_monitor_spec(data, 0.0)
    except SpecError as exc:  # should not happen after _validated
        raise _Error(400, _issues(*exc.issues)) from None


def _fields_of(monitor: Monitor) -> dict[str, Any]:
    extras = monitor.extras
    return {
        "name": monitor.name,
        "interval_seconds": int(monitor.schedule.seconds),  # type: ignore[union-attr]
        "grace_seconds": int(monitor.grace),
        "max_duration_seconds": int(monitor.max_runtime) if monitor.max_runtime is not None else None,
        "server_id": extras.get("server_id"),
        "enabled": not monitor.paused,
        **{key: extras.get(key, key != "alert_on_long") for key in _ALERTS},
    }


def _ping_urls(request: web.Request, monitor: Monitor) -> dict[str, str]:
    slug = request.app[CORE].registry.ping_uuid(monitor)
    base = f"{request.app[SETTINGS].base_url}/ping/{slug}"
    return {"success": base, "start": f"{base}/start", "fail": f"{base}/fail"}


async def _check_json(
    request: web.Request, token: ApiToken, monitor: Monitor, facts: Facts | None = None
) -> dict[str, Any]:
    """A check in the document's shape. Its `slug` is the ping UUID, a
    check-in credential: shown only to tokens that may change the check
    (null for read-scope ones), as the native API shows ping_url."""
    core = request.app[CORE]
    if facts is None:
        facts = await core.facts(monitor.id)
    fields = _fields_of(monitor)
    return {
        "id": int(monitor.extras["boxwatch_id"]),
        "user_id": _user_id(monitor.owner),
        "server_id": _integer(fields["server_id"]),
        "server_hostname": None,  # cronmon has no servers to name
        "name": fields["name"],
        "slug": core.registry.ping_uuid(monitor) if can_change(token, monitor) else None,
        "interval_seconds": fields["interval_seconds"],
        "grace_seconds": fields["grace_seconds"],
        "max_duration_seconds": fields["max_duration_seconds"],
        "enabled": int(fields["enabled"]),
        "status": core.evaluate(monitor, facts).status.value,
        **{key: int(fields[key]) for key in _ALERTS},
        "last_ping_at": _timestamp(facts.last_checkin),
        "last_start_at": _timestamp(facts.last_start),
        "last_success_at": _timestamp(facts.last_success),
        "last_fail_at": _timestamp(facts.last_failure),
        "last_exit_code": _integer(facts.last_exit_code),
        "last_duration_seconds": _whole_seconds(facts.last_duration),
        "created_at": _timestamp(monitor.extras.get("created_at")),
    }


async def list_checks(request: web.Request) -> web.Response:
    token = _token(request)
    checks = _checks(request, token)
    facts = await request.app[CORE].snapshot(m.id for m in checks)  # one round trip
    return web.json_response(
        {
            "checks": [await _check_json(request, token, m, facts[m.id]) for m in checks],
            "plan_limit": request.app[SETTINGS].boxwatch_plan_limit,
            "current_count": sum(1 for m in checks if m.owner == token.owner),
            "plan": request.app[SETTINGS].boxwatch_plan,
        }
    )


async def create_check(request: web.Request) -> web.Response:
    token = _token(request, write=True)
    body = await _body(request)
    sent = body.model_dump(exclude_unset=True)
    missing = [f for f in ("name", "interval_seconds") if sent.get(f) is None]
    if missing:
        raise _Error(400, _issues(*((f, "required") for f in missing)))
    defaults = {
        "grace_seconds": None,
        "max_duration_seconds": None,
        "server_id": None,
        "enabled": True,
        "alert_on_missed": True,
        "alert_on_fail": True,
        "alert_on_stuck": True,
        "alert_on_long": False,
    }
    fields = _validated({**defaults, **sent})
    settings, core = request.app[SETTINGS], request.app[CORE]
    number = await core.next_sequence("boxwatch")
    monitor_id = f"{slugify(fields['name'], 'check')}-{number}"
    extras = {
        "boxwatch_id": number,
        "server_id": fields["server_id"],
        "created_at": core.clock(),
        **{key: fields[key] for key in _ALERTS},
    }
    try:
        # The plan limit is checked by the store in the same script as the
        # write: two creates racing for the last place cannot both get it.
        monitor = await core.create_monitor(
            _spec(monitor_id, fields),
            token.owner,
            token.team,
            extras,
            quotas={PLAN_QUOTA: settings.boxwatch_plan_limit},
        )
    except QuotaExceeded as exc:
        limit, current = int(exc.limit), int(exc.limit)
        if exc.quota == PLAN_QUOTA:  # more if the limit was lowered since
            current = max(current, sum(1 for m in _checks(request, token) if m.owner == token.owner))
        raise _Error(
            402,
            {
                "error": "plan_limit_reached",
                "current": current,
                "limit": limit,
                "plan": settings.boxwatch_plan if exc.quota == PLAN_QUOTA else "monitors_per_owner",
            },
        ) from None
    return web.json_response(
        {"check": await _check_json(request, token, monitor), "ping_urls": _ping_urls(request, monitor)}, status=201
    )


async def get_check(request: web.Request) -> web.Response:
    token = _token(request)
    monitor = _check(request, token)
    try:
        offset = int(request.query.get("pings_offset", "0"))
        if offset < 0:
            raise ValueError
    except ValueError:
        raise _Error(400, _issues(("pings_offset", "must be a whole number >= 0"))) from None
    core = request.app[CORE]
    page, _ = await core.events(
        monitor.id, limit=PINGS_PAGE, offset=offset, kinds=("start", "success", "fail", "log")
    )
    bodies = await core.logs(monitor.id, [e["log"] for e in page if "log" in e])
    pings = [
        {
            "id": int(e["seq"]),
            "check_id": int(monitor.extras["boxwatch_id"]),
            "ping_type": e["kind"],
            "exit_code": _integer(e.get("exit_code")),
            "duration_seconds": _whole_seconds(e.get("duration")),
            "source_ip": e.get("ip"),
            "user_agent": e.get("ua"),
            "body": bodies.get(e["log"]) if "log" in e else None,
            "received_at": _timestamp(e["t"]),
        }
        for e in page
    ]
    facts = await core.facts(monitor.id)
    return web.json_response(
        {
            "check": await _check_json(request, token, monitor, facts),
            "ping_urls": _ping_urls(request, monitor) if can_change(token, monitor) else None,
            "pings": pings,
            "pings_total": sum(facts.checkins.get(k, 0) for k in ("start", "success", "fail", "log")),
        }
    )


async def update_check(request: web.Request) -> web.Response:
    token = _token(request, write=True)
    monitor = _check(request, token)
    if not can_change(token, monitor):
        raise _Error(403, {"error": "forbidden"})
    sent = {k: v for k, v in (await _body(request)).model_dump(exclude_unset=True).items() if k in _UPDATABLE}
    if not sent:
        raise _Error(400, _issues(("body", "no updatable fields provided")))
    current = _fields_of(monitor)
    if "interval_seconds" in sent and "grace_seconds" not in sent:
        current["grace_seconds"] = min(current["grace_seconds"], sent["interval_seconds"] // 2)
    fields = _validated({**current, **sent})
    extras = {**monitor.extras, "server_id": fields["server_id"], **{key: fields[key] for key in _ALERTS}}
    try:
        updated = await request.app[CORE].update_monitor(monitor, _spec(monitor.id, fields), extras)
    except UnknownMonitor:
        raise _Error(404, {"error": "not_found"}) from None
    return web.json_response({"check": await _check_json(request, token, updated)})


async def delete_check(request: web.Request) -> web.Response:
    token = _token(request, write=True)
    monitor = _check(request, token)
    if not can_change(token, monitor):
        raise _Error(403, {"error": "forbidden"})
    try:
        await request.app[CORE].delete_monitor(monitor)
    except UnknownMonitor:
        raise _Error(404, {"error": "not_found"}) from None
    return web.json_response({"ok": True})


def boxwatch_errors(handler):
    """Wrap a handler of this API: its error shape, and 503 when Redis is
    unreachable. Per route, not a middleware (the ping path skips it)."""

    return answering(_render)(handler)


def _render(exc: Exception) -> web.StreamResponse | None:
    if isinstance(exc, _Error):
        return web.json_response(exc.body, status=exc.status)
    if isinstance(exc, StoreUnavailable):
        return web.json_response({"error": "service_unavailable"}, status=503)
    return None


def add_routes(app: web.Application) -> None:
    app.router.add_get("/cron-checks", boxwatch_errors(list_checks))
    app.router.add_post("/cron-checks", boxwatch_errors(create_check))
    app.router.add_get("/cron-checks/{id}", boxwatch_errors(get_check))
    app.router.add_put("/cron-checks/{id}", boxwatch_errors(update_check))
    app.router.add_delete("/cron-checks/{id}", boxwatch_errors(delete_check))
