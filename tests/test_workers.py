"""`cronmon serve --workers N`: real processes on one port, one Redis.

Exactly-once through the workers and the batching, reloads that reach
every worker, a dead worker started again, self metrics summed over the
workers.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import write_config
from .test_e2e_serve import Server, wait_until

pytestmark = pytest.mark.e2e

CONFIG = "monitors:\n" + "".join(f"  - {{id: job{i}, schedule: {{interval: 1h}}}}\n" for i in range(20))
KEY = "workers-test-ping-key"


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "redis" not in stat.split(")")[0]:
                found.append(int(entry))
    return found


def metric_sum(base: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(base + "/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


@pytest.fixture
def server(tmp_path):
    config = write_config(tmp_path, CONFIG)
    server = Server(config, tmp_path / "data", {"CRONMON_PING_KEY": KEY}, ["--workers", "2", "--web.enable-lifecycle"])
    server.wait_ready()
    yield server
    server.stop()


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_runs_through_two_workers_are_recorded_exactly_once(server):
    workers = children(server.process.pid)
    assert len(workers) == 2
    before = {pid: cpu_ticks(pid) for pid in workers}
    rids = [str(uuid.uuid4()) for _ in range(400)]

    # 16 threads, a new connection per request (as cron jobs' curl makes):
    # the kernel spreads them over both workers, so a run's start and
    # finish often meet different workers. (httpx's pool with no keep-alive
    # raced itself across threads: "Bad file descriptor".)
    host, port = server.base.removeprefix("http://").rsplit(":", 1)

    def get(path: str) -> int:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", path)
            return connection.getresponse().status
        finally:
            connection.close()

    def run(index: int) -> tuple[int, int]:
        path = f"/ping/{KEY}/job{index % 20}"
        return get(f"{path}/start?rid={rids[index]}"), get(f"{path}?rid={rids[index]}")

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(run, range(400)))
        # Every finish sent again (a job's retry): recorded once already.
        retried = list(pool.map(lambda i: get(f"/ping/{KEY}/job{i % 20}?rid={rids[i]}"), range(400)))
    assert statuses == [(200, 200)] * 400 and retried == [200] * 400
    # Both workers took their share (each spent CPU time on it).
    assert all(cpu_ticks(pid) - before[pid] >= 3 for pid in workers), {p: cpu_ticks(p) - before[p] for p in workers}
    # Every scrape, whichever worker answers it, shows the same counts.
    for _ in range(6):
        assert metric_sum(server.base, "cronmon_runs_total", outcome="ok") == 400
        assert metric_sum(server.base, "cronmon_running_runs") == 0
    # Requests are counted over both workers: 1,200 pings at least.
    assert metric_sum(server.base, "cronmon_http_requests_total", handler="/ping/{tail}") >= 1200


def test_a_reload_on_one_worker_reaches_every_worker(server, tmp_path):
    (tmp_path / "monitors.yaml").write_text(CONFIG + "  - {id: added, schedule: {interval: 1h}}\n")
    response = httpx.post(server.base + "/-/reload")
    assert response.status_code == 200

    def everywhere() -> bool:
        # Fresh connections land on either worker; all must know the new monitor.
        return all(httpx.get(f"{server.base}/ping/{KEY}/added").status_code == 200 for _ in range(12))

    wait_until(everywhere, timeout=20)


def test_a_killed_worker_is_started_again_and_nothing_acknowledged_is_lost(server):
    victim = children(server.process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    acknowledged = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and acknowledged < 100:
        try:
            if httpx.get(f"{server.base}/ping/{KEY}/job1", timeout=5).status_code == 200:
                acknowledged += 1
        except httpx.HTTPError:
            pass  # a connection the dying worker had accepted
    wait_until(lambda: len(children(server.process.pid)) == 2 and victim not in children(server.process.pid))
    assert acknowledged == 100
    assert metric_sum(server.base, "cronmon_runs_total", monitor="job1", outcome="ok") == 100


def test_the_default_leaves_the_embedded_redis_a_core():
    from exporter.cli import default_workers

    assert [default_workers(cores, embedded_redis=True) for cores in (None, 1, 2, 4, 16)] == [1, 1, 1, 3, 15]
    assert [default_workers(cores, embedded_redis=False) for cores in (None, 1, 2, 4, 16)] == [1, 1, 2, 4, 16]


@pytest.mark.parametrize(("env", "expected"), [({"CRONMON_WORKERS": "2"}, 2), ({}, None)],
                         ids=["CRONMON_WORKERS=2", "default"])
def test_serve_runs_as_many_workers_as_the_environment_or_the_default_says(tmp_path, env, expected):
    from exporter.cli import default_workers

    if expected is None:
        expected = default_workers(os.cpu_count(), embedded_redis=True)
    server = Server(write_config(tmp_path, CONFIG), tmp_path / "data", {"CRONMON_PING_KEY": KEY, **env})
    try:
        server.wait_ready()
        # A single process serves by itself; N > 1 are the supervisor's children.
        wait_until(lambda: len(children(server.process.pid)) == (expected if expected > 1 else 0), timeout=20)
        assert httpx.get(f"{server.base}/ping/{KEY}/job0").status_code == 200
    finally:
        output = server.stop()
    said = f"serving with {expected} worker processes" if expected > 1 else "serving with 1 process"
    assert said in output


@pytest.mark.parametrize(("workers", "env", "preloaded"), [
    ("1", {}, True), ("2", {}, True), ("2", {"CRONMON_REDIS_ALLOCATOR": "builtin"}, False),
], ids=["1 worker", "2 workers", "2 workers, builtin allocator"])
def test_the_embedded_redis_gets_the_allocator_serve_was_given(tmp_path, workers, env, preloaded):
    """One process starts the embedded Redis itself; with N workers the
    supervisor does: both pass --redis-allocator (env) on."""
    from exporter.embedded import mimalloc_library

    library = mimalloc_library()
    assert library is not None  # a dependency on Linux
    environment = {"CRONMON_PING_KEY": KEY, "CRONMON_WORKERS": workers, **env}
    server = Server(write_config(tmp_path, CONFIG), tmp_path / "data", environment)
    try:
        server.wait_ready()
        redis_pid = int((tmp_path / "data" / "redis.pid").read_text())
        assert (str(library) in open(f"/proc/{redis_pid}/maps").read()) is preloaded
        assert httpx.get(f"{server.base}/ping/{KEY}/job0").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(("env", "loop"), [({}, "uvloop"), ({"CRONMON_EVENT_LOOP": "asyncio"}, "asyncio")],
                         ids=["default", "CRONMON_EVENT_LOOP=asyncio"])
def test_serve_runs_on_the_event_loop_it_was_given(tmp_path, env, loop):
    server = Server(write_config(tmp_path, CONFIG), tmp_path / "data",
                    {"CRONMON_PING_KEY": KEY, "CRONMON_WORKERS": "2", **env})
    try:
        server.wait_ready()
        wait_until(lambda: len(children(server.process.pid)) == 2, timeout=20)
        for _ in range(4):
            assert httpx.get(f"{server.base}/ping/{KEY}/job0").status_code == 200
    finally:
        output = server.stop()
    # Each worker says which loop it serves on.
    assert output.count(f"serving on {loop}'s event loop") == 2, output
