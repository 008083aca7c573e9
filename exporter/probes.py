"""Active monitors: cronmon requests each monitor's URL on its interval.

A check's result is an ordinary check-in through the core (a landing, in
CrossCheck's words): success, warning (slower than `slow`) or fail (no
answer within `timeout`, a connection error, an HTTP status >= 400, a
refused redirect). The monitor's failure_threshold turns consecutive
failures into the `failed` status (alert CronProbeDown); its latest result
is also kept for the cronmon_probe_* metrics.

Scheduling is shared through Redis (Core.publish_probes / claim_probes):
every active monitor has a due time; a process claims due checks
atomically, which moves the due time one interval on, so among any number
of processes exactly one runs each check, and when a process dies the
next check is simply claimed by another (handover within one interval).
A monitor's first due time has a phase derived from its id, which spreads
checks evenly over the interval instead of firing them all at once.

Targets are whatever a monitor's owner configured, so a check follows at
most MAX_REDIRECTS redirects and never to another scheme, reads at most
`max_bytes` of the body, and has connect/read/total timeouts of `timeout`.

Where it may connect is a NetworkPolicy. A YAML monitor's check (written
by the operator, in git) may connect anywhere. An API monitor's check
(written by whoever holds a write token) may connect only to public
addresses, plus the networks the operator names with
--probe-allow-network, and never to cronmon's own Redis: loopback,
private, link-local (169.254.169.254, the cloud metadata service),
carrier-grade NAT, multicast and reserved addresses are refused, so a
token cannot turn active checks into a scanner of the internal network.
Every address the name resolves to must be permitted, at every redirect
hop, and the check then connects to the address it checked (the URL is
rewritten to it; Host and TLS SNI keep the name, so certificates are
still verified against the name): a resolver that answers differently a
moment later (DNS rebinding) cannot redirect the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from . import __version__
from .core import Core, Registry
from .errors import ChecksNotRunning, RateLimited, StoreUnavailable
from .model import CheckIn, HttpProbe, Kind, Monitor, in_networks
from .storage import RecordResult

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
USER_AGENT = f"cronmon/{__version__} (active check)"


@dataclass(frozen=True)
class ProbeResult:
    kind: Kind  # SUCCESS, WARNING or FAIL
    duration: float
    status_code: int  # 0: no HTTP answer
    error: str | None = None


def classify(probe: HttpProbe, status_code: int, duration: float, error: str | None) -> ProbeResult:
    """Pure: what one check's answer means for the monitor."""
    if error is not None:
        return ProbeResult(Kind.FAIL, duration, status_code, error)
    if status_code >= 400:
        return ProbeResult(Kind.FAIL, duration, status_code, f"HTTP {status_code}")
    if duration > probe.slow:
        return ProbeResult(Kind.WARNING, duration, status_code, f"slow: {duration:.3f}s > {probe.slow:g}s")
    return ProbeResult(Kind.SUCCESS, duration, status_code)


def first_due(monitor_id: str, interval: float, now: float) -> float:
    """The first check of a monitor: at its id's phase within the interval,
    so checks of many monitors are spread out, not bunched."""
    phase = int.from_bytes(hashlib.sha256(monitor_id.encode()).digest()[:8], "big") / 2**64 * interval
    due = now - (now % interval) + phase
    return due if due >= now else due + interval


def fingerprint(probe: HttpProbe) -> str:
    return json.dumps({"i": probe.interval, "u": probe.url, "s": probe.slow, "t": probe.timeout}, sort_keys=True)


class _Refused(Exception):
    pass


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (the system resolver)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class NetworkPolicy:
    """Where a check may connect. `public_only`: only to global unicast
    addresses, plus `allowed` networks; `allowed` alone (public_only off):
    only there; neither: anywhere. `forbidden` (host, port) pairs are
    refused whatever else allows them (cronmon's own Redis)."""

    public_only: bool = False
    allowed: tuple = ()
    forbidden: tuple[tuple[str, int], ...] = ()

    def refusal(self, address: str, port: int) -> str | None:
        """Why `address` may not be connected to; None if it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if (str(ip), port) in self.forbidden:
            return f"{ip} port {port} is cronmon's own Redis"
        if self.allowed and in_networks(str(ip), self.allowed):
            return None
        if self.public_only:
            if ip.is_global and not ip.is_multicast:
                return None
            return (f"{ip} is not a public address (loopback, private, link-local, multicast or reserved); "
                    "the operator can allow its network with --probe-allow-network")
        if self.allowed:
            return f"{ip} is outside the allowed probe networks"
        return None


ANYWHERE = NetworkPolicy()


async def _permitted_address(url: httpx.URL, policy: NetworkPolicy, resolve: Resolver) -> str:
    """The address to connect to for `url`: its host if that is an IP
    literal, else the first address it resolves to; _Refused unless every
    resolved address is permitted."""
    if url.scheme not in ("http", "https"):
        raise _Refused(f"scheme {url.scheme!r} is not http or https")
    host = url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = None  # a name, not an address literal
    if addresses is None:
        try:
            addresses = await resolve(host, port)
        except OSError as exc:
            raise _Refused(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise _Refused(f"cannot resolve {host}: no addresses")
    for address in addresses:
        why = policy.refusal(address, port)
        if why is not None:
            raise _Refused(f"{host} refused: {why}" if address != host else f"refused: {why}")
    return addresses[0]


def _pinned(url: httpx.URL, address: str) -> tuple[httpx.URL, dict, dict]:
    """The request for `url` sent to `address`: the URL with the address as
    host, the Host header and the TLS server name keeping the name."""
    if address == url.host:
        return url, {}, {}
    host_header = url.host if url.port is None else f"{url.host}:{url.port}"
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return url.copy_with(host=address), {"Host": host_header}, extensions


async def run_check(
    client: httpx.AsyncClient,
    probe: HttpProbe,
    *,
    policy: NetworkPolicy = ANYWHERE,
    resolve: Resolver = system_resolver,
    max_bytes: int = 65536,
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """One check of `probe.url`. Never raises for anything the target does.
    Every hop is checked against `policy` before anything connects."""
    started = clock()
    status_code, error = 0, None
    try:
        async with asyncio.timeout(probe.timeout):  # total, whatever the server drips
            url = httpx.URL(probe.url)
            for hop in range(MAX_REDIRECTS + 1):
                address = await _permitted_address(url, policy, resolve)
                target_url, headers, extensions = _pinned(url, address)
                async with client.stream("GET", target_url, headers=headers, extensions=extensions,
                                         timeout=httpx.Timeout(probe.timeout)) as response:
                    status_code = response.status_code
                    location = response.headers.get("Location")
                    if response.is_redirect and location:
                        target = url.join(location)
                        if target.scheme != url.scheme:
                            raise _Refused(f"redirect from {url.scheme} to {target.scheme} refused")
                        if hop == MAX_REDIRECTS:
                            raise _Refused(f"more than {MAX_REDIRECTS} redirects")
                        url = target
                        continue
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= max_bytes:
                            break  # enough: the rest is not ours to download
                    break
    except TimeoutError:
        error = f"no answer within {probe.timeout:g}s"
        status_code = 0
    except _Refused as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        status_code = 0
    return classify(probe, status_code, clock() - started, error)


def checkin_for(monitor: Monitor, result: ProbeResult, now: float, on_demand: bool = False) -> CheckIn:
    # The landing's status (SUCCESS / WARNING / ERROR) follows from the kind;
    # the APIs that show it derive it (crosscheck.landing_json). A check run
    # on demand (test_now) is a real check that counts like any other: it is
    # marked on_demand, never `test` (a test landing changes no state).
    annotations: dict = {"probe": True}
    if on_demand:
        annotations["on_demand"] = True
    metadata: dict[str, Any] = {"status_code": result.status_code, "response_time": round(result.duration, 6)}
    if result.error:
        metadata["error"] = result.error
    return CheckIn(
        monitor_id=monitor.id,
        kind=result.kind,
        received_at=now,
        duration=result.duration,
        message=result.error,
        metadata=metadata,
        probe_status_code=result.status_code,
        annotations=annotations,
    )


def redis_endpoints(redis_url: str | None) -> tuple[tuple[str, int], ...]:
    """The (address, port) pairs of the Redis at `redis_url` (none for a
    unix socket, which no HTTP check can reach), resolved at start-up."""
    if not redis_url:
        return ()
    url = httpx.URL(redis_url)
    if url.scheme not in ("redis", "rediss") or not url.host:
        return ()
    port = url.port or 6379
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return ()
    return tuple((str(ipaddress.ip_address(a.split("%", 1)[0])), port) for a in sorted(addresses))


class Prober:
    """Runs the checks this process claims, at most `concurrency` at once."""

    def __init__(
        self,
        core: Core,
        *,
        concurrency: int = 64,
        allowed_networks: Sequence = (),
        forbidden: Sequence[tuple[str, int]] = (),
        resolve: Resolver = system_resolver,
        max_bytes: int = 65536,
        tick: float = 0.25,
        clock: Callable[[], float] = time.time,
        on_lag: Callable[[float], None] | None = None,
    ):
        """`allowed_networks`: where API monitors' checks may connect besides
        public addresses (--probe-allow-network); `forbidden`: (address,
        port) pairs no check may connect to (cronmon's own Redis)."""
        self.core = core
        self.concurrency = concurrency
        self.api_policy = NetworkPolicy(public_only=True, allowed=tuple(allowed_networks), forbidden=tuple(forbidden))
        self.yaml_policy = NetworkPolicy(forbidden=tuple(forbidden))
        self._forbidden = tuple(forbidden)
        self._store_servers: tuple[tuple[str, int], ...] = ()
        self.resolve = resolve
        self.max_bytes = max_bytes
        self.tick = tick
        self.clock = clock
        self.on_lag = on_lag  # told how late each claimed check starts
        self.checks = 0  # checks finished by this process (tests, benchmarks)
        self._synced: Registry | None = None
        # The shared HTTP client, while run() runs (test_now checks with it).
        self.client: httpx.AsyncClient | None = None
        self._running: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def policy(self, monitor: Monitor) -> NetworkPolicy:
        """Where `monitor`'s check may connect. A cluster's nodes are
        forbidden as the store learns them (a failover or a new node
        changes the slot map), not only those its URL names."""
        servers = self.core.store_servers()
        if servers != self._store_servers:
            self._store_servers = servers
            forbidden = (*self._forbidden, *servers)
            self.api_policy = replace(self.api_policy, forbidden=forbidden)
            self.yaml_policy = replace(self.yaml_policy, forbidden=forbidden)
        return self.yaml_policy if monitor.from_yaml else self.api_policy

    async def sync(self) -> None:
        """Publish this process's active monitors to the shared schedule
        (only when its registry changed)."""
        registry = self.core.registry
        if registry is self._synced:
            return
        now = self.clock()
        changed = registry.api_changes_since(self._synced)
        if changed is not None:
            # Only some API monitors changed (a create, an edit, a delete):
            # publish those, not all 10,000 (one Redis script over every
            # active monitor, and a scan of all of them here, per change).
            active = [m for m in map(registry.monitors.get, changed) if m is not None and is_active(m)]
            kept = {m.id for m in active}
            await self.core.publish_probes([_entry(m, now) for m in active], [i for i in changed if i not in kept])
        else:
            await self.core.publish_probes([_entry(m, now) for m in registry.monitors.values() if is_active(m)])
        self._synced = registry

    async def check(
        self, client: httpx.AsyncClient, monitor: Monitor, on_demand: bool = False
    ) -> tuple[CheckIn, RecordResult | None]:
        """Check one monitor now and record the result (None: refused by the
        monitor's rate limit)."""
        assert monitor.probe is not None
        policy = self.policy(monitor)
        result = await run_check(client, monitor.probe, policy=policy, resolve=self.resolve, max_bytes=self.max_bytes)
        checkin = checkin_for(monitor, result, self.clock(), on_demand)
        try:
            recorded = await self.core.record(checkin)
        except RateLimited:
            log.warning("active check of %s not recorded: over the monitor's rate limit", monitor.id)
            recorded = None
        self.checks += 1
        return checkin, recorded

    async def check_now(self, monitor: Monitor) -> tuple[CheckIn, RecordResult | None]:
        """A check of `monitor`, now, recorded like any check (an API's
        "test now"; it counts), with the client run() shares; ChecksNotRunning while
        this process runs no checks."""
        if self.client is None:
            raise ChecksNotRunning("active checks are not running in this process")
        return await self.check(self.client, monitor, on_demand=True)

    async def run_once(self, client: httpx.AsyncClient) -> int:
        await self.sync()
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        now = self.clock()
        claimed = await self.core.claim_probes(now, free)
        for monitor_id, due in claimed:
            monitor = self.core.registry.monitors.get(monitor_id)
            if monitor is None or not is_active(monitor):
                continue  # another replica's config; ours will re-sync
            if self.on_lag is not None:
                self.on_lag(max(0.0, now - due))
            task = asyncio.create_task(self._guarded(client, monitor))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return len(claimed)

    async def _guarded(self, client: httpx.AsyncClient, monitor: Monitor) -> None:
        try:
            await self.check(client, monitor)
        except StoreUnavailable as exc:
            log.warning("active check of %s not recorded: %s", monitor.id, exc)
        except Exception:
            log.exception("active check of %s failed unexpectedly", monitor.id)

    async def run(self, client: httpx.AsyncClient) -> None:
        """Claim and run checks until stop(); then wait for those in flight
        (they are bounded by their timeouts)."""
        self.client = client
        backoff = self.tick
        while not self._stopping.is_set():
            try:
                await self.run_once(client)
                backoff = self.tick
            except StoreUnavailable as exc:
                log.warning("prober: %s; retrying in %.1fs", exc, backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception:
                log.exception("prober: unexpected error")
                backoff = min(backoff * 2, 30.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
        if self._running:
            await asyncio.wait(set(self._running))
        self.client = None


def _entry(monitor: Monitor, now: float) -> tuple[str, str, float]:
    """An active monitor's entry in the shared schedule: (id, fingerprint, first due)."""
    assert monitor.probe is not None
    return monitor.id, fingerprint(monitor.probe), first_due(monitor.id, monitor.probe.interval, now)


def is_active(monitor: Monitor) -> bool:
    """Whether cronmon checks `monitor` itself (it has a probe and is not retired)."""
    return monitor.probe is not None and not monitor.retired


def make_client(concurrency: int) -> httpx.AsyncClient:
    """The one client every check shares (connection reuse, bounded pool).
    Redirects are followed by run_check itself, to refuse scheme changes."""
    return httpx.AsyncClient(
        follow_redirects=False,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        headers={"User-Agent": USER_AGENT},
    )
