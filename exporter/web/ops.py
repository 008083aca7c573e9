"""Operational endpoints: /metrics, /-/healthy, /-/ready, /-/reload, and
the status page: `/` and `/monitors/<id>`, as HTML to a browser (Accept:
text/html), as text and JSON to everything else; POST /login, /logout."""

from __future__ import annotations

import base64
import hashlib
import html
import math
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import exposition as prometheus_exposition
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from ..access import can_check_in, can_see
from ..collector import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, SelfState, render_self
from ..config import ConfigError
from ..credentials import ApiToken, match_api_token
from ..errors import StoreUnavailable
from ..model import Evaluation, Facts, Monitor, Status, format_duration, iso_utc
from ..rules import event_is_bad
from ..workers import ask_parent_to_reload
from .client import BodyError, bearer_token, read_body
from .keys import CORE, RELOADER, SCRAPER, SELF_REGISTRY, SETTINGS

_TEXT = "text/plain"


def _wants_openmetrics(accept: str) -> bool:
    """client_golang's rule: the text format whenever the client accepts
    it (Prometheus always does); OpenMetrics only for a client that asks
    for it and accepts nothing else."""
    types = [part.split(";")[0].strip() for part in accept.split(",")] if accept else []
    if not types or any(t in ("text/plain", "*/*", "text/*") for t in types):
        return False
    return "application/openmetrics-text" in types


async def metrics(request: web.Request) -> web.Response:
    scraper = request.app[SCRAPER]
    store_up = await scraper.refresh()
    state = request.app[RELOADER].state
    own = render_self(
        SelfState(store_up, state.successful, state.success_timestamp, tuple(scraper.core.registry.monitors.values()))
    )
    self_registry = request.app[SELF_REGISTRY]
    if _wants_openmetrics(request.headers.get("Accept", "")):
        tail = own.encode() + openmetrics_exposition.generate_latest(self_registry)
        body = scraper.cache.openmetrics_body(tail) if store_up else tail
        return web.Response(body=body, headers={"Content-Type": OPENMETRICS_CONTENT_TYPE})
    tail = own.encode() + prometheus_exposition.generate_latest(self_registry)
    gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    body = scraper.cache.body(tail, gzip, include_monitors=store_up)
    headers = {"Content-Type": TEXT_CONTENT_TYPE, "Vary": "Accept-Encoding"}
    if gzip:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


# What an event shows without a token: what /metrics already tells anyone.
_PUBLIC_EVENT_FIELDS = ("seq", "t", "kind", "outcome", "duration", "exit_code", "has_log")


async def monitor_page(request: web.Request) -> web.Response:
    """A monitor's current state and recent events, as JSON: where alert
    links point, so it opens without credentials. Without a token it shows
    what /metrics already shows, and each event's time, kind, outcome,
    duration and exit code; what a job sent (messages, metadata, source
    addresses, User-Agents) needs a management token that can see the
    monitor (Authorization: Bearer). Log bodies are never included.
    A browser (Accept: text/html) gets the status page's monitor page."""
    if wants_html(request):
        return await monitor_html(request)
    core = request.app[CORE]
    monitor = core.registry.monitors.get(request.match_info["monitor"])
    if monitor is None:
        return web.json_response({"error": "no monitor with this id"}, status=404)
    presented, token = bearer_token(request)
    if presented and token is None:
        return web.json_response({"error": "unknown token: send a token from api_tokens, or none"}, status=401)
    full = token is not None and can_see(token, monitor)
    try:
        facts = await core.facts(monitor.id)
        events = await core.recent_events(monitor.id, 25)
    except StoreUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=503)
    ev = core.evaluate(monitor, facts)
    for event in events:
        if "log" in event:
            event["has_log"] = True
            del event["log"]
    if not full:
        events = [{k: e[k] for k in _PUBLIC_EVENT_FIELDS if k in e} for e in events]
    return web.json_response(
        headers={"Vary": "Accept"},
        data={
            "id": monitor.id,
            "name": monitor.display_name,
            "description": monitor.description,
            "schedule": monitor.schedule.describe(),
            "labels": dict(monitor.labels),
            "group": monitor.group,
            "status": ev.status.value,
            "next_expected": ev.next_expected,
            "deadline": ev.deadline,
            "consecutive_failures": ev.consecutive_failures,
            "running_runs": ev.running_runs,
            "last_checkin": facts.last_checkin,
            "last_success": facts.last_success,
            "last_failure": facts.last_failure,
            "last_duration": facts.last_duration,
            "last_exit_code": facts.last_exit_code,
            "recent_events": events,
        },
    )


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n", content_type=_TEXT)


async def ready(request: web.Request) -> web.Response:
    try:
        await request.app[CORE].check_store()
    except StoreUnavailable as exc:
        return web.Response(status=503, text=f"not ready: {exc}\n", content_type=_TEXT)
    return web.Response(text="OK\n", content_type=_TEXT)


async def reload(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].enable_lifecycle:
        # Prometheus' answer and flag name, so runbooks carry over.
        return web.Response(
            status=403, text="Lifecycle API is not enabled: start cronmon with --web.enable-lifecycle, "
            "or send it SIGHUP\n", content_type=_TEXT,
        )
    try:
        registry = await request.app[RELOADER].reload()
    except ConfigError as exc:
        # Like Prometheus: 500 with the reason; the old config keeps running.
        return web.Response(
            status=500, text=f"failed to reload config, keeping the running one:\n{exc}\n", content_type=_TEXT
        )
    ask_parent_to_reload()  # the other workers of a supervisor reload too
    return web.Response(text=f"OK: {len(registry.monitors)} monitors\n", content_type=_TEXT)


async def index(request: web.Request) -> web.Response:
    if wants_html(request):
        return await index_html(request)
    monitors = len(request.app[CORE].registry.monitors)
    return web.Response(
        text=(
            "cronmon: cron and heartbeat monitoring for Prometheus\n\n"
            f"{monitors} monitors configured\n\n"
            "GET  /               this index; in a browser (Accept: text/html), the status page\n"
            "GET  /metrics        Prometheus metrics\n"
            "GET  /monitors/<id>  one monitor's state and recent events (JSON; HTML in a browser)\n"
            "POST /login          status page sign-in (a form with an API token; sets a cookie)\n"
            "GET  /-/healthy      liveness\n"
            "GET  /-/ready        readiness (503 while Redis is unreachable)\n"
            "POST /-/reload       reload the config (with --web.enable-lifecycle; SIGHUP always)\n"
            "     /ping/...       Healthchecks-compatible pings (see README)\n"
        ),
        content_type=_TEXT,
        headers={"Vary": "Accept"},
    )


# -- The status page ------------------------------------------------------------
#
# `/` and `/monitors/<id>` as HTML, for a browser: server-rendered, no
# JavaScript, no external assets, reloading itself (meta refresh). It shows
# what the native API shows the viewer (access.py): without a token the
# YAML monitors (those every token sees) with their state and run outcomes;
# with a token also its owner's and team's API monitors, what jobs sent
# (messages, sources, log tails) and, to tokens that may check in, the ping
# URL. A browser sends the token as `Authorization: Bearer` (a proxy that
# adds it, curl) or in a cookie that POST /login sets from a form: never in
# a URL, where it would end up in history, logs and Referer headers.

TOKEN_COOKIE = "cronmon_token"
# An on-call shift; then the form again. The cookie holds the token itself
# (HttpOnly: no script reads it; only these pages read it, no API does).
COOKIE_MAX_AGE = 12 * 3600
DEFAULT_REFRESH = 10
MAX_REFRESH = 3600
# A page lists at most this many monitors (filters narrow it down), and a
# monitor page at most this many events, with the tails of their logs.
MAX_ROWS = 500
PAGE_EVENTS = 25
LOG_TAIL_CHARS = 4000
LOG_TAIL_LINES = 60
_LOGIN_BODY_LIMIT = 8192

# Failing and missed first (the order an on-call engineer reads them in).
STATUS_ORDER = (
    Status.DOWN, Status.FAILED, Status.STUCK, Status.LATE, Status.RUNNING, Status.NEW, Status.UP, Status.PAUSED,
)
PROBLEMS = (Status.DOWN, Status.FAILED, Status.STUCK, Status.LATE)
_RANK = {status: i for i, status in enumerate(STATUS_ORDER)}
SORTS = ("status", "name", "last_success", "next_expected", "duration", "team", "group")

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;justify-content:space-between;
padding:10px 16px;background:#1b1f24;color:#fff}
header a{color:#fff}header h1{font-size:18px;margin:0}header form{display:inline;margin:0}
main{padding:12px 16px}a{color:#0b5cad}
.counts{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 10px;padding:0;list-style:none}
.counts a{display:inline-block;padding:4px 10px;border-radius:12px;border:1px solid #c9ced6;
background:#fff;text-decoration:none;color:#1b1f24}.counts a.on{outline:2px solid #1b1f24}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:5px 8px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th a{color:#1b1f24}th{background:#eceef1;white-space:nowrap}
.badge{display:inline-block;min-width:56px;padding:1px 6px;border-radius:4px;font-weight:600;
text-align:center;color:#fff;background:#6b7280}
.st-down .badge,.st-failed .badge,.st-stuck .badge,.bad .badge{background:#c62828}
.st-late .badge{background:#d97706}.st-running .badge{background:#1d6fd1}
.st-up .badge,.good .badge{background:#2e7d32}
tr.st-down,tr.st-failed,tr.st-stuck,tr.bad{background:#fdecea}tr.st-late{background:#fff4e0}
.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin:0 0 10px}
.filters label{display:flex;flex-direction:column;font-size:12px;color:#4b5563}
.muted{color:#6b7280}.id{color:#6b7280;font-size:12px}
pre{white-space:pre-wrap;word-break:break-all;background:#1b1f24;color:#e5e7eb;padding:8px;max-height:420px;
overflow:auto}code{background:#eceef1;padding:1px 4px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;padding:10px;margin:0 0 12px}
dt{color:#4b5563}dd{margin:0}.error{color:#c62828;font-weight:600}
"""
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
_HTML_HEADERS = {
    # No script runs here at all, and the one inline style is named by hash:
    # an escaping bug could still not run anything.
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send `Origin: null` with the forms
    # (which login/logout then refuse).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "Accept, Cookie, Authorization",
}


def e(value: object) -> str:
    """HTML-escaped text (attribute-safe: quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def wants_html(request: web.Request) -> bool:
    """Whether the client asks for HTML over JSON/text: a browser does
    (Accept: text/html,...), curl and HTTP libraries (*/*) do not."""
    best: dict[str, float] = {}
    for part in request.headers.get("Accept", "").split(","):
        media, *params = part.split(";")
        quality = 1.0
        for param in params:
            name, _, raw = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(raw)
                except ValueError:
                    quality = 0.0
        if not math.isfinite(quality):
            quality = 0.0
        media = media.strip().lower()
        kind = "html" if media in ("text/html", "application/xhtml+xml") else media
        best[kind] = max(best.get(kind, 0.0), quality)
    html_q = best.get("html", 0.0)
    return html_q > 0 and html_q >= best.get("application/json", 0.0)


@dataclass(frozen=True)
class Viewer:
    """Who looks at the page: the token (None: anonymous), where it came
    from ("header" or "cookie"), and a problem to show (a cookie with a
    token the config no longer has)."""

    token: ApiToken | None
    via: str = ""
    problem: str = ""

    def sees(self, monitor: Monitor) -> bool:
        # Without a token: what every token sees (the YAML monitors).
        return can_see(self.token, monitor) if self.token is not None else monitor.from_yaml

    def sees_details(self, monitor: Monitor) -> bool:
        return self.token is not None and can_see(self.token, monitor)


class _Unauthorized(Exception):
    pass


def viewer(request: web.Request) -> Viewer:
    """The viewer of a page; _Unauthorized for an unknown token in the
    Authorization header (as the JSON answers 401)."""
    presented, token = bearer_token(request)
    if presented:
        if token is None:
            raise _Unauthorized
        return Viewer(token, "header")
    raw = request.cookies.get(TOKEN_COOKIE)
    if not raw:
        return Viewer(None)
    secrets = request.app[CORE].registry.secrets
    token = match_api_token(urllib.parse.unquote(raw), secrets.api_tokens if secrets else ())
    if token is None:
        return Viewer(None, problem="the token you signed in with is no longer configured: sign in again")
    return Viewer(token, "cookie")


def refresh_seconds(query: Mapping[str, str]) -> int:
    """?refresh=N seconds (0: off), DEFAULT_REFRESH when absent or not a
    whole number, at most MAX_REFRESH."""
    try:
        value = int(query.get("refresh", DEFAULT_REFRESH))
    except ValueError:
        return DEFAULT_REFRESH
    return min(max(value, 0), MAX_REFRESH)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return '<span class="muted">never</span>'
    delta = ts - now
    text = _span(abs(delta))
    words = "now" if abs(delta) < 1 else (f"in {text}" if delta > 0 else f"{text} ago")
    stamp = iso_utc(ts)
    return f'<time datetime="{e(stamp)}" title="{e(stamp)}">{e(words)}</time>'


def _span(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            whole, rest = divmod(seconds, size)
            part = rest // sub_size
            return f"{whole}{unit} {part}{sub}" if part else f"{whole}{unit}"
    return f"{seconds}s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return '<span class="muted">-</span>'
    if seconds < 60:
        return e(f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s")
    return e(_span(seconds))


def team_of(monitor: Monitor) -> str:
    """The `team` label; an API monitor without one shows its owning team."""
    return dict(monitor.labels).get("team") or monitor.team or ""


def _url(path: str, params: Mapping[str, str | Iterable[str]]) -> str:
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        if isinstance(value, str):
            if value:
                pairs.append((name, value))
        else:
            pairs += [(name, v) for v in value]
    return path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")


def _page(title: str, body: str, refresh: int, viewer_: Viewer, here: str, status: int = 200) -> web.Response:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    if viewer_.token is not None:
        token = viewer_.token
        who = f"token <b>{e(token.name)}</b> ({e(token.owner)}{', team ' + e(token.team) if token.team else ''})"
        if viewer_.via == "cookie":
            who += (
                ' <form method="post" action="/logout"><button type="submit">Sign out</button></form>'
            )
        account = f'<span class="who">{who}</span>'
    else:
        account = (
            '<form method="post" action="/login" class="login"><input type="password" name="token" '
            'aria-label="API token" placeholder="API token" autocomplete="current-password" required> '
            f'<input type="hidden" name="next" value="{e(here)}"><button type="submit">Sign in</button></form>'
        )
    refreshing = (
        f'every {refresh}s · <a href="{e(_with_refresh(here, 0))}">pause</a>' if refresh
        else f'paused · <a href="{e(_with_refresh(here, DEFAULT_REFRESH))}">resume</a>'
    )
    problem = f'<p class="error">{e(viewer_.problem)}</p>' if viewer_.problem else ""
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
        f"<title>{e(title)} · cronmon</title><style>{_CSS}</style></head><body>"
        f'<header><h1><a href="{e(_keep_refresh("/", here))}">cronmon</a></h1>'
        f'<span class="refresh">refresh: {refreshing}</span>{account}</header>'
        f"<main>{problem}{body}</main></body></html>"
    )
    headers = dict(_HTML_HEADERS)
    response = web.Response(text=document, content_type="text/html", status=status, headers=headers)
    if viewer_.problem:
        response.del_cookie(TOKEN_COOKIE, path="/")
    return response


def _with_refresh(here: str, refresh: int) -> str:
    parts = urllib.parse.urlsplit(here)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "refresh"]
    if refresh != DEFAULT_REFRESH:
        query.append(("refresh", str(refresh)))
    return parts.path + ("?" + urllib.parse.urlencode(query) if query else "")


def _keep_refresh(path: str, here: str) -> str:
    """`path`, carrying over the refresh setting of the current page."""
    refresh = refresh_seconds(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(here).query)))
    return path + (f"?refresh={refresh}" if refresh != DEFAULT_REFRESH else "")


def _here(request: web.Request) -> str:
    return request.rel_url.path_qs


def _unauthorized_page(request: web.Request) -> web.Response:
    response = _page(
        "unknown token",
        '<p class="error">The Authorization header carries a token cronmon does not know.</p>',
        0, Viewer(None), "/", status=401,
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="cronmon"'
    return response


def _store_down_page(viewer_: Viewer, here: str, refresh: int, exc: StoreUnavailable) -> web.Response:
    return _page("store unavailable", f'<p class="error">{e(exc)}</p>', refresh or DEFAULT_REFRESH, viewer_, here, 503)


async def index_html(request: web.Request) -> web.Response:
    """The fleet: counts by status, then a table of the monitors the viewer
    sees, failing and missed ones first; filtered by ?status= (repeatable),
    ?q= (text), ?team=, ?group=; sorted by ?sort=<column> (-<column>:
    descending)."""
    try:
        who = viewer(request)
    except _Unauthorized:
        return _unauthorized_page(request)
    query = request.query
    here = _here(request)
    refresh = refresh_seconds(query)
    core = request.app[CORE]
    # Not the soft-deleted (a CrossCheck flight in its trash): they take no check-ins.
    monitors = [m for m in core.registry.monitors.values() if who.sees(m) and not m.retired]
    try:
        facts = await core.snapshot(m.id for m in monitors)  # one round trip
    except StoreUnavailable as exc:
        return _store_down_page(who, here, refresh, exc)
    rows = [(m, facts[m.id], core.evaluate(m, facts[m.id])) for m in monitors]

    wanted = {s for s in query.getall("status", []) if s in Status.__members__.values()}
    text = query.get("q", "").strip().lower()
    team = query.get("team", "")
    group = query.get("group", "")
    sort = query.get("sort", "status")
    descending = sort.startswith("-")
    column = sort.lstrip("-") if sort.lstrip("-") in SORTS else "status"

    counts = {status: 0 for status in STATUS_ORDER}
    for _, _, ev in rows:
        counts[ev.status] += 1

    def matches(monitor: Monitor, ev: Evaluation) -> bool:
        if wanted and ev.status.value not in wanted:
            return False
        if team and team_of(monitor) != team:
            return False
        if group and monitor.group != group:
            return False
        if text:
            haystack = " ".join(
                [monitor.id, monitor.name, monitor.description, monitor.group, *(f"{k}={v}" for k, v in monitor.labels)]
            ).lower()
            return text in haystack
        return True

    shown = [row for row in rows if matches(row[0], row[2])]
    shown.sort(key=lambda row: row[0].display_name.lower())  # the tie-break of every order
    shown.sort(key=lambda row: _sort_key(column, *row), reverse=descending)
    total = len(shown)
    shown = shown[:MAX_ROWS]

    base: dict[str, str | Iterable[str]] = {
        "status": sorted(wanted), "q": query.get("q", ""), "team": team, "group": group,
        "sort": sort if sort != "status" else "",
        "refresh": str(refresh) if refresh != DEFAULT_REFRESH else "",
    }
    problems = sum(counts[s] for s in PROBLEMS)
    chips = [
        f'<li><a class="{"on" if not wanted else ""}" href="{e(_url("/", {**base, "status": ()}))}">'
        f"all <b>{len(rows)}</b></a></li>",
        f'<li class="st-down"><a class="{"on" if wanted == {s.value for s in PROBLEMS} else ""}" '
        f'href="{e(_url("/", {**base, "status": [s.value for s in PROBLEMS]}))}">'
        f'<span class="badge">failing</span> <b>{problems}</b></a></li>',
    ]
    for status in STATUS_ORDER:
        chips.append(
            f'<li class="st-{status.value}"><a class="{"on" if wanted == {status.value} else ""}" '
            f'data-status="{status.value}" href="{e(_url("/", {**base, "status": [status.value]}))}">'
            f'<span class="badge">{status.value}</span> <b>{counts[status]}</b></a></li>'
        )
    teams = sorted({team_of(m) for m in monitors} - {""})
    groups = sorted({m.group for m in monitors} - {""})

    def options(values: list[str], selected: str, everything: str) -> str:
        return f'<option value="">{everything}</option>' + "".join(
            f'<option value="{e(v)}"{" selected" if v == selected else ""}>{e(v)}</option>' for v in values
        )

    if len(wanted) > 1:  # a set of statuses (the "failing" chip), which one select cannot show
        status_control = "".join(
            f'<input type="hidden" name="status" value="{e(s)}">' for s in sorted(wanted)
        ) + f'<label>status<span>{e(", ".join(sorted(wanted)))}</span></label>'
    else:
        one_status = next(iter(wanted), "")
        status_control = (
            '<label>status<select name="status">'
            + options([s.value for s in STATUS_ORDER], one_status, "any") + "</select></label>"
        )
    filters = (
        '<form class="filters" method="get" action="/">' + status_control
        + f'<label>text<input type="search" name="q" value="{e(query.get("q", ""))}" '
        'placeholder="id, name, label, group"></label>'
        '<label>team<select name="team">' + options(teams, team, "all teams") + "</select></label>"
        '<label>group<select name="group">' + options(groups, group, "all groups") + "</select></label>"
        + (f'<input type="hidden" name="sort" value="{e(sort)}">' if sort != "status" else "")
        + (f'<input type="hidden" name="refresh" value="{refresh}">' if refresh != DEFAULT_REFRESH else "")
        + f'<button type="submit">Filter</button> <a href="{e(_keep_refresh("/", here))}">clear</a></form>'
    )

    def heading(name: str, label: str) -> str:
        if column == name:
            target, arrow = ("" if descending else "-") + name, " ▼" if descending else " ▲"
        else:
            target, arrow = name, ""
        link = _url("/", {**base, "sort": target if target != "status" else ""})
        return f'<th><a href="{e(link)}">{e(label)}{arrow}</a></th>'

    now = core.clock()
    body_rows = []
    for monitor, fact, ev in shown:
        link = _keep_refresh(f"/monitors/{urllib.parse.quote(monitor.id, safe='')}", here)
        name = monitor.display_name
        sub = f' <span class="id">{e(monitor.id)}</span>' if name != monitor.id else ""
        body_rows.append(
            f'<tr class="st-{ev.status.value}" data-monitor="{e(monitor.id)}">'
            f'<td><span class="badge">{ev.status.value}</span></td>'
            f'<td><a href="{e(link)}">{e(name)}</a>{sub}</td>'
            f"<td>{_ago(fact.last_success, now)}</td><td>{_ago(ev.next_expected, now)}</td>"
            f"<td>{_duration(fact.last_duration)}</td><td>{e(team_of(monitor))}</td><td>{e(monitor.group)}</td></tr>"
        )
    if not body_rows:
        body_rows.append('<tr><td colspan="7" class="muted">no monitor matches</td></tr>')
    more = (
        f'<p class="muted">showing the first {MAX_ROWS} of {total} matching monitors: filter to see the others</p>'
        if total > MAX_ROWS else f'<p class="muted">{total} of {len(rows)} monitors shown</p>'
    )
    hidden = (
        "" if who.token is not None else
        '<p class="muted">Without a token: the monitors declared in the config files. '
        "Sign in with an API token to see your team's API monitors, what jobs sent and their logs.</p>"
    )
    body = (
        f'<ul class="counts">{"".join(chips)}</ul>{filters}'
        "<table><thead><tr>"
        + heading("status", "status") + heading("name", "monitor") + heading("last_success", "last success")
        + heading("next_expected", "next expected") + heading("duration", "last duration")
        + heading("team", "team") + heading("group", "group")
        + f'</tr></thead><tbody>{"".join(body_rows)}</tbody></table>{more}{hidden}'
    )
    title = f"{problems} failing" if problems else "all good"
    return _page(title, body, refresh, who, here)


def _sort_key(column: str, monitor: Monitor, facts: Facts, ev: Evaluation) -> tuple:
    """Sort keys; what has no value (never succeeded, no next slot) last."""
    value: object
    if column == "status":
        return (_RANK[ev.status],)
    if column == "name":
        return (monitor.display_name.lower(),)
    if column == "last_success":
        value = facts.last_success
    elif column == "next_expected":
        value = ev.next_expected
    elif column == "duration":
        value = facts.last_duration
    elif column == "team":
        value = team_of(monitor).lower() or None
    else:
        value = monitor.group.lower() or None
    return (value is None, value if value is not None else 0)


def ping_urls(request: web.Request, monitor: Monitor) -> list[str]:
    """The URLs a job can ping `monitor` on with no other secret (Registry.served_ping_uuid)."""
    uuid = request.app[CORE].registry.served_ping_uuid(monitor)
    return [f"{request.app[SETTINGS].base_url}/ping/{uuid}"] if uuid else []


def _tail(text: str) -> tuple[str, bool]:
    lines = text.splitlines()
    cut = text
    if len(lines) > LOG_TAIL_LINES:
        cut = "\n".join(lines[-LOG_TAIL_LINES:])
    if len(cut) > LOG_TAIL_CHARS:
        cut = cut[-LOG_TAIL_CHARS:]
    return cut, cut != text


async def monitor_html(request: web.Request) -> web.Response:
    """One monitor: its state, its recent events (outcome, duration, exit
    code; what the job sent and log tails to tokens that can see it) and
    its ping URL to tokens that may check in on it."""
    try:
        who = viewer(request)
    except _Unauthorized:
        return _unauthorized_page(request)
    here = _here(request)
    refresh = refresh_seconds(request.query)
    core = request.app[CORE]
    monitor_id = request.match_info["monitor"]
    monitor = core.registry.monitors.get(monitor_id)
    if monitor is None or not who.sees(monitor):
        # As /api/v1: one the viewer may not see does not exist for them.
        hint = "" if who.token is not None else " Monitors created through an API need a token: sign in."
        return _page(
            "not found", f'<p class="error">No monitor "{e(monitor_id)}" here.{e(hint)}</p>', 0, who, here, 404
        )
    details = who.sees_details(monitor)
    try:
        facts = await core.facts(monitor.id)
        events = await core.recent_events(monitor.id, PAGE_EVENTS)
        logs = await core.logs(monitor.id, [ev["log"] for ev in events if "log" in ev]) if details else {}
    except StoreUnavailable as exc:
        return _store_down_page(who, here, refresh, exc)
    ev = core.evaluate(monitor, facts)
    now = core.clock()

    facts_list = [
        ("status", f'<span class="st-{ev.status.value}"><span class="badge">{ev.status.value}</span></span>'),
        ("schedule", e(monitor.schedule.describe()) + f" · grace {e(format_duration(monitor.grace))}"),
        ("last success", _ago(facts.last_success, now)),
        ("last failure", _ago(facts.last_failure, now)),
        ("last check-in", _ago(facts.last_checkin, now)),
        ("next expected", _ago(ev.next_expected, now)),
        ("deadline", _ago(ev.deadline, now)),
        ("last duration", _duration(facts.last_duration)),
        ("last exit code", e(facts.last_exit_code) if facts.last_exit_code is not None else "-"),
        ("consecutive failures", e(ev.consecutive_failures)),
        ("running runs", e(ev.running_runs)),
        ("team", e(team_of(monitor)) or "-"),
        ("group", e(monitor.group) or "-"),
        ("labels", " ".join(f"<code>{e(k)}={e(v)}</code>" for k, v in monitor.labels) or "-"),
        # Where it is declared (a path on the server) only to token holders, as /api/v1.
        ("source", e(
            ("config file " + (monitor.source if who.token is not None else "")).strip() if monitor.from_yaml
            else f"API (owner {monitor.owner})"
        )),
    ]
    if monitor.description:
        facts_list.insert(1, ("description", e(monitor.description)))
    if who.token is not None and can_check_in(who.token, monitor):
        urls = ping_urls(request, monitor)
        facts_list.append((
            "ping URL",
            " ".join(f'<code class="ping-url">{e(u)}</code>' for u in urls)
            or '<span class="muted">its UUID comes from the operator (ping.uuid_env/uuid_file): '
            "see <code>cronmon urls</code></span>",
        ))

    rows = []
    for event in events:
        outcome = event.get("outcome") or ""
        kind = event.get("kind") or ""
        tone = "bad" if event_is_bad(kind, outcome) else (
            "good" if outcome == "ok" else ""
        )
        cells = [
            _ago(event.get("t"), now),
            e(kind),
            f'<span class="badge">{e(outcome)}</span>' if outcome else "",
            _duration(event.get("duration")) if event.get("duration") is not None else "",
            e(event.get("exit_code", "")),
        ]
        sent = ""
        if "log" in event:
            if details and event["log"] in logs:
                tail, cut = _tail(logs[event["log"]])
                note = " (last lines)" if cut else ""
                if event.get("log_truncated"):
                    note += " (truncated when received)"
                sent += f'<details class="log"><summary>log{e(note)}</summary><pre>{e(tail)}</pre></details>'
            elif details:
                sent += '<span class="muted">log expired</span>'
            else:
                sent += '<span class="muted">has a log (sign in to read)</span>'
        if details:
            bits = [e(event[k]) for k in ("message",) if event.get(k)]
            if event.get("ip") or event.get("ua"):
                bits.append(f'<span class="muted">from {e(event.get("ip") or "?")} {e(event.get("ua") or "")}</span>')
            sent = " ".join(bits) + sent
        cells.append(sent)
        rows.append(f'<tr class="{tone}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        rows.append('<tr><td colspan="6" class="muted">no events yet</td></tr>')
    body = (
        f'<p><a href="{e(_keep_refresh("/", here))}">← all monitors</a></p>'
        f'<h2>{e(monitor.display_name)} <span class="id">{e(monitor.id)}</span></h2>'
        "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts_list) + "</dl>"
        f"<h3>Recent events</h3><table><thead><tr><th>time</th><th>kind</th><th>outcome</th><th>duration</th>"
        f'<th>exit code</th><th>sent</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    return _page(monitor.display_name, body, refresh, who, here)


def _local_path(value: str) -> str:
    """A path on this server to return to (never another site: //host, /\\host)."""
    if not value.startswith("/") or value.startswith(("//", "/\\")) or any(c < " " for c in value):
        return "/"
    return value


def _same_origin(request: web.Request) -> bool:
    """A form POST from a page of this server (or from no page at all:
    curl). Stops another site from signing a browser in with its token."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = urllib.parse.urlsplit(origin).netloc
    allowed = {request.host, urllib.parse.urlsplit(request.app[SETTINGS].base_url).netloc}
    return host in allowed


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login (a form: token, next): a known token sets the cookie and
    returns to `next`; an unknown one shows the form again (401)."""
    if not _same_origin(request):
        return web.Response(status=403, text="cross-site sign-in refused\n", content_type=_TEXT)
    try:
        raw = await read_body(request, _LOGIN_BODY_LIMIT)
    except BodyError as exc:
        return web.Response(status=exc.status, text=exc.reason + "\n", content_type=_TEXT)
    try:
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than a sign-in form has
        return web.Response(status=400, text="send a form with the fields token and next\n", content_type=_TEXT)
    presented = (form.get("token") or [""])[0].strip()
    back = _local_path((form.get("next") or ["/"])[0])
    secrets = request.app[CORE].registry.secrets
    token = match_api_token(presented, secrets.api_tokens if secrets else ()) if presented else None
    if token is None:
        return _page(
            "sign in", '<p class="error">Unknown token: sign in with a token from the config\'s api_tokens.</p>',
            0, Viewer(None), back, status=401,
        )
    response = web.Response(status=303, headers={"Location": back})
    secure = request.secure or request.app[SETTINGS].base_url.startswith("https:")
    response.set_cookie(
        TOKEN_COOKIE, urllib.parse.quote(presented, safe=""), max_age=COOKIE_MAX_AGE, path="/",
        httponly=True, samesite="Lax", secure=secure,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    if not _same_origin(request):
        return web.Response(status=403, text="cross-site sign-out refused\n", content_type=_TEXT)
    response = web.Response(status=303, headers={"Location": "/"})
    response.del_cookie(TOKEN_COOKIE, path="/")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/monitors/{monitor}", monitor_page)
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
