"""Crontify-compatible pings (seeds/crontify-http.txt).

    POST /api/v1/ping/<monitorId>/start | success | fail     X-API-Key: <key>

The API key is a management token from the config (Crontify's account key
maps onto its owner and team). It must have the write scope, and may ping
its owner's or team's API monitors and the YAML monitors that name it in
`ping.tokens` (access.can_check_in); others answer 404 (not its account's)
or 403 (visible, but not granted). The optional JSON body carries `meta`
(finite numeric values), `errorMessage` (at most 500 characters) and
`logOutput` (cut to 10,000 characters, and to the log byte limit every API
shares, stored apart from the run). Responses use Crontify's envelope. A
run's log is read back through GET /api/v1/monitors/<id>/runs/<runId>/log (see api_v1.py).

Unknown body fields are ignored, not refused: a drop-in target must not
break a client that sends a field the document does not list.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from ..access import can_check_in, can_see, check_in_refusal
from ..credentials import match_api_token
from ..errors import RateLimited, SourceNotAllowed, StoreUnavailable, UnknownMonitor
from ..model import CheckIn, Kind, iso_utc
from .client import BodyError, client_ip, read_json
from .keys import CORE, SETTINGS

LOG_LIMIT_CHARS = 10_000
_KINDS = {"start": Kind.START, "success": Kind.SUCCESS, "fail": Kind.FAIL}
_STATUS = {Kind.START: "running", Kind.SUCCESS: "success", Kind.FAIL: "failed"}


def _finite(value: int | float) -> float:
    # An integer beyond float range would be an OverflowError in float().
    if isinstance(value, int) and abs(value) > 1e300 or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


MetaNumber = Annotated[StrictInt | StrictFloat, AfterValidator(_finite)]


class PingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    meta: dict[Annotated[str, Field(min_length=1, max_length=100)], MetaNumber] = {}
    errorMessage: Annotated[str, Field(max_length=500)] | None = None
    logOutput: str | None = None


def _cut_log(text: str | None, limit_bytes: int) -> tuple[str | None, bool]:
    """Crontify's cut (10,000 characters), then the byte limit every stored
    log has (Settings.log_limit_bytes, as for a ping's body): 10,000
    characters of "€" are 30 kB."""
    if not text:
        return None, False
    cut = text[:LOG_LIMIT_CHARS]
    encoded = cut.encode("utf-8")
    if len(encoded) > limit_bytes:
        cut = encoded[:limit_bytes].decode("utf-8", errors="ignore")
    return cut, len(cut) < len(text)


def _fail(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"Retry-After": str(extra["retryAfter"])} if "retryAfter" in extra else None
    return web.json_response({"success": False, "error": message, **extra}, status=status, headers=headers)


async def ping(request: web.Request) -> web.Response:
    core = request.app[CORE]
    received_at = core.clock()
    kind = _KINDS[request.match_info["action"]]
    secrets = core.registry.secrets
    token = match_api_token(request.headers.get("X-API-Key", ""), secrets.api_tokens if secrets else ())
    if token is None:
        return _fail(401, "Missing or invalid API key")
    monitor = core.registry.monitors.get(request.match_info["monitor"])
    if monitor is None or monitor.retired or not can_see(token, monitor):
        return _fail(404, "Monitor not found or does not belong to this API key's account")
    if not can_check_in(token, monitor):
        return _fail(403, "Forbidden: " + check_in_refusal(token, monitor))
    try:
        body = PingBody.model_validate(await read_json(request, request.app[SETTINGS].max_body_bytes, empty={}))
    except BodyError as exc:
        return _fail(exc.status, exc.reason[0].upper() + exc.reason[1:])
    except ValidationError as exc:
        issues = [
            {"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors(include_url=False)
        ]
        return _fail(400, "Invalid body: " + "; ".join(f"{i['field']}: {i['reason']}" for i in issues), issues=issues)
    log, truncated = _cut_log(body.logOutput, request.app[SETTINGS].log_limit_bytes)
    checkin = CheckIn(
        monitor_id=monitor.id,
        kind=kind,
        received_at=received_at,
        message=body.errorMessage,
        log=log,
        log_truncated=truncated,
        meta=body.meta,
        source_ip=client_ip(request),
        user_agent=request.headers.get("User-Agent"),
    )
    try:
        result = await core.record(checkin)
    except UnknownMonitor:  # removed, or soft-deleted, since it was looked up
        return _fail(404, "Monitor not found or does not belong to this API key's account")
    except SourceNotAllowed:
        return _fail(403, "Forbidden: pings from this address are not allowed for this monitor")
    except RateLimited as exc:
        return _fail(429, f"Rate limit exceeded. Try again in {exc.retry_after} seconds.", retryAfter=exc.retry_after)
    except StoreUnavailable:
        return _fail(503, "Service unavailable: the ping was not recorded, retry later")
    return web.json_response(
        {
            "success": True,
            "data": {
                "received": True,
                "monitorId": monitor.id,
                "runId": result.run_id,
                "status": _STATUS[kind],
                "timestamp": iso_utc(received_at),
            },
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/ping/{monitor}/{action:start|success|fail}", ping)
