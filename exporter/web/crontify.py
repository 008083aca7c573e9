"""Crontify-compatible pings (seeds/crontify-http.txt).

    POST /api/v1/ping/<monitorId>/start | success | fail     X-API-Key: <key>

The API key is a management token from the config (Crontify's account key
maps onto its owner and team). It must have the write scope, and may ping
its owner's or team's API monitors and the YAML monitors that name it in
`ping.tokens` (access.can_check_in); others answer 404 (not its account's)
or 403 (visible, but not granted). Responses use Crontify's envelope, with
the document's JSON types. A run's log is read back through
GET /api/v1/monitors/<id>/runs/<runId>/log (see api_v1.py).

Bodies. The optional JSON object body carries `meta` (numeric values),
`errorMessage` (at most 500 characters) and `logOutput` (cut to 10,000
characters, and to the log byte limit every API shares, stored apart
from the run). The document refuses nothing in a body (its errors are
401, 404 and 429), so one field cronmon cannot use never costs the job its
run: the run is recorded, and what was cut or dropped is said in the
answer's `warnings` (one sentence per field, naming it) and in a WARNING
log line:

- `errorMessage` over 500 characters is cut to 500; one that is not a
  string is ignored;
- a `meta` value that is not a number (a string, a boolean, null, an
  object), or whose key is empty or over 100 characters, is dropped; a
  `meta` that is not an object is ignored;
- `logOutput` that is not a string is ignored; one over the limits is cut;
- `meta.exit_code` (the document's `/fail` example) is the run's exit code
  (cronmon_last_exit_code) when it is a whole number from 0 to 255 on a
  completion; otherwise it is not used as one (a warning), and stays meta
  when it is a number. A completion without it leaves the exit code
  unknown (cronmon_last_exit_code -1): an earlier run's code does not
  stand for this one.

Only a body that cannot be read at all is refused, with a 400 (413 over
the body limit, 415 for an unknown Content-Encoding) whose `error` is a
sentence saying what is wrong and how to fix it, and nothing is recorded:
not JSON (as the kit's parse_json reads it: syntax, invalid UTF-8, NaN or
Infinity, a number beyond float range, a lone surrogate, nesting too deep),
or JSON that is not an object.

Unknown body fields are ignored, not refused and not warned about: a
drop-in target must not break (or nag) a client that sends a field the
document does not list.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..access import can_check_in, can_see, check_in_refusal
from ..credentials import match_api_token
from ..errors import RateLimited, SourceNotAllowed, StoreUnavailable, UnknownMonitor
from ..model import CheckIn, Kind, iso_utc
from .client import BodyError, client_ip, header_text, read_json
from .keys import CORE, SETTINGS

log = logging.getLogger(__name__)

LOG_LIMIT_CHARS = 10_000
ERROR_MESSAGE_LIMIT = 500
META_KEY_LIMIT = 100
# Dropped meta values named one by one in the warnings; the rest are counted.
NAMED_DROPS = 10
_KINDS = {"start": Kind.START, "success": Kind.SUCCESS, "fail": Kind.FAIL}
_STATUS = {Kind.START: "running", Kind.SUCCESS: "success", Kind.FAIL: "failed"}
_EXAMPLE = '{"errorMessage": "...", "meta": {"exit_code": 1}, "logOutput": "..."}'
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,60}")


@dataclass(frozen=True)
class Ping:
    """What a ping's body says, as cronmon records it, and what of it was
    cut or dropped (`warnings`, one sentence each)."""

    message: str | None = None
    meta: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    log: str | None = None
    log_truncated: bool = False
    warnings: tuple[str, ...] = ()


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as a client knows it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _meta_field(key: str) -> str:
    """`meta.<key>` for a key that is safe to show as it is; otherwise the
    key JSON-quoted and cut (no control characters reach an answer or a
    log line)."""
    if _PLAIN_KEY.fullmatch(key):
        return f"meta.{key}"
    shown = json.dumps(key[:50]) + (f" (cut; {len(key)} characters)" if len(key) > 50 else "")
    return f"meta[{shown}]"


def _number(value: Any) -> float | None:
    """`value` as a finite float, None if it is not a number (a boolean is
    not one; parse_json has already refused NaN, Infinity and numbers beyond
    float range, checked again here all the same)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and abs(value) > 1e300:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _exit_code(value: float) -> int | None:
    """A meta exit_code as an exit status: a whole number from 0 to 255
    (1.0 is 1: JSON does not tell 1.0 from 1, nor does Crontify's Node.js)."""
    return int(value) if value.is_integer() and 0 <= value <= 255 else None


def _not_a_number(where: str, value: Any) -> str:
    what = _json_type(value)
    if what == "a number":  # beyond float range (parse_json refuses those first)
        return f"{where} is not a finite number, so it was dropped; send a number from -1e300 to 1e300"
    if isinstance(value, bool):
        fix = "send 1 or 0 for true or false"
    elif isinstance(value, str):
        fix = "send it as a JSON number, without quotes"
    else:
        fix = "send a number"
    return f"{where} is {what}, not a number, so it was dropped: meta keeps numbers only; {fix}"


def _meta(raw: Any, kind: Kind) -> tuple[dict[str, float], int | None, list[str]]:
    """The numeric meta of a ping, its exit code, and the warnings."""
    if raw is None:
        return {}, None, []
    if not isinstance(raw, dict):
        return {}, None, [
            f'meta is {_json_type(raw)}, not an object, so it was ignored; send an object of numbers such as '
            '{"rows_processed": 1523}'
        ]
    meta: dict[str, float] = {}
    warnings: list[str] = []
    dropped = 0
    exit_code = None
    for key, value in raw.items():
        where = _meta_field(key)
        number = _number(value)
        problem = None
        if not key:
            problem = "meta has an empty key, so its value was dropped; give every meta value a name"
        elif len(key) > META_KEY_LIMIT:
            problem = (f"{where} has a key longer than {META_KEY_LIMIT} characters, so it was dropped; "
                       "use a shorter name")
        elif number is None and key == "exit_code":
            problem = (f"meta.exit_code is {_json_type(value)}, not a number, so it was dropped and not used as "
                       "the run's exit code; send a whole number from 0 to 255, as a JSON number")
        elif number is None:
            problem = _not_a_number(where, value)
        if problem is not None:
            dropped += 1
            if dropped <= NAMED_DROPS:
                warnings.append(problem)
            continue
        assert number is not None
        meta[key] = number
        if key != "exit_code":
            continue
        if not kind.completes:
            warnings.append("meta.exit_code was not used as the run's exit code: a run that has just started has "
                            "none (send it with /success or /fail); it was kept as meta")
            continue
        exit_code = _exit_code(number)
        if exit_code is None:
            warnings.append(f"meta.exit_code {json.dumps(value)} is not an exit code (a whole number from 0 to "
                            "255), so it was not used as the run's exit code; it was kept as meta")
    if dropped > NAMED_DROPS:
        warnings.append(f"{dropped - NAMED_DROPS} more meta values were dropped for the same reasons")
    return meta, exit_code, warnings


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


def read_ping(body: dict[str, Any], kind: Kind, log_limit_bytes: int) -> Ping:
    """A ping's body (a JSON object) as cronmon records it. Never refuses:
    what cannot be used is cut or dropped, and said in the warnings."""
    warnings: list[str] = []
    message = body.get("errorMessage")
    if message is not None and not isinstance(message, str):
        warnings.append(f"errorMessage is {_json_type(message)}, not a string, so it was ignored; send the error "
                        "as a string")
        message = None
    elif message is not None and len(message) > ERROR_MESSAGE_LIMIT:
        warnings.append(f"errorMessage was cut to {ERROR_MESSAGE_LIMIT} characters (it had {len(message)}), "
                        f"Crontify's maximum; send the full text as logOutput")
        message = message[:ERROR_MESSAGE_LIMIT]
    meta, exit_code, said = _meta(body.get("meta"), kind)
    warnings += said
    output = body.get("logOutput")
    if output is not None and not isinstance(output, str):
        warnings.append(f"logOutput is {_json_type(output)}, not a string, so it was ignored; send the log as "
                        "a string")
        output = None
    text, truncated = _cut_log(output, log_limit_bytes)
    if truncated:
        assert output is not None and text is not None
        warnings.append(f"logOutput was cut to its first {len(text)} characters (it had {len(output)}): cronmon "
                        f"keeps at most {LOG_LIMIT_CHARS} characters and {log_limit_bytes} bytes of a log")
    return Ping(message or None, meta, exit_code, text, truncated, tuple(warnings))


def _fail(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"Retry-After": str(extra["retryAfter"])} if "retryAfter" in extra else None
    return web.json_response({"success": False, "error": message, **extra}, status=status, headers=headers)


def _sentence(reason: str) -> str:
    return reason[:1].upper() + reason[1:]


def _printable(text: str) -> str:
    """`text` for a log line: a client's control characters escaped, so
    that a key in a message cannot forge log lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def _body_refusal(exc: BodyError) -> str:
    """A BodyError of the kit as the answer's sentence, with the fix."""
    reason = exc.reason
    if exc.status == 413:
        reason += f"; send a smaller body (logOutput is cut to {LOG_LIMIT_CHARS} characters anyway)"
    elif exc.status == 400 and reason.startswith("the body is not valid JSON") and "; send" not in reason:
        reason += f"; send a JSON object such as {_EXAMPLE}, or no body"
    return _sentence(reason) + ". Nothing was recorded."


async def ping(request: web.Request) -> web.Response:
    core = request.app[CORE]
    received_at = core.clock()
    action = request.match_info["action"]
    kind = _KINDS[action]
    secrets = core.registry.secrets
    token = match_api_token(request.headers.get("X-API-Key", ""), secrets.api_tokens if secrets else ())
    if token is None:
        return _fail(401, "Missing or invalid API key")
    monitor = core.registry.monitors.get(request.match_info["monitor"])
    if monitor is None or monitor.retired or not can_see(token, monitor):
        return _fail(404, "Monitor not found or does not belong to this API key's account")
    if not can_check_in(token, monitor):
        return _fail(403, "Forbidden: " + check_in_refusal(token, monitor))
    settings = request.app[SETTINGS]
    refusal = None
    try:
        body = await read_json(request, settings.max_body_bytes, empty={})
    except BodyError as exc:
        refusal = exc.status, _body_refusal(exc)
    else:
        if not isinstance(body, dict):
            refusal = 400, (f"The body is {_json_type(body)}, not a JSON object; send an object such as "
                            f"{_EXAMPLE}, or no body. Nothing was recorded.")
    if refusal is not None:
        log.warning("crontify: %s ping for %s not recorded (api key %s): %s",
                    action, monitor.id, token.name, _printable(refusal[1]))
        return _fail(*refusal)
    sent = read_ping(body, kind, settings.log_limit_bytes)
    checkin = CheckIn(
        monitor_id=monitor.id,
        kind=kind,
        received_at=received_at,
        exit_code=sent.exit_code,
        message=sent.message,
        log=sent.log,
        log_truncated=sent.log_truncated,
        meta=sent.meta,
        source_ip=client_ip(request),
        user_agent=header_text(request.headers.get("User-Agent")),
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
        return _fail(503, "Service unavailable: the ping was not acknowledged; retry it")
    if sent.warnings:
        log.warning("crontify: %s ping for %s recorded with changes (api key %s): %s",
                    action, monitor.id, token.name, " | ".join(sent.warnings))
    answer: dict[str, Any] = {
        "success": True,
        "data": {
            "received": True,
            "monitorId": monitor.id,
            "runId": result.run_id,
            "status": _STATUS[kind],
            "timestamp": iso_utc(received_at),
        },
    }
    if sent.warnings:
        answer["warnings"] = list(sent.warnings)
    return web.json_response(answer)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/ping/{monitor}/{action:start|success|fail}", ping)
