"""The store's fast lane: scripts over one pipelined connection to one Redis.

Every check-in is one EVALSHA. Through redis-py's pipeline a batch of them
costs a pooled connection, a pipeline object, a coroutine and a timeout
context per reply, and a task per batch: measured at 70 µs of a worker's
CPU per ping, more than the script itself costs Redis. This lane keeps one
connection per process and speaks RESP on a bare asyncio protocol with
hiredis (the parser redis-py uses): the calls made in one turn of the event
loop leave together, FLUSH_AT to a write, and each reply resolves the
next waiting future in order (Redis answers a connection's commands in
the order sent).

Semantics are those of the batched pipeline it replaces (store._Batcher):
each script runs atomically on its own and replies on its own; a reply
that is an error is returned as that error (redis-py's exception class for
it), never raised for the batch. A lost connection or a reply overdue by
`reply_timeout` fails every call in flight with ConnectionError or
TimeoutError (each script may or may not have run, as for a single call
whose reply is lost) and closes the connection; the next call connects
again.

Only for one server reached over TCP or a unix socket, without TLS (the
embedded default and `redis://`, `unix://` URLs); Sentinel, Cluster and
`rediss://` keep redis-py, whose failover, redirection, WAIT and TLS
handling this does not repeat. Only store.py uses it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool

# A write leaves as soon as this many calls wait for it, the rest at the
# end of the loop turn. Why not all of a turn's calls in one write: a
# burst of pings (a turn's worth of requests from 32 connections) then
# reached Redis as one batch, and Redis worked through it while the
# worker had nothing left to do, then the worker through the replies
# while Redis waited: the machine was 14-18% idle under bench/compare.py's
# load. In writes of 4, Redis starts on the first while the worker is
# still parsing the rest: 8-12% idle, and +10% pings/s (seven of nine
# interleaved pairs of 8 s runs; 1 and 2 were no better than 4, with
# more writes; 8 in between).
FLUSH_AT = 4


class _Protocol(asyncio.Protocol):
    def __init__(self, lane: ScriptLane) -> None:
        self.lane = lane
        self.reader = hiredis.Reader(
            encoding="utf-8", protocolError=redis_errors.InvalidResponse, replyError=BaseParser.parse_error
        )
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        lane = self.lane
        while True:
            try:
                reply = self.reader.gets()
            except redis_errors.InvalidResponse as exc:
                lane._fail(self, redis_errors.ConnectionError(f"Redis sent something that is not RESP: {exc}"))
                return
            if reply is False:
                return
            lane._answered(self, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc else ""
        self.lane._fail(self, redis_errors.ConnectionError(f"connection to Redis lost{why}"))


@dataclass(frozen=True)
class PreparedCall:
    """An EVALSHA's command with its script, keys and first arguments
    already encoded in RESP, waiting for `more` arguments
    (ScriptLane.call_prepared).

    Why: hiredis' pack_command formats every argument's length with
    sprintf, ~0.8 µs each; a check-in's 22 arguments (16 of them its
    monitor's keys, the same on every ping) cost a worker ~2 µs a ping."""

    encoded: bytes
    more: int

    @classmethod
    def of(cls, sha: str, keys: Sequence[str], first: Sequence[str | bytes], more: int) -> PreparedCall:
        """EVALSHA sha with `keys`, its arguments `first` and then `more`."""
        parts = ("EVALSHA", sha, str(len(keys)), *keys, *first)
        head = b"*%d\r\n" % (len(parts) + more)
        return cls(head + b"".join(_bulk(part) for part in parts), more)


def _bulk(value: str | bytes) -> bytes:
    """`value` as a RESP bulk string (a str as UTF-8, as hiredis sends it)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return b"$%d\r\n%b\r\n" % (len(data), data)


class ScriptLane:
    """EVALSHA calls to one Redis server over one pipelined connection."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 3.0,
        reply_timeout: float = 5.0,
        flush_at: int = FLUSH_AT,
    ) -> None:
        if (host is None) == (path is None):
            raise ValueError("give a host or a unix socket path")
        self.host, self.port, self.path = host, port, path
        self.connect_timeout, self.reply_timeout = connect_timeout, reply_timeout
        self.flush_at = flush_at
        # Sent first on every new connection, their replies checked.
        self._hello: list[tuple[Any, ...]] = []
        if password is not None:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", db))
        self._protocol: _Protocol | None = None
        # The connection's event loop while there is one: on Python 3.11
        # every asyncio.get_running_loop() is a getpid() system call (its
        # check for a fork), and a call made three of them before this.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Task | None = None
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._outgoing: list[bytes] = []
        self._queued: list[asyncio.Future] = []  # futures of _outgoing, not sent yet
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._progress = 0.0  # loop time of the last reply, or of sending into an idle connection
        self.writes = 0  # batches written (for tests)

    @classmethod
    def for_client(cls, client: Any) -> ScriptLane | None:
        """A lane to the server a plain redis-py client's pool connects to,
        or None for anything else (see the module's docstring)."""
        pool = getattr(client, "connection_pool", None)
        if not isinstance(client, Redis) or pool is None or isinstance(pool, SentinelConnectionPool):
            return None
        connection_class = pool.connection_class
        kwargs = pool.connection_kwargs
        if issubclass(connection_class, SSLConnection) or kwargs.get("credential_provider") is not None:
            return None
        common = {
            "db": int(kwargs.get("db") or 0), "username": kwargs.get("username"), "password": kwargs.get("password"),
            "connect_timeout": kwargs.get("socket_connect_timeout") or 3.0,
            "reply_timeout": kwargs.get("socket_timeout") or 5.0,
        }
        if issubclass(connection_class, UnixDomainSocketConnection):
            return cls(path=kwargs["path"], **common)
        if issubclass(connection_class, Connection):
            return cls(host=kwargs.get("host", "localhost"), port=int(kwargs.get("port", 6379)), **common)
        return None

    def call(self, sha: str, keys: list, args: list) -> asyncio.Future:
        """EVALSHA sha: a future of its reply (an error reply is the
        result, as an exception instance, not raised)."""
        return self._send(hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args)))

    def call_prepared(self, head: PreparedCall, args: tuple[bytes, ...]) -> asyncio.Future:
        """The EVALSHA `head` begins (PreparedCall.of), completed by `args`:
        as call(), without encoding the parts that never change."""
        if len(args) != head.more:
            raise ValueError(f"this call takes {head.more} more arguments, not {len(args)}")
        return self._send(head.encoded + b"".join(map(_bulk, args)))

    def _send(self, command: bytes) -> asyncio.Future:
        loop = self._loop or asyncio.get_running_loop()
        future = loop.create_future()
        self._outgoing.append(command)
        self._queued.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if len(self._queued) >= self.flush_at and self._protocol is not None:
            self._write_queued()  # (see FLUSH_AT)
        return future

    def _flush(self) -> None:
        """The end of the loop turn: send what the turn's calls left."""
        self._flush_scheduled = False
        self._write_queued()

    def _write_queued(self) -> None:
        if not self._queued:
            return
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            if protocol is not None:
                # Redis hung up and the loop has not told the protocol yet:
                # what was sent on this connection gets no reply, and no
                # reply of the next one may be taken for theirs.
                self._close(redis_errors.ConnectionError("connection to Redis closed"))
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # sent once connected
        if self._connecting is not None:
            # Connected, AUTH and SELECT sent, their replies not in yet: a
            # call must not run if SELECT fails (it would use db 0).
            return  # sent once they are (the end of _connect)
        out, futures = self._outgoing, self._queued
        self._outgoing, self._queued = [], []
        loop = self._loop or asyncio.get_running_loop()
        if not self._waiting:
            self._progress = loop.time()
        self._waiting.extend(futures)
        protocol.transport.write(b"".join(out))
        self.writes += 1
        if self._timer is None:
            self._timer = loop.call_at(self._progress + self.reply_timeout, self._check_overdue)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.path is not None:
                    transport, protocol = await loop.create_unix_connection(lambda: _Protocol(self), self.path)
                else:
                    transport, protocol = await loop.create_connection(
                        lambda: _Protocol(self), self.host or "localhost", self.port
                    )
                self._protocol, self._loop = protocol, loop
                # Both in one write; calls wait for their replies
                # (_write_queued): one run after a refused SELECT would
                # use db 0.
                hellos = [loop.create_future() for _ in self._hello]
                if hellos:
                    self._waiting.extend(hellos)
                    self._progress = loop.time()
                    transport.write(b"".join(hiredis.pack_command(c) for c in self._hello))
                for command, hello in zip(self._hello, hellos):
                    reply = await hello
                    if isinstance(reply, Exception):
                        raise redis_errors.ConnectionError(f"Redis refused {command[0]}: {reply}")
        except BaseException as exc:
            error: Exception = exc if isinstance(exc, Exception) else redis_errors.ConnectionError("cancelled")
            if isinstance(exc, (TimeoutError, OSError)):
                where = self.path or f"{self.host}:{self.port}"
                error = redis_errors.ConnectionError(f"cannot connect to Redis at {where}: {exc or 'timed out'}")
            self._close(error)
            queued, self._outgoing, self._queued = self._queued, [], []
            for future in queued:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._connecting = None
        self._write_queued()  # what was called meanwhile

    def _answered(self, protocol: _Protocol, reply: Any) -> None:
        if protocol is not self._protocol or not self._waiting:
            return  # an old connection's, or a reply nobody asked for
        self._progress = (self._loop or asyncio.get_running_loop()).time()
        future = self._waiting.popleft()
        if not future.done():  # its caller may have given up (cancelled)
            future.set_result(reply)

    def _check_overdue(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        due = self._progress + self.reply_timeout
        if loop.time() >= due:
            self._close(redis_errors.TimeoutError(f"no reply from Redis within {self.reply_timeout:g} s"))
        else:
            self._timer = loop.call_at(due, self._check_overdue)

    def _fail(self, protocol: _Protocol, error: Exception) -> None:
        if protocol is self._protocol:
            self._close(error)

    def _close(self, error: Exception) -> None:
        """Fail every call in flight with `error` and drop the connection."""
        protocol, self._protocol, self._loop = self._protocol, None, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, collections.deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        self._close(redis_errors.ConnectionError("the store is closed"))
