"""The listener's accept loop (exporter/web/acceptor.py), on asyncio's loop
and on uvloop's (conftest.BOTH_LOOPS): a burst of connections is accepted
in batches, not one per loop turn; every address of the host listens;
running out of file descriptors pauses accepting instead of spinning;
accepted connections are the loop's own TCP transports, with TCP_NODELAY."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest

from exporter.web import acceptor as acceptor_module
from exporter.web.acceptor import ACCEPT_BATCH, Acceptor, listening_sockets

from .conftest import wait_for


class Recorder(asyncio.Protocol):
    made: list[asyncio.Transport]

    def connection_made(self, transport):
        self.made.append(transport)


def recorder_factory():
    made: list[asyncio.Transport] = []

    def factory():
        protocol = Recorder()
        protocol.made = made
        return protocol

    return factory, made


def close_all(acceptor: Acceptor, made: list[asyncio.Transport], clients: list[socket.socket]) -> None:
    acceptor.close()
    for transport in made:
        transport.close()
    for client in clients:
        client.close()


async def test_a_burst_of_connections_is_accepted_in_batches_with_nodelay():
    sockets = listening_sockets("127.0.0.1", 0)
    factory, made = recorder_factory()
    acceptor = Acceptor(sockets, factory)
    calls = 0
    accept = acceptor._accept

    def counting(sock):
        nonlocal calls
        calls += 1
        accept(sock)

    acceptor._accept = counting  # type: ignore[method-assign]
    clients = []
    try:
        # Connected before accepting starts: all of them wait in the
        # kernel's queue, as a burst at 00:00 does.
        for _ in range(2 * ACCEPT_BATCH + 10):
            client = socket.create_connection(("127.0.0.1", acceptor.port()))
            clients.append(client)
        port = acceptor.port()
        acceptor.start()
        await wait_for(lambda: len(made) == len(clients))
        # One readiness per batch (a spurious one at most), not one per
        # connection as libuv's own server accepts.
        assert calls <= 4
        for transport in made:
            assert transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert transport.get_extra_info("peername")[0] == "127.0.0.1"
    finally:
        close_all(acceptor, made, clients)
    with pytest.raises(ConnectionRefusedError):  # closed: no longer listening
        socket.create_connection(("127.0.0.1", port))


async def test_every_address_of_the_host_listens():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sockets = listening_sockets("", port)
    families = {sock.family for sock in sockets}
    expected = {info[0] for info in socket.getaddrinfo(None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
    assert families == expected and socket.AF_INET in families
    factory, made = recorder_factory()
    acceptor = Acceptor(sockets, factory)
    acceptor.start()
    clients = []
    try:
        clients.append(socket.create_connection(("127.0.0.1", port)))
        if socket.AF_INET6 in families:
            clients.append(socket.create_connection(("::1", port)))
        await wait_for(lambda: len(made) == len(clients))
    finally:
        close_all(acceptor, made, clients)


async def test_an_address_in_use_is_named():
    taken = listening_sockets("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken[0].getsockname()[1]}"):
            listening_sockets("127.0.0.1", taken[0].getsockname()[1])
    finally:
        taken[0].close()


class ExhaustedSocket(socket.socket):
    """A listening socket whose accept() fails as with no descriptors left,
    until told otherwise."""

    def __init__(self, *args):
        super().__init__(*args)
        self.exhausted = True
        self.attempts = 0

    def accept(self):
        self.attempts += 1
        if self.exhausted:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


async def test_running_out_of_descriptors_pauses_accepting(monkeypatch, caplog):
    monkeypatch.setattr(acceptor_module, "ACCEPT_RETRY_DELAY", 0.3)
    listener = ExhaustedSocket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    factory, made = recorder_factory()
    acceptor = Acceptor([listener], factory)
    acceptor.start()
    client = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
    try:
        with caplog.at_level(logging.ERROR, logger="exporter.web.acceptor"):
            await wait_for(lambda: listener.attempts >= 1)
            await asyncio.sleep(0.1)
            # Paused: not called again and again while the connection waits.
            assert listener.attempts == 1
        assert "cannot accept connections (Too many open files); trying again in 0.3 s" in caplog.text
        listener.exhausted = False  # descriptors are free again
        await wait_for(lambda: len(made) == 1)
    finally:
        close_all(acceptor, made, [client])
