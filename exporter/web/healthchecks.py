"""Healthchecks-compatible ping API.

    /ping/<uuid>[/start|/fail|/log|/<exit status>]
    /ping/<ping key>/<slug>[/start|/fail|/log|/<exit status>]

and the same at the root, as hc-ping.com serves them (its URLs are
`https://hc-ping.com/<uuid>` and `https://hc-ping.com/<ping key>/<slug>`,
so a job changes only the base URL). The root routes (add_root_routes,
registered after every other API's) match only those shapes: a UUID
(8-4-4-4-12 hex, either case), or a ping key of at least 16 URL-safe
characters (Healthchecks' and cronmon's generated keys have 22) and a
slug, each optionally followed by an action and one trailing slash. No
cronmon route starts with such a segment, so none is shadowed; a shorter
configured key works under /ping/ only. Both prefixes reach the same
handler with the same tail and answer alike.

GET, HEAD and POST; ``?rid=<uuid>`` pairs a start with its completion. A
POST body becomes the run's log. With --auto-provision, ``?create=1`` on a
slug URL creates an unknown monitor (201 "Created"). Responses follow Healthchecks: 200 "OK";
400 "invalid url format" (exit status over 255) or "invalid uuid format"
(a malformed rid); 404 "not found"; plus 413 for a body over the limit,
429 (with Retry-After) over the monitor's rate_limit, and 503 while the
store is unreachable. The slug is the monitor id.

This module only translates: it authenticates, builds a CheckIn and hands
it to the core.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from multidict import MultiMapping

from ..config import SpecError, parse_monitor_spec
from ..core import Core, Registry
from ..credentials import digest, key_allows
from ..errors import MonitorExists, QuotaExceeded, RateLimited, SourceNotAllowed, StoreUnavailable, UnknownMonitor
from ..model import CheckIn, Kind, Monitor, quick_init
from ..settings import Settings
from .client import BodyError, header_text, idempotency_key, read_body, source_address
from .keys import CORE, SETTINGS

_SUFFIXES = {"start": Kind.START, "fail": Kind.FAIL, "log": Kind.LOG}
_DIGITS = re.compile(r"^[0-9]+$")
_HEADERS = {"Access-Control-Allow-Origin": "*"}


@quick_init
@dataclass(frozen=True)
class PingPath:
    uuid: str | None
    key: str | None
    slug: str | None
    kind: Kind
    exit_code: int | None


class BadPing(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


def parse_path(tail: str) -> PingPath:
    """Split what follows /ping/ into who is pinged and what it says."""
    parts = tail.split("/")
    if parts and parts[-1] == "":
        parts.pop()  # tolerate one trailing slash
    if not parts or len(parts) > 3 or any(p == "" for p in parts):
        raise BadPing(404, "not found")
    first_is_uuid = _is_uuid(parts[0])
    if len(parts) == 1:
        if not first_is_uuid:
            raise BadPing(404, "not found")
        return PingPath(parts[0].lower(), None, None, Kind.SUCCESS, None)
    if len(parts) == 2 and first_is_uuid and _is_action(parts[1]):
        kind, code = _action(parts[1])
        return PingPath(parts[0].lower(), None, None, kind, code)
    if len(parts) == 2:
        return PingPath(None, parts[0], parts[1], Kind.SUCCESS, None)
    if not _is_action(parts[2]):
        raise BadPing(404, "not found")
    kind, code = _action(parts[2])
    return PingPath(None, parts[0], parts[1], kind, code)


def _is_uuid(text: str) -> bool:
    # The length first: most pings name a slug, and a refused uuid.UUID()
    # costs a raised exception.
    if len(text) != 36:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _is_action(text: str) -> bool:
    return text in _SUFFIXES or bool(_DIGITS.match(text))


def _action(text: str) -> tuple[Kind, int | None]:
    if text in _SUFFIXES:
        return _SUFFIXES[text], None
    code = int(text)
    if code > 255:
        raise BadPing(400, "invalid url format")
    return (Kind.SUCCESS if code == 0 else Kind.FAIL), code


@dataclass(frozen=True)
class PingAnswer:
    """What a ping is answered, whichever server read it (the aiohttp
    route below, or fast_ping's protocol for the plain GETs and HEADs)."""

    status: int
    text: str
    headers: Mapping[str, str] = field(default_factory=lambda: _HEADERS)


BodyReader = Callable[[], Awaitable[bytes]]


async def answer_ping(
    core: Core,
    settings: Settings,
    method: str,
    tail: str,
    query: MultiMapping[str],
    headers: MultiMapping[str],
    peer: str | None,
    read_body: BodyReader | None,
) -> PingAnswer:
    """Record the ping `method` /ping/`tail` (`query` and `headers` as
    decoded multidicts, `peer` the connection's address) and say what to
    answer. `read_body` reads a POST's body, bounded by
    settings.max_body_bytes; None means there is none."""
    received_at = core.clock()
    try:
        path = parse_path(tail)
        rid = query.get("rid")
        if rid is not None and not _is_uuid(rid):
            raise BadPing(400, "invalid uuid format")
        exit_code, duration = _exit_and_duration(query, path)
        try:
            retry_key = idempotency_key(headers)
        except BodyError as exc:
            raise BadPing(exc.status, exc.reason) from None
        monitor = _find_monitor(core.registry, path)
        created = False
        if monitor is None:
            monitor, created = await _provision_or_refuse(core, settings, path, query)
        body = b""
        if method == "POST" and read_body is not None:
            try:
                body = await read_body()
            except BodyError as exc:
                raise BadPing(exc.status, exc.reason) from None
        log_text, truncated = cut_log(body, settings.log_limit_bytes) if body else (None, False)
        checkin = CheckIn(
            monitor_id=monitor.id,
            kind=path.kind,
            received_at=received_at,
            run_id=rid.lower() if rid else None,
            exit_code=exit_code,
            duration=duration,
            log=log_text,
            log_truncated=truncated,
            source_ip=source_address(peer, headers, settings.trusted_proxies),
            user_agent=header_text(headers.get("User-Agent")),
            idempotency_key=retry_key,
        )
        await core.record(checkin)
    except UnknownMonitor:  # removed, or soft-deleted, since it was looked up
        return _NOT_FOUND
    except BadPing as exc:
        return PingAnswer(exc.status, exc.text)
    except StoreUnavailable:
        # Not "not recorded": a check-in a Sentinel replica did not confirm
        # (WAIT) was written to the primary; its retry is then a duplicate.
        return PingAnswer(503, "store unavailable: the ping was not acknowledged; retry it")
    except SourceNotAllowed:
        return PingAnswer(403, "forbidden: pings from this address are not allowed for this monitor")
    except RateLimited as exc:
        return PingAnswer(
            429, f"rate limited: retry in {exc.retry_after} seconds",
            {**_HEADERS, "Retry-After": str(exc.retry_after)},
        )
    return _CREATED if created else _OK


_OK = PingAnswer(200, "OK")
_CREATED = PingAnswer(201, "Created")
_NOT_FOUND = PingAnswer(404, "not found")


def _find_monitor(registry: Registry, path: PingPath) -> Monitor | None:
    """The monitor a ping is for, if it exists and the ping may name it.
    (Not a coroutine: this runs on every ping, and only the rare
    auto-provisioning, _provision_or_refuse, awaits anything.)"""
    if path.uuid is not None:
        return registry.by_uuid_digest(digest(path.uuid))
    assert path.key is not None and path.slug is not None
    key_name = _ping_key_name(registry, path.key)
    monitor = registry.monitors.get(path.slug) if key_name else None
    if monitor is not None and not key_allows(monitor, key_name):  # type: ignore[arg-type]
        return None
    return monitor


def _ping_key_name(registry: Registry, presented: str) -> str | None:
    """The name of the configured ping key `presented` is, if any."""
    return registry.secrets.ping_key_name(presented) if registry.secrets else None


async def _provision_or_refuse(
    core: Core, settings: Settings, path: PingPath, query: MultiMapping[str]
) -> tuple[Monitor, bool]:
    """For a ping _find_monitor found no monitor for: the one it creates
    (Healthchecks' ?create=1, a slug ping with a valid key), or 404."""
    registry = core.registry
    if path.slug is not None and path.key is not None and path.slug not in registry.monitors:
        key_name = _ping_key_name(registry, path.key)
        if key_name and query.get("create") == "1" and settings.auto_provision:
            return await _provision(core, path.slug, key_name), True
    raise BadPing(404, "not found")


async def _provision(core: Core, slug: str, key_name: str) -> Monitor:
    """Healthchecks' auto-provisioning: its defaults (1 day, 1 hour grace),
    owned by the ping key, so tokens of owner `ping-key:<name>` manage it."""
    try:
        spec = parse_monitor_spec({"id": slug, "schedule": {"interval": "1d"}, "grace": "1h"}, core.clock())
    except SpecError:
        raise BadPing(400, "invalid slug: use a-z, 0-9, - and _ (1 to 63 characters)") from None
    try:
        return await core.create_monitor(spec, f"ping-key:{key_name}", None)
    except QuotaExceeded as exc:
        raise BadPing(403, f"not created: {exc}") from None
    except MonitorExists:  # another request created it a moment ago
        await core.sync_api_monitors()
        return core.registry.monitors[slug]


def cut_log(body: bytes, limit: int) -> tuple[str, bool]:
    """The body as text, cut to `limit` bytes on a character boundary."""
    if len(body) <= limit:
        return body.decode("utf-8", errors="replace"), False
    return body[:limit].decode("utf-8", errors="ignore"), True


async def ping(request: web.Request) -> web.Response:
    """The aiohttp route (every ping fast_ping does not answer itself)."""
    settings = request.app[SETTINGS]
    answer = await answer_ping(
        request.app[CORE], settings, request.method, request.match_info["tail"], request.query,
        request.headers, request.remote, lambda: read_body(request, settings.max_body_bytes),
    )
    return web.Response(status=answer.status, text=answer.text, headers=answer.headers)


def _exit_and_duration(query: MultiMapping[str], path: PingPath) -> tuple[int | None, float | None]:
    """Boxwatch-style `?exit_code=N&duration=S` (also accepted on every
    form); an exit status in the path wins."""
    exit_code = path.exit_code
    raw = query.get("exit_code")
    if raw is not None and exit_code is None:
        if not _DIGITS.match(raw) or int(raw) > 255:
            raise BadPing(400, "invalid exit_code: use 0-255")
        exit_code = int(raw)
    duration = None
    raw = query.get("duration")
    if raw is not None:
        try:
            duration = float(raw)
        except ValueError:
            raise BadPing(400, "invalid duration: seconds, e.g. 12.5") from None
        if not 0 <= duration < 10**8:
            raise BadPing(400, "invalid duration: seconds, e.g. 12.5")
    return exit_code, duration


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ping/{tail:.+}", ping)  # GET also answers HEAD
    app.router.add_post("/ping/{tail:.+}", ping)


# The root forms. An action is any number (as Healthchecks' <int:...>), so
# /<uuid>/256 answers 400 "invalid url format" there as under /ping/. The
# slug takes cronmon's monitor-id characters (with "."), and capitals as
# Django's slug converter does, so that every answer (404 "not found",
# 400 for a slug ?create=1 cannot use) is the /ping/ one.
_HEX = "[0-9A-Fa-f]"
_UUID = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_ACTION = "(?:/(?:start|fail|log|[0-9]+))?/?"
ROOT_KEY_MIN = 16
ROOT_UUID_TAIL = f"{_UUID}{_ACTION}"
ROOT_SLUG_TAIL = f"[A-Za-z0-9_-]{{{ROOT_KEY_MIN},}}/[A-Za-z0-9_.-]+{_ACTION}"


def add_root_routes(app: web.Application) -> None:
    """hc-ping.com's URL shapes at the root. Register these last: aiohttp
    tries root-level patterns only after every longer prefix, and among
    themselves in registration order, so cronmon's own routes always win."""
    for tail in (ROOT_UUID_TAIL, ROOT_SLUG_TAIL):
        app.router.add_get(f"/{{tail:{tail}}}", ping)  # GET also answers HEAD
        app.router.add_post(f"/{{tail:{tail}}}", ping)
