"""The aiohttp application factory.

`create_app(settings)` loads the config (raising ConfigError if it is bad,
so a bad config never starts), builds the store client, core and sweeper,
and registers resources in `cleanup_ctx`: the embedded redis-server (if no
URL is given), the Redis client, the start-up resync and the sweeper task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import AbstractRoute, MatchInfoError, UrlMappingMatchInfo
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector

from .. import webconfig
from ..bridge import AlertBridge
from ..core import Core
from ..embedded import EmbeddedRedis
from ..errors import StoreUnavailable
from ..heap import freeze_long_lived
from ..model import HEARTBEAT_INTERVAL
from ..probes import Prober, make_client, redis_endpoints
from ..reloader import Reloader
from ..scrape import Scraper
from ..settings import Settings
from ..store import Store, connect, redis_url_hosts
from ..sweeper import Sweeper
from ..workers import MULTIPROC_ENV
from . import api_v1, boxwatch, crontify, crosscheck, crosscheck_checkin, healthchecks, ops, sentry
from .client import bearer_token
from .keys import BRIDGE, CORE, EMBEDDED, OBSERVE_REQUEST, PROBER, RELOADER, SCRAPER, SELF_REGISTRY, SETTINGS, SWEEPER
from .logs import quiet_client_errors

log = logging.getLogger(__name__)


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> web.Application:
    reloader = Reloader(settings, clock)
    registry = reloader.load_initial()  # ConfigError propagates: refuse to start

    embedded = None if settings.redis_url else EmbeddedRedis(
        settings.data_dir, settings.redis_server_binary, allocator=settings.redis_allocator
    )
    url = settings.redis_url or embedded.url  # type: ignore[union-attr]
    store = Store(connect(url), settings.key_prefix, settings.limits)
    core = Core(
        store, registry, clock, monitors_per_owner=settings.monitors_per_owner, track_outages=settings.track_outages
    )
    sweeper = Sweeper(core, interval=settings.sweep_interval, clock=clock)

    def on_swap(new_registry) -> None:
        core.swap(new_registry)
        sweeper.needs_resync = True

    reloader.on_swap.append(on_swap)

    bridge = None
    if settings.alertmanager_urls and settings.bridge_enabled:
        bridge = AlertBridge(
            core, settings.alertmanager_urls, settings.base_url, settings.alert_resend_interval, clock
        )
        core.listeners.append(bridge.notify)

    # The text format has no place for _created samples (they became gauges).
    disable_created_metrics()
    self_registry = CollectorRegistry(auto_describe=False)
    own_metrics = self_registry
    if os.environ.get(MULTIPROC_ENV):
        # One of several workers: counters live in shared files and a scrape
        # on any worker reports the sum (process_* would be one worker's).
        own_metrics = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self_registry)
    else:
        ProcessCollector(registry=self_registry)
    requests_total = Counter(
        "cronmon_http_requests_total",
        "HTTP requests handled, by handler and status code.",
        ["handler", "code"],
        registry=own_metrics,
    )
    request_seconds = Histogram(
        "cronmon_http_request_duration_seconds",
        "HTTP request latency, by handler.",
        ["handler"],
        registry=own_metrics,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )

    probe_lag = Histogram(
        "cronmon_probe_schedule_lag_seconds",
        "How late active checks started after their due time (this process).",
        registry=own_metrics,
        buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    )
    prober = Prober(
        core,
        concurrency=settings.probe_concurrency,
        allowed_networks=settings.probe_allowed_networks,
        forbidden=_redis_endpoints(settings.redis_url),
        max_bytes=settings.probe_max_bytes,
        clock=clock,
        on_lag=probe_lag.observe,
    )

    # Label children looked up once per (handler, code), not per request.
    counted: dict[tuple[str, int], Counter] = {}
    timed: dict[str, Histogram] = {}

    def observe(name: str, code: int, seconds: float) -> None:
        """Count and time one request to the route named `name`."""
        counter = counted.get((name, code))
        if counter is None:
            counter = counted[(name, code)] = requests_total.labels(name, str(code))
        counter.inc()
        histogram = timed.get(name)
        if histogram is None:
            histogram = timed[name] = request_seconds.labels(name)
        histogram.observe(seconds)

    def instrumented(name: str, handler: Handler) -> Handler:
        """`handler`, counted and timed as `name` (its route's canonical path)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            code = 500
            try:
                response = await handler(request)
                code = response.status
                return response
            except web.HTTPException as exc:
                code = exc.status
                raise
            finally:
                observe(name, code, time.perf_counter() - started)

        handle.instrumented_as = name  # type: ignore[attr-defined]
        return handle

    auth = _web_config_auth(settings)

    def wrap(name: str, handler: Handler) -> Handler:
        """What every route runs: the web config's auth (if any) inside
        the instrumentation, so its 401s and 403s are counted too."""
        wrapped = instrumented(name, handler if auth is None else functools.partial(auth, handler=handler))
        wrapped.__wrapped__ = handler  # type: ignore[attr-defined]  # the route's own (inspect.unwrap)
        return wrapped

    quiet_client_errors()
    with warnings.catch_warnings():
        # `router=` is deprecated in aiohttp 3 (we pin <4): it is the one
        # public way to refuse a bad Expect header before aiohttp's own
        # expect handler, which no middleware precedes (see _Router).
        warnings.filterwarnings("ignore", "router argument is deprecated", DeprecationWarning)
        app = web.Application(
            # No middleware: each route's handler is wrapped once, when it is
            # added (_Router). aiohttp's middleware chain costs every request
            # a partial and a coroutine per middleware: 16 µs of a worker's
            # CPU per ping, measured with the record step stubbed.
            router=_Router(wrap),
            client_max_size=settings.max_body_bytes,
            # Bodies are inflated by the kit (client.read_body), which
            # bounds the result and answers a corrupt one at once.
            handler_args={"auto_decompress": False},
        )
    if settings.web_config:
        webconfig.install(app, settings.web_config)  # its response headers
    app[SETTINGS] = settings
    app[CORE] = core
    app[RELOADER] = reloader
    app[SWEEPER] = sweeper
    app[PROBER] = prober
    app[BRIDGE] = bridge
    app[OBSERVE_REQUEST] = observe
    app[EMBEDDED] = embedded
    app[SELF_REGISTRY] = self_registry
    app[SCRAPER] = Scraper(core, settings.base_url)

    app.cleanup_ctx.append(_embedded_redis)
    app.cleanup_ctx.append(_redis_client)
    app.cleanup_ctx.append(_heartbeat_task)
    app.cleanup_ctx.append(_sweeper_task)
    app.cleanup_ctx.append(_bridge_task)
    app.cleanup_ctx.append(_prober_task)
    ops.add_routes(app)
    healthchecks.add_routes(app)
    api_v1.add_routes(app)
    crontify.add_routes(app)
    boxwatch.add_routes(app)
    crosscheck_checkin.add_routes(app)  # before crosscheck's /api/flights/{id}/
    crosscheck.add_routes(app)
    sentry.add_routes(app)
    healthchecks.add_root_routes(app)  # last: hc-ping.com's /<uuid>, /<key>/<slug>
    return app


def _web_config_auth(settings: Settings) -> Middleware | None:
    """--web.config.file's basic auth (and client SAN check), if any."""
    if settings.web_config is None:
        return None
    return webconfig.middleware(settings.web_config, lambda request: bearer_token(request)[1] is not None)


def _redis_endpoints(redis_url: str | None) -> tuple[tuple[str, int], ...]:
    """What active checks must not reach: the Redis server, or with
    Sentinel or a cluster each host the URL names (a multi-host URL is no
    http URL)."""
    hosts = redis_url_hosts(redis_url) if redis_url else None
    if hosts is not None:
        return tuple(e for host, port in hosts for e in redis_endpoints(f"redis://{_bracket(host)}:{port}"))
    return redis_endpoints(redis_url)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Router(web.UrlDispatcher):
    """aiohttp's router, with two differences.

    Every route's handler is wrapped when it is added (`wrap(name,
    handler)`: cronmon's request metrics and the web config's auth), and
    so is the answer to a request no route matches (404, 405: named
    "unmatched"), instead of running a middleware chain for each request.

    It refuses an Expect header other than 100-continue itself, for every
    path (unknown ones too) and before any handler. aiohttp's own answer
    to one quotes the value into its 417 body, and a value that is not
    UTF-8 (any client can send one) made that a 500 with a traceback
    logged."""

    def __init__(self, wrap: Callable[[str, Handler], Handler]) -> None:
        super().__init__()
        self._wrap = wrap
        self._unmatched = wrap("unmatched", _raise_unmatched)  # once, not per request

    def _add(self, methods: tuple[str, ...], path: str, handler: Any, name: str | None, **kwargs: Any) -> AbstractRoute:
        resource = self.add_resource(path, name=name)
        wrapped = self._wrap(resource.canonical, handler)
        routes = [resource.add_route(method, wrapped, **kwargs) for method in methods]
        return routes[-1]

    # aiohttp's add_get and friends call resource.add_route, not add_route:
    # each is overridden (tests/test_ops.py checks that every route of the
    # app is wrapped).
    def add_route(self, method: str, path: str, handler: Any, *, name: str | None = None,
                  expect_handler: Any = None) -> AbstractRoute:
        return self._add((method,), path, handler, name, expect_handler=expect_handler)

    def add_get(self, path: str, handler: Any, *, name: str | None = None, allow_head: bool = True,
                **kwargs: Any) -> AbstractRoute:
        methods = (hdrs.METH_HEAD, hdrs.METH_GET) if allow_head else (hdrs.METH_GET,)
        return self._add(methods, path, handler, name, **kwargs)

    def add_head(self, path: str, handler: Any, **kwargs: Any) -> AbstractRoute:
        return self.add_route(hdrs.METH_HEAD, path, handler, **kwargs)

    def add_post(self, path: str, handler: Any, **kwargs: Any) -> AbstractRoute:
        return self.add_route(hdrs.METH_POST, path, handler, **kwargs)

    def add_put(self, path: str, handler: Any, **kwargs: Any) -> AbstractRoute:
        return self.add_route(hdrs.METH_PUT, path, handler, **kwargs)

    def add_patch(self, path: str, handler: Any, **kwargs: Any) -> AbstractRoute:
        return self.add_route(hdrs.METH_PATCH, path, handler, **kwargs)

    def add_delete(self, path: str, handler: Any, **kwargs: Any) -> AbstractRoute:
        return self.add_route(hdrs.METH_DELETE, path, handler, **kwargs)

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        expect = request.headers.get(hdrs.EXPECT)
        if expect and request.version == HttpVersion11 and expect.lower() != "100-continue":
            refusal = web.HTTPExpectationFailed(text="unknown Expect header: only Expect: 100-continue is understood")
            # The body (if the client sent it at all) is left unread: close
            # the connection rather than parse it as the next request.
            refusal.force_close()
            raise refusal
        found = await super().resolve(request)
        if isinstance(found, MatchInfoError):
            return _Unmatched(found.http_exception, self._unmatched)
        return found


class _Unmatched(MatchInfoError):
    """No route: aiohttp's answer (404, 405), through the same wrap."""

    def __init__(self, http_exception: web.HTTPException, handler: Handler) -> None:
        super().__init__(http_exception)
        self._wrapped = handler

    @property
    def handler(self) -> Handler:
        return self._wrapped


async def _raise_unmatched(request: web.Request) -> web.StreamResponse:
    """The answer _Unmatched carries (aiohttp's 404 or 405)."""
    match_info = request.match_info
    assert isinstance(match_info, MatchInfoError)
    raise match_info.http_exception


async def _embedded_redis(app: web.Application) -> AsyncIterator[None]:
    embedded = app[EMBEDDED]
    if embedded is not None:
        await embedded.start()
    try:
        yield
    finally:
        if embedded is not None:
            await embedded.stop()


async def _redis_client(app: web.Application) -> AsyncIterator[None]:
    try:
        # API-created monitors answer pings from the first request on.
        await app[CORE].sync_api_monitors()
    except StoreUnavailable as exc:
        log.warning("API monitors not loaded yet (the sweeper retries): %s", exc)
    freeze_long_lived()  # the config just loaded stays for the process's life
    yield
    await app[CORE].store.close()


async def _heartbeat_task(app: web.Application) -> AsyncIterator[None]:
    """Every HEARTBEAT_INTERVAL, tell Redis this process takes check-ins
    (Core.heartbeat): how cronmon knows when none did."""
    core = app[CORE]
    if not core.track_outages:
        yield
        return
    stopping = asyncio.Event()

    async def beat() -> None:
        while not stopping.is_set():
            try:
                await core.heartbeat()
            except StoreUnavailable:
                pass  # the gap this leaves is the outage; /-/ready reports Redis
            except Exception:  # keep beating whatever happens
                log.exception("heartbeat: unexpected error")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=HEARTBEAT_INTERVAL)

    task = asyncio.create_task(beat(), name="cronmon-heartbeat")
    yield
    stopping.set()
    await _finish(task)


async def _sweeper_task(app: web.Application) -> AsyncIterator[None]:
    sweeper = app[SWEEPER]
    task = asyncio.create_task(sweeper.run(), name="cronmon-sweeper")
    yield
    sweeper.stop()
    await _finish(task)


async def _finish(task: asyncio.Task, grace: float = 10.0) -> None:
    """Wait for a background task that was asked to stop; cancel it only if
    it does not within `grace` seconds."""
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.warning("%s did not stop in %.0fs; cancelling it", task.get_name(), grace)
        task.cancel()
        await asyncio.wait({task}, timeout=grace)


async def _prober_task(app: web.Application) -> AsyncIterator[None]:
    prober = app[PROBER]
    async with make_client(app[SETTINGS].probe_concurrency) as client:
        task = asyncio.create_task(prober.run(client), name="cronmon-prober")
        yield
        prober.stop()
        await _finish(task)


async def _bridge_task(app: web.Application) -> AsyncIterator[None]:
    bridge = app[BRIDGE]
    if bridge is None:
        yield
        return
    async with httpx.AsyncClient(follow_redirects=False) as client:
        task = asyncio.create_task(bridge.run(client), name="cronmon-alert-bridge")
        yield
        bridge.stop()
        await _finish(task)
