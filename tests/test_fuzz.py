"""Fuzz every route with hostile requests (hypothesis, seeded).

A live cronmon app (real aiohttp server on a loopback port, real Redis)
gets generated paths, query strings, headers and bodies on every route,
near-valid as well as garbage. Invariants, for every request:

- no 5xx (503 excepted only if Redis were down; it is not here);
- nothing logged at ERROR and no traceback;
- a 4xx other than 429 changes nothing in Redis (a dump of every key is
  compared); a 429 spends the rate limit's counter and nothing else.

Bounded for CI: CRONMON_FUZZ_EXAMPLES examples per route (default 25; the
whole file takes about a minute). A longer run:

    CRONMON_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/test_fuzz.py -q -s

The cases each route got are printed at the end (with -s).
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import logging
import os
import threading
from collections import Counter
from urllib.parse import quote

import httpx
import pytest
import redis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.probes import NetworkPolicy
from exporter.web import fast_ping
from exporter.web.app import create_app
from exporter.web.keys import PROBER, SWEEPER

from .conftest import free_port, write_config

EXAMPLES = int(os.environ.get("CRONMON_FUZZ_EXAMPLES", "25"))
PING_KEY = "fuzz-ping-key-0123456789"
TOKENS = {"write": "fuzz-write-token", "read": "fuzz-read-token", "other": "fuzz-other-token"}
CONFIG = """
api_tokens:
  - {name: w, env: FUZZ_W, owner: alice, team: ops, scope: write}
  - {name: r, env: FUZZ_R, owner: alice, scope: read}
  - {name: o, env: FUZZ_O, owner: mallory, scope: write}
monitors:
  - id: job
    schedule: {cron: "*/5 * * * *", timezone: Europe/Berlin}
    ping: {tokens: [w]}
  - id: limited
    schedule: {interval: 1h}
    rate_limit: 3/1h
    ping: {tokens: [w]}
  - id: fenced
    schedule: {interval: 1h}
    allowed_ips: [203.0.113.0/24]
    ping: {tokens: [w]}
"""

# (method, path template) for every route; {m} a monitor id, {x} free text.
ROUTES = [
    ("GET", "/"), ("GET", "/metrics"), ("GET", "/-/healthy"), ("GET", "/-/ready"), ("POST", "/-/reload"),
    ("GET", "/monitors/{m}"),
    ("GET", "/ping/{uuid}{suffix}"), ("POST", "/ping/{uuid}{suffix}"),
    ("GET", "/ping/{key}/{m}{suffix}"), ("POST", "/ping/{key}/{m}{suffix}"),
    ("POST", "/api/v1/ping/{m}/{action}"),
    ("GET", "/api/v1/monitors"), ("POST", "/api/v1/monitors"),
    ("GET", "/api/v1/monitors/{m}"), ("PUT", "/api/v1/monitors/{m}"), ("PATCH", "/api/v1/monitors/{m}"),
    ("DELETE", "/api/v1/monitors/{m}"), ("GET", "/api/v1/monitors/{m}/runs"),
    ("GET", "/api/v1/monitors/{m}/runs/{x}/log"),
    ("GET", "/cron-checks"), ("POST", "/cron-checks"), ("GET", "/cron-checks/{x}"),
    ("PUT", "/cron-checks/{x}"), ("DELETE", "/cron-checks/{x}"),
    ("GET", "/api/flights/"), ("POST", "/api/flights/"), ("GET", "/api/flights/{x}/"),
    ("PATCH", "/api/flights/{x}/"), ("PUT", "/api/flights/{x}/"), ("DELETE", "/api/flights/{x}/"),
    ("GET", "/api/flights/{x}/landings/"), ("GET", "/api/flights/{x}/metrics/"), ("GET", "/api/flights/{x}/audit/"),
    ("POST", "/api/flights/{x}/test_now/"), ("POST", "/api/flights/{x}/soft-delete/"),
    ("POST", "/api/flights/{x}/restore/"), ("POST", "/api/flights/{x}/purge/"), ("POST", "/api/flights/reorder/"),
    ("GET", "/api/flights/groups/"), ("POST", "/api/flights/groups/"), ("POST", "/api/flights/groups/reorder/"),
    ("GET", "/api/flights/groups/{x}/"), ("PATCH", "/api/flights/groups/{x}/"), ("DELETE", "/api/flights/groups/{x}/"),
    ("POST", "/api/flights/check-in/"), ("POST", "/api/flights/test-check-in/"),
    ("GET", "/c/{x}/"), ("POST", "/c/{x}/"),
    ("POST", "/api/42/envelope/"), ("GET", "/api/42/cron/{m}/{token}/"), ("POST", "/api/42/cron/{m}/{token}/"),
    ("POST", "/login"), ("POST", "/logout"),
]
CASES: Counter = Counter()


class LiveApp:
    """create_app served as `cronmon serve` serves it (the ping fast path in
    front of aiohttp: fast_ping.listen), in a thread of its own, so the
    synchronous hypothesis test can talk HTTP to it."""

    def __init__(self, settings):
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(settings), self.loop).result(30)

    async def _start(self, settings) -> None:
        self.app = create_app(settings)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        self.listener = await fast_ping.listen(self.app, self.runner, "127.0.0.1", self.port)
        prober = self.app[PROBER]
        # Generated active monitors point anywhere: in this test no check
        # may leave the machine, and none may even ask DNS.
        loopback = NetworkPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))
        prober.api_policy = prober.yaml_policy = loopback

        async def no_dns(host: str, port: int) -> list[str]:
            return ["192.0.2.1"]  # TEST-NET: outside the policy, refused before connecting

        prober.resolve = no_dns

        async def no_background_checks(client) -> int:
            # Scheduled checks would write to Redis between a request and
            # the dump that must show it changed nothing; test_now still
            # runs its check (with the policy above).
            return 0

        prober.run_once = no_background_checks
        while self.app[SWEEPER].passes == 0:  # the start-up pass writes the deadline index
            await asyncio.sleep(0.02)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


    async def _stop(self) -> None:
        await self.listener.close(timeout=10)
        await self.runner.cleanup()


class Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def live(tmp_path_factory, redis_server):
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {"FUZZ_W": TOKENS["write"], "FUZZ_R": TOKENS["read"], "FUZZ_O": TOKENS["other"],
           "CRONMON_PING_KEY": PING_KEY}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from exporter.settings import Settings

    prefix = "fuzz" + os.urandom(4).hex()
    settings = Settings(config_path=write_config(tmp, CONFIG), redis_url=redis_server.url, data_dir=tmp / "data",
                        key_prefix=prefix, sweep_interval=3600.0, max_body_bytes=20_000)
    errors = Errors()
    logging.getLogger().addHandler(errors)
    app = LiveApp(settings)
    app.errors, app.prefix = errors, prefix
    app.redis = redis.Redis.from_url(redis_server.url)
    app.http = httpx.Client(base_url=f"http://127.0.0.1:{app.port}", timeout=20)
    yield app
    app.http.close()
    app.close()
    # The plain pings among the cases were answered by the fast path.
    assert app.listener.fast is not None and app.listener.fast.answered > 0
    logging.getLogger().removeHandler(errors)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    print("\nfuzz cases per route:", ", ".join(f"{m} {p}: {n}" for (m, p), n in sorted(CASES.items())))


def dump(live) -> dict:
    """Every key of the app's prefix, but the heartbeat: each process
    rewrites it every second whatever the requests (Core.heartbeat)."""
    heartbeat = f"{live.prefix}:heartbeat".encode()
    return {key: (live.redis.dump(key), live.redis.pttl(key) >= 0)
            for key in live.redis.scan_iter(match=f"{live.prefix}:*", count=1000) if key != heartbeat}


# -- strategies ----------------------------------------------------------------

# Any text, lone surrogates included (json.dumps sends them as \ud800 escapes).
text = st.text(st.characters(blacklist_categories=()), max_size=40)
numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20), st.integers(min_value=10**300, max_value=10**330),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 60, 86400, 1e308, 2**63]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
FIELDS = [  # of every API's bodies, so generated objects often reach validation
    "id", "name", "schedule", "interval", "cron", "timezone", "grace", "max_runtime", "paused", "labels", "group",
    "meta", "errorMessage", "logOutput", "interval_seconds", "grace_seconds", "max_duration_seconds", "enabled",
    "server_id", "alert_on_missed", "expected_interval", "grace_period", "monitoring_type", "monitor_url",
    "monitor_interval", "status", "phase", "pair_key", "metadata", "runtime_duration", "allowed_ips",
    "failure_threshold", "http", "metrics", "items", "order",
]
valid_values = st.one_of(
    json_values, st.sampled_from(["1h", "5m", "*/5 * * * *", "Europe/Berlin", "SUCCESS", "START", "ACTIVE",
                                  "PASSIVE", "http://127.0.0.1:1/", "job", "x" * 300, "A" * 300]),
    st.fixed_dictionaries({}, optional={"interval": st.sampled_from(["1h", 60, "nan", 1e400]),
                                        "cron": st.sampled_from(["0 3 * * *", "* * *", "0 0 30 2 *"]),
                                        "timezone": st.sampled_from(["UTC", "Mars/Olympus", "A" * 300])}),
)
objects = st.dictionaries(st.sampled_from(FIELDS), valid_values, max_size=8)


def sentry_envelope(items: list) -> bytes:
    lines = [b'{"event_id": "9ec79c33ec9942ab8353589fcb2e04dc"}']
    for item in items:
        body = json.dumps(item).encode()
        lines += [json.dumps({"type": "check_in", "length": len(body)}).encode(), body]
    return b"\n".join(lines) + b"\n"


check_in_items = st.fixed_dictionaries(
    {"monitor_slug": st.one_of(st.sampled_from(["job", "limited", "fenced", "new-one"]), text),
     "status": st.one_of(st.sampled_from(["in_progress", "ok", "error"]), text)},
    optional={"check_in_id": st.one_of(st.uuids().map(str), text), "duration": numbers,
              "monitor_config": st.one_of(objects, json_values), "release": json_values},
)
bodies = st.one_of(
    st.none(),
    objects.map(lambda o: json.dumps(o).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"[" * 5000, b'{"a": ' + b"9" * 5000 + b"}", b'{"meta": {"x": NaN}}', b"\xff\xfe{}",
                     b'{"logOutput": "\\ud800"}', b"{}", b"null", b'"x"', b"x" * 25_000]),
    st.lists(check_in_items, min_size=1, max_size=3).map(sentry_envelope),
    st.binary(max_size=100).map(lambda b: b'{"event_id": "x"}\n' + b),
)
path_parts = st.one_of(
    st.sampled_from(["job", "limited", "fenced", "nope", "1", "0", "-1", "99999999999999999999", "a" * 300]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"), min_size=1, max_size=30),
)
suffixes = st.sampled_from(["", "/start", "/fail", "/log", "/0", "/1", "/255", "/256", "/-1", "/x", "/start/x"])
queries = st.dictionaries(
    st.sampled_from(["rid", "create", "exit_code", "duration", "status", "check_in_id", "sentry_key", "limit",
                     "offset", "before", "pings_offset", "is_deleted", "monitoring_type", "environment", "x"]),
    st.one_of(text.filter(lambda s: "\x00" not in s), st.sampled_from(["nan", "inf", "-1", "1e400", "9" * 400,
                                                                      "1", "0", "true"])),
    max_size=4,
)
auths = st.sampled_from(["none", "write", "read", "other", "junk"])
# Other headers a hostile client may send: any visible ASCII or obs-text
# byte (what HTTP allows in a value), empty, or over aiohttp's 8,190-byte
# field limit.
header_values = st.one_of(
    # (h11, httpx's HTTP/1.1, refuses a value with surrounding blanks)
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip(b" ")),
    st.sampled_from([b"", b"127.0.0.1", b"::1, 10.0.0.1", b"not-an-ip", b"6f1c2b1e-1d2a-4c5e-9b7a-0e2f3d4c5b6a",
                     b'"quoted"', b"gzip", b"*/*", b"x" * 9000]),
)
extra_headers = st.dictionaries(
    st.sampled_from(["X-Forwarded-For", "Idempotency-Key", "Accept", "Accept-Encoding", "User-Agent", "Origin",
                     "If-None-Match", "Range", "Cookie", "X-Request-Id", "Expect"]),
    header_values, max_size=3,
)
encodings = st.sampled_from([None, None, None, "gzip", "br", "deflate", "zstd", "gzip, br"])


def headers_for(auth: str, encoding: str | None, content_type: str | None) -> dict:
    token = TOKENS.get(auth, "not-a-token" if auth == "junk" else None)
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
        headers["X-API-Key"] = token
        headers["X-Sentry-Auth"] = f"Sentry sentry_key={token}, sentry_version=7"
    if encoding:
        headers["Content-Encoding"] = encoding
    if content_type:
        headers["Content-Type"] = content_type
    return headers


@pytest.mark.parametrize("method, template", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_no_route_answers_5xx_logs_a_traceback_or_changes_anything_when_it_refuses(live, method, template, data):
    # Percent-encoded as a client sends arbitrary text in a path.
    part = quote(data.draw(path_parts), safe="")
    path = template.format(
        m=part, x=part, uuid=quote(data.draw(st.one_of(st.uuids().map(str), path_parts)), safe=""), key=data.draw(
            st.sampled_from([PING_KEY, "wrong-key"])), suffix=data.draw(suffixes),
        action=data.draw(st.sampled_from(["start", "success", "fail"])),
        token=data.draw(st.sampled_from([*TOKENS.values(), "junk"])),
    )
    body = data.draw(bodies) if method in ("POST", "PUT", "PATCH") else None
    encoding = data.draw(encodings) if body is not None else None
    if encoding == "gzip" and data.draw(st.booleans()):
        body = gzip.compress(body)  # also a correctly compressed one
    content_type = data.draw(st.sampled_from([None, "application/json", "text/plain"]))
    headers = {**data.draw(extra_headers), **headers_for(data.draw(auths), encoding, content_type)}
    params = data.draw(queries)
    CASES[(method, template)] += 1
    before = dump(live)
    logged = len(live.errors.records)
    if params:  # encoded by hand: a lone surrogate goes out as %ED%A0%80, invalid UTF-8
        path += "?" + "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in params.items())
    response = live.http.request(method, path, content=body, headers=headers)
    assert response.status_code < 500, (method, path, params, headers, body, response.text[:500])
    assert live.errors.records[logged:] == [], [r.getMessage() for r in live.errors.records[logged:]]
    if 400 <= response.status_code < 500 and response.status_code != 429:
        after = dump(live)
        assert after == before, (
            method,
            path,
            response.status_code,
            response.text[:300],
            sorted(set(after) ^ set(before)) or [k for k in after if after[k] != before.get(k)],
        )
