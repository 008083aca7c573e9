"""Redis Sentinel (issue 14, part 1): ``--redis-url redis+sentinel://...``.

Real processes on free loopback ports, started and stopped here: a primary
with two replicas (replicaof) and three sentinels (quorum 2, down after
1 s), all the redis-server cronmon embeds (``redis-server <conf>
--sentinel`` is Sentinel). A real cronmon app is driven with pings at
~20/s while the primary is killed with SIGKILL: cronmon must follow the
promoted replica on its own, answer 503 (never hang, never another 5xx)
while there is none, and every ping it answered 200, before and after, must
be in the new primary's history exactly once (a 503 is retried with the same
rid and Idempotency-Key, as `curl --retry` would, and is then a duplicate
if it had been written).
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from exporter.embedded import find_redis_server
from exporter.errors import StoreUnavailable
from exporter.store import Store, StoreLimits, connect, parse_sentinel_url
from exporter.web.app import _redis_endpoints, create_app
from exporter.web.keys import CORE

from .conftest import free_port, write_config

SERVICE = "cronmon-ha"
PING_KEY = "sentinel-test-ping-key"
CONFIG = """
monitors:
  - id: beat
    schedule: {interval: 1h}
"""
# A request is never answered later than this: socket timeout (5 s) plus
# margin; WAIT gives up after wait_timeout (1 s by default) before that.
ANSWER_BOUND = 6.5
# After the kill, cronmon answers 200 again within this (Sentinel needs
# ~1 s to see the primary down, then agrees, elects and promotes).
RECOVERY_BOUND = 25.0


def _wait_port(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis process on port {port} exited with {process.returncode}")
        try:
            redis.Redis(port=port, socket_timeout=0.5).ping()
            return
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis process on port {port} did not start in {timeout}s")


@dataclass
class SentinelGroup:
    primary_port: int
    replica_ports: list[int]
    sentinel_ports: list[int]
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0{query}"

    def primary_per_sentinels(self) -> set[int]:
        ports = set()
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                ports.add(int(client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1]))
        return ports


def _settled(group: SentinelGroup) -> bool:
    """Every replica in sync and every sentinel seeing the replicas and its peers."""
    try:
        with redis.Redis(port=group.primary_port, socket_timeout=1, decode_responses=True) as primary:
            info = primary.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        if len([r for r in online if r.get("state") == "online"]) != len(group.replica_ports):
            return False
        for port in group.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as sentinel:
                state = sentinel.execute_command("SENTINEL", "MASTER", SERVICE)
                state = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
                if int(state["num-slaves"]) != len(group.replica_ports):
                    return False
                if int(state["num-other-sentinels"]) != len(group.sentinel_ports) - 1:
                    return False
        return True
    except redis.RedisError:
        return False


@pytest.fixture
def sentinel_group(tmp_path: Path):
    binary = find_redis_server()
    group = SentinelGroup(free_port(), [free_port(), free_port()], [free_port(), free_port(), free_port()])
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start(port: int, args: list[str]) -> None:
        workdir = tmp_path / f"redis-{port}"
        workdir.mkdir()
        log = open(workdir / "log", "wb")  # noqa: SIM115 (closed with the process)
        group.processes[port] = subprocess.Popen(args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    try:
        start(group.primary_port, [binary, "--port", str(group.primary_port), *common])
        _wait_port(group.primary_port, group.processes[group.primary_port])
        for port in group.replica_ports:
            start(port, [binary, "--port", str(port), *common, "--replicaof", "127.0.0.1", str(group.primary_port)])
        for port in group.sentinel_ports:
            conf = tmp_path / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {group.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 3000\n"
                f"sentinel parallel-syncs {SERVICE} 2\n"
            )
            start(port, [binary, str(conf), "--sentinel"])
        for port, process in group.processes.items():
            _wait_port(port, process)
        deadline = time.monotonic() + 30
        while not _settled(group):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel group did not settle in 30s")
            time.sleep(0.1)
        yield group
    finally:
        for process in group.processes.values():
            if process.poll() is None:
                process.kill()
        for process in group.processes.values():
            process.wait(10)


def test_sentinel_url_errors_name_what_is_wrong():
    parsed = parse_sentinel_url("redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380,sentinel-c/main/2"
                                "?wait_replicas=2&wait_timeout=500")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("sentinel-c", 26379))
    assert (parsed.service, parsed.db, parsed.password) == ("main", 2, "s@cret")
    assert (parsed.wait_replicas, parsed.wait_timeout_ms) == (2, 500)
    defaults = parse_sentinel_url("redis+sentinel://h:1/main")
    assert (defaults.db, defaults.wait_replicas, defaults.wait_timeout_ms, defaults.password) == (0, 1, 1000, None)
    for url, problem in [
        ("redis://h:1/main", "not a Sentinel URL (scheme 'redis'"),
        ("redis+sentinel:///main", "no Sentinel hosts"),
        ("redis+sentinel://h:1", "no Sentinel service"),
        ("redis+sentinel://h:1/", "no Sentinel service"),
        ("redis+sentinel://h:port/main", "bad Sentinel address 'h:port'"),
        ("redis+sentinel://h:1/main/x", "bad database 'x'"),
        ("redis+sentinel://h:1/main?wait=1", "unknown option(s) in the Sentinel URL: wait"),
        ("redis+sentinel://h:1/main?wait_timeout=9000", "bad wait_timeout '9000'"),
    ]:
        with pytest.raises(ValueError) as caught:
            parse_sentinel_url(url)
        assert problem in str(caught.value), (url, str(caught.value))
    # Active checks must not reach the sentinels (a multi-host URL is no http URL).
    assert _redis_endpoints("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/main") == (
        ("127.0.0.1", 26379), ("127.0.0.1", 26380),
    )


async def test_no_reachable_sentinel_is_store_unavailable_at_once():
    """MasterNotFoundError is StoreUnavailable (503), in bounded time, with
    a short message (redis-py's own quotes each sentinel client's repr)."""
    store = Store(connect(f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/{SERVICE}"))
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert time.monotonic() - started < 3
        assert str(caught.value) == (
            f"store unavailable: MasterNotFoundError: No master found for '{SERVICE}' (2 sentinel(s) unreachable)"
        )
    finally:
        await store.close()


@dataclass
class Answer:
    rid: str
    sent: float
    done: float
    status: int  # 0: no HTTP answer (timeout or connection error)


async def _serve(aiohttp_server, app_settings, tmp_path, monkeypatch, url: str):
    monkeypatch.setenv("CRONMON_PING_KEY", PING_KEY)
    settings = app_settings(write_config(tmp_path, CONFIG), redis_url=url, limits=StoreLimits(history=5000))
    app = create_app(settings)
    server = await aiohttp_server(app, host="127.0.0.1")
    return app, f"http://127.0.0.1:{server.port}/ping/{PING_KEY}/beat"


async def _ping_until_ok(client: httpx.AsyncClient, url: str, answers: list[Answer], give_up: float) -> None:
    """One check-in as a job sends it: retried on 503 with the same rid and
    Idempotency-Key until it is answered 200 (or `give_up`)."""
    rid = str(uuid.uuid4())
    while True:
        sent = time.monotonic()
        try:
            status = (await client.get(url, params={"rid": rid}, headers={"Idempotency-Key": rid})).status_code
        except httpx.HTTPError:
            status = 0
        answers.append(Answer(rid, sent, time.monotonic(), status))
        if status != 503 or time.monotonic() > give_up:
            return
        await asyncio.sleep(0.1)


async def _acknowledged_once(app, answers: list[Answer]) -> None:
    history = await app[CORE].store.history("beat", 0, 5000)
    runs = collections.Counter(event.get("run") for event in history)
    acknowledged = {a.rid for a in answers if a.status == 200}
    assert acknowledged, "no ping was acknowledged"
    missing = sorted(rid for rid in acknowledged if runs[rid] == 0)
    assert not missing, f"{len(missing)} acknowledged pings lost, e.g. {missing[:3]}"
    twice = sorted(rid for rid, n in runs.items() if rid is not None and n > 1)
    assert not twice, f"{len(twice)} pings recorded more than once, e.g. {twice[:3]}"


async def test_failover_follows_the_new_primary_and_loses_no_acknowledged_ping(
    sentinel_group, aiohttp_server, app_settings, tmp_path, monkeypatch
):
    app, url = await _serve(aiohttp_server, app_settings, tmp_path, monkeypatch, sentinel_group.url())
    answers: list[Answer] = []
    tasks: set[asyncio.Task] = set()
    async with httpx.AsyncClient(timeout=ANSWER_BOUND + 5) as client:

        async def drive(seconds: float) -> None:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                task = asyncio.create_task(_ping_until_ok(client, url, answers, time.monotonic() + RECOVERY_BOUND))
                tasks.add(task)
                await asyncio.sleep(0.05)  # ~20 check-ins a second

        await drive(2.0)
        assert answers and all(a.status == 200 for a in answers), collections.Counter(a.status for a in answers)
        killed = time.monotonic()
        sentinel_group.processes[sentinel_group.primary_port].send_signal(signal.SIGKILL)
        # Until cronmon answers 200 again after its first 503, then 2 s more.
        while True:
            await drive(0.5)
            first_503 = min((a.done for a in answers if a.status == 503 and a.sent >= killed), default=None)
            if first_503 is not None and any(a.status == 200 and a.done > first_503 for a in answers):
                break
            assert time.monotonic() - killed < RECOVERY_BOUND, "cronmon did not recover from the failover"
        await drive(2.0)
        await asyncio.gather(*tasks)

    statuses = collections.Counter(a.status for a in answers)
    assert set(statuses) <= {200, 503}, statuses
    slowest = max(a.done - a.sent for a in answers)
    assert slowest < ANSWER_BOUND, f"an answer took {slowest:.2f}s"
    first_503 = min(a.done for a in answers if a.status == 503)
    back = min(a.done for a in answers if a.status == 200 and a.done > first_503)
    last_503 = max(a.done for a in answers if a.status == 503)
    assert back - killed < RECOVERY_BOUND
    # Every check-in was acknowledged in the end (its retries got through).
    pings = collections.defaultdict(list)
    for a in answers:
        pings[a.rid].append(a.status)
    assert all(200 in got for got in pings.values()), [rid for rid, got in pings.items() if 200 not in got][:3]
    # The group moved on: every sentinel names a former replica as primary.
    new_primary = await asyncio.to_thread(sentinel_group.primary_per_sentinels)
    assert len(new_primary) == 1 and new_primary <= set(sentinel_group.replica_ports), new_primary
    # cronmon reads the history from the new primary (the old one is dead).
    await _acknowledged_once(app, answers)
    print(
        f"\nsentinel failover: {len(pings)} check-ins, {statuses[200]} answered 200 and {statuses[503]} 503"
        f" (slowest answer {slowest:.2f}s); failover window (first 503 to first 200 after it)"
        f" {back - first_503:.2f}s; kill to first 200 {back - killed:.2f}s; last 503 {last_503 - killed:.2f}s"
        f" after the kill"
    )


async def _latencies(client: httpx.AsyncClient, url: str, n: int) -> list[float]:
    took = []
    for _ in range(n):
        rid = str(uuid.uuid4())
        started = time.perf_counter()
        response = await client.get(url, params={"rid": rid})
        took.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return took


async def _throughput(client: httpx.AsyncClient, url: str, n: int = 600, concurrency: int = 50) -> float:
    """Check-ins a second from `concurrency` clients at once (batched)."""
    queue = list(range(n))

    async def one_client() -> None:
        while queue:
            queue.pop()
            response = await client.get(url, params={"rid": str(uuid.uuid4())})
            assert response.status_code == 200, response.text

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def test_a_write_no_replica_confirms_is_refused_and_its_retry_is_a_duplicate(
    sentinel_group, aiohttp_server, app_settings, tmp_path, monkeypatch
):
    """WAIT: with the replicas frozen (SIGSTOP) a check-in is applied on the
    primary but not acknowledged: 503 after wait_timeout, and /-/ready stays
    200 (Redis answers). Once a replica confirms, the retry (same rid) is a
    duplicate. Prints what WAIT costs a sequential ping against
    wait_replicas=0."""
    app, url = await _serve(aiohttp_server, app_settings, tmp_path, monkeypatch,
                            sentinel_group.url("?wait_replicas=1&wait_timeout=300"))
    async with httpx.AsyncClient(timeout=ANSWER_BOUND + 5) as client:
        await _latencies(client, url, 20)  # warm up: scripts loaded, connections open
        waited = await _latencies(client, url, 300)
        waited_rate = await _throughput(client, url)

        replicas = [sentinel_group.processes[port] for port in sentinel_group.replica_ports]
        rid = str(uuid.uuid4())
        for process in replicas:
            os.kill(process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            refused = await client.get(url, params={"rid": rid}, headers={"Idempotency-Key": rid})
            took = time.monotonic() - started
            ready = await client.get(url.split("/ping/")[0] + "/-/ready")
        finally:
            for process in replicas:
                os.kill(process.pid, signal.SIGCONT)
        assert refused.status_code == 503, refused.text
        assert 0.3 <= took < ANSWER_BOUND
        assert ready.status_code == 200
        retried = await client.get(url, params={"rid": rid}, headers={"Idempotency-Key": rid})
        assert retried.status_code == 200, retried.text
    history = await app[CORE].store.history("beat", 0, 5000)
    assert [event.get("run") for event in history].count(rid) == 1

    _, plain_url = await _serve(aiohttp_server, app_settings, tmp_path, monkeypatch,
                                sentinel_group.url("?wait_replicas=0"))
    async with httpx.AsyncClient(timeout=ANSWER_BOUND + 5) as client:
        await _latencies(client, plain_url, 20)
        unwaited = await _latencies(client, plain_url, 300)
        unwaited_rate = await _throughput(client, plain_url)
    print(
        f"\nWAIT 1 cost per sequential ping: median {statistics.median(waited) * 1000:.2f} ms with WAIT,"
        f" {statistics.median(unwaited) * 1000:.2f} ms without (p95 {_p95(waited) * 1000:.2f} vs"
        f" {_p95(unwaited) * 1000:.2f} ms); 50 concurrent clients: {waited_rate:.0f} vs {unwaited_rate:.0f}"
        f" check-ins/s; refused unreplicated write answered 503 in {took:.2f}s"
    )


def _p95(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.95)]


@pytest.mark.parametrize(
    "url, words",
    [
        ("redis+sentinel:///svc", "no Sentinel hosts"),
        ("redis://localhost:notaport/0", "Port could not be cast"),
        ("mysql://localhost", "schemes"),
    ],
)
def test_serve_refuses_a_bad_redis_url_with_a_sentence(tmp_path, url, words):
    """Before anything starts: one line naming the flag, not a traceback."""
    config = tmp_path / "monitors.yaml"
    config.write_text("monitors: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--redis-url", url,
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("cronmon: not starting: --redis-url (env CRONMON_REDIS_URL): ")
    assert words in result.stderr and "Traceback" not in result.stderr
