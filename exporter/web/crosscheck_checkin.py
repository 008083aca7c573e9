"""CrossCheck-compatible check-ins (seeds/crosscheck-checkins.txt).

    POST     /api/flights/check-in/        X-API-Key: <flight api key>   -> 201 landing
    POST     /api/flights/test-check-in/   X-API-Key: <flight api key>   -> 200, records nothing
    GET|POST /c/{shortcode}/               no key                        -> 200 {"status": "ok"}

Each becomes one canonical CheckIn: status SUCCESS / WARNING / ERROR is
the kind success / warning / fail; phase START opens a run keyed by
pair_key and COMPLETE closes it (SINGLE, the default, is a run without a
start); runtime_duration is the run's duration; numeric metadata values
become the run's meta (cronmon_run_meta, meta rules), and all of it is
kept with the landing. Quick flights (QUICK_PASSIVE) store no metadata.
The flight's 10-a-minute rate limit and allowed_ips are enforced by the
core, for every API that reaches the flight.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, field_validator

from ..model import CheckIn, Kind, Monitor
from .client import client_ip, header_text
from .crosscheck import Problem, field_errors, flight_fields, handles_problems, landing_json, read_body
from .keys import CORE

METADATA_LIMIT_BYTES = 8192
_KINDS = {"SUCCESS": Kind.SUCCESS, "WARNING": Kind.WARNING, "ERROR": Kind.FAIL}


class CheckInBody(BaseModel):
    # Unknown fields are ignored: a drop-in target must not refuse a
    # check-in because a client sends a field the document does not list.
    model_config = ConfigDict(extra="ignore")

    status: Literal["SUCCESS", "WARNING", "ERROR"] = "SUCCESS"
    metadata: dict[str, Any] = {}
    runtime_duration: Annotated[StrictInt | StrictFloat, Field(ge=0, le=31_536_000)] | None = None
    phase: Literal["SINGLE", "START", "COMPLETE"] = "SINGLE"
    pair_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @field_validator("status", "phase", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > METADATA_LIMIT_BYTES:
            raise ValueError(f"at most {METADATA_LIMIT_BYTES} bytes of JSON")
        return value


async def _body(request: web.Request) -> CheckInBody:
    data = await read_body(request, required=False)
    if data is None:
        return CheckInBody()
    if not isinstance(data, dict):
        raise Problem(400, {"non_field_errors": ["Expected a JSON object."]})
    try:
        return CheckInBody.model_validate(data)
    except ValidationError as exc:
        raise Problem(400, field_errors(exc)) from None


def _flight_by(request: web.Request, kind: str, presented: str) -> Monitor | None:
    # None for a soft-deleted flight too (Monitor.retired): it takes no
    # check-ins, here or on any other route, until restored.
    return request.app[CORE].registry.by_secret(kind, presented)


def _keyed_flight(request: web.Request) -> Monitor:
    presented = request.headers.get("X-API-Key", "").strip()
    if not presented:
        raise Problem(401, "Send the flight's API key in the X-API-Key header.")
    monitor = _flight_by(request, "api_key", presented)
    if monitor is None:
        raise Problem(401, "Invalid API key.")
    return monitor


def _checkin(request: web.Request, monitor: Monitor, body: CheckInBody) -> CheckIn:
    quick = flight_fields(monitor)["monitoring_type"] == "QUICK_PASSIVE"
    metadata = {} if quick else body.metadata
    paired = body.phase in ("START", "COMPLETE")
    annotations: dict[str, str] = {"status": body.status, "phase": body.phase}
    if body.pair_key is not None:
        annotations["pair_key"] = body.pair_key
    return CheckIn(
        monitor_id=monitor.id,
        kind=Kind.START if body.phase == "START" else _KINDS[body.status],
        received_at=request.app[CORE].clock(),
        run_id=body.pair_key if paired else None,
        duration=None if body.phase == "START" else body.runtime_duration,
        meta={k: v for k, v in metadata.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        metadata=metadata,
        source_ip=client_ip(request),
        user_agent=header_text(request.headers.get("User-Agent")),
        annotations=annotations,
    )


@handles_problems
async def check_in(request: web.Request) -> web.Response:
    monitor = _keyed_flight(request)
    checkin = _checkin(request, monitor, await _body(request))
    result = await request.app[CORE].record(checkin)
    event = {
        "seq": result.seq, "t": checkin.received_at, "kind": checkin.kind.value, "ann": dict(checkin.annotations),
        "metadata": dict(checkin.metadata), "duration": result.duration, "ip": checkin.source_ip,
    }
    landing = landing_json(event, flight_fields(monitor)["id"])
    if result.status == "duplicate":
        # A retried START / COMPLETE of a pair already recorded: nothing new.
        return web.json_response({**landing, "id": None, "duplicate": True}, status=200)
    return web.json_response(landing, status=201)


@handles_problems
async def test_check_in(request: web.Request) -> web.Response:
    """Checks the key and the source address; records nothing."""
    monitor = _keyed_flight(request)
    source = client_ip(request)
    if not monitor.allows_source(source):
        raise Problem(403, f"Check-ins from {source or 'this address'} are not allowed for this flight (allowed_ips).")
    return web.json_response({"message": "Test check-in working!"})


@handles_problems
async def short_check_in(request: web.Request) -> web.Response:
    monitor = _flight_by(request, "shortcode", request.match_info["shortcode"])
    if monitor is None:
        raise Problem(404, "Not found.")
    body = await _body(request) if request.method == "POST" else CheckInBody()
    await request.app[CORE].record(_checkin(request, monitor, body))
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    for path in ("/api/flights/check-in/", "/api/flights/check-in"):
        app.router.add_post(path, check_in)
    for path in ("/api/flights/test-check-in/", "/api/flights/test-check-in"):
        app.router.add_post(path, test_check_in)
    for path in ("/c/{shortcode}/", "/c/{shortcode}"):
        app.router.add_get(path, short_check_in)  # HEAD too: aiohttp adds it with GET
        app.router.add_post(path, short_check_in)
