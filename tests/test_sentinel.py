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
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from exporter.errors import StoreUnavailable
from exporter.store import Store, connect, parse_sentinel_url
from exporter.web.app import _redis_endpoints
from exporter.web.keys import CORE

from .conftest import free_port
from .failover import ANSWER_BOUND, acknowledged_once, ping_through_a_kill, serve
from .sentinel import SERVICE, sentinel_group_running


@pytest.fixture
def sentinel_group(tmp_path: Path):
    with sentinel_group_running(tmp_path) as group:
        yield group


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


async def test_failover_follows_the_new_primary_and_loses_no_acknowledged_ping(
    sentinel_group, aiohttp_server, app_settings, tmp_path, monkeypatch
):
    app, url = await serve(aiohttp_server, app_settings, tmp_path, monkeypatch, sentinel_group.url())
    run = await ping_through_a_kill(url, lambda: sentinel_group.processes[sentinel_group.primary_port].send_signal(
        signal.SIGKILL))
    # The group moved on: every sentinel names a former replica as primary.
    new_primary = await asyncio.to_thread(sentinel_group.primary_per_sentinels)
    assert len(new_primary) == 1 and new_primary <= set(sentinel_group.replica_ports), new_primary
    # cronmon reads the history from the new primary (the old one is dead).
    await acknowledged_once(app, run.answers)
    print(f"\nsentinel failover: {run.summary()}")


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
    app, url = await serve(aiohttp_server, app_settings, tmp_path, monkeypatch,
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

    _, plain_url = await serve(aiohttp_server, app_settings, tmp_path, monkeypatch,
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
        ("redis+cluster://h:1/0", "a cluster has no databases"),
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


async def test_two_workers_on_password_protected_sentinels_follow_a_failover_exactly_once(tmp_path):
    """`cronmon serve --workers 2` as a real process on a Sentinel group
    whose data nodes and sentinels each require a password of their own
    (the data nodes' before the @, the sentinels' in sentinel_password):
    the workers (the kernel spreads the connections over both) follow the
    failover on their own, and
    every check-in answered 200 is in the new primary's history once. A
    wrong sentinel password is a 503 at /-/ready, not a start-up crash."""
    from .failover import CONFIG, PING_KEY

    with sentinel_group_running(tmp_path / "ha", password="data p@ss", sentinel_password="sentinel:pass") as group:
        config = tmp_path / "monitors.yaml"
        config.write_text(CONFIG)
        port = free_port()
        env = {"PATH": os.environ["PATH"], "CRONMON_PING_KEY": PING_KEY, "CRONMON_REDIS_URL": group.url()}
        process = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--listen",
             f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"), "--workers", "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        store = Store(connect(group.url()))
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient() as client:
                deadline = time.monotonic() + 30
                while True:
                    assert process.poll() is None, process.stdout.read()
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(base + "/-/ready", timeout=1)).status_code == 200:
                            break
                    assert time.monotonic() < deadline, "cronmon --workers 2 on Sentinel did not become ready"
                    await asyncio.sleep(0.1)
            run = await ping_through_a_kill(
                f"{base}/ping/{PING_KEY}/beat",
                lambda: group.processes[group.primary_port].send_signal(signal.SIGKILL),
            )
            await acknowledged_once(store, run.answers)
            print(f"\nsentinel failover, --workers 2, passwords: {run.summary()}")
        finally:
            await store.close()
            process.terminate()
            out, _ = process.communicate(timeout=30)
        assert process.returncode == 0, out
        assert "Traceback" not in out, out

        wrong = Store(connect(group.url().replace("sentinel_password=sentinel%3Apass", "sentinel_password=nope")))
        try:
            with pytest.raises(StoreUnavailable, match="MasterNotFoundError"):
                await wrong.ping()
        finally:
            await wrong.close()
