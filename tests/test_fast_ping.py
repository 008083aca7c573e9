"""The ping fast path (exporter/web/fast_ping.py) as a protocol: which
requests it answers itself, how a connection passes to aiohttp, ordering,
Connection: close, HEAD, timeouts, shutdown, request metrics; and, for any
request target (hypothesis), the same answer and the same record as
aiohttp's own ping route.

Every test talks to a real server on 127.0.0.1 with raw sockets (the bytes
on the wire are the subject) or curl, backed by the suite's redis-server.
test_ping_api.py and test_hc_root.py run every ping behaviour against both
servers through conftest's `serve` fixture.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import re
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.web import fast_ping
from exporter.web.app import create_app
from exporter.web.keys import CORE
from exporter.webconfig import load_web_config

from .conftest import CronmonTestServer, write_config
from .servers import run_client

KEY = "fast-ping-key-0123456789"
HC_UUID = "0f0e7c3a-54a8-4f65-9d64-3c2f8b9a1e77"

CONFIG = """
ping_keys:
  - name: ops
    env: FAST_OPS_KEY
monitors:
  - id: backup
    schedule: {interval: 1h}
  - id: db.dump
    schedule: {interval: 1h}
  - id: migrated
    schedule: {interval: 1h}
    ping: {uuid_env: FAST_HC_UUID}
  - id: limited
    schedule: {interval: 1h}
    rate_limit: 2/1m
"""


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("FAST_OPS_KEY", KEY)
    monkeypatch.setenv("FAST_HC_UUID", HC_UUID)


@pytest.fixture
def make_app(app_settings, tmp_path, env, clock):
    def make(prefix_suffix: str = "", **overrides):
        config = write_config(tmp_path, CONFIG)
        settings = app_settings(config, **overrides)
        if prefix_suffix:
            settings = dataclasses.replace(settings, key_prefix=settings.key_prefix + prefix_suffix)
        return create_app(settings, clock=clock)

    return make


@pytest.fixture
async def server(cronmon_server, make_app):
    return await cronmon_server(make_app())


class Wire:
    """One client connection: raw bytes out, parsed responses in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Wire:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10) if length else b""
        return status, headers, body

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()


def get(target: str, *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def checkins(app, monitor: str = "backup") -> dict[str, int]:
    return (await app[CORE].store.facts(monitor)).checkins


async def test_pipelined_pings_then_another_route_then_a_ping_are_answered_in_order(server):
    """Three plain pings (the fast path's), /-/healthy (aiohttp's: the
    connection is handed over at it) and one more ping, in one write."""
    fast = server.listener.fast
    wire = await Wire.open(server.port)
    ping = get(f"/ping/{KEY}/backup")
    wire.send(ping * 3 + get("/-/healthy") + ping)
    answers = [await wire.response() for _ in range(5)]
    assert [(status, body) for status, _, body in answers] == [(200, b"OK")] * 3 + [(200, b"OK\n")] + [(200, b"OK")]
    assert (fast.answered, fast.handed_off) == (3, 1)  # the last ping was aiohttp's
    assert await checkins(server.app) == {"success": 4}
    wire.close()


async def test_the_fast_path_answers_as_aiohttp_does(server):
    """The same headers as aiohttp's web.Response(text=...) (bar Date)."""
    wire = await Wire.open(server.port)
    wire.send(get(f"/ping/{KEY}/backup"))
    status, headers, body = await wire.response()
    assert (status, body) == (200, b"OK")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["access-control-allow-origin"] == "*"
    assert headers["content-length"] == "2"
    assert headers["server"].startswith("Python/") and "aiohttp/" in headers["server"]
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", headers["date"])
    assert "connection" not in headers  # HTTP/1.1: kept alive
    wire.send(get("/ping/{KEY}/nope-no-such"))
    assert (await wire.response())[0] == 404
    assert server.listener.fast.answered == 2
    wire.close()


async def test_head_is_answered_without_a_body_and_records_a_ping(server):
    wire = await Wire.open(server.port)
    wire.send(get(f"/ping/{KEY}/backup/fail", method="HEAD") + get(f"/ping/{KEY}/backup"))
    status, headers, body = await wire.response(head_only=True)
    assert (status, headers["content-length"], body) == (200, "2", b"")
    assert (await wire.response())[::2] == (200, b"OK")  # the next response starts right after the head
    assert await checkins(server.app) == {"fail": 1, "success": 1}
    wire.close()


async def test_connection_close_is_honoured_and_nothing_after_it_is_read(server):
    wire = await Wire.open(server.port)
    wire.send(get(f"/ping/{KEY}/backup", "Connection: close") + get(f"/ping/{KEY}/backup/fail"))
    status, headers, _ = await wire.response()
    assert (status, headers["connection"]) == (200, "close")
    assert await wire.closed_by_server()
    assert await checkins(server.app) == {"success": 1}


async def test_a_connection_close_behind_a_ping_in_progress_ends_the_connection_after_both(server, raw_redis):
    """The earlier ping is answered as kept alive, the closing one with
    Connection: close; then the connection ends."""
    fast = server.listener.fast
    wire = await Wire.open(server.port)
    await raw_redis.execute_command("CLIENT", "PAUSE", "200", "WRITE")
    wire.send(get(f"/ping/{KEY}/backup"))
    await asyncio.wait_for(_until(lambda: any(c.busy for c in fast.connections)), 10)
    wire.send(get(f"/ping/{KEY}/backup/fail", "Connection: close"))
    first, second = await wire.response(), await wire.response()
    assert (first[0], "connection" in first[1]) == (200, False)
    assert (second[0], second[1]["connection"]) == (200, "close")
    assert await wire.closed_by_server()
    assert await checkins(server.app) == {"success": 1, "fail": 1}


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        # A POST, a body, HTTP/1.0, an escape, an unknown Expect: all aiohttp's.
        (get(f"/ping/{KEY}/backup", "Content-Length: 3", method="POST") + b"hi\n", 200),
        (get(f"/ping/{KEY}/backup", "Content-Length: 2") + b"hi", 200),
        (get(f"/ping/{KEY}/backup", "Transfer-Encoding: chunked") + b"2\r\nhi\r\n0\r\n\r\n", 200),
        (f"GET /ping/{KEY}/backup HTTP/1.0\r\nHost: x\r\n\r\n".encode(), 200),
        (get(f"/ping/{KEY}/%62ackup"), 200),
        (get(f"/ping/{KEY}/backup", "Expect: 201-something"), 417),
        (get(f"/ping/{KEY}/backup", "Connection: Upgrade", "Upgrade: websocket"), 200),
        # Malformed or too big: aiohttp's refusal.
        (b"GET /ping/x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (get(f"/ping/{KEY}/backup", "X-Big: " + "a" * 9000), 400),
        (b"GET /ping/x HTTP/1.1\r\nX-Big: " + b"a" * 20000, 400),
    ],
    ids=[
        "post-body", "get-body", "chunked", "http10", "escape", "expect", "upgrade", "malformed", "big-header",
        "no-end",
    ],
)
async def test_what_the_fast_path_does_not_answer_is_aiohttps(server, request_bytes, status):
    fast = server.listener.fast
    wire = await Wire.open(server.port)
    wire.send(request_bytes)
    assert (await wire.response())[0] == status
    assert (fast.answered, fast.handed_off) == (0, 1)
    if status == 200:
        assert sum((await checkins(server.app)).values()) == 1
    wire.close()


async def test_a_handed_off_connection_keeps_working_for_pings(server):
    wire = await Wire.open(server.port)
    wire.send(get("/-/healthy"))
    assert (await wire.response())[0] == 200
    for _ in range(3):
        wire.send(get(f"/ping/{KEY}/backup"))
        assert (await wire.response())[0] == 200
    assert (server.listener.fast.answered, server.listener.fast.handed_off) == (0, 1)
    assert await checkins(server.app) == {"success": 3}
    wire.close()


async def test_an_idle_or_slow_connection_is_closed_after_idle_timeout(cronmon_server, make_app):
    server = await cronmon_server(make_app(idle_timeout=0.3))
    idle = await Wire.open(server.port)
    slow = await Wire.open(server.port)
    slow.send(b"GET /ping/" + KEY.encode())  # a head that never ends
    used = await Wire.open(server.port)
    used.send(get(f"/ping/{KEY}/backup"))
    assert (await used.response())[0] == 200
    for wire in (idle, slow, used):  # the last one: idle after its answer
        assert await wire.closed_by_server()


async def test_the_idle_clock_restarts_at_each_answer(cronmon_server, make_app):
    """A connection whose pings come more often than idle_timeout stays
    open past it (one timer per connection checks the clock, it is not
    remade per ping), and closes idle_timeout after its last answer."""
    timeout = 0.4
    server = await cronmon_server(make_app(idle_timeout=timeout))
    wire = await Wire.open(server.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 3 * timeout:
        wire.send(get(f"/ping/{KEY}/backup"))
        assert (await wire.response())[0] == 200
        await asyncio.sleep(timeout / 3)
    last_answer = loop.time()
    assert await wire.closed_by_server()
    assert loop.time() - last_answer >= timeout - timeout / 3 - 0.05
    assert server.listener.fast.answered >= 6


async def test_request_metrics_count_fast_pings_under_the_routes_names(server):
    """The fast path's labels are its routes' canonical paths, as the
    aiohttp routes' would be."""
    canonical = {resource.canonical for resource in server.app.router.resources()}
    assert {fast_ping.PING_ROUTE, fast_ping.ROOT_ROUTE} <= canonical
    wire = await Wire.open(server.port)
    wire.send(get(f"/ping/{KEY}/backup") + get(f"/{HC_UUID}") + get(f"/ping/{KEY}/nope"))
    for _ in range(3):
        await wire.response()
    wire.send(get("/metrics"))
    _, _, body = await wire.response()
    text = body.decode()
    for route, code in ((fast_ping.PING_ROUTE, 200), (fast_ping.ROOT_ROUTE, 200), (fast_ping.PING_ROUTE, 404)):
        assert f'cronmon_http_requests_total{{code="{code}",handler="{route}"}} 1.0' in text
    wire.close()


async def test_shutdown_answers_the_ping_in_progress_then_closes(server, raw_redis):
    """A ping waiting on Redis when the server stops is recorded and
    answered (with Connection: close); idle connections are closed."""
    fast = server.listener.fast
    idle = await Wire.open(server.port)
    busy = await Wire.open(server.port)
    await raw_redis.execute_command("CLIENT", "PAUSE", "400", "WRITE")  # the record script waits
    busy.send(get(f"/ping/{KEY}/backup"))
    await asyncio.wait_for(_until(lambda: any(c.busy for c in fast.connections)), 10)
    await server.listener.close(timeout=10)
    status, headers, _ = await busy.response()
    assert (status, headers["connection"]) == (200, "close")
    assert await busy.closed_by_server()
    assert await idle.closed_by_server()
    assert await checkins(server.app) == {"success": 1}


async def test_pipelining_is_bounded_and_answered_in_order(server, raw_redis):
    """100 pings in one write while Redis holds writes: at most MAX_QUEUED
    are parsed ahead of their answers (the rest wait in the buffer and the
    socket); then all 100 are answered, in order, and recorded."""
    fast = server.listener.fast
    wire = await Wire.open(server.port)
    await raw_redis.execute_command("CLIENT", "PAUSE", "300", "WRITE")
    wire.send(b"".join(get(f"/ping/{KEY}/backup/{i % 2}") for i in range(100)))
    await asyncio.wait_for(_until(lambda: any(c.busy for c in fast.connections)), 10)
    (connection,) = fast.connections
    await asyncio.sleep(0.1)
    assert len(connection.queue) == fast_ping.MAX_QUEUED and connection.paused == {"queue"}
    for _ in range(100):
        assert (await wire.response())[::2] == (200, b"OK")
    assert await checkins(server.app) == {"success": 50, "fail": 50}
    assert connection.paused == set()
    wire.close()


@pytest.mark.parametrize("ending", ["closed", "handed off"])
async def test_a_finished_connection_is_freed_by_refcounting_alone(server, ending):
    """A reload freezes the live connections out of the cyclic
    collector's reach (heap.py): a protocol in a reference cycle would
    then never be freed. Closed or handed to aiohttp, it is freed with the
    collector off."""
    fast = server.listener.fast
    wire = await Wire.open(server.port)
    wire.send(get(f"/ping/{KEY}/backup"))
    await wire.response()
    (protocol,) = fast.connections
    gone = weakref.ref(protocol)
    del protocol
    gc.disable()
    try:
        if ending == "closed":
            wire.close()
        else:
            wire.send(get("/-/healthy"))
            await wire.response()
        await asyncio.wait_for(_until(lambda: gone() is None), 5)
    finally:
        gc.enable()
        wire.close()


async def test_what_follows_a_hand_off_is_not_buffered_while_answers_are_in_progress(make_app, raw_redis):
    """A ping, then a POST with a 20 MB body, while Redis holds the ping's
    write: the fast path stops reading at the POST (aiohttp reads it, within
    its limits, once it owns the connection): its buffer stays small."""
    # After its 413, aiohttp reads and drops the rest of the body for up to
    # lingering_time (10 s by default; without handler cancellation, as
    # cronmon serves, even once the client is gone): short here.
    server = CronmonTestServer(make_app(), host="127.0.0.1")
    await server.start_server(lingering_time=0.2)
    try:
        await _big_body_behind_a_ping(server, raw_redis)
    finally:
        await server.close()


async def _big_body_behind_a_ping(server, raw_redis) -> None:
    fast = server.listener.fast
    wire = await Wire.open(server.port)
    await raw_redis.execute_command("CLIENT", "PAUSE", "500", "WRITE")
    body = 20 * 1024 * 1024
    wire.send(get(f"/ping/{KEY}/backup") + get(f"/ping/{KEY}/backup", f"Content-Length: {body}", method="POST"))
    await asyncio.wait_for(_until(lambda: any(c.busy for c in fast.connections)), 10)
    (connection,) = fast.connections
    wire.send(b"x" * body)
    await asyncio.sleep(0.3)
    assert connection.handing_off and len(connection.buffer) < 1024 * 1024
    assert (await wire.response())[::2] == (200, b"OK")
    assert (await wire.response())[0] == 413  # aiohttp's answer to a body over max_body_bytes
    assert fast.handed_off == 1
    await asyncio.wait_for(wire.writer.drain(), 10)  # aiohttp reads (and drops) the rest of the body
    wire.close()


async def test_a_pause_of_writing_carries_over_to_aiohttp(server, raw_redis):
    """The transport says "pause writing" once, to the protocol it has
    then: handed a connection whose client does not read, aiohttp's
    handler must know (its writes wait; its resume_writing asserts it)."""
    fast = server.listener.fast
    wire = await Wire.open(server.port)
    await raw_redis.execute_command("CLIENT", "PAUSE", "300", "WRITE")
    wire.send(get(f"/ping/{KEY}/backup") + get("/-/healthy"))
    await asyncio.wait_for(_until(lambda: any(c.busy and c.handing_off for c in fast.connections)), 10)
    (protocol,) = fast.connections
    protocol.pause_writing()  # what the transport does when its buffer is full
    await asyncio.wait_for(_until(lambda: fast.handed_off == 1), 10)
    handler = protocol.transport.get_protocol()
    assert handler is not protocol and handler.writing_paused
    assert (await wire.response())[::2] == (200, b"OK")
    handler.resume_writing()  # what the transport does once it drained
    assert (await wire.response())[0] == 200
    wire.close()


async def test_an_unexpected_error_is_answered_as_aiohttp_does(server, monkeypatch):
    """A 500 in aiohttp's shape (HTML for a browser), and the connection closes."""
    import exporter.web.fast_ping as module

    async def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(module, "answer_ping", broken)
    for accept, content_type, body in (
        ("*/*", "text/plain", b"500 Internal Server Error\n\nServer got itself in trouble"),
        ("text/html", "text/html",
         b"<html><head><title>500 Internal Server Error</title></head><body>\n"
         b"<h1>500 Internal Server Error</h1>\nServer got itself in trouble\n</body></html>\n"),
    ):
        wire = await Wire.open(server.port)
        wire.send(get(f"/ping/{KEY}/backup", f"Accept: {accept}"))
        status, headers, got = await wire.response()
        assert (status, headers["content-type"], got) == (500, f"{content_type}; charset=utf-8", body)
        assert headers["connection"] == "close" and "access-control-allow-origin" not in headers
        assert await wire.closed_by_server()


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_curl_pings_through_the_fast_path(server, tmp_path):
    """A real client: curl's GET, HEAD (-I) and POST (--data: aiohttp's)."""
    base = f"http://127.0.0.1:{server.port}"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    for options in ((), ("-I",), ("--data-raw", "log line")):
        code, out, err = await run_client("curl", "--noproxy", "*", "-fsS", "-m", "10", *options,
                                          f"{base}/ping/{KEY}/backup", env=env)
        assert code == 0, err
    assert (server.listener.fast.answered, server.listener.fast.handed_off) == (2, 1)
    assert await checkins(server.app) == {"success": 3}


def test_the_fast_path_is_not_used_with_a_web_config(app_settings, tmp_path, env, clock):
    """TLS, basic auth and configured headers are applied by aiohttp's
    routes: with --web.config.file, connections start on aiohttp."""
    web_config = tmp_path / "web.yml"
    web_config.write_text('http_server_config:\n  headers:\n    X-Frame-Options: deny\n')
    settings = app_settings(write_config(tmp_path, CONFIG), web_config=load_web_config(web_config))
    app = create_app(settings, clock=clock)
    without = create_app(app_settings(write_config(tmp_path, CONFIG)), clock=clock)
    assert fast_ping.front(without, object()) is not None  # type: ignore[arg-type]
    # --web.idle-timeout 0 is aiohttp's keepalive_timeout=0 (no keep-alive): its alone.
    no_idle = create_app(app_settings(write_config(tmp_path, CONFIG), idle_timeout=0.0), clock=clock)
    assert fast_ping.front(no_idle, object()) is None  # type: ignore[arg-type]
    assert fast_ping.front(app, object()) is None  # type: ignore[arg-type]


# The differential test: any request target, sent to a server with the
# fast path and to one without (same config, same clock, each with its own
# keys in Redis), gets the same answer and leaves the same record.

_WHO = st.sampled_from([
    f"{KEY}/backup", f"{KEY}/db.dump", f"{KEY}/limited", f"{KEY}/nope", f"{KEY.upper()}/backup", HC_UUID,
    HC_UUID.upper(), "nope", "", f"{KEY}",
])
_ACTION = st.sampled_from(["", "/start", "/fail", "/log", "/0", "/1", "/255", "/256", "/x", "/start/x"])
_QUERY = st.lists(
    st.tuples(
        st.sampled_from(["rid", "exit_code", "duration", "create", "x"]),
        st.sampled_from(["", "1", "0", "12.5", "-1", "abc", "300", HC_UUID, "nan", "a%20b", "a+b", "%31"]),
    ),
    max_size=3,
)


def _mangle(path: str, how: str, at: int) -> str:
    """One of the ways a target's bytes differ from its decoded path."""
    cuts = [i for i, c in enumerate(path) if c == "/"] or [0]
    cut = cuts[at % len(cuts)]
    if how == "dot":
        return path[:cut] + "/." + path[cut:]
    if how == "dotdot":
        return path[:cut] + "/x/.." + path[cut:]
    if how == "escape" and cut + 1 < len(path):
        return path[: cut + 1] + f"%{ord(path[cut + 1]):02X}" + path[cut + 2 :]
    if how == "slashes":
        return path[:cut] + "/" + path[cut:]
    return path


@st.composite
def targets(draw) -> str:
    path = draw(st.sampled_from(["/ping/", "/"])) + draw(_WHO) + draw(_ACTION)
    if draw(st.booleans()):
        path += "/"
    path = _mangle(path, draw(st.sampled_from(["none", "none", "dot", "dotdot", "escape", "slashes"])),
                   draw(st.integers(0, 5)))
    query = draw(_QUERY)
    if query:
        path += "?" + "&".join(f"{name}={value}" if value else name for name, value in query)
    return path


_HEADERS = st.lists(
    st.sampled_from([
        "User-Agent: curl/8.5.0", "Idempotency-Key: abc-123", "Idempotency-Key: \x7f", "Connection: keep-alive",
        "Connection: close",
        "Accept: */*", "X-Forwarded-For: 10.0.0.1",
        # Where aiohttp's parser differs from llhttp: trailing blanks, a
        # repeated Host or User-Agent, a WebSocket key.
        "User-Agent: curl/8 \t", "User-Agent: wget", "Host: second.example", "Sec-WebSocket-Key1: x",
    ]),
    max_size=3,
    unique=True,
)


@pytest.fixture
async def pair(cronmon_server, make_app, aiohttp_server):
    """(a server with the fast path, one of aiohttp alone). Afterwards:
    the examples reached both the fast path and the hand-off."""
    fast = await cronmon_server(make_app())
    plain = await aiohttp_server(make_app(prefix_suffix="plain:"), host="127.0.0.1")
    yield fast, plain
    assert fast.listener.fast.answered > 0 and fast.listener.fast.handed_off > 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=targets(), method=st.sampled_from(["GET", "HEAD"]), headers=_HEADERS)
async def test_any_target_gets_the_same_answer_and_record_from_both(pair, target, method, headers):
    fast, plain = pair
    answers = []
    for server in (fast, plain):
        wire = await Wire.open(server.port)
        wire.send(get(target, *headers, method=method))
        status, got, body = await wire.response(head_only=method == "HEAD")
        got.pop("date", None)
        answers.append((status, got, body))
        wire.close()
    assert answers[0] == answers[1], target
    for monitor in ("backup", "db.dump", "migrated", "limited"):
        assert await checkins(fast.app, monitor) == await checkins(plain.app, monitor), (target, monitor)


# The stream differential: a connection's whole byte stream (pipelined
# pings, other routes, bodies, malformed heads, HEADs), sent in random
# chunks, gets the same sequence of answers from both servers.

_OTHER_REQUESTS = st.sampled_from([
    (get("/-/healthy"), False),
    (get(f"/ping/{KEY}/backup", "Content-Length: 5", method="POST") + b"hello", False),
    (get(f"/ping/{KEY}/backup/log", "Transfer-Encoding: chunked", method="POST") + b"3\r\nabc\r\n0\r\n\r\n", False),
    (get(f"/ping/{KEY}/db.dump", "Content-Length: 0"), False),
    (get(f"/ping/{KEY}/%64b.dump"), False),
    (b"\r\n" + get(f"/ping/{KEY}/backup"), False),
    (b"GET http://127.0.0.1/ping/" + KEY.encode() + b"/backup HTTP/1.1\r\nHost: x\r\n\r\n", False),
    (get(f"/{HC_UUID}/start", method="HEAD"), True),
    (get(f"/ping/{KEY}/backup").replace(b"Host: 127.0.0.1\r\n", b"Host: x\r\nUser-Agent: \xff\xfe\r\n"), False),
])
# Requests after which aiohttp answers 400 and closes the connection: only
# ever the last of a stream (bytes sent after them would meet a reset).
_LAST_REQUESTS = st.sampled_from([
    get("/-/healthy", "Connection: close"),
    get(f"/ping/{KEY}/backup", "Connection: close"),
    b"GET /ping/x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /ping/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET /ping/\xff/backup HTTP/1.1\r\nHost: x\r\n\r\n",
    get(f"/ping/{KEY}/backup", "Idempotency-Key: \x7f"),
    f"GET /ping/{KEY}/backup HTTP/1.1\r\nHost: x\r\nUser-Agent: a\r\n b\r\n\r\n".encode(),  # obs-fold
    b"GET /ping/" + KEY.encode() + b"/backup HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /ping/" + KEY.encode() + b"/backup HTTP/1.1\r\nUser-Agent: no-host\r\n\r\n",
    get(f"/ping/{KEY}/backup", *(f"X-{i}: y" for i in range(130))),
    b"GET /ping/" + KEY.encode() + b"/backup HTTP/1.1\nHost: x\n\n",  # bare LFs
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)),  # a TLS ClientHello's start
])
_STREAM_HEADERS = st.lists(
    st.sampled_from(["User-Agent: curl/8.5.0", "Idempotency-Key: abc-123", "Accept: */*", "X-Forwarded-For: 10.0.0.1"]),
    max_size=2, unique=True,
)


@st.composite
def streams(draw) -> tuple[list[tuple[bytes, bool]], list[int]]:
    """(the requests a client sends on one connection, each with whether
    it is a HEAD; the cuts of the writes of all but the last)."""
    parts = draw(st.lists(
        st.one_of(
            st.builds(lambda target, headers, method: (get(target, *headers, method=method), method == "HEAD"),
                      targets(), _STREAM_HEADERS, st.sampled_from(["GET", "HEAD", "GET"])),
            _OTHER_REQUESTS,
        ),
        max_size=5,
    ))
    # The last one closes the connection, so both servers end it.
    parts.append((draw(_LAST_REQUESTS), False))
    before = sum(len(part) for part, _ in parts[:-1])
    cuts = sorted(set(draw(st.lists(st.integers(1, before - 1), max_size=4)))) if before > 1 else []
    return parts, cuts


def _take_responses(data: bytes, heads: list[bool]) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete responses at the start of `data` as (status, body),
    and the bytes after them; `heads[i]`: whether the i-th response
    answers a HEAD (no body, whatever its Content-Length)."""
    found: list[tuple[int, bytes]] = []
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return found, data
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if heads and heads[0]:
            length = 0
        if len(rest) < length:
            return found, data
        found.append((int(lines[0].split(" ")[1]), rest[:length]))
        heads = heads[1:]
        data = rest[length:]


async def _converse(port: int, parts: list[tuple[bytes, bool]], cuts: list[int]) -> list[tuple[int, bytes]]:
    """Send all requests but the last in pieces (cut at `cuts`) and read
    their answers; then the last, and read until the server closes.

    The last is sent on its own because aiohttp, given a valid request and
    a malformed one in one read, answers only the malformed one (400) and
    drops the other; the fast path answers both (see
    test_a_ping_before_a_malformed_request_is_answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data, start = b"".join(part for part, _ in parts[:-1]), 0
        for cut in [*cuts, len(data)]:
            writer.write(data[start:cut])
            await writer.drain()
            start = cut
            await asyncio.sleep(0.002)  # a separate segment, mostly
        heads = [head for _, head in parts]
        answers: list[tuple[int, bytes]] = []
        received = b""
        while len(answers) < len(parts) - 1:
            more = await asyncio.wait_for(reader.read(65536), 10)
            assert more, f"closed after {len(answers)} answers"
            taken, received = _take_responses(received + more, heads[len(answers):])
            answers += taken
        writer.write(parts[-1][0])
        received += await asyncio.wait_for(reader.read(), 10)
        taken, rest = _take_responses(received, heads[len(answers):])
        assert rest == b"", rest
        return answers + taken
    finally:
        writer.close()


def _comparable(answers: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    # aiohttp's 400 quotes the bytes around the error as they arrived in
    # its buffer, which differs with the chunking; its first line does not.
    return [(status, body.split(b"\n")[0] if status == 400 else body) for status, body in answers]


async def _all_checkins(app) -> dict[str, dict[str, int]]:
    return {monitor: await checkins(app, monitor) for monitor in ("backup", "db.dump", "migrated", "limited")}


def _added(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {m: {k: v - before[m].get(k, 0) for k, v in after[m].items() if v != before[m].get(k, 0)} for m in after}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams())
async def test_any_stream_gets_the_same_answers_from_both(pair, stream):
    parts, cuts = stream
    got, recorded = [], []
    for server in pair:
        before = await _all_checkins(server.app)
        got.append(_comparable(await _converse(server.port, parts, cuts)))
        recorded.append(_added(await _all_checkins(server.app), before))
    assert got[0] == got[1], parts
    assert recorded[0] == recorded[1], parts


async def test_a_ping_before_a_malformed_request_is_answered(server):
    """One read holding a ping and then a malformed request: the ping is
    answered and recorded, the malformed request gets aiohttp's 400. (aiohttp
    alone answers only the 400 and drops the ping: its parser refuses the
    whole read.)"""
    wire = await Wire.open(server.port)
    wire.send(get(f"/ping/{KEY}/backup") + b"GET /ping/x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert (await wire.response())[::2] == (200, b"OK")
    assert (await wire.response())[0] == 400
    assert await wire.closed_by_server()
    assert await checkins(server.app) == {"success": 1}
