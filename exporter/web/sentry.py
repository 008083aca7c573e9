"""Sentry Crons-compatible check-ins (seeds/sentry-crons-checkin.txt).

    POST /api/<project_id>/envelope/                     what sentry-sdk sends
    GET|POST /api/<project_id>/cron/<slug>/<sentry_key>/?status=...   HTTP check-in

The DSN's public key (X-Sentry-Auth `sentry_key=`, or the `sentry_key`
query parameter) is a token from `api_tokens:`. It records check-ins where
access.can_check_in allows (write scope; its own or its team's API
monitors, YAML monitors that name it in `ping.tokens`), and a
`monitor_config` creates or updates an API monitor when the token has the
write scope (YAML monitors keep their YAML config). Envelopes
come gzip- or brotli-compressed or plain. Items other than check_in are
accepted and ignored, never an error, as Sentry does; so are check-ins for
monitors that neither exist nor come with a config. (The kit's read_body
inflates the body, `br` with the `brotli` dependency.)
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from aiohttp import web

from ..access import can_change, can_check_in, can_see, check_in_refusal
from ..config import SpecError, parse_monitor_spec
from ..credentials import ApiToken, match_api_token
from ..errors import QuotaExceeded, RateLimited, ReadOnlyMonitor, SourceNotAllowed, StoreUnavailable, UnknownMonitor
from ..model import CheckIn, Kind, Monitor
from .client import BodyError, client_ip, parse_json, read_body
from .keys import CORE, SETTINGS

log = logging.getLogger(__name__)

_KINDS = {"in_progress": Kind.START, "ok": Kind.SUCCESS, "error": Kind.FAIL}
_UNIT_SECONDS = {
    "minute": 60, "hour": 3600, "day": 86400, "week": 604800,
    # Sentry's month and year are calendar units; as an interval, 30 and 365 days.
    "month": 30 * 86400, "year": 365 * 86400,
}
_AUTH_KEY = re.compile(r"sentry_key=([^,\s]+)")
_ENCODINGS = ("", "identity", "gzip", "deflate", "br")


class NotPermitted(Exception):
    """The token can see the monitor but may not record on it."""


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


_DROP_REASONS = {RateLimited: "rate_limited", SourceNotAllowed: "source_not_allowed", NotPermitted: "forbidden"}


def _refused(exc: Exception) -> web.Response:
    """The answer when the core did not record a check-in."""
    if isinstance(exc, NotPermitted):
        return _error(403, str(exc))
    if isinstance(exc, SourceNotAllowed):
        return _error(403, "check-ins from this address are not allowed for this monitor")
    if isinstance(exc, RateLimited):
        return web.json_response({"detail": "rate limited"}, status=429, headers={"Retry-After": str(exc.retry_after)})
    return _error(503, "store unavailable; retry later")


def _token(request: web.Request, key: str | None) -> ApiToken | None:
    secrets = request.app[CORE].registry.secrets
    return match_api_token(key, secrets.api_tokens if secrets else ()) if key else None


def parse_envelope(data: bytes) -> tuple[dict, list[tuple[dict, bytes]]]:
    """The envelope header and its (item header, payload) pairs (an item's
    payload is `length` bytes, or one line). ValueError, naming the line,
    for anything that is not an envelope: every header must be a JSON
    object and every length must fit the body."""
    first, _, rest = data.partition(b"\n")
    envelope_header = _json_object(first, "the envelope header (line 1)") if first.strip() else {}
    if not data.strip():
        raise ValueError("the body is empty (a corrupt compressed body inflates to nothing)")
    items = []
    line = 1
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        line += 1
        if not header_line.strip():
            continue
        header = _json_object(header_line, f"item header (line {line})")
        length = header.get("length")
        if length is not None:
            if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= len(rest):
                raise ValueError(f"item header (line {line}): length {length!r} is not the size of its payload")
            payload, rest = rest[:length], rest[length:]
            if rest.startswith(b"\n"):
                rest = rest[1:]
        else:
            payload, _, rest = rest.partition(b"\n")
        line += payload.count(b"\n") + 1
        items.append((header, payload))
    return envelope_header, items


def _json_object(raw: bytes, what: str, non_finite: bool = False) -> dict:
    try:
        value = parse_json(raw, non_finite)
    except BodyError as exc:
        raise ValueError(f"{what} is not JSON: {exc.reason.removeprefix('the body is not valid JSON: ')}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def check_in_items(items: list[tuple[dict, bytes]]) -> list[dict]:
    """The envelope's check-in payloads, each checked before any is
    recorded (so a bad item refuses the whole envelope and records
    nothing). Other item types are Sentry's business: ignored."""
    check_ins = []
    for number, (header, payload) in enumerate(items, 1):
        if header.get("type") != "check_in":
            continue
        # An SDK's non-finite duration is dropped, not refused (see _check_in).
        body = _json_object(payload, f"item {number} (check_in)", non_finite=True)
        if not isinstance(body.get("monitor_slug"), str) or not body["monitor_slug"]:
            raise ValueError(f"item {number} (check_in): monitor_slug must be a non-empty string")
        if body.get("status") not in _KINDS:
            raise ValueError(f"item {number} (check_in): status must be in_progress, ok or error")
        if body.get("monitor_config") is not None and not isinstance(body["monitor_config"], dict):
            raise ValueError(f"item {number} (check_in): monitor_config must be an object")
        check_ins.append(body)
    return check_ins


def _number(config: dict, name: str, default: float, low: float, high: float) -> float:
    value = config.get(name)
    if value is None:
        return default
    # Compared before float(): an integer beyond float range must not overflow.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SpecError([(name, f"must be a number from {low:g} to {high:g}")])
    return float(value)


def spec_from_config(slug: str, config: dict) -> Any:
    """A monitor_config as a monitor definition (minutes -> durations);
    SpecError for a config of the wrong shape."""
    schedule = config.get("schedule") or {}
    if not isinstance(schedule, dict):
        raise SpecError([("schedule", "must be an object with type and value")])
    timezone = config.get("timezone") or "UTC"
    if not isinstance(timezone, str):
        raise SpecError([("timezone", "must be a tz database name, e.g. Europe/Berlin")])
    if schedule.get("type") == "crontab":
        if not isinstance(schedule.get("value"), str):
            raise SpecError([("schedule.value", "a crontab schedule needs a string value, e.g. 0 * * * *")])
        spec_schedule: dict[str, Any] = {"cron": schedule["value"], "timezone": timezone}
    elif schedule.get("type") == "interval":
        unit = schedule.get("unit")
        if unit not in _UNIT_SECONDS:
            raise SpecError(
                [("schedule", "an interval needs a number value and a unit: minute, hour, day, week, month, year")]
            )
        value = _number(schedule, "value", 0, 1, 10_000)
        spec_schedule = {"interval": value * _UNIT_SECONDS[unit]}
    else:
        raise SpecError([("schedule.type", "must be crontab or interval")])
    data: dict[str, Any] = {"id": slug, "schedule": spec_schedule}
    # Sentry's defaults: a 1-minute margin; max_runtime 30 minutes.
    data["grace"] = (_number(config, "checkin_margin", 0, 0, 40_320) or 1) * 60
    data["max_runtime"] = (_number(config, "max_runtime", 0, 0, 40_320) or 30) * 60
    for name, field in (("failure_issue_threshold", "failure_threshold"), ("recovery_threshold", "recovery_threshold")):
        threshold = _number(config, name, 0, 0, 720)
        if threshold:
            if threshold != int(threshold):
                raise SpecError([(name, "must be a whole number")])
            data[field] = int(threshold)
    return data


async def _upsert(request: web.Request, token: ApiToken, slug: str, config: dict) -> Monitor | None:
    core = request.app[CORE]
    current = core.registry.monitors.get(slug)
    if current is not None and (current.from_yaml or not can_change(token, current)):
        return current  # YAML is the source of truth; others' monitors are not ours to change
    if not token.can_write:
        return current
    try:
        spec = parse_monitor_spec(spec_from_config(slug, config), core.clock())
    except SpecError as exc:
        log.warning("sentry: monitor_config for %s ignored: %s", slug, exc)
        return current
    try:
        if current is None:
            return await core.create_monitor(spec, token.owner, token.team)
        return await core.update_monitor(current, spec)
    except ReadOnlyMonitor as exc:
        return exc.monitor
    except QuotaExceeded as exc:
        log.warning("sentry: monitor %s not created: %s", slug, exc)
        return current


async def _check_in(request: web.Request, token: ApiToken, payload: dict) -> bool:
    """Record one check-in; False if it was ignored (no such monitor, or
    one the token cannot see). NotPermitted if the token may see but not
    check in on it (access.can_check_in)."""
    slug = payload["monitor_slug"]
    kind = _KINDS[payload["status"]]
    monitor = request.app[CORE].registry.monitors.get(slug)
    if isinstance(payload.get("monitor_config"), dict):
        monitor = await _upsert(request, token, slug, payload["monitor_config"])
    if monitor is None or monitor.retired or not can_see(token, monitor):
        return False
    if not can_check_in(token, monitor):
        raise NotPermitted(check_in_refusal(token, monitor))
    run_id = str(payload.get("check_in_id") or "").replace("-", "").lower()
    duration = payload.get("duration")
    checkin = CheckIn(
        monitor_id=monitor.id,
        kind=kind,
        received_at=request.app[CORE].clock(),
        # An all-zero id means "the newest open run" (no run id).
        run_id=run_id if run_id.strip("0") else None,
        # An SDK's envelope is fire-and-forget: a duration that is not a
        # plausible number is dropped (cronmon measures the run itself)
        # rather than refusing the whole check-in.
        duration=float(duration) if duration is not None and _plausible_duration(duration) and kind is not Kind.START
        else None,
        release=payload.get("release") if isinstance(payload.get("release"), str) else None,
        environment=payload.get("environment") if isinstance(payload.get("environment"), str) else None,
        source_ip=client_ip(request),
        user_agent=request.headers.get("User-Agent"),
    )
    try:
        await request.app[CORE].record(checkin)
    except UnknownMonitor:  # removed, or soft-deleted, a moment ago
        return False
    return True


async def envelope(request: web.Request) -> web.Response:
    """An SDK's envelope. Every item is checked before the first is
    recorded: a malformed envelope is a 400 that records nothing. Of its
    check-ins, one that is refused (rate limit, allowed_ips, token not
    granted) is dropped and the others are recorded; the answer is 200
    listing what was dropped, or the refusal itself when nothing was
    recorded. Never an error after a partial write that the SDK would retry
    and so record twice (503 excepted: the store failed mid-way; Sentry's
    check_in_id makes the retried check-ins duplicates that change nothing)."""
    auth = _AUTH_KEY.search(request.headers.get("X-Sentry-Auth", ""))
    token = _token(request, auth.group(1) if auth else request.query.get("sentry_key"))
    if token is None:
        return _error(401, "missing or unknown sentry_key")
    limit = request.app[SETTINGS].max_body_bytes
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _ENCODINGS:
        return _error(400, f"unsupported Content-Encoding {encoding!r}: send gzip, br or none")
    try:
        # Inflated by the kit, the body limit applied to the inflated bytes
        # too (so a compression bomb is a 413).
        data = await read_body(request, limit)
    except BodyError as exc:
        return _error(exc.status, exc.reason)
    try:
        header, items = parse_envelope(data)
        check_ins = check_in_items(items)
    except ValueError as exc:
        return _error(400, f"cannot read the envelope: {exc}")
    recorded, dropped = 0, []
    first_refusal: Exception | None = None
    for body in check_ins:
        try:
            recorded += await _check_in(request, token, body)
        except (SourceNotAllowed, RateLimited, NotPermitted) as exc:
            first_refusal = first_refusal or exc
            dropped.append({"monitor_slug": body["monitor_slug"], "reason": _DROP_REASONS[type(exc)]})
        except StoreUnavailable as exc:
            return _refused(exc)
    if first_refusal is not None and not recorded:
        return _refused(first_refusal)
    answer: dict[str, Any] = {"id": header.get("event_id")}
    if dropped:
        answer["dropped"] = dropped
    return web.json_response(answer)


async def http_check_in(request: web.Request) -> web.Response:
    token = _token(request, request.match_info["key"])
    if token is None:
        return _error(401, "unknown sentry_key")
    status = request.query.get("status")
    if status not in _KINDS:
        return _error(400, "status must be in_progress, ok or error")
    payload: dict[str, Any] = {
        "monitor_slug": request.match_info["slug"],
        "status": status,
        "check_in_id": request.query.get("check_in_id"),
        "environment": request.query.get("environment"),
        "release": request.query.get("release"),
    }
    if "duration" in request.query:
        try:
            payload["duration"] = float(request.query["duration"])
        except ValueError:
            return _error(400, "duration must be a number of seconds")
        if not _plausible_duration(payload["duration"]):
            return _error(400, "duration must be a finite number of seconds from 0 to 31536000")
    try:
        if not await _check_in(request, token, payload):
            return _error(404, f"no monitor {payload['monitor_slug']!r} for this key")
    except (SourceNotAllowed, RateLimited, NotPermitted, StoreUnavailable) as exc:
        return _refused(exc)
    return web.json_response({"id": payload["check_in_id"]}, status=202)


def _plausible_duration(value: Any) -> bool:
    """A number of seconds cronmon can store: finite, 0 to a year (NaN and
    Infinity parse from both query strings and JSON)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 31_536_000
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post(r"/api/{project:\d+}/envelope/", envelope)
    app.router.add_get(r"/api/{project:\d+}/cron/{slug}/{key}/", http_check_in)
    app.router.add_post(r"/api/{project:\d+}/cron/{slug}/{key}/", http_check_in)
