"""Sentry Crons-compatible check-ins (seeds/sentry-crons-checkin.txt).

    POST /api/<project_id>/envelope/                     what sentry-sdk and sentry-cli send
    GET|POST /api/<project_id>/cron/<slug>/<sentry_key>/ HTTP check-in: ?status=... and/or a JSON body

The DSN's public key (X-Sentry-Auth `sentry_key=`, or the `sentry_key`
query parameter) is a token from `api_tokens:`. It records check-ins where
access.can_check_in allows (write scope; its own or its team's API
monitors, YAML monitors that name it in `ping.tokens`), and a
`monitor_config` creates or updates an API monitor when the token has the
write scope (YAML monitors keep their YAML config, and the config sent
for one is not looked at). Envelopes come gzip- or brotli-compressed or
plain (the kit's read_body inflates them, `br` with the `brotli`
dependency). Items other than check_in are accepted and ignored, as
Sentry does.

Slugs. Every monitor_slug (envelope or URL) is normalised as Sentry's
consumer does (sentry_slug: Django's slugify, cut to 50 characters), and
the result is the monitor id: `Nightly_Import` is `nightly_import`, `My
Job` is `my-job`. A slug that normalises to nothing is refused
(invalid_slug), as Relay refuses it.

Upserts. A monitor_config creates a monitor with Sentry's defaults for
what it leaves out (checkin_margin 1 minute, max_runtime 30 minutes,
timezone UTC, thresholds 1). On an existing API monitor it changes only
what it sends (Sentry's Monitor.update_config): the schedule always, each
other key only when present (null: Sentry's default), everything else
(other keys, and what the native API set: name, labels, rate_limit, ...)
stays. A config that is not valid creates nothing (for a new monitor the
check-in is refused with a sentence naming the field); for an existing
monitor the check-in is recorded, the monitor keeps its config, and the
answer's `warnings` says why (Sentry, too, records the check-in).

Refusals. A check-in that is not recorded is logged at WARNING (slug,
reason, token name; never the secret) and refused with a reason and a
detail: invalid_slug (400), forbidden (403: read scope, or a YAML monitor
that does not name the token), source_not_allowed (403), unknown_monitor
(404), slug_taken (409: another owner's monitor), invalid_monitor_config
(400), quota_exceeded (403), rate_limited (429). The HTTP route answers
that status. An envelope (SDKs fire and forget; Relay answers 200 for
any envelope it can parse) answers 200 listing each in `dropped`
({monitor_slug, reason, detail}), unless nothing in it was recorded and a
refusal other than unknown_monitor was among the reasons: then that
refusal's status and detail, so that `sentry-cli` reports a failure
(unknown monitors stay a 200, as Sentry takes check-ins for monitors it
does not know). Every refusal is decided before the check-in writes
anything, except the rate limit and the store's outage, which the core
finds as it records (a monitor_config update written before a 429 is
the same on a retry and writes nothing then).

HTTP bodies. The HTTP route takes a JSON object body (status,
check_in_id, duration, environment, release, monitor_config), read by the
kit (limits, compression, hostile JSON); query parameters win over body
fields. The whole body is checked first: a bad one is a 400 naming the
field, and nothing is recorded or created.

Exit codes. Sentry check-ins carry none (sentry-cli's `monitors run`
sends only the status and the duration), so every Sentry completion
leaves cronmon_last_exit_code at -1 (collector.UNKNOWN_EXIT_CODE).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from ..access import can_check_in, can_see, check_in_refusal
from ..config import MonitorSpec, SpecError, parse_monitor_spec
from ..credentials import ApiToken, match_api_token
from ..errors import (
    MonitorExists,
    QuotaExceeded,
    RateLimited,
    ReadOnlyMonitor,
    SourceNotAllowed,
    StoreUnavailable,
    UnknownMonitor,
)
from ..model import CheckIn, Kind, Monitor
from .client import BodyError, client_ip, header_text, parse_json, read_body
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
# Sentry's MAX_SLUG_LENGTH for monitors.
SLUG_LENGTH = 50
# Sentry's limits: MAX_MARGIN / MAX_TIMEOUT (28 days in minutes), and the thresholds' 720.
_MAX_MINUTES = 40_320
_MAX_THRESHOLD = 720


class Refused(Exception):
    """A check-in cronmon does not record: `reason` (the code an envelope's
    `dropped` lists), `detail` (a sentence naming what is wrong and how to
    fix it) and the HTTP status that answers it."""

    def __init__(
        self, status: int, reason: str, detail: str, retry_after: int | None = None, recording: bool = False
    ):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.retry_after = status, reason, detail, retry_after
        # Found by the core as it recorded, after the check-in's monitor_config
        # was written (a rate limit, mostly); every other refusal comes
        # before anything is written (a create or an update the core
        # refuses writes nothing).
        self.recording = recording

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return web.json_response({"detail": self.detail}, status=self.status, headers=headers)


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


def _store_unavailable() -> web.Response:
    return _error(503, "store unavailable; retry later")


def _token(request: web.Request, key: str | None) -> ApiToken | None:
    secrets = request.app[CORE].registry.secrets
    return match_api_token(key, secrets.api_tokens if secrets else ()) if key else None


def _shown(text: str) -> str:
    """A client's string in a message or a log line: quoted (repr escapes
    newlines, so a slug cannot forge log lines) and cut short."""
    return repr(text) if len(text) <= 60 else f"{text[:50]!r}... ({len(text)} characters)"


def sentry_slug(raw: str) -> str:
    """`raw` as Sentry's consumer stores a monitor slug: Django's slugify
    (NFKD, non-ASCII dropped; anything but letters, digits, _, - and
    whitespace removed; lower case; runs of whitespace and - one -; - and _
    stripped at both ends), then cut to 50 characters and - stripped.
    Empty when nothing is left (a refusal)."""
    text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text.lower())
    return re.sub(r"[-\s]+", "-", text).strip("-_")[:SLUG_LENGTH].strip("-")


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
        # An SDK's non-finite duration is dropped, not refused (see _record).
        body = _json_object(payload, f"item {number} (check_in)", non_finite=True)
        if not isinstance(body.get("monitor_slug"), str) or not body["monitor_slug"]:
            raise ValueError(f"item {number} (check_in): monitor_slug must be a non-empty string")
        if body.get("status") not in _KINDS:
            raise ValueError(f"item {number} (check_in): status must be in_progress, ok or error")
        if body.get("monitor_config") is not None and not isinstance(body["monitor_config"], dict):
            raise ValueError(f"item {number} (check_in): monitor_config must be an object")
        check_ins.append(body)
    return check_ins


# -- monitor_config -----------------------------------------------------------

# A MonitorSpec field named in parse_monitor_spec's errors -> the
# monitor_config key the client sent, so that an error names what it sent.
_SENTRY_FIELDS = {
    "schedule.cron": "schedule.value", "schedule.interval": "schedule.value", "schedule.timezone": "timezone",
    "grace": "checkin_margin", "failure_threshold": "failure_issue_threshold",
}


def config_problem(exc: SpecError) -> str:
    """A SpecError as one sentence in the client's terms: every issue as
    `monitor_config.<key>: <what is wrong and the fix>`."""
    return "; ".join(f"monitor_config.{_SENTRY_FIELDS.get(field, field) or 'schedule'}: {reason}"
                     for field, reason in exc.issues)


def _number(config: dict, name: str, low: float, high: float, unit: str = "", field: str = "") -> float | None:
    """config[name] as a number in [low, high]; None for null. SpecError
    names `field` (default: `name`)."""
    value = config.get(name)
    if value is None:
        return None
    # Compared before float(): an integer beyond float range must not overflow.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SpecError([(field or name, f"must be a number{unit} from {low:g} to {high:g}")])
    return float(value)


def _known_zone(name: str) -> bool:
    # The YAML's check (config.ScheduleSpec) is a pydantic validator of cron
    # schedules; Sentry checks the timezone of interval schedules too. The
    # length first: ZoneInfo opens a file by that name, and one over 255
    # bytes is an OSError.
    if len(name) > 64:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _timezone(config: dict, current: dict | None) -> str:
    """The schedule's time zone: the one sent (null or "": Sentry's UTC),
    else the monitor's current one, else UTC."""
    if "timezone" not in config:
        schedule = (current or {}).get("schedule") or {}
        return schedule.get("timezone") or "UTC"
    zone = config["timezone"]
    if zone is None or zone == "":
        return "UTC"
    if not isinstance(zone, str):
        raise SpecError([("timezone", f"must be a tz database name such as Europe/Berlin, not {type(zone).__name__}")])
    if not _known_zone(zone):
        raise SpecError(
            [("timezone", f"unknown time zone {_shown(zone)}; use a tz database name such as Europe/Berlin")]
        )
    return zone


def _schedule(config: dict, timezone: str) -> dict:
    schedule = config.get("schedule")
    if not isinstance(schedule, dict):
        raise SpecError([("schedule", 'must be an object with type and value, e.g. {"type": "crontab", '
                                      '"value": "0 * * * *"}')])
    if schedule.get("type") == "crontab":
        if not isinstance(schedule.get("value"), str):
            raise SpecError([("schedule.value", "a crontab schedule needs a string value, e.g. 0 * * * *")])
        return {"cron": schedule["value"], "timezone": timezone}
    if schedule.get("type") == "interval":
        unit = schedule.get("unit")
        if unit not in _UNIT_SECONDS:
            raise SpecError([("schedule.unit", "an interval needs a unit: minute, hour, day, week, month or year")])
        value = _number(schedule, "value", 1, 10_000, field="schedule.value")
        if value is None:
            raise SpecError([("schedule.value", "an interval needs a number value from 1 to 10000")])
        # An interval has no time zone in cronmon (one sent was checked above).
        return {"interval": value * _UNIT_SECONDS[unit]}
    raise SpecError([("schedule.type", "must be crontab or interval")])


def spec_from_config(slug: str, config: dict, current: dict | None = None) -> dict:
    """A monitor_config as a monitor definition (minutes -> seconds);
    SpecError, in the config's terms, for one of the wrong shape.

    `current` is the existing monitor's stored definition (an update), None
    for a new monitor. Sentry's Monitor.update_config replaces the schedule
    always and every other key only when the payload has it, so a job that
    sends only its schedule (`sentry-cli monitors run --schedule`) keeps the
    margin, timeout and time zone an earlier run set; Sentry's defaults
    (1-minute margin, 30-minute max_runtime, UTC, thresholds 1) apply to
    a new monitor, and to a key sent as null."""
    data: dict[str, Any] = dict(current) if current else {"id": slug}
    data["schedule"] = _schedule(config, _timezone(config, current))
    sent = config if current else {"checkin_margin": None, "max_runtime": None, **config}
    if "checkin_margin" in sent:
        data["grace"] = (_number(config, "checkin_margin", 0, _MAX_MINUTES, " of minutes") or 1) * 60
    if "max_runtime" in sent:
        data["max_runtime"] = (_number(config, "max_runtime", 0, _MAX_MINUTES, " of minutes") or 30) * 60
    for name, field in (("failure_issue_threshold", "failure_threshold"), ("recovery_threshold", "recovery_threshold")):
        if name not in sent:
            continue
        threshold = _number(config, name, 0, _MAX_THRESHOLD)
        if threshold is not None and threshold != int(threshold):
            raise SpecError([(name, f"must be a whole number from 1 to {_MAX_THRESHOLD}")])
        data[field] = int(threshold or 1)
    return data


# -- check-ins ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one check-in will do, decided before anything is written: the
    monitor it lands on (None: the one `spec` creates), the definition to
    write first (None: none), and what the answer warns about."""

    slug: str
    monitor: Monitor | None
    spec: MonitorSpec | None
    warnings: tuple[str, ...] = ()


def _not_found(slug: str, raw: str) -> str:
    renamed = "" if slug == raw else f" (monitor_slug {_shown(raw)}, normalised as Sentry does)"
    return (f"no monitor {slug!r}{renamed} for this key; declare it, or send a monitor_config "
            "with the check-in to create it")


async def plan_check_in(request: web.Request, token: ApiToken, payload: dict) -> Plan:
    """Decide what `payload` (a check-in, its shape checked) does, without
    writing anything; Refused for a check-in that cannot be recorded."""
    raw = payload["monitor_slug"]
    slug = sentry_slug(raw)
    if not slug:
        raise Refused(400, "invalid_slug", f"monitor_slug {_shown(raw)} is empty once normalised as Sentry does "
                                           "(it keeps letters, digits, _ and -); send a slug with a letter or digit")
    core = request.app[CORE]
    config = payload.get("monitor_config")
    if not token.can_write:
        needs = "recording check-ins and monitor_config upserts" if config is not None else "recording check-ins"
        raise Refused(403, "forbidden", f'api token "{token.name}" has the read scope; {needs} needs scope: write')
    monitor = core.registry.monitors.get(slug)
    if monitor is not None and not can_see(token, monitor):
        if config is None:  # as if there were none: no answer tells another owner's monitors apart
            raise Refused(404, "unknown_monitor", _not_found(slug, raw))
        # Creating it would tell all the same (the native API's 409 does).
        raise Refused(409, "slug_taken", f"monitor id {slug!r} belongs to another owner; choose another monitor_slug")
    if monitor is None and config is None:
        raise Refused(404, "unknown_monitor", _not_found(slug, raw))
    if monitor is not None:
        if monitor.retired:
            raise Refused(404, "unknown_monitor", f"monitor {slug!r} is soft-deleted; restore it to take "
                                                  "check-ins again")
        if not can_check_in(token, monitor):
            raise Refused(403, "forbidden", check_in_refusal(token, monitor))
        # Checked here too (the core checks it as it records): a config
        # update must not be written for a check-in the core then refuses.
        if not monitor.allows_source(client_ip(request)):
            raise Refused(403, "source_not_allowed", f"check-ins from this address are not allowed for monitor "
                                                     f"{slug!r}: its allowed_ips do not include it")
    if config is None or (monitor is not None and monitor.from_yaml):
        return Plan(slug, monitor, None)  # YAML is the source of truth: its config sent is not looked at
    current = None
    if monitor is not None:
        definition = await core.monitor_definition(slug)
        current = definition.get("spec") if definition else None
        if current is None:  # deleted a moment ago
            raise Refused(404, "unknown_monitor", _not_found(slug, raw))
    try:
        spec = parse_monitor_spec(spec_from_config(slug, config, current), core.clock())
    except SpecError as exc:
        if monitor is None:
            raise Refused(400, "invalid_monitor_config", config_problem(exc)) from None
        # Sentry records the check-in on the monitor it has and keeps its config.
        return Plan(slug, monitor, None, (f"{config_problem(exc)}; the check-in was recorded and the monitor "
                                          "kept its config",))
    return Plan(slug, monitor, spec)


async def _apply(request: web.Request, token: ApiToken, plan: Plan) -> Monitor:
    """The monitor to record on, once the plan's definition is written
    (an unchanged one writes nothing: Core.update_monitor). Refused where a
    write finds the world changed since the plan; nothing was written then."""
    core = request.app[CORE]
    if plan.spec is None:
        assert plan.monitor is not None  # a plan without a definition has a monitor
        return plan.monitor
    try:
        if plan.monitor is None:
            return await core.create_monitor(plan.spec, token.owner, token.team)
        return await core.update_monitor(plan.monitor, plan.spec)
    except QuotaExceeded as exc:
        raise Refused(403, "quota_exceeded", f"monitor {plan.slug!r} not created: {exc}") from None
    except (MonitorExists, ReadOnlyMonitor):  # created (or declared in YAML) a moment ago
        raise Refused(409, "conflict", f"monitor {plan.slug!r} was created by another request a moment ago; "
                                       "send the check-in again") from None
    except UnknownMonitor:  # deleted a moment ago
        raise Refused(404, "unknown_monitor", f"monitor {plan.slug!r} was deleted a moment ago") from None


async def check_in(request: web.Request, token: ApiToken, payload: dict) -> tuple[str, ...]:
    """Record one check-in (its shape checked by the caller), creating or
    updating its monitor from its monitor_config first; the answer's
    warnings. Refused, logged at WARNING, if it was not recorded;
    StoreUnavailable if Redis failed."""
    try:
        plan = await plan_check_in(request, token, payload)
        monitor = await _apply(request, token, plan)
        await _record(request, monitor, payload)
    except Refused as exc:
        log.warning("sentry: check-in for %s not recorded (%s, api token %s): %s",
                    _shown(payload["monitor_slug"]), exc.reason, token.name, exc.detail)
        raise
    for warning in plan.warnings:
        log.warning("sentry: monitor_config for %s ignored (api token %s): %s", plan.slug, token.name, warning)
    return plan.warnings


async def _record(request: web.Request, monitor: Monitor, payload: dict) -> None:
    core = request.app[CORE]
    kind = _KINDS[payload["status"]]
    run_id = str(payload.get("check_in_id") or "").replace("-", "").lower()
    duration = payload.get("duration")
    checkin = CheckIn(
        monitor_id=monitor.id,
        kind=kind,
        received_at=core.clock(),
        # An all-zero id means "the newest open run" (no run id).
        run_id=run_id if run_id.strip("0") else None,
        # Sentry check-ins carry no exit code: none is recorded, so
        # cronmon_last_exit_code reads -1, not a 0 the job never said.
        exit_code=None,
        # An SDK's envelope is fire-and-forget: a duration that is not a
        # plausible number is dropped (cronmon measures the run itself)
        # rather than refusing the whole check-in.
        duration=float(duration) if duration is not None and _plausible_duration(duration) and kind is not Kind.START
        else None,
        release=payload.get("release") if isinstance(payload.get("release"), str) else None,
        environment=payload.get("environment") if isinstance(payload.get("environment"), str) else None,
        source_ip=client_ip(request),
        user_agent=header_text(request.headers.get("User-Agent")),
    )
    try:
        await core.record(checkin)
    except UnknownMonitor:  # removed, or soft-deleted, a moment ago
        raise Refused(404, "unknown_monitor", f"monitor {monitor.id!r} was deleted a moment ago",
                      recording=True) from None
    except SourceNotAllowed:  # its allowed_ips changed since plan_check_in looked
        raise Refused(403, "source_not_allowed", f"check-ins from this address are not allowed for monitor "
                                                 f"{monitor.id!r}: its allowed_ips do not include it",
                      recording=True) from None
    except RateLimited as exc:
        raise Refused(429, "rate_limited", f"{exc}; send fewer check-ins, or raise its rate_limit",
                      retry_after=exc.retry_after, recording=True) from None


def _listed(payload: dict, reason: str, detail: str) -> dict:
    """An entry of an envelope answer's `dropped` or `warnings`."""
    slug = sentry_slug(payload["monitor_slug"]) or payload["monitor_slug"][:100]
    return {"monitor_slug": slug, "reason": reason, "detail": detail}


async def envelope(request: web.Request) -> web.Response:
    """An SDK's envelope. Every item is checked before the first is
    recorded: a malformed envelope is a 400 that records nothing. Of its
    check-ins, one that is refused is dropped and the others are recorded;
    the answer is 200 listing what was dropped (and the warnings), or the
    refusal itself when nothing was recorded (not for unknown monitors:
    see the module docstring). Never an error after a partial write that
    the SDK would retry and so record twice (503 excepted: the store failed
    mid-way; Sentry's check_in_id makes the retried check-ins duplicates
    that change nothing)."""
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
    recorded = 0
    dropped: list[dict] = []
    warnings: list[dict] = []
    # The refusal that answers an envelope of which nothing was recorded:
    # the first the core met as it recorded (what was written before it, a
    # monitor_config, is written the same on a retry and changes nothing
    # then), else the first decided before writing anything, so that a 4xx
    # other than that follows no write.
    while_recording: Refused | None = None
    before_writing: Refused | None = None
    for body in check_ins:
        try:
            said = await check_in(request, token, body)
        except Refused as exc:
            dropped.append(_listed(body, exc.reason, exc.detail))
            if exc.reason != "unknown_monitor":
                if exc.recording:
                    while_recording = while_recording or exc
                else:
                    before_writing = before_writing or exc
            continue
        except StoreUnavailable:
            return _store_unavailable()
        recorded += 1
        warnings += [_listed(body, "invalid_monitor_config", warning) for warning in said]
    refusal = while_recording or before_writing
    if refusal is not None and not recorded:
        return refusal.response()
    answer: dict[str, Any] = {"id": header.get("event_id")}
    if dropped:
        answer["dropped"] = dropped
    if warnings:
        answer["warnings"] = warnings
    return web.json_response(answer)


class _BadBody(ValueError):
    """An HTTP check-in's body or query that cannot be used (a 400)."""


def _http_payload(request: web.Request, body: dict) -> dict:
    """The check-in an HTTP check-in sends: its JSON body's fields, each
    checked, overridden by the query parameters given. _BadBody naming the
    field for anything that is not usable."""
    for name in ("status", "check_in_id", "environment", "release"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _BadBody(f"{name} in the body must be a string, not {type(body[name]).__name__}")
    if body.get("status") is not None and body["status"] not in _KINDS:
        raise _BadBody("status in the body must be in_progress, ok or error")
    if body.get("duration") is not None and not _plausible_duration(body["duration"]):
        raise _BadBody("duration in the body must be a finite number of seconds from 0 to 31536000")
    if body.get("monitor_config") is not None and not isinstance(body["monitor_config"], dict):
        raise _BadBody("monitor_config in the body must be an object with schedule, checkin_margin, max_runtime, "
                       "timezone, ...")
    payload = {
        name: request.query.get(name, body.get(name)) for name in ("status", "check_in_id", "environment", "release")
    }
    if payload["status"] not in _KINDS:
        raise _BadBody("status must be in_progress, ok or error: send ?status= or a JSON body with a status")
    payload["monitor_slug"] = request.match_info["slug"]
    payload["monitor_config"] = body.get("monitor_config")
    payload["duration"] = body.get("duration")
    if "duration" in request.query:
        try:
            payload["duration"] = float(request.query["duration"])
        except ValueError:
            raise _BadBody("duration must be a number of seconds") from None
        if not _plausible_duration(payload["duration"]):
            raise _BadBody("duration must be a finite number of seconds from 0 to 31536000")
    return payload


async def http_check_in(request: web.Request) -> web.Response:
    """Sentry's HTTP check-in: the query's status (and check_in_id,
    duration, environment, release) and/or a JSON body with those and a
    monitor_config. Everything is checked before anything is written; a
    refusal answers its status (see the module docstring), 202 otherwise."""
    token = _token(request, request.match_info["key"])
    if token is None:
        return _error(401, "unknown sentry_key")
    try:
        raw = await read_body(request, request.app[SETTINGS].max_body_bytes)
    except BodyError as exc:
        return _error(exc.status, exc.reason)
    try:
        body = parse_json(raw) if raw.strip() else {}
    except BodyError as exc:
        return _error(exc.status, f"{exc.reason}; send a JSON object such as {{\"status\": \"ok\"}}, or no body")
    if not isinstance(body, dict):
        return _error(400, f"the body must be a JSON object such as {{\"status\": \"ok\"}}, not "
                           f"{type(body).__name__}")
    try:
        payload = _http_payload(request, body)
    except _BadBody as exc:
        return _error(400, str(exc))
    try:
        warnings = await check_in(request, token, payload)
    except Refused as exc:
        return exc.response()
    except StoreUnavailable:
        return _store_unavailable()
    answer: dict[str, Any] = {"id": payload["check_in_id"]}
    if warnings:
        answer["warnings"] = [_listed(payload, "invalid_monitor_config", warning) for warning in warnings]
    return web.json_response(answer, status=202)


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
