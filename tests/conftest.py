"""Shared fixtures: a real redis-server process, a controllable clock, apps.

The suite starts its own redis-server (the same binary cronmon embeds) on a
free loopback port; every test gets its own key prefix, so tests never see
each other's data and need no FLUSHALL.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from exporter import credentials
from exporter.config import load_config
from exporter.core import Core, Registry
from exporter.embedded import find_redis_server
from exporter.settings import Settings
from exporter.store import Store, StoreLimits, connect
from exporter.web import fast_ping

# A fixed, ordinary instant (2026-06-15 12:00:00 UTC) for tests that inject `now`.
T0 = 1781524800.0

# The ping fast path, the listener and the store's lane are protocols on
# the event loop, which `cronmon serve` runs on uvloop (--event-loop auto)
# or on asyncio's own loop (--event-loop asyncio): their tests run on both.
# (The rest run on asyncio's in-process, and on uvloop wherever they start
# `cronmon serve`.)
BOTH_LOOPS = {"test_fast_ping.py", "test_redis_lane.py", "test_acceptor.py"}


def pytest_asyncio_loop_factories(config, item):
    # (pytest-asyncio asks about every async test, and wants a mapping.)
    if item.path.name not in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("test redis-server did not start")
    yield RedisServer(f"redis://127.0.0.1:{port}/0", port, process)
    process.terminate()
    process.wait(10)


class Clock:
    """A clock the test moves by hand: `now` is always injected, never slept for."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Backend:
    """Where a test's store is: `kind` single (one redis-server), sentinel
    (a primary, two replicas, three sentinels) or cluster (3 primaries with
    a replica each); `url` is a --redis-url for it."""

    kind: str
    url: str


# The store fixture's backends. A module runs its store tests on all three
# with a pytest_generate_tests that parametrizes "backend" (test_core.py).
BACKENDS = ("single", "sentinel", "cluster")


@pytest.fixture(scope="session")
def sentinel_backend(tmp_path_factory) -> Backend:
    from .sentinel import sentinel_group_running

    with sentinel_group_running(tmp_path_factory.mktemp("sentinel")) as group:
        yield Backend("sentinel", group.url())


@pytest.fixture(scope="session")
def cluster_backend(tmp_path_factory) -> Backend:
    from .cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield Backend("cluster", cluster.url)
    finally:
        cluster.stop()


@pytest.fixture
def backend(request, redis_server) -> Backend:
    kind = getattr(request, "param", "single")
    if kind == "single":
        return Backend("single", redis_server.url)
    assert kind in BACKENDS, kind
    return request.getfixturevalue(f"{kind}_backend")


@pytest.fixture
async def store(backend, prefix) -> Store:
    s = Store(connect(backend.url), prefix, StoreLimits(history=20, logs=3, meta_keys=4, open_runs=5))
    yield s
    await s.close()


def write_config(directory: Path, text: str, name: str = "monitors.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def registry_from(path: Path, data_dir: Path, env: dict | None = None, now: float = T0) -> Registry:
    config = load_config(path, now=now)
    return Registry.build(config, credentials.resolve(config, data_dir, env or {"CRONMON_PING_KEY": "test-ping-key"}))


@pytest.fixture
def make_core(store, clock, tmp_path) -> Callable[[str], Core]:
    """Core over the test store with monitors from a YAML snippet."""

    def build(yaml_text: str) -> Core:
        path = write_config(tmp_path, yaml_text)
        return Core(store, registry_from(path, tmp_path), clock)

    return build


@pytest.fixture
def app_settings(tmp_path, redis_server, prefix) -> Callable[..., Settings]:
    def build(config_path: Path, **overrides) -> Settings:
        values = dict(
            config_path=config_path,
            redis_url=redis_server.url,
            data_dir=tmp_path / "data",
            key_prefix=prefix,
            sweep_interval=3600.0,  # tests drive sweeps themselves
            # A simulated clock's jumps would read as outages; the outage
            # tests turn it on.
            track_outages=False,
        )
        values.update(overrides)
        return Settings(**values)

    return build


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Poll an async or sync predicate until it is truthy (for real processes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


@pytest.fixture
async def raw_redis(backend):
    """A plain client of the test's backend (a cluster client on a cluster)."""
    client = connect(backend.url)
    yield client
    await client.aclose()



async def redis_dump(client: redis.Redis, prefix: str) -> dict:
    """Every key under `prefix` with its serialized value and whether it
    expires: equal before and after a request means the request changed
    nothing in Redis (the "a refusal changes nothing" invariant)."""
    dump = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        dump[key] = (await client.dump(key), await client.pttl(key) >= 0)
    return dump


async def app_dump(test_client) -> dict:
    """redis_dump of a test app's store, once its sweeper has made its first
    pass (which writes the deadline index at start-up)."""
    from exporter.web.keys import CORE, SWEEPER

    app = test_client.app
    await wait_for(lambda: app[SWEEPER].passes > 0)
    return await redis_dump(app[CORE].store.client, app[CORE].store.prefix)


class CronmonTestServer(TestServer):
    """An app served the way `cronmon serve` serves it (fast_ping.listen:
    connections start on the ping fast path), on 127.0.0.1."""

    listener: fast_ping.Listener | None = None

    async def start_server(self, loop=None, **kwargs) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(**kwargs)
        await self.runner.setup()
        assert isinstance(self.runner, web.AppRunner)
        self.listener = await fast_ping.listen(self.app, self.runner, self.host, self.port or 0)
        assert self.listener.fast is not None, "the app's settings rule the fast path out"
        self.port = self.listener.port
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close(timeout=5)
            self.listener = None
        await super().close()


@pytest.fixture
async def cronmon_server():
    """`await cronmon_server(app)`: a started CronmonTestServer, closed
    after the test."""
    started: list[CronmonTestServer] = []

    async def start(app: web.Application) -> CronmonTestServer:
        server = CronmonTestServer(app, host="127.0.0.1")
        await server.start_server()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture(params=["fast path", "aiohttp"])
def serve(request, aiohttp_server, cronmon_server):
    """`await serve(app)`: a started test server for `app`, once as
    `cronmon serve` runs it (plain pings answered by the fast path), once
    by aiohttp alone: a test using this runs against both, so the two
    must answer and record alike."""

    async def start(app: web.Application) -> TestServer:
        if request.param == "aiohttp":
            return await aiohttp_server(app, host="127.0.0.1")
        return await cronmon_server(app)

    return start
