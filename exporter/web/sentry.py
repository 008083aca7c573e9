"""Sentry Crons-compatible check-ins (seeds/sentry-crons-checkin.txt).

    POST /api/<project_id>/envelope/                     what sentry-sdk sends
    GET|POST /api/<project_id>/cron/<slug>/<sentry_key>/?status=...   HTTP check-in

The DSN's public key (X-Sentry-Auth `sentry_key=`, or the `sentry_key`
query parameter) is a token from `api_tokens:`: check-ins go to monitors it
can see, and a `monitor_config` creates or updates an API monitor when the
token has the write scope (YAML monitors keep their YAML config). Envelopes
come gzip- or brotli-compressed or plain. Items other than check_in are
accepted and ignored, never an error, as Sentry does; so are check-ins for
monitors that neither exist nor come with a config. (aiohttp inflates the
body; the `brotli` dependency is what lets it read `br`.)
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from aiohttp import web

from ..access import can_change, can_see
from ..config import SpecError, parse_monitor_spec
from ..core import RateLimited, ReadOnlyMonitor, SourceNotAllowed
from ..credentials import ApiToken, match_api_token
from ..model import CheckIn, Kind, Monitor
from ..store import StoreUnavailable
from .client import client_ip
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


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


def _refused(exc: Exception) -> web.Response:
    """The answer when the core did not record a check-in."""
    if isinstance(exc, SourceNotAllowed):
        return _error(403, "check-ins from this address are not allowed for this monitor")
    if isinstance(exc, RateLimited):
        return web.json_response({"detail": "rate limited"}, status=429, headers={"Retry-After": str(exc.retry_after)})
    return _error(503, "store unavailable; retry later")


def _token(request: web.Request, key: str | None) -> ApiToken | None:
    secrets = request.app[CORE].registry.secrets
    return match_api_token(key, secrets.api_tokens if secrets else ()) if key else None


def parse_envelope(data: bytes) -> list[tuple[dict, bytes]]:
    """(item header, payload) pairs of an envelope (the first line is the
    envelope header; an item's payload is `length` bytes or one line)."""
    items = []
    _, _, rest = data.partition(b"\n")
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        if not header_line.strip():
            continue
        header = json.loads(header_line)
        length = header.get("length")
        if isinstance(length, int):
            payload, rest = rest[:length], rest[length:]
            if rest.startswith(b"\n"):
                rest = rest[1:]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


def spec_from_config(slug: str, config: dict) -> Any:
    """A monitor_config as a monitor definition (minutes -> durations)."""
    schedule = config.get("schedule") or {}
    timezone = config.get("timezone") or "UTC"
    if schedule.get("type") == "crontab":
        spec_schedule: dict[str, Any] = {"cron": str(schedule.get("value", "")), "timezone": timezone}
    elif schedule.get("type") == "interval":
        unit = schedule.get("unit")
        if unit not in _UNIT_SECONDS or not isinstance(schedule.get("value"), (int, float)):
            raise SpecError([("schedule", "an interval needs a number value and a unit: minute, hour, day, week, month, year")])
        spec_schedule = {"interval": schedule["value"] * _UNIT_SECONDS[unit]}
    else:
        raise SpecError([("schedule.type", "must be crontab or interval")])
    data: dict[str, Any] = {"id": slug, "schedule": spec_schedule}
    # Sentry's defaults: a 1-minute margin; max_runtime 30 minutes.
    data["grace"] = float(config.get("checkin_margin") or 1) * 60
    data["max_runtime"] = float(config.get("max_runtime") or 30) * 60
    if config.get("failure_issue_threshold"):
        data["failure_threshold"] = int(config["failure_issue_threshold"])
    if config.get("recovery_threshold"):
        data["recovery_threshold"] = int(config["recovery_threshold"])
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


async def _check_in(request: web.Request, token: ApiToken, payload: dict) -> bool:
    """Record one check-in; False if it was ignored."""
    slug = payload.get("monitor_slug")
    kind = _KINDS.get(payload.get("status"))
    if not isinstance(slug, str) or kind is None:
        return False
    monitor = request.app[CORE].registry.monitors.get(slug)
    if isinstance(payload.get("monitor_config"), dict):
        monitor = await _upsert(request, token, slug, payload["monitor_config"])
    if monitor is None or not can_see(token, monitor):
        return False
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
        duration=float(duration) if _plausible_duration(duration) and kind is not Kind.START else None,
        release=payload.get("release") if isinstance(payload.get("release"), str) else None,
        environment=payload.get("environment") if isinstance(payload.get("environment"), str) else None,
        source_ip=client_ip(request),
        user_agent=request.headers.get("User-Agent"),
    )
    await request.app[CORE].record(checkin)
    return True


async def envelope(request: web.Request) -> web.Response:
    auth = _AUTH_KEY.search(request.headers.get("X-Sentry-Auth", ""))
    token = _token(request, auth.group(1) if auth else request.query.get("sentry_key"))
    if token is None:
        return _error(401, "missing or unknown sentry_key")
    limit = request.app[SETTINGS].max_body_bytes
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _ENCODINGS:
        return _error(400, f"unsupported Content-Encoding {encoding!r}: send gzip, br or none")
    try:
        # aiohttp inflates gzip and brotli bodies itself, and applies the
        # body limit to the inflated bytes (so a compression bomb is a 413).
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"envelope over {limit} bytes (after decompression)")
    except Exception as exc:  # a corrupt gzip/brotli stream raises the codec's own error
        return _error(400, f"cannot decompress the envelope ({encoding}): {exc}")
    try:
        items = parse_envelope(data)
    except ValueError as exc:
        return _error(400, f"cannot read the envelope: {exc}")
    try:
        for header, payload in items:
            if header.get("type") != "check_in":
                continue  # events, sessions, ... are not ours: accepted, ignored
            try:
                body = json.loads(payload)
            except ValueError:
                continue
            if isinstance(body, dict):
                await _check_in(request, token, body)
    except (SourceNotAllowed, RateLimited, StoreUnavailable) as exc:
        return _refused(exc)
    return web.json_response({"id": (json.loads(data.partition(b"\n")[0] or b"{}") or {}).get("event_id")})


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
    except (SourceNotAllowed, RateLimited, StoreUnavailable) as exc:
        return _refused(exc)
    return web.json_response({"id": payload["check_in_id"]}, status=202)


def _plausible_duration(value: Any) -> bool:
    """A number of seconds cronmon can store: finite, 0 to a year (NaN and
    Infinity parse from both query strings and JSON)."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and 0 <= value <= 31_536_000
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post(r"/api/{project:\d+}/envelope/", envelope)
    app.router.add_get(r"/api/{project:\d+}/cron/{slug}/{key}/", http_check_in)
    app.router.add_post(r"/api/{project:\d+}/cron/{slug}/{key}/", http_check_in)
