"""CrossCheck-compatible flights API (seeds/crosscheck-flights.txt).

    GET/POST              /api/flights/                  list (?monitoring_type=, ?is_deleted=) / create
    GET/PUT/PATCH/DELETE  /api/flights/{id}/             detail / update / hard delete
    GET                   /api/flights/{id}/landings/    check-ins, newest first
    GET                   /api/flights/{id}/metrics/     uptime summary, by_day, by_hour
    GET                   /api/flights/{id}/audit/       the last 100 changes
    POST                  /api/flights/{id}/test_now/    a test landing (10 a minute)
    POST                  /api/flights/{id}/soft-delete/ | restore/ | purge/
    POST                  /api/flights/reorder/
    GET/POST              /api/flights/groups/           PATCH/GET/DELETE /api/flights/groups/{id}/
    POST                  /api/flights/groups/reorder/

Authentication: a management token from the config, as
`Authorization: Bearer <token>` or Django REST framework's
`Authorization: Token <token>`. "The current user (and team)" is the
token's owner and team.

A flight is an API monitor. Its CrossCheck fields live in the monitor's
extras under "crosscheck" (the source of truth for this API); the
monitor's schedule, grace, thresholds, allow list and pause are derived
from them on every write. The flight's API key and shortcode are derived
from the ping key like API monitors' ping UUIDs (never stored). Its
monitor id is its `path`. Errors use Django REST framework's shapes, as
CrossCheck's trailing-slash API does: {"detail": "..."} or, for invalid
fields, {"<field>": ["<message>", ...]}.

The check-in endpoints are in crosscheck_checkin.py.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .. import uptime
from ..access import can_change, can_check_in, can_see, check_in_refusal
from ..config import SpecError, parse_monitor_spec, parse_network
from ..core import MonitorUpdate
from ..credentials import ApiToken
from ..errors import (
    ChecksNotRunning,
    MonitorExists,
    QuotaExceeded,
    RateLimited,
    ReadOnlyMonitor,
    SourceNotAllowed,
    StoreUnavailable,
    UnknownMonitor,
)
from ..model import CheckIn, Details, Kind, Monitor, iso_utc, iso_utc_or_none
from . import client
from .client import ParamError, answering, bearer_token, client_ip, header_text, int_param, slugify
from .keys import CORE, PROBER, SETTINGS

FLIGHT_TYPES = ("PASSIVE", "ACTIVE", "QUICK_PASSIVE")
LANDING_KINDS = ("start", "success", "fail", "warning", "log")
GROUPS = "crosscheck-groups"
RATE_LIMIT = "10/1m"  # the document's 10 check-ins (and test_now calls) a minute per flight
TEST_OVERRIDE_SECONDS = 300
_PATH = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_EXTRA_CONFIG_BYTES = 4096
_STATUS_OF_KIND = {"success": "SUCCESS", "warning": "WARNING", "fail": "ERROR", "start": "SUCCESS", "log": "SUCCESS"}


class Problem(Exception):
    """An error answered in Django REST framework's shape."""

    def __init__(self, status: int, body: dict | str, headers: dict | None = None):
        super().__init__(str(body))
        self.status = status
        self.body = {"detail": body} if isinstance(body, str) else body
        self.headers = headers

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


def _problem(exc: Exception) -> Problem | None:
    """A handler's Problem, or the core's refusal, as a DRF-shaped Problem."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, RateLimited):
        return Problem(
            429, f"Request was throttled. Expected available in {exc.retry_after} seconds.",
            {"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, SourceNotAllowed):
        return Problem(403, f"Check-ins from {exc.source_ip or 'this address'} are not allowed for this flight "
                            "(allowed_ips).")
    if isinstance(exc, ReadOnlyMonitor):
        return Problem(403, str(exc))
    if isinstance(exc, UnknownMonitor):
        return Problem(404, "Not found.")
    if isinstance(exc, StoreUnavailable):
        return Problem(503, "The store is unavailable; nothing was changed. Retry later.")
    return None


# Answer a handler's Problems, and the core's refusals, in DRF's shape.
handles_problems = answering(lambda exc: problem.response() if (problem := _problem(exc)) else None)


# -- request bodies ----------------------------------------------------------


class FlightFields(BaseModel):
    """The writable fields; read-only ones a client echoes back are dropped
    before validation, other unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    description: Annotated[StrictStr, Field(max_length=2000)] | None = None
    path: Annotated[StrictStr, Field(max_length=63)] | None = None
    expected_interval: Annotated[StrictInt, Field(ge=1, le=31_536_000)] | None = None
    grace_period: Annotated[StrictInt, Field(ge=0, le=31_536_000)] | None = None
    max_missed_checkins: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    allowed_ips: list[StrictStr] | None = None
    monitoring_type: Literal["PASSIVE", "ACTIVE", "QUICK_PASSIVE"] | None = None
    monitor_url: Annotated[StrictStr, Field(max_length=2000)] | None = None
    monitor_interval: Annotated[StrictInt, Field(ge=10, le=86_400)] | None = None
    slow_response_threshold: Annotated[StrictInt, Field(ge=1, le=3600)] | None = None
    timeout_threshold: Annotated[StrictInt, Field(ge=1, le=3600)] | None = None
    consecutive_failure_threshold: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    group: StrictStr | None = None
    order: StrictInt | None = None
    team: StrictStr | None = None
    extra_config: dict[str, Any] | None = None


READ_ONLY = frozenset({
    "id", "api_key", "shortcode", "short_check_in_url", "last_check_in", "last_landing_status", "status",
    "created_at", "updated_at", "team_name", "group_name", "uptime_percentage", "uptime_checks_total",
    "uptime_checks_successful", "is_deleted", "audit",
})
DEFAULTS: dict[str, Any] = {
    "description": "", "path": None, "expected_interval": 3600, "grace_period": 60, "max_missed_checkins": 3,
    "allowed_ips": [], "monitoring_type": "PASSIVE", "monitor_url": None, "monitor_interval": 60,
    "slow_response_threshold": 5, "timeout_threshold": 10, "consecutive_failure_threshold": None,
    "group": None, "order": 0, "team": None, "extra_config": {},
}
# Fields that may be null in a request (the rest must have a value if sent).
_NULLABLE = {"group", "team", "consecutive_failure_threshold", "monitor_url", "path"}


class GroupFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    order: StrictInt | None = None
    team: StrictStr | None = None


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr
    order: StrictInt


def field_errors(exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "non_field_errors"
        message = "Unknown field." if error["type"] == "extra_forbidden" else error["msg"]
        errors.setdefault(field, []).append(message)
    return errors


async def read_body(request: web.Request, required: bool = True) -> Any:
    """The JSON body (None if empty and not required)."""
    try:
        raw = await client.read_body(request, request.app[SETTINGS].max_body_bytes)
        if not raw.strip():
            if required:
                raise Problem(400, "A JSON body is required.")
            return None
        return client.parse_json(raw)
    except client.BodyError as exc:
        raise Problem(exc.status, f"JSON parse error - {exc.reason}" if exc.status == 400 else exc.reason) from None


# -- who is asking -----------------------------------------------------------


def authenticate(request: web.Request, write: bool = False) -> ApiToken:
    sent, token = bearer_token(request, schemes=("bearer", "token"))
    if not sent:
        raise Problem(401, "Authentication credentials were not provided.")
    if token is None:
        raise Problem(401, "Invalid token.")
    if write and not token.can_write:
        raise Problem(403, f'API token "{token.name}" has the read scope; this needs write.')
    return token


def is_flight(monitor: Monitor) -> bool:
    """API flights, and YAML monitors that import a CrossCheck key or shortcode."""
    return "crosscheck" in monitor.extras or any(kind in ("api_key", "shortcode") for kind, *_ in monitor.secret_refs)


def flight_fields(monitor: Monitor) -> dict[str, Any]:
    """A flight's CrossCheck fields (a YAML monitor's, read from its config)."""
    fields = monitor.extras.get("crosscheck")
    if fields is not None:
        return fields
    interval = getattr(monitor.schedule, "seconds", None)
    return {
        **DEFAULTS, "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cronmon:{monitor.id}")), "name": monitor.display_name,
        "description": monitor.description, "path": monitor.id,
        "expected_interval": int(interval) if interval else None, "grace_period": int(monitor.grace),
        "max_missed_checkins": monitor.failure_threshold, "allowed_ips": [str(n) for n in monitor.allowed_networks],
        "is_deleted": False, "created_at": None, "updated_at": None,
    }


def visible_flights(request: web.Request, token: ApiToken) -> list[Monitor]:
    flights = [m for m in request.app[CORE].registry.monitors.values() if is_flight(m) and can_see(token, m)]
    return sorted(flights, key=lambda m: (flight_fields(m)["order"], m.id))


def find_flight(request: web.Request, token: ApiToken, flight_id: str | None = None) -> Monitor:
    wanted = (flight_id or request.match_info["id"]).lower()
    registry = request.app[CORE].registry
    monitor_id = registry.index("crosscheck-flight-id", _flight_id).get(wanted)
    monitor = registry.monitors.get(monitor_id) if monitor_id is not None else None
    if monitor is None or not can_see(token, monitor):
        raise Problem(404, "Not found.")
    return monitor


def _flight_id(monitor: Monitor) -> tuple[str, ...]:
    """A flight's id, as the key of the registry's flight index."""
    return (flight_fields(monitor)["id"],) if is_flight(monitor) else ()


def writable_flight(request: web.Request, token: ApiToken) -> Monitor:
    return _writable(token, find_flight(request, token))


def _writable(token: ApiToken, monitor: Monitor) -> Monitor:
    if monitor.from_yaml:
        raise ReadOnlyMonitor(monitor)
    if not can_change(token, monitor):
        raise Problem(403, "You do not have permission to perform this action.")
    return monitor


# -- flights as JSON ---------------------------------------------------------


def landing_json(event: dict, flight_id: str) -> dict[str, Any]:
    ann = event.get("ann") or {}
    kind = event["kind"]
    if "phase" in ann:
        phase = ann["phase"]
    else:
        phase = "START" if kind == "start" else ("COMPLETE" if "started" in event else "SINGLE")
    return {
        "id": event["seq"],
        "flight": flight_id,
        "status": ann.get("status", _STATUS_OF_KIND.get(kind, "SUCCESS")),
        "phase": phase,
        "pair_key": ann.get("pair_key"),
        "metadata": event.get("metadata") or {},
        "runtime_duration": event.get("duration"),
        "source_ip": event.get("ip"),
        "is_test": bool(ann.get("test")),
        "created_at": iso_utc(event["t"]),
    }


def audit_json(entry: dict) -> dict[str, Any]:
    return {
        "action": entry.get("action"),
        "actor": entry.get("actor"),
        "token": entry.get("token"),
        "changes": entry.get("changes", {}),
        "timestamp": iso_utc(entry["at"]),
    }


async def flight_json(
    request: web.Request, token: ApiToken, monitor: Monitor, details: Details | None = None,
    groups: dict | None = None,
) -> dict[str, Any]:
    """A flight in CrossCheck's shape. Its api_key and shortcode are
    check-in credentials: shown (as the native API shows ping_url) only to
    a token that may change the flight, null for read-scope ones."""
    core = request.app[CORE]
    credentials = can_change(token, monitor)
    if details is None:
        details = (await core.details([monitor.id], audit=100, history=20))[monitor.id]
    if groups is None:
        groups = await core.documents(GROUPS)
    fields = flight_fields(monitor)
    now = core.clock()
    month = uptime.summary(details.uptime, now)["30d"]
    last_landing = next((e for e in details.history if e.get("kind") in LANDING_KINDS), None)
    shortcode = core.registry.secret(monitor, "shortcode") if credentials else None
    group = groups.get(fields.get("group") or "")
    return {
        "id": fields["id"],
        "name": fields.get("name", monitor.display_name),
        "description": fields["description"],
        "path": monitor.id,
        **{name: fields.get(name, DEFAULTS[name]) for name in (
            "expected_interval", "grace_period", "max_missed_checkins", "allowed_ips", "monitoring_type",
            "monitor_url", "monitor_interval", "slow_response_threshold", "timeout_threshold",
            "consecutive_failure_threshold", "order", "team", "extra_config",
        )},
        "group": fields.get("group") if group else None,
        "api_key": core.registry.secret(monitor, "api_key") if credentials else None,
        "shortcode": shortcode,
        "short_check_in_url": f"{request.app[SETTINGS].base_url}/c/{shortcode}/" if shortcode else None,
        "last_check_in": iso_utc_or_none(details.facts.last_checkin),
        "last_landing_status": landing_json(last_landing, fields["id"])["status"] if last_landing else None,
        "status": core.evaluate(monitor, details.facts).status.value,
        "created_at": iso_utc_or_none(fields.get("created_at")),
        "updated_at": iso_utc_or_none(fields.get("updated_at")),
        "team_name": fields.get("team"),
        "group_name": group["name"] if group else None,
        "uptime_percentage": month.percentage,
        "uptime_checks_total": month.total,
        "uptime_checks_successful": month.successful,
        "is_deleted": bool(fields.get("is_deleted")),
        "audit": [audit_json(entry) for entry in details.audit],
    }


# -- validation and the derived monitor ---------------------------------------


def parse_flight_fields(data: Any) -> dict[str, Any]:
    """The writable fields sent (read-only ones dropped), type-checked."""
    if not isinstance(data, dict):
        raise Problem(400, {"non_field_errors": ["Expected a JSON object with the flight's fields."]})
    sent = {key: value for key, value in data.items() if key not in READ_ONLY}
    try:
        fields = FlightFields.model_validate(sent).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise Problem(400, field_errors(exc)) from None
    nulls = {key: ["This field may not be null."] for key, value in fields.items()
             if value is None and key not in _NULLABLE}
    if nulls:
        raise Problem(400, nulls)
    return fields


def check_flight(fields: dict[str, Any], token: ApiToken, groups: dict[str, dict]) -> None:
    """Rules across fields, on the complete set a write would leave."""
    errors: dict[str, list[str]] = {}
    if not fields.get("name", "").strip():
        errors["name"] = ["This field is required."]
    for value in fields["allowed_ips"]:
        try:
            parse_network(value)
        except ValueError as exc:
            errors.setdefault("allowed_ips", []).append(str(exc))
    if fields["monitoring_type"] == "ACTIVE":
        url = fields.get("monitor_url") or ""
        if not url:
            errors["monitor_url"] = ["This field is required for ACTIVE flights."]
        elif not re.match(r"^https?://[^\s/]+", url):
            errors["monitor_url"] = ["Enter a valid http:// or https:// URL."]
        if fields["slow_response_threshold"] > fields["timeout_threshold"]:
            errors["slow_response_threshold"] = ["Must not be greater than timeout_threshold."]
        if fields["timeout_threshold"] > fields["monitor_interval"]:
            errors["timeout_threshold"] = ["Must not be greater than monitor_interval."]
    if fields.get("group") is not None:
        group = groups.get(fields["group"].lower())
        if group is None or not _group_visible(group, token):
            errors["group"] = [f'No flight group "{fields["group"]}".']
        else:
            fields["group"] = fields["group"].lower()
    if fields.get("team") is not None and fields["team"] != token.team:
        errors["team"] = [f'Token "{token.name}" is not in team "{fields["team"]}"'
                          + (f' (its team is "{token.team}").' if token.team else " (it has no team).")]
    config = fields["extra_config"]
    if len(json.dumps(config)) > _EXTRA_CONFIG_BYTES:
        errors["extra_config"] = [f"At most {_EXTRA_CONFIG_BYTES} bytes of JSON."]
    elif "is_paired_arrival" in config and not isinstance(config["is_paired_arrival"], bool):
        errors["extra_config"] = ["is_paired_arrival must be true or false."]
    if errors:
        raise Problem(400, errors)


def monitor_spec(request: web.Request, monitor_id: str, fields: dict[str, Any], groups: dict[str, dict]):
    """The canonical monitor a flight stands for."""
    active = fields["monitoring_type"] == "ACTIVE"
    group = groups.get(fields.get("group") or "")
    data = {
        "id": monitor_id,
        "name": fields["name"].strip(),
        "description": fields["description"],
        # An active flight lands once per check (its schedule is the check
        # interval); a passive one once per expected_interval.
        **({"http": {"url": fields["monitor_url"], "interval": fields["monitor_interval"],
                     "slow": fields["slow_response_threshold"], "timeout": fields["timeout_threshold"]}}
           if active else {"schedule": {"interval": fields["expected_interval"]}}),
        "grace": fields["grace_period"],
        "failure_threshold": (fields["consecutive_failure_threshold"] or fields["max_missed_checkins"])
        if active else fields["max_missed_checkins"],
        "labels": {"team": fields["team"]} if fields.get("team") else {},
        "group": group["name"] if group else "",
        "paused": bool(fields.get("is_deleted")),
        "rate_limit": RATE_LIMIT,
        "allowed_ips": fields["allowed_ips"],
    }
    try:
        return parse_monitor_spec(data, request.app[CORE].clock())
    except SpecError as exc:  # not expected after check_flight
        raise Problem(400, {field or "non_field_errors": [reason] for field, reason in exc.issues}) from None


def _changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    skip = {"updated_at", "created_at", "id"}
    return {key: {"old": old.get(key), "new": new.get(key)}
            for key in sorted(set(old) | set(new)) if key not in skip and old.get(key) != new.get(key)}


def _audit(token: ApiToken, action: str, changes: dict | None = None) -> dict[str, Any]:
    return {"action": action, "actor": token.owner, "token": token.name, "changes": changes or {}}


def flight_update(
    request: web.Request, token: ApiToken, monitor: Monitor, new_fields: dict[str, Any], action: str,
    groups: dict[str, dict],
) -> MonitorUpdate | None:
    """The update storing changed CrossCheck fields of a flight (and the
    monitor derived from them) with its audit entry; None if nothing changed."""
    changes = _changes(flight_fields(monitor), new_fields)
    if not changes:
        return None
    stored = {**new_fields, "updated_at": request.app[CORE].clock()}
    return MonitorUpdate(
        monitor, monitor_spec(request, monitor.id, stored, groups),
        {**monitor.extras, "crosscheck": stored}, _audit(token, action, changes),
        retired=bool(stored.get("is_deleted")),
    )


async def write_flights(request: web.Request, updates: list[MonitorUpdate | None]) -> None:
    """Several flights' updates with one reload of the definitions."""
    await request.app[CORE].update_monitors([u for u in updates if u is not None])


async def write_flight(
    request: web.Request, token: ApiToken, monitor: Monitor, new_fields: dict[str, Any], action: str,
    groups: dict[str, dict] | None = None,
) -> Monitor:
    if groups is None:
        groups = await request.app[CORE].documents(GROUPS)
    update = flight_update(request, token, monitor, new_fields, action, groups)
    if update is None:
        return monitor
    return (await request.app[CORE].update_monitors([update]))[0]


# -- flight handlers -----------------------------------------------------------


@handles_problems
async def list_flights(request: web.Request) -> web.Response:
    token = authenticate(request)
    wanted_type = request.query.get("monitoring_type")
    if wanted_type is not None and wanted_type.upper() not in FLIGHT_TYPES:
        raise Problem(400, {"monitoring_type": [f"Select one of {', '.join(FLIGHT_TYPES)}."]})
    deleted = request.query.get("is_deleted", "false").lower() in ("true", "1", "yes")
    flights = [
        m for m in visible_flights(request, token)
        if bool(flight_fields(m).get("is_deleted")) == deleted
        and (wanted_type is None or flight_fields(m)["monitoring_type"] == wanted_type.upper())
    ]
    core = request.app[CORE]
    details = await core.details([m.id for m in flights], audit=100, history=20)
    groups = await core.documents(GROUPS)
    return web.json_response([await flight_json(request, token, m, details[m.id], groups) for m in flights])


@handles_problems
async def create_flight(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    sent = parse_flight_fields(await read_body(request))
    core = request.app[CORE]
    groups = await core.documents(GROUPS)
    flight_id = str(uuid.uuid4())
    fields = {**DEFAULTS, **{k: v for k, v in sent.items() if v is not None or k in _NULLABLE}}
    fields["name"] = sent.get("name") or ""
    check_flight(fields, token, groups)
    path = sent.get("path") or f"{slugify(fields['name'], 'flight')}-{flight_id[:6]}"
    if not _PATH.match(path):
        raise Problem(400, {"path": ["Lower-case letters, digits, '.', '_' and '-', starting with a letter or "
                                     "digit, at most 63 characters (it is the monitor's id in /metrics)."]})
    now = core.clock()
    stored = {**fields, "id": flight_id, "path": path, "is_deleted": False, "created_at": now, "updated_at": now}
    try:
        monitor = await core.create_monitor(
            monitor_spec(request, path, stored, groups), token.owner, stored["team"],
            {"crosscheck": stored}, _audit(token, "created", _changes({}, stored)),
        )
    except MonitorExists:
        raise Problem(400, {"path": [f'A flight or monitor with path "{path}" already exists.']}) from None
    except QuotaExceeded as exc:
        raise Problem(403, str(exc)) from None
    except ReadOnlyMonitor as exc:
        raise Problem(400, {"path": [str(exc)]}) from None
    return web.json_response(await flight_json(request, token, monitor, groups=groups), status=201)


@handles_problems
async def get_flight(request: web.Request) -> web.Response:
    token = authenticate(request)
    return web.json_response(await flight_json(request, token, find_flight(request, token)))


@handles_problems
async def update_flight(request: web.Request) -> web.Response:
    """PUT and PATCH. As in Django REST framework, PUT needs every required
    field (name) and PATCH none; fields left out keep their values."""
    token = authenticate(request, write=True)
    monitor = writable_flight(request, token)
    sent = parse_flight_fields(await read_body(request))
    if request.method == "PUT" and "name" not in sent:
        raise Problem(400, {"name": ["This field is required."]})
    current = flight_fields(monitor)
    if sent.get("path") not in (None, "", monitor.id):
        raise Problem(400, {"path": ["A flight's path cannot change: it is the monitor's id in /metrics and "
                                     "the key of its stored history."]})
    sent.pop("path", None)
    groups = await request.app[CORE].documents(GROUPS)
    fields = {**current, **sent}
    check_flight(fields, token, groups)
    updated = await write_flight(request, token, monitor, fields, "updated", groups)
    return web.json_response(await flight_json(request, token, updated, groups=groups))


@handles_problems
async def delete_flight(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    monitor = writable_flight(request, token)
    await request.app[CORE].delete_monitor(monitor)
    return web.Response(status=204)


@handles_problems
async def soft_delete_flight(request: web.Request) -> web.Response:
    return await _set_deleted(request, True)


@handles_problems
async def restore_flight(request: web.Request) -> web.Response:
    return await _set_deleted(request, False)


async def _set_deleted(request: web.Request, deleted: bool) -> web.Response:
    token = authenticate(request, write=True)
    monitor = writable_flight(request, token)
    fields = flight_fields(monitor)
    if bool(fields.get("is_deleted")) == deleted:
        raise Problem(400, "The flight is already deleted." if deleted else "The flight is not deleted.")
    updated = await write_flight(
        request, token, monitor, {**fields, "is_deleted": deleted}, "soft_deleted" if deleted else "restored"
    )
    return web.json_response(await flight_json(request, token, updated))


@handles_problems
async def purge_flight(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    monitor = writable_flight(request, token)
    if not flight_fields(monitor).get("is_deleted"):
        raise Problem(400, "Only a soft-deleted flight can be purged; soft-delete it first.")
    await request.app[CORE].delete_monitor(monitor)
    return web.Response(status=204)


@handles_problems
async def flight_landings(request: web.Request) -> web.Response:
    token = authenticate(request)
    monitor = find_flight(request, token)
    limit = _int_query(request, "limit", 50, 1, request.app[CORE].limits.history)
    offset = _int_query(request, "offset", 0, 0, 1_000_000)
    landings, _ = await request.app[CORE].events(
        monitor.id, limit=limit, offset=offset, kinds=LANDING_KINDS
    )
    flight_id = flight_fields(monitor)["id"]
    return web.json_response([landing_json(e, flight_id) for e in landings])


@handles_problems
async def flight_metrics(request: web.Request) -> web.Response:
    token = authenticate(request)
    monitor = find_flight(request, token)
    core = request.app[CORE]
    buckets = (await core.details([monitor.id]))[monitor.id].uptime
    now = core.clock()

    def row(counts: uptime.UptimeCounts) -> dict[str, Any]:
        return {
            "uptime_percentage": counts.percentage, "total": counts.total, "successful": counts.successful,
            "success": counts.success, "warning": counts.warning, "error": counts.error, "missed": counts.missed,
        }

    return web.json_response(
        {
            "flight": flight_fields(monitor)["id"],
            "summary": {window: row(counts) for window, counts in uptime.summary(buckets, now).items()},
            "by_day": [{"date": iso_utc(start)[:10], **row(c)} for start, c in uptime.by_day(buckets, now)],
            "by_hour": [
                {"hour": iso_utc(start).replace(".000", ""), **row(c)} for start, c in uptime.by_hour(buckets, now)
            ],
        }
    )


@handles_problems
async def flight_audit(request: web.Request) -> web.Response:
    token = authenticate(request)
    monitor = find_flight(request, token)
    return web.json_response([audit_json(e) for e in await request.app[CORE].audit(monitor.id)])


@handles_problems
async def test_now(request: web.Request) -> web.Response:
    """An active flight: a real check, now, recorded as its landing (it
    counts like any check). A passive one: a test landing, in-band:
    recorded through the same path as a real check-in (rate limit and
    allow list included) and listed with is_test, but changing neither the
    schedule nor the status: a test must never stand in for a real run."""
    token = authenticate(request, write=True)
    monitor = find_flight(request, token)
    if not can_check_in(token, monitor):
        raise Problem(403, "You do not have permission to perform this action: " + check_in_refusal(token, monitor))
    core = request.app[CORE]
    fields = flight_fields(monitor)
    if monitor.probe is not None:
        try:
            checkin, recorded = await request.app[PROBER].check_now(monitor)
        except ChecksNotRunning:
            raise Problem(503, "Active checks are not running in this process; retry later.") from None
        if recorded is None:
            raise RateLimited(monitor.id, 60)
        event = {
            "seq": recorded.seq,
            "t": checkin.received_at,
            "kind": checkin.kind.value,
            "ann": dict(checkin.annotations),
            "metadata": dict(checkin.metadata),
            "duration": checkin.duration,
        }
        return web.json_response(
            {
                "status": "ok",
                "landing": landing_json(event, fields["id"]),
                "override_seconds": TEST_OVERRIDE_SECONDS,
            }
        )
    annotations = {"status": "SUCCESS", "phase": "SINGLE", "test": True}
    checkin = CheckIn(
        monitor_id=monitor.id,
        kind=Kind.LOG,
        received_at=core.clock(),
        message="test_now",
        source_ip=client_ip(request),
        user_agent=header_text(request.headers.get("User-Agent")),
        annotations=annotations,
    )
    result = await core.record(checkin)
    event = {"seq": result.seq, "t": checkin.received_at, "kind": "log", "ann": annotations, "ip": checkin.source_ip}
    return web.json_response(
        {
            "status": "ok",
            "landing": landing_json(event, fields["id"]),
            "override_seconds": TEST_OVERRIDE_SECONDS,
        }
    )


@handles_problems
async def reorder_flights(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    items = parse_order_items(await read_body(request))
    visible = {flight_fields(m)["id"]: m for m in visible_flights(request, token)}
    targets = []
    for item in items:  # every id is checked before anything is written
        if item.id.lower() not in visible:
            raise Problem(404, f"No flight {item.id}.")
        targets.append((_writable(token, visible[item.id.lower()]), item.order))
    groups = await request.app[CORE].documents(GROUPS)
    await write_flights(
        request,
        [
            flight_update(request, token, monitor, {**flight_fields(monitor), "order": order}, "reordered", groups)
            for monitor, order in targets
        ],
    )
    return web.json_response({"status": "ok", "updated": len(targets)})


def parse_order_items(data: Any) -> list[OrderItem]:
    """Both documented bodies: [{id, order}, ...] or {"items": [...]}."""
    if isinstance(data, dict) and set(data) == {"items"}:
        data = data["items"]
    if not isinstance(data, list) or not data:
        raise Problem(
            400, {"non_field_errors": ['Expected a non-empty list of {"id", "order"} objects, or {"items": [...]}.']}
        )
    items, errors = [], {}
    for index, item in enumerate(data):
        try:
            items.append(OrderItem.model_validate(item))
        except ValidationError as exc:
            errors.update({f"{index}.{k}": v for k, v in field_errors(exc).items()})
    if errors:
        raise Problem(400, errors)
    if len({item.id.lower() for item in items}) != len(items):
        raise Problem(400, {"non_field_errors": ["An id appears more than once."]})
    return items


# -- groups ------------------------------------------------------------------------


def _group_visible(group: dict, token: ApiToken) -> bool:
    return group.get("owner") == token.owner or (token.team is not None and group.get("team") == token.team)


def group_json(group: dict, flights: list[Monitor]) -> dict[str, Any]:
    return {
        "id": group["id"],
        "name": group["name"],
        "order": group["order"],
        "team": group.get("team"),
        "flight_count": sum(1 for m in flights if flight_fields(m).get("group") == group["id"]),
        "created_at": iso_utc(group["created_at"]),
        "updated_at": iso_utc(group["updated_at"]),
    }


async def _visible_groups(request: web.Request, token: ApiToken) -> dict[str, dict]:
    groups = await request.app[CORE].documents(GROUPS)
    return {gid: g for gid, g in groups.items() if _group_visible(g, token)}


def _parse_group(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Problem(400, {"non_field_errors": ["Expected a JSON object."]})
    try:
        return GroupFields.model_validate(
            {k: v for k, v in data.items() if k not in ("id", "created_at", "updated_at", "flight_count")}
        ).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise Problem(400, field_errors(exc)) from None


def _group_team(fields: dict, token: ApiToken) -> None:
    if fields.get("team") is not None and fields["team"] != token.team:
        raise Problem(400, {"team": [f'Token "{token.name}" is not in team "{fields["team"]}".']})


@handles_problems
async def list_groups(request: web.Request) -> web.Response:
    token = authenticate(request)
    groups = sorted((await _visible_groups(request, token)).values(), key=lambda g: (g["order"], g["name"]))
    flights = visible_flights(request, token)
    return web.json_response([group_json(g, flights) for g in groups])


@handles_problems
async def create_group(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    fields = _parse_group(await read_body(request))
    if not (fields.get("name") or "").strip():
        raise Problem(400, {"name": ["This field is required."]})
    _group_team(fields, token)
    now = request.app[CORE].clock()
    group = {
        "id": str(uuid.uuid4()),
        "name": fields["name"].strip(),
        "order": fields.get("order") or 0,
        "owner": token.owner,
        "team": fields.get("team"),
        "created_at": now,
        "updated_at": now,
    }
    await request.app[CORE].put_document(GROUPS, group["id"], group)
    return web.json_response(group_json(group, []), status=201)


async def _group(request: web.Request, token: ApiToken, group_id: str | None = None) -> dict:
    group = (await _visible_groups(request, token)).get((group_id or request.match_info["id"]).lower())
    if group is None:
        raise Problem(404, "Not found.")
    return group


@handles_problems
async def get_group(request: web.Request) -> web.Response:
    token = authenticate(request)
    return web.json_response(group_json(await _group(request, token), visible_flights(request, token)))


@handles_problems
async def update_group(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    group = await _group(request, token)
    fields = _parse_group(await read_body(request))
    if request.method == "PUT" and "name" not in fields:
        raise Problem(400, {"name": ["This field is required."]})
    if "name" in fields and not (fields["name"] or "").strip():
        raise Problem(400, {"name": ["This field may not be blank."]})
    _group_team(fields, token)
    updated = {
        **group,
        **{k: (v.strip() if k == "name" else v) for k, v in fields.items()},
        "updated_at": request.app[CORE].clock(),
    }
    await request.app[CORE].put_document(GROUPS, group["id"], updated)
    if updated["name"] != group["name"]:
        await _refresh_group_members(request, token, group["id"])
    return web.json_response(group_json(updated, visible_flights(request, token)))


async def _refresh_group_members(request: web.Request, token: ApiToken, group_id: str) -> None:
    """A group's name is its flights' `group` in /metrics: re-derive them."""
    core = request.app[CORE]
    groups = await core.documents(GROUPS)
    await core.update_monitors(
        [
            MonitorUpdate(monitor, monitor_spec(request, monitor.id, monitor.extras["crosscheck"], groups))
            for monitor in _group_members(core, group_id)
        ]
    )


def _group_members(core, group_id: str) -> list[Monitor]:
    return [
        m
        for m in core.registry.monitors.values()
        if "crosscheck" in m.extras and m.extras["crosscheck"].get("group") == group_id
    ]


@handles_problems
async def delete_group(request: web.Request) -> web.Response:
    """Its flights become ungrouped first, so a crash half-way leaves no
    flight in a group that no longer exists."""
    token = authenticate(request, write=True)
    group = await _group(request, token)
    core = request.app[CORE]
    groups = {gid: g for gid, g in (await core.documents(GROUPS)).items() if gid != group["id"]}
    await write_flights(
        request,
        [
            flight_update(request, token, monitor, {**flight_fields(monitor), "group": None}, "ungrouped", groups)
            for monitor in _group_members(core, group["id"])
        ],
    )
    await core.delete_document(GROUPS, group["id"])
    return web.Response(status=204)


@handles_problems
async def reorder_groups(request: web.Request) -> web.Response:
    token = authenticate(request, write=True)
    items = parse_order_items(await read_body(request))
    visible = await _visible_groups(request, token)
    missing = [item.id for item in items if item.id.lower() not in visible]
    if missing:
        raise Problem(404, f"No flight group {', '.join(missing)}.")
    now = request.app[CORE].clock()
    for item in items:
        group = visible[item.id.lower()]
        await request.app[CORE].put_document(
            GROUPS, group["id"], {**group, "order": item.order, "updated_at": now}
        )
    return web.json_response({"status": "ok", "updated": len(items)})


# -- helpers -------------------------------------------------------------------------


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int_param(request.query, name, default, low, high)
    except ParamError:
        raise Problem(400, {name: [f"Must be a whole number from {low} to {high}."]}) from None
    assert value is not None  # it has a default
    return value


def add_routes(app: web.Application) -> None:
    """Every route with and without its trailing slash (CrossCheck's paths
    end in one; a client that drops it still works)."""

    def route(method: str, path: str, handler) -> None:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, path.rstrip("/"), handler)

    # Fixed paths before /api/flights/{id}/, which would also match them.
    route("GET", "/api/flights/groups/", list_groups)
    route("POST", "/api/flights/groups/", create_group)
    route("POST", "/api/flights/groups/reorder/", reorder_groups)
    route("GET", "/api/flights/groups/{id}/", get_group)
    route("PATCH", "/api/flights/groups/{id}/", update_group)
    route("PUT", "/api/flights/groups/{id}/", update_group)
    route("DELETE", "/api/flights/groups/{id}/", delete_group)
    route("POST", "/api/flights/reorder/", reorder_flights)
    route("GET", "/api/flights/", list_flights)
    route("POST", "/api/flights/", create_flight)
    route("GET", "/api/flights/{id}/", get_flight)
    route("PUT", "/api/flights/{id}/", update_flight)
    route("PATCH", "/api/flights/{id}/", update_flight)
    route("DELETE", "/api/flights/{id}/", delete_flight)
    route("GET", "/api/flights/{id}/landings/", flight_landings)
    route("GET", "/api/flights/{id}/metrics/", flight_metrics)
    route("GET", "/api/flights/{id}/audit/", flight_audit)
    route("POST", "/api/flights/{id}/test_now/", test_now)
    route("POST", "/api/flights/{id}/soft-delete/", soft_delete_flight)
    route("POST", "/api/flights/{id}/restore/", restore_flight)
    route("POST", "/api/flights/{id}/purge/", purge_flight)
