"""Listening sockets whose connections are accepted in batches.

Why not the loop's own server (loop.create_server): uvloop's is libuv's,
and libuv accepts one connection per turn of its loop (since 1.45, libuv
PR 3696). Under load a turn takes ~15 ms, so when 1,000 cron jobs connect
at 00:00 the kernel's accept queue drained at ~60 connections a second:
measured with bench/compare.py's burst (wrk -c1000), hundreds of pings
waited over 2 s, and the queue still held 271 connections after 6 s.
asyncio's selector loop accepts up to its backlog per turn; this does the
same on either loop: the listening socket is watched with add_reader, and
each time it is readable up to ACCEPT_BATCH connections are accepted and
handed to loop.connect_accepted_socket, which builds the loop's own
transport (TLS included) for each.

What asyncio's server also does, done here the same way: SO_REUSEADDR,
IPV6_V6ONLY for an IPv6 address, SO_REUSEPORT when asked; every address
the host resolves to (all interfaces for "" or None); and when accept()
fails for lack of file descriptors or memory, accepting pauses for
ACCEPT_RETRY_DELAY seconds instead of spinning.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger(__name__)

# Connections accepted per readiness of a listening socket (asyncio's own
# selector loop accepts up to its backlog, 100 by default).
ACCEPT_BATCH = 128
# How long accepting pauses after EMFILE and its kind (asyncio's constant).
ACCEPT_RETRY_DELAY = 1.0
# Connections the kernel holds for accept(): socket.SOMAXCONN (4096),
# capped by the kernel at net.core.somaxconn, as Go's net.Listen asks.
LISTEN_BACKLOG = socket.SOMAXCONN
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def listening_sockets(host: str | None, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Non-blocking sockets listening on every address `host` resolves to
    (every interface for "" or None) at `port`. OSError names the address
    that could not be bound."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # (getaddrinfo may repeat one)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # One socket an address family, as asyncio: no IPv4 on the IPv6 socket.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                where: tuple[object, ...] = tuple(address[:2])  # (an IP address and a port: no bytes)
                raise OSError(exc.errno, f"cannot listen on {where[0]}:{where[1]}: {exc.strerror}") from None
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Acceptor:
    """Accepts the connections of `sockets` (listening_sockets) for
    `protocol_factory` on the running loop, ACCEPT_BATCH at a time."""

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.sockets = sockets
        self.protocol_factory = protocol_factory
        self.ssl_context = ssl_context
        self.loop = asyncio.get_running_loop()
        self.closed = False
        # Connections whose transports are being made (a TLS handshake, say).
        self._connecting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for sock in self.sockets:
            self._watch(sock)

    def _watch(self, sock: socket.socket) -> None:
        if not self.closed:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none left (or the client gave up first)
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of file descriptors or memory: a connection waits in
                # the kernel's queue until some are free; retrying at once
                # would only spin.
                log.error("cannot accept connections (%s); trying again in %g s", exc.strerror, ACCEPT_RETRY_DELAY)
                self.loop.remove_reader(sock.fileno())
                self.loop.call_later(ACCEPT_RETRY_DELAY, self._watch, sock)
                return
            connection.setblocking(False)
            task = self.loop.create_task(self._connect(connection))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, connection: socket.socket) -> None:
        # The transport owns the socket from here: either loop closes it
        # when setting up fails (so it is not closed here: its number could
        # already belong to another connection by then).
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, connection, ssl=self.ssl_context)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            # The client went away, or its TLS handshake failed: its own
            # business, as with asyncio's server (which logs it at debug).
            log.debug("connection not set up: %s", exc)

    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop accepting and close the listening sockets; connections
        already accepted are their protocols' to end."""
        if self.closed:
            return
        self.closed = True
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        for task in list(self._connecting):
            task.cancel()
