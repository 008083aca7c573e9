"""The ping fast path: plain Healthchecks pings answered without aiohttp's
request machinery, on the same port as everything else.

Why: a ping's own work is small (find the monitor, one Redis round trip),
and aiohttp's per-request machinery (Request, URL and match objects, the
response writer) cost more than it: 40-50 µs of a worker's CPU per request
against about 10 µs for a bare asyncio protocol with the same HTTP parser
(llhttp, through httptools). Measured with `bench/compare.py`, the
workers' CPU per ping fell from ~140 to ~80 µs. See README "Performance".

What this answers itself — every condition must hold, else the request
and the rest of its connection are aiohttp's:

- a GET or HEAD, HTTP/1.1, without a body (no Transfer-Encoding, no
  Content-Length but 0), without Expect or Upgrade;
- with one Host header, no header name twice, no Sec-WebSocket-* header
  and at most MAX_HEADERS headers (what aiohttp's parser checks beyond
  llhttp: such a request is aiohttp's to refuse or accept), and only CRLF
  line ends;
- to /ping/<tail> or one of hc-ping.com's root forms (healthchecks.py),
  in origin form, with no percent-escape, non-ASCII byte or fragment in
  the target and no "+" in its query (so its decoded path and query are
  its bytes, as aiohttp decodes them);
- the request head complete within MAX_HEAD bytes, and llhttp finds it
  well-formed.

The answer is healthchecks.answer_ping's, the function aiohttp's ping
route calls, rendered with the headers aiohttp would send; the request is
counted in cronmon_http_requests_total under the route's own name.

Handing off. A connection starts here. At the first request this does not
answer, that request's bytes (from its first byte) and all that follows
are replayed to a new aiohttp RequestHandler, which owns the connection
from then on, as if it had accepted it: every other route, every error
answer (400, 413, 431, 505) and every protocol feature is aiohttp's.
Requests are framed here by their head's end (CRLF CRLF), and a request
this answers has no body, so the byte where the next request starts is
always known; a head with a body, or one llhttp refuses, is handed off
whole. Answers go out in request order: a hand-off waits for the answers
already in progress.

Not used with --web.config.file (TLS, basic auth, response headers): those
are applied by aiohttp's routes only.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
import ssl
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools
from aiohttp import web, web_server
from aiohttp.helpers import rfc822_formatted_time  # aiohttp's Date header, formatted once a second
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from ..core import Core
from ..model import quick_init
from ..settings import Settings
from .acceptor import Acceptor, listening_sockets
from .healthchecks import ROOT_SLUG_TAIL, ROOT_UUID_TAIL, PingAnswer, answer_ping
from .keys import CORE, OBSERVE_REQUEST, SETTINGS, ObserveRequest

log = logging.getLogger(__name__)

# aiohttp's own limit on a request line or header field (8190 bytes): a
# longer head is aiohttp's to refuse.
MAX_HEAD = 8190
# Requests of one connection parsed ahead of their answers (HTTP
# pipelining) before reading from it pauses.
MAX_QUEUED = 16
# More headers than this: aiohttp's to judge (it refuses over 128).
MAX_HEADERS = 64
# How long a shutdown waits for answers in progress (aiohttp's AppRunner
# default shutdown_timeout, which bounds its own connections' wait).
SHUTDOWN_TIMEOUT = 60.0
# The request metrics' handler labels: the canonical paths of
# healthchecks.add_routes' and add_root_routes' resources.
PING_ROUTE = "/ping/{tail}"
ROOT_ROUTE = "/{tail}"

_ROOT = re.compile(f"/({ROOT_UUID_TAIL}|{ROOT_SLUG_TAIL})")
_REASONS = {status.value: status.phrase for status in HTTPStatus}  # as aiohttp's
_STARTS = (b"GET /", b"HEAD /")
# Distinct responses kept for the current second.
_RENDERED_MAX = 64
# The query of a ping without one (most): read-only, so one serves all.
_NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


def _may_be_a_ping(buffer: bytearray, head_end: int) -> bool:
    """Whether the request at the start of `buffer` (its head, or what has
    come of it, ends at `head_end`) may still be one the fast path answers:
    a GET or HEAD of an origin-form target, and no LF without its CR
    (llhttp waits for more; aiohttp refuses at once)."""
    if not buffer.startswith(_STARTS):
        # Too short to tell yet: still possible if it is how one begins.
        start = bytes(buffer[:6])
        if not any(prefix.startswith(start) for prefix in _STARTS):
            return False
    return buffer.count(b"\n", 0, head_end) == buffer.count(b"\r\n", 0, head_end)


@quick_init
@dataclass(frozen=True)
class _Ping:
    """A plain ping read off a connection, waiting for its answer."""

    method: str
    route: str
    tail: str
    query: MultiDictProxy[str]
    headers: CIMultiDictProxy[str]
    keep_alive: bool


class FastPing:
    """The listening socket's protocol factory: makes a PingProtocol per
    connection, and knows them all for a graceful shutdown."""

    def __init__(
        self, core: Core, settings: Settings, observe: ObserveRequest, aiohttp_server: web_server.Server
    ) -> None:
        self.core = core
        self.settings = settings
        self.observe = observe
        self.aiohttp_server = aiohttp_server
        self.connections: set[PingProtocol] = set()
        self.stopping = False
        # Requests answered here, and connections handed to aiohttp.
        self.answered = 0
        # Responses made in the second of rendered_date (see PingProtocol._render).
        self.rendered_date = ""
        self.rendered: dict[tuple, bytes] = {}
        self.handed_off = 0

    def __call__(self) -> PingProtocol:
        return PingProtocol(self)

    async def shutdown(self, timeout: float) -> None:
        """Stop reading new requests, let those in progress be answered
        (for at most `timeout` seconds), then close every connection this
        still holds. Connections already handed to aiohttp are its own
        (runner.cleanup shuts them)."""
        self.stopping = True
        for connection in list(self.connections):
            connection.stop()
        deadline = time.monotonic() + timeout
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.close()


class PingProtocol(asyncio.Protocol):
    """One client connection, until it is closed or handed to aiohttp."""

    def __init__(self, front: FastPing) -> None:
        self.front = front
        # The connection's event loop (the factory is called on it), kept:
        # on Python 3.11 every asyncio.get_running_loop() is a getpid()
        # system call (its check for a fork), four of them a ping before this.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.buffer = bytearray()  # received, not yet taken as a request
        self.queue: collections.deque[_Ping] = collections.deque()
        self.busy = False  # a request's answer is in progress
        self.answering: asyncio.Task[None] | None = None
        self.handing_off = False  # buffer starts with a request that is aiohttp's
        self.closed = False
        self.stopping = False
        self.last_taken = False  # a request asked to close the connection after it
        self.paused: set[str] = set()  # why reading is paused: "queue", "writing", "hand-off"
        # The idle clock: when the connection last became idle (None while a
        # request is in progress), and the one timer that checks it.
        self.idle_since: float | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        # The parser calls back into this object: a reference cycle, broken
        # when the connection ends or is handed off, so that refcounting
        # frees both (the cyclic collector never sees what heap.py froze,
        # and a reload freezes the connections open then).
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        # What llhttp reports about the head being parsed.
        self._url = b""
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._names: set[str] = set()  # the header names, lower-case
        self._repeated = False  # a header name came twice
        self._websocket = False  # a Sec-WebSocket-* header came
        self._complete = False
        self._keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)
        tcp_keepalive(self.transport)  # as aiohttp does for its connections
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if isinstance(peername, (tuple, list)) else None
        self.front.connections.add(self)
        if self.front.stopping:
            self.close()
            return
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self.last_taken or self.stopping:
            return  # the connection closes after the answer in progress
        self.buffer += data
        if not self.handing_off:
            self._take_requests()

    def eof_received(self) -> None:
        pass  # as aiohttp: the transport closes; answers in progress are dropped

    def connection_lost(self, exc: BaseException | None) -> None:
        # A ping already being recorded is recorded (as with aiohttp, whose
        # handlers are not cancelled when their client goes away).
        self.closed = True
        self._cancel_idle_timer()
        self.queue.clear()
        self.front.connections.discard(self)
        self.parser = None

    def pause_writing(self) -> None:
        self._pause("writing")  # the client does not read its answers

    def resume_writing(self) -> None:
        self._resume("writing")

    # llhttp's callbacks (httptools), during parser.feed_data

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # aiohttp's reading of header bytes: trailing blanks dropped (llhttp
        # keeps them), undecodable bytes surrogate-escaped.
        text = name.decode("utf-8", "surrogateescape")
        self._headers.add(text, value.rstrip(b" \t").decode("utf-8", "surrogateescape"))
        # What _read_head judges by the names, noted as they come.
        lowered = text.lower()
        if lowered in self._names:
            self._repeated = True
        elif lowered.startswith("sec-websocket-"):
            self._websocket = True
        self._names.add(lowered)

    def on_headers_complete(self) -> None:
        # Read here: once the message is complete, llhttp has moved on.
        assert self.parser is not None
        self._keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._complete = True

    # Reading

    def _take_requests(self) -> None:
        """Take every complete request head off the buffer: queue the plain
        pings, and stop at the first request that is aiohttp's."""
        while not self.handing_off:
            if len(self.queue) >= MAX_QUEUED:
                # Pipelined faster than answered: the rest waits in the
                # buffer (and the socket), parsed as the queue drains.
                self._pause("queue")
                return
            if not self.buffer:
                return  # (the usual end: each request read whole)
            end = self.buffer.find(b"\r\n\r\n")
            if not _may_be_a_ping(self.buffer, end + 4 if end >= 0 else len(self.buffer)):
                # Not ours, and aiohttp may answer before the head ends (a
                # TLS handshake on the plain port, a bare LF): at once.
                self._hand_off()
                return
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._hand_off()
                return
            if end + 4 > MAX_HEAD:
                self._hand_off()
                return
            ping = self._read_head(bytes(self.buffer[: end + 4]))
            if ping is None:
                self._hand_off()
                return
            del self.buffer[: end + 4]
            self.idle_since = None  # a request in progress: not idle
            self.queue.append(ping)
            if not ping.keep_alive:
                # Connection: close. Whatever follows is not read (llhttp
                # would refuse it anyway); the connection closes after this.
                self.last_taken = True
                self.buffer.clear()
            if not self.busy:
                self._answer_next()
            if self.last_taken:
                return

    def _read_head(self, head: bytes) -> _Ping | None:
        """The plain ping `head` is, or None if it is aiohttp's."""
        self._url, self._headers, self._complete = b"", CIMultiDict(), False
        self._names, self._repeated, self._websocket = set(), False, False
        parser = self.parser
        assert parser is not None
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # malformed, or an Upgrade
            return None
        if not self._complete or parser.get_http_version() != "1.1" or parser.should_upgrade():
            return None  # a body follows; or HTTP/1.0, or an upgrade
        method = parser.get_method()
        if method not in (b"GET", b"HEAD"):
            return None
        headers = self._headers
        if "Expect" in headers or "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0":
            return None
        # aiohttp's parser refuses more than llhttp (no Host, a repeated
        # Host or User-Agent, Sec-WebSocket-Key1, too many headers): any
        # of those, and any repeated header, is aiohttp's to judge.
        names = self._names
        if "host" not in names or self._repeated or self._websocket or len(names) > MAX_HEADERS:
            return None
        target = self._url
        # (find, not `in`: for bytes, `in` first tries its operand as an
        # integer, and makes and drops a TypeError with a formatted message.)
        if not target.startswith(b"/") or not target.isascii() or target.find(b"%") >= 0 or target.find(b"#") >= 0:
            return None
        path_bytes, _, query_bytes = target.partition(b"?")
        if query_bytes.find(b"+") >= 0:
            return None  # a space, in a query
        path = path_bytes.decode("ascii")
        if path.startswith("/ping/") and len(path) > 6:
            route, tail = PING_ROUTE, path[6:]
        else:
            match = _ROOT.fullmatch(path)
            if match is None:
                return None
            route, tail = ROOT_ROUTE, match.group(1)
        query = _NO_QUERY
        if query_bytes:
            pairs: MultiDict[str] = MultiDict()
            for pair in query_bytes.decode("ascii").split("&"):
                if pair:
                    name, _, value = pair.partition("=")
                    pairs.add(name, value)
            query = MultiDictProxy(pairs)
        return _Ping(method.decode("ascii"), route, tail, query, CIMultiDictProxy(headers), self._keep_alive)

    # Answering

    def _answer_next(self) -> None:
        if self.queue and not self.closed:
            self.busy = True
            # Held: the loop keeps only weak references to tasks.
            # Named: a task without a name formats "Task-<n>" when made.
            self.answering = self.loop.create_task(self._answer(self.queue.popleft()), name="ping")
            if "queue" in self.paused:
                self._resume("queue")
                self._take_requests()  # what waited in the buffer
            return
        self.busy = False
        if self.handing_off:
            self._complete_hand_off()
        elif self.stopping:
            self.close()
        elif not self.closed:
            self._arm_idle_timer()

    async def _answer(self, ping: _Ping) -> None:
        front = self.front
        started = time.perf_counter()
        failed = False
        try:
            answer = await answer_ping(front.core, front.settings, ping.method, ping.tail, ping.query,
                                       ping.headers, self.peer, None)
            content_type = "text/plain"
        except Exception:
            # Not the target: it holds the ping key or UUID.
            log.exception("%s %s: unexpected error", ping.method, ping.route)
            answer, content_type = _internal_error(ping.headers)
            failed = True  # and the connection closes, as aiohttp's does
        front.observe(ping.route, answer.status, time.perf_counter() - started)
        front.answered += 1
        keep_alive = ping.keep_alive and not self.stopping and not failed
        if not self.closed:
            assert self.transport is not None
            self.transport.write(self._render(answer, ping.method == "HEAD", keep_alive, content_type))
            if not keep_alive:
                self.close()
                return
        self._answer_next()

    def _render(self, answer: PingAnswer, head_only: bool, keep_alive: bool, content_type: str) -> bytes:
        """The response aiohttp's web.Response(text=...) would send. Only
        its Date changes within a second, so each distinct response is
        made once a second, not once a ping."""
        front = self.front
        date = rfc822_formatted_time()
        if date != front.rendered_date:
            front.rendered_date, front.rendered = date, {}
        key = (answer.status, answer.text, tuple(answer.headers.items()), head_only, keep_alive, content_type)
        response = front.rendered.get(key)
        if response is None:
            if len(front.rendered) >= _RENDERED_MAX:  # texts vary (a 429's "retry in N seconds")
                front.rendered.clear()
            body = answer.text.encode("utf-8")
            lines = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Unknown')}",
                     f"Content-Type: {content_type}; charset=utf-8"]
            lines += [f"{name}: {value}" for name, value in answer.headers.items()]
            lines += [f"Content-Length: {len(body)}", f"Date: {date}", f"Server: {SERVER_SOFTWARE}"]
            if not keep_alive:
                lines.append("Connection: close")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            response = front.rendered[key] = head if head_only else head + body
        return response

    # Hand-off, timers, closing

    def _hand_off(self) -> None:
        """The buffer starts with a request that is aiohttp's: give it the
        connection once the answers in progress are written."""
        self.handing_off = True
        self._cancel_idle_timer()
        if not self.busy:
            self._complete_hand_off()
        else:
            # Until then nothing more is read: what follows (a large body,
            # say) is aiohttp's to read, within its limits, not a buffer here.
            self._pause("hand-off")

    def _complete_hand_off(self) -> None:
        if self.closed:
            return
        transport = self.transport
        assert transport is not None
        self.front.connections.discard(self)
        self.front.handed_off += 1
        self.parser = None
        handler = self.front.aiohttp_server()
        transport.set_protocol(handler)
        writing_paused = "writing" in self.paused
        if self.paused:
            self.paused.clear()
            transport.resume_reading()
        handler.connection_made(transport)
        if writing_paused:
            # The transport signals only changes: aiohttp must hear that
            # its client does not read (else its writes never wait).
            handler.pause_writing()
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            handler.data_received(data)

    def _arm_idle_timer(self) -> None:
        """aiohttp's keepalive_timeout: a connection that has no request
        in progress and sends no complete request head within
        idle_timeout seconds is closed (so a slow client cannot hold it).

        The clock restarts at every idle moment (each answered ping), but
        the timer is not remade each time: it checks the clock when it
        fires and, if the connection was busy since, waits out the rest
        (a TimerHandle made and cancelled per ping cost ~2 µs of it)."""
        loop = self.loop
        self.idle_since = loop.time()
        if self.idle_timer is None:
            self.idle_timer = loop.call_at(self.idle_since + self.front.settings.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.idle_since is None or self.closed:
            return  # busy: the answer's end arms it again
        loop = self.loop
        due = self.idle_since + self.front.settings.idle_timeout
        if loop.time() >= due:
            self.close()
        else:
            self.idle_timer = loop.call_at(due, self._idle_check)

    def _cancel_idle_timer(self) -> None:
        self.idle_since = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _pause(self, why: str) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused.add(why)

    def _resume(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def stop(self) -> None:
        """Shutting down: answer what is in progress, take no more."""
        self.stopping = True
        self.queue.clear()
        if not self.busy and not self.handing_off:
            self.close()

    def close(self) -> None:
        self._cancel_idle_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


def _internal_error(headers: CIMultiDictProxy[str]) -> tuple[PingAnswer, str]:
    """aiohttp's answer to a handler's unexpected exception (its
    RequestHandler.handle_error, without debug): HTML for a browser."""
    title = f"{HTTPStatus.INTERNAL_SERVER_ERROR.value} {HTTPStatus.INTERNAL_SERVER_ERROR.phrase}"
    message = HTTPStatus.INTERNAL_SERVER_ERROR.description
    if "text/html" in headers.get("Accept", ""):
        html = f"<html><head><title>{title}</title></head><body>\n<h1>{title}</h1>\n{message}\n</body></html>\n"
        return PingAnswer(500, html, {}), "text/html"
    return PingAnswer(500, f"{title}\n\n{message}", {}), "text/plain"


def front(app: web.Application, server: web_server.Server) -> FastPing | None:
    """The listening socket's protocol factory for `app` (whose connections
    it hands to `server`, aiohttp's), or None where the fast path must not
    be used: with --web.config.file, whose TLS, auth and response headers
    only aiohttp's routes apply; with --web.idle-timeout 0."""
    settings = app[SETTINGS]
    if settings.web_config is not None or settings.idle_timeout <= 0:
        return None  # (an idle timeout of 0: aiohttp's keepalive_timeout=0, no keep-alive)
    return FastPing(app[CORE], settings, app[OBSERVE_REQUEST], server)


@dataclass
class Listener:
    """Listening sockets serving an app: connections start on the fast
    path where it may be used (`fast`), else on aiohttp's protocol."""

    acceptor: Acceptor
    fast: FastPing | None

    @property
    def port(self) -> int:
        return self.acceptor.port()

    async def close(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop listening and end the fast path's connections (answers in
        progress get `timeout` seconds). Those handed to aiohttp are the
        runner's: call runner.cleanup() after this."""
        self.acceptor.close()
        if self.fast is not None:
            await self.fast.shutdown(timeout)


async def listen(
    app: web.Application,
    runner: web.AppRunner,
    host: str | None,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
) -> Listener:
    """Listen on host:port for `app`, whose `runner` is set up: what
    aiohttp's TCPSite does, with the fast path in front, and connections
    accepted in batches on either event loop (acceptor.py)."""
    assert runner.server is not None, "call runner.setup() first"
    fast = front(app, runner.server)
    loop = asyncio.get_running_loop()
    # (getaddrinfo may block: off the loop, as asyncio's create_server does.)
    sockets = await loop.run_in_executor(None, functools.partial(listening_sockets, host, port, reuse_port=reuse_port))
    acceptor = Acceptor(sockets, fast or runner.server, ssl_context)
    acceptor.start()
    return Listener(acceptor, fast)
