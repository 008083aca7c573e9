#!/usr/bin/env python3
"""The least an aiohttp ping server can do, for bench/ingest_floor.py.

    python bench/floor_server.py --port P --workers N --mode MODE [--redis unix:///path]

Answers GET /ping/<anything> with 200 "OK" from N processes sharing one
listening socket (bound before the fork, as `cronmon serve --workers`
shares its port), doing per request:

- empty: nothing;
- redis: one HINCRBY on a Redis server, the commands of one turn of the
  event loop sent as one pipeline (as cronmon's store batches check-ins);
- script: the same, but one EVALSHA of a three-command Lua script;
- raw: that EVALSHA over a bare asyncio protocol with hiredis, the calls
  of one turn in one write (as cronmon's store on one server:
  exporter/redis_lane.py), instead of redis-py's pipeline;
- protocol, protocol-raw: no aiohttp either: a bare asyncio protocol with
  httptools (llhttp) answers, as cronmon's ping fast path does
  (exporter/web/fast_ping.py), with nothing or with raw's EVALSHA.

No cronmon code runs: this measures the cost of the stack cronmon is
built on (aiohttp or httptools, redis-py with hiredis, a Lua script per
check-in), the floor below which no ping handler on it can go.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import sys

import hiredis
import httptools
import redis.asyncio as redis
from aiohttp import web

SCRIPT = """
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'last', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
return 1
"""


class Batch:
    """The calls of one event-loop turn, sent as one pipeline."""

    def __init__(self, client: redis.Redis, mode: str) -> None:
        self.client = client
        self.mode = mode
        self.pending: list[tuple[str, asyncio.Future]] = []
        self.sha = ""

    def call(self, name: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.pending:
            loop.call_soon(lambda: asyncio.ensure_future(self.flush()))
        self.pending.append((name, future))
        return future

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        async with self.client.pipeline(transaction=False) as pipe:
            for name, _ in batch:
                if self.mode == "script":
                    pipe.evalsha(self.sha, 2, f"floor:{name}", "floor:due", "1764800000")
                else:
                    pipe.hincrby(f"floor:{name}", "seq", 1)
            replies = await pipe.execute()
        for (_, future), reply in zip(batch, replies):
            future.set_result(reply)


class RawLane(asyncio.Protocol):
    """EVALSHA over a bare asyncio protocol with hiredis: the calls of one
    turn of the loop leave in one write, replies resolve futures in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque = collections.deque()
        self.out: list[bytes] = []
        self.transport = None
        self.sha = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def call(self, name: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.out:
            loop.call_soon(self.flush)
        self.out.append(hiredis.pack_command((b"EVALSHA", self.sha, 2, f"floor:{name}", "floor:due", "1764800000")))
        self.waiting.append(future)
        return future

    def flush(self) -> None:
        out, self.out = self.out, []
        self.transport.write(b"".join(out))


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n\r\nOK"


class PingServer(asyncio.Protocol):
    """GET /ping/<anything> -> 200 "OK" on a bare protocol: llhttp parses,
    each request is answered (after its EVALSHA with a lane) in order."""

    def __init__(self, lane: RawLane | None) -> None:
        self.lane = lane
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport = None
        self.pending: collections.deque = collections.deque()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        name, self.url = self.url.decode().rsplit("/", 1)[-1], b""
        if self.lane is None:
            self.transport.write(OK)
            return
        future = self.lane.call(name)
        self.pending.append(future)
        future.add_done_callback(self.answered)

    def answered(self, _future) -> None:
        while self.pending and self.pending[0].done():
            self.pending.popleft()
            if not self.transport.is_closing():
                self.transport.write(OK)


async def serve_protocol(sock: socket.socket, mode: str, redis_url: str | None) -> None:
    loop = asyncio.get_running_loop()
    lane = None
    if mode == "protocol-raw":
        client = redis.Redis.from_url(redis_url)
        sha = await client.script_load(SCRIPT)
        await client.aclose()
        _, lane = await loop.create_unix_connection(RawLane, redis_url.removeprefix("unix://"))
        lane.sha = sha.encode() if isinstance(sha, str) else sha
    server = await loop.create_server(lambda: PingServer(lane), sock=sock)
    await server.serve_forever()


def make_app(mode: str, redis_url: str | None) -> web.Application:
    app = web.Application()
    state: dict[str, Batch] = {}

    async def ping(request: web.Request) -> web.Response:
        if mode != "empty":
            await state["batch"].call(request.match_info["tail"])
        return web.Response(text="OK")

    async def setup(app: web.Application):
        if mode == "raw":
            client = redis.Redis.from_url(redis_url)
            sha = await client.script_load(SCRIPT)
            await client.aclose()
            loop = asyncio.get_running_loop()
            _, lane = await loop.create_unix_connection(RawLane, redis_url.removeprefix("unix://"))
            lane.sha = sha.encode() if isinstance(sha, str) else sha
            state["batch"] = lane  # type: ignore[assignment]
            yield
            return
        if mode != "empty":
            client = redis.Redis.from_url(redis_url, max_connections=64)
            batch = Batch(client, mode)
            batch.sha = await client.script_load(SCRIPT)
            state["batch"] = batch
        yield
        if mode != "empty":
            await state["batch"].client.aclose()

    app.cleanup_ctx.append(setup)
    app.router.add_get("/ping/{tail:.+}", ping)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--mode", choices=("empty", "redis", "script", "raw", "protocol", "protocol-raw"),
                        default="empty")
    parser.add_argument("--redis")
    opts = parser.parse_args()
    if opts.mode not in ("empty", "protocol") and not opts.redis:
        sys.exit("--redis is needed with --mode redis, script, raw or protocol-raw")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", opts.port))
    sock.listen(1024)
    for _ in range(opts.workers - 1):
        if os.fork() == 0:
            break
    if opts.mode.startswith("protocol"):
        asyncio.run(serve_protocol(sock, opts.mode, opts.redis))
    else:
        web.run_app(make_app(opts.mode, opts.redis), sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    main()
