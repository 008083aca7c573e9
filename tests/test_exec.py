"""`cronmon exec`: real commands run through the real `cronmon exec`
process, against a real cronmon app served on 127.0.0.1 (pytest-aiohttp,
the test redis-server). What cronmon recorded is read back from its store.

The exec process is started by a small launcher (python -S, LAUNCHER) and
waited for in a worker thread, so the server keeps serving on the test's
loop. The launcher reports the exec process's own peak RSS (os.wait4): a
child forked from pytest itself would report pytest's size (Linux carries
the forked image's high-water mark across exec)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from exporter.spool import Spool
from exporter.web.app import create_app
from exporter.web.keys import CORE

from .conftest import free_port, wait_for, write_config

ROOT = Path(__file__).resolve().parent.parent
KEY = "exec-test-ping-key-0123456789"
CONFIG = """
ping_keys:
  - name: ops
    env: TEST_EXEC_PING_KEY
monitors:
  - id: job
    schedule: {interval: 1h}
"""


@pytest.fixture(autouse=True)
def ping_key(monkeypatch):
    monkeypatch.setenv("TEST_EXEC_PING_KEY", KEY)


@pytest.fixture
def serve(aiohttp_server, app_settings, tmp_path):
    async def start(port: int | None = None):
        app = create_app(app_settings(write_config(tmp_path, CONFIG)))
        return await aiohttp_server(app, host="127.0.0.1", port=port)

    return start


@dataclass
class Ran:
    status: int
    out: bytes
    err: bytes
    elapsed: float
    max_rss_kib: int  # of the cronmon exec process (and the job, whichever was larger)


LAUNCHER = """
import os, sys
rss, pid_file, *argv = sys.argv[1:]
pid = os.posix_spawn(argv[0], argv, os.environ)
with open(pid_file, "w") as f:
    f.write(str(pid))
_, status, usage = os.wait4(pid, 0)
with open(rss, "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(128 - code if code < 0 else code)
"""


class Exec:
    """A running `cronmon exec` process (under LAUNCHER)."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str], stdin: bytes = b"", keep_stdout: bool = True):
        self.dir = tmp_path / f"exec-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir()
        (self.dir / "stdin").write_bytes(stdin)
        full_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
        argv = [sys.executable, "-m", "exporter.entry", "exec", *args]  # what the cronmon script runs
        with (self.dir / "stdin").open("rb") as i, (self.dir / "err").open("wb") as e:
            out = (self.dir / "out").open("wb") if keep_stdout else subprocess.DEVNULL
            self.started = time.monotonic()
            self.launcher = subprocess.Popen(
                [sys.executable, "-S", "-c", LAUNCHER, str(self.dir / "rss"), str(self.dir / "pid"), *argv],
                cwd=ROOT, env=full_env, stdin=i, stdout=out, stderr=e,
            )
            if keep_stdout:
                out.close()  # type: ignore[union-attr]

    async def pid(self) -> int:
        """The cronmon exec process's."""
        pid_file = self.dir / "pid"
        await wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=20)
        return int(pid_file.read_text())

    async def wait(self, timeout: float = 60) -> Ran:
        try:
            status = await asyncio.wait_for(asyncio.to_thread(self.launcher.wait), timeout)
        except TimeoutError:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.dir / "pid").read_text()), signal.SIGKILL)
            self.launcher.kill()
            raise AssertionError(f"cronmon exec did not end in {timeout}s: {self.err()!r}") from None
        out = self.dir / "out"
        return Ran(status, out.read_bytes() if out.exists() else b"", self.err(), time.monotonic() - self.started,
                   int((self.dir / "rss").read_text()))

    def err(self) -> bytes:
        return (self.dir / "err").read_bytes()


async def cronmon_exec(tmp_path: Path, *args: str, env: dict[str, str], timeout: float = 60, **kw) -> Ran:
    return await Exec(tmp_path, *args, env=env, **kw).wait(timeout)


def job_url(server) -> str:
    return f"http://127.0.0.1:{server.port}/ping/{KEY}/job"


def env_for(tmp_path: Path, url: str) -> dict[str, str]:
    return {"CRONMON_URL": url, "CRONMON_SPOOL_DIR": str(tmp_path / "spool")}


async def recorded(server):
    core = server.app[CORE]
    facts = await core.store.facts("job")
    history = list(reversed(await core.store.history("job", 0, 50)))  # oldest first
    return facts, history


async def log_of(server, entry) -> str | None:
    return await server.app[CORE].store.log("job", entry["log"]) if "log" in entry else None


async def test_success_is_reported_with_its_duration_and_output(serve, tmp_path):
    server = await serve()
    job = "cat; echo out; sleep 0.3; echo err >&2"
    ran = await cronmon_exec(tmp_path, "--", "sh", "-c", job, env=env_for(tmp_path, job_url(server)), stdin=b"in\n")
    assert ran.status == 0, ran.err
    assert ran.out == b"in\nout\n"
    assert ran.err.startswith(b"err\n")
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 1, "success": 1}
    assert facts.open_runs == () and facts.last_exit_code == 0
    start, finish = history
    assert start["kind"] == "start" and finish["kind"] == "success" and finish["exit_code"] == 0
    assert start["run"] == finish["run"]
    assert 0.3 <= finish["duration"] < 5
    assert await log_of(server, finish) == "in\nout\nerr\n"
    assert finish["ua"].startswith("cronmon-exec/")


async def test_exit_status_is_passed_through_and_recorded(serve, tmp_path):
    server = await serve()
    ran = await cronmon_exec(tmp_path, "--quiet", "--", "sh", "-c", "echo failing >&2; exit 3",
                             env=env_for(tmp_path, job_url(server)))
    assert ran.status == 3
    assert ran.err == b"failing\n"  # --quiet: nothing of cronmon exec's own
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 1, "fail": 1} and facts.last_exit_code == 3
    assert [e["kind"] for e in history] == ["start", "fail"] and history[1]["exit_code"] == 3
    assert await log_of(server, history[1]) == "failing\n"


async def test_a_job_killed_by_a_signal_exits_128_plus_n(serve, tmp_path):
    server = await serve()
    ran = await cronmon_exec(tmp_path, "--", "sh", "-c", "echo dying; kill -9 $$",
                             env=env_for(tmp_path, job_url(server)))
    assert ran.status == 128 + 9
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 1, "fail": 1} and facts.last_exit_code == 137
    assert (await log_of(server, history[1])).startswith("dying\n\ncronmon exec: the job was killed by signal 9")


async def test_sigterm_is_forwarded_to_the_job(serve, tmp_path):
    server = await serve()
    marker = tmp_path / "running"
    job = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got TERM', flush=True), sys.exit(7)))\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "time.sleep(30)\n"
    )
    running = Exec(tmp_path, "--", sys.executable, "-c", job, env=env_for(tmp_path, job_url(server)))
    await wait_for(marker.exists, timeout=20)
    os.kill(await running.pid(), signal.SIGTERM)
    ran = await running.wait(20)
    assert ran.status == 7 and ran.out == b"got TERM\n"
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 1, "fail": 1} and facts.last_exit_code == 7
    assert await log_of(server, history[1]) == "got TERM\n"


async def test_100_mb_of_output_passes_through_in_bounded_memory(serve, tmp_path):
    server = await serve()
    last = 13_000_000
    total = sum(9 * 10 ** (d - 1) * (d + 1) for d in range(1, 8)) + (last - 10**7 + 1) * 9  # seq's bytes
    assert total > 100_000_000
    out = tmp_path / "seq-out"
    ran = await cronmon_exec(
        tmp_path, "--log-tail", "4", "--", "sh", "-c", f"seq 1 {last} | tee {out}",
        env=env_for(tmp_path, job_url(server)), keep_stdout=False, timeout=120,
    )
    assert ran.status == 0, ran.err
    assert out.stat().st_size == total
    expected = "".join(f"{i}\n" for i in range(last - 1000, last + 1)).encode()[-4096:]
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 1, "success": 1}
    assert (await log_of(server, history[1])).encode() == expected
    # Python and cronmon's imports take ~40 MB: the same as for a job that
    # writes nothing, give or take a few MB; 100 MB kept would show.
    baseline = await cronmon_exec(tmp_path, "--", "true", env=env_for(tmp_path, job_url(server)))
    assert ran.max_rss_kib < baseline.max_rss_kib + 8 * 1024, (ran.max_rss_kib, baseline.max_rss_kib)
    assert ran.max_rss_kib < 80 * 1024, ran.max_rss_kib


async def test_timeout_stops_the_process_group_and_reports_a_failure(serve, tmp_path):
    server = await serve()
    # The shell ignores SIGTERM, and so do its children: only SIGKILL ends them.
    job = "trap '' TERM; sleep 30 & echo started; sleep 30"
    ran = await cronmon_exec(tmp_path, "--timeout", "1s", "--kill-after", "1s", "--", "sh", "-c", job,
                             env=env_for(tmp_path, job_url(server)), timeout=30)
    assert ran.status == 137
    assert 2 <= ran.elapsed < 10
    assert b"timed out after 1s" in ran.err
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 1, "fail": 1} and facts.last_exit_code == 137
    log = await log_of(server, history[1])
    assert log.startswith("started\n") and "timed out after 1s" in log
    assert 2 <= history[1]["duration"] < 10


async def test_timeout_of_a_job_that_stops_on_sigterm(serve, tmp_path):
    server = await serve()
    ran = await cronmon_exec(tmp_path, "--timeout", "0.5", "--", "sleep", "30",
                             env=env_for(tmp_path, job_url(server)), timeout=30)
    assert ran.status == 128 + 15 and ran.elapsed < 5
    facts, _ = await recorded(server)
    assert facts.checkins == {"start": 1, "fail": 1} and facts.last_exit_code == 143


async def spool_two_runs_while_down(tmp_path: Path, port: int) -> tuple[Path, list[Path]]:
    """Run a success and a failure while nothing listens on `port`."""
    env = env_for(tmp_path, f"http://127.0.0.1:{port}/ping/{KEY}/job")
    first = await cronmon_exec(tmp_path, "--retry-for", "1s", "--", "sh", "-c", "echo one", env=env)
    assert first.status == 0 and b"spooled" in first.err
    second = await cronmon_exec(tmp_path, "--retry-for", "1s", "--", "sh", "-c", "echo two; exit 4", env=env)
    assert second.status == 4
    spool = tmp_path / "spool"
    files = Spool(spool).pending()
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["start.json", "finish.json"] * 2
    return spool, files


async def assert_two_runs_recorded_once(server, last_log: str = "two\n") -> None:
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 2, "success": 1, "fail": 1}
    assert [e["kind"] for e in history] == ["start", "success", "start", "fail"]
    assert history[0]["run"] == history[1]["run"] != history[2]["run"] == history[3]["run"]
    assert history[3]["exit_code"] == 4 and facts.open_runs == ()
    # The run's own duration, not the time it waited in the spool.
    assert history[1]["duration"] < 1
    assert await log_of(server, history[1]) == "one\n"
    assert await log_of(server, history[3]) == last_log


async def test_cronmon_down_then_back_flush_delivers_once_in_order(serve, tmp_path):
    port = free_port()
    spool, files = await spool_two_runs_while_down(tmp_path, port)
    copies = tmp_path / "copies"
    copies.mkdir()
    for f in files:
        shutil.copy(f, copies / f.name)
    server = await serve(port)
    env = {"CRONMON_SPOOL_DIR": str(spool)}
    ran = await cronmon_exec(tmp_path, "--flush", env=env)
    assert ran.status == 0, ran.err
    assert b"delivered 4 spooled report(s)" in ran.err
    assert Spool(spool).pending() == []
    await assert_two_runs_recorded_once(server)
    # A re-delivery (an answer lost after cronmon recorded the report) is a
    # duplicate by its run id: cronmon records nothing more.
    for f in files:
        shutil.copy(copies / f.name, f)
    ran = await cronmon_exec(tmp_path, "--flush", env=env)
    assert ran.status == 0 and Spool(spool).pending() == []
    await assert_two_runs_recorded_once(server)
    assert (await cronmon_exec(tmp_path, "--flush", "--quiet", env=env)).err == b""


async def test_cronmon_down_then_back_the_next_exec_delivers_first(serve, tmp_path):
    port = free_port()
    spool, _ = await spool_two_runs_while_down(tmp_path, port)
    server = await serve(port)
    ran = await cronmon_exec(tmp_path, "--", "sh", "-c", "echo three", env=env_for(tmp_path, job_url(server)))
    assert ran.status == 0 and Spool(spool).pending() == []
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 3, "success": 2, "fail": 1}
    assert [e["kind"] for e in history] == ["start", "success", "start", "fail", "start", "success"]
    assert await log_of(server, history[5]) == "three\n"


async def test_a_flush_in_progress_holds_the_lock(serve, tmp_path):
    port = free_port()
    spool, files = await spool_two_runs_while_down(tmp_path, port)
    await serve(port)
    with Spool(spool).locked(wait=0) as held:
        assert held
        ran = await cronmon_exec(tmp_path, "--flush", "--retry-for", "0.5", env={"CRONMON_SPOOL_DIR": str(spool)})
        assert ran.status == 1 and b"another cronmon exec is flushing" in ran.err
        assert Spool(spool).pending() == files


async def test_503_and_429_are_retried_until_cronmon_takes_the_report(serve, aiohttp_server, tmp_path):
    server = await serve()
    answers = [web.Response(status=503, text="store unavailable"),
               web.Response(status=429, text="rate limited", headers={"Retry-After": "1"}),
               web.Response(status=503, text="store unavailable")]
    seen: list[tuple[str, int]] = []

    async def proxy(request: web.Request) -> web.Response:
        if answers:
            answer = answers.pop(0)
            seen.append((request.path, answer.status))
            return answer
        async with ClientSession() as session, session.request(
            request.method, f"http://127.0.0.1:{server.port}{request.path_qs}", data=await request.read(),
            headers={"User-Agent": request.headers.get("User-Agent", "")},
        ) as upstream:
            seen.append((request.path, upstream.status))
            return web.Response(status=upstream.status, text=await upstream.text())

    front = web.Application()
    front.router.add_route("*", "/{tail:.*}", proxy)
    fake = await aiohttp_server(front, host="127.0.0.1")
    url = f"http://127.0.0.1:{fake.port}/ping/{KEY}/job"
    ran = await cronmon_exec(tmp_path, "--retry-for", "30s", "--", "true", env=env_for(tmp_path, url))
    assert ran.status == 0, ran.err
    assert ran.elapsed >= 1  # Retry-After was honoured
    assert [status for _, status in seen] == [503, 429, 503, 200, 200]
    assert seen[3][0].endswith("/start") and seen[4][0].endswith("/0")
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 1, "success": 1}
    assert Spool(tmp_path / "spool").pending() == []


async def test_a_4xx_is_final_not_retried_or_spooled(serve, tmp_path):
    server = await serve()
    url = f"http://127.0.0.1:{server.port}/ping/{KEY}/no-such-job"
    ran = await cronmon_exec(tmp_path, "--", "true", env=env_for(tmp_path, url))
    assert ran.status == 0 and ran.elapsed < 10
    assert b"the start was refused: cronmon answered 404 not found" in ran.err
    assert b"the finish was refused: cronmon answered 404 not found" in ran.err
    assert Spool(tmp_path / "spool").pending() == []


async def test_server_and_monitor_with_the_key_from_the_environment(serve, tmp_path):
    server = await serve()
    env = {"CRONMON_PING_KEY": KEY, "CRONMON_SPOOL_DIR": str(tmp_path / "spool")}
    ran = await cronmon_exec(tmp_path, "--server", f"http://127.0.0.1:{server.port}/", "--monitor", "job",
                             "--no-start", "--", "true", env=env)
    assert ran.status == 0, ran.err
    facts, history = await recorded(server)
    assert facts.checkins == {"success": 1} and history[0]["exit_code"] == 0
    missing = await cronmon_exec(tmp_path, "--server", "http://127.0.0.1:1", "--monitor", "job", "--", "true",
                                 env={"CRONMON_SPOOL_DIR": str(tmp_path / "spool")})
    assert missing.status == 2 and b"CRONMON_PING_KEY" in missing.err


def test_spool_writes_are_atomic_and_private(tmp_path):
    from exporter.spool import Report

    spool = Spool(tmp_path / "s")
    paths = [spool.add(Report(f"http://x/{i}", "start", "r", None, 0.0)) for i in range(3)]
    assert spool.pending() == paths  # names sort in the order written
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    assert not [n for n in os.listdir(tmp_path / "s") if n.startswith(".tmp-")]
    assert spool.load(paths[1]).url == "http://x/1"


async def test_stopped_while_reporting_the_finish_is_spooled(serve, aiohttp_server, tmp_path):
    """SIGTERM after the job ended, while the finish is in flight (cronmon
    not answering): the finish goes to the spool, not lost."""
    server = await serve()
    finish_arrived = asyncio.Event()
    hold = [True]

    async def front(request: web.Request) -> web.Response:
        if request.path.endswith("/0") and hold[0]:
            finish_arrived.set()
            await asyncio.sleep(30)
        async with ClientSession() as session, session.request(
            request.method, f"http://127.0.0.1:{server.port}{request.path_qs}", data=await request.read(),
        ) as upstream:
            return web.Response(status=upstream.status, text=await upstream.text())

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", front)
    fake = await aiohttp_server(app, host="127.0.0.1")
    env = env_for(tmp_path, f"http://127.0.0.1:{fake.port}/ping/{KEY}/job")
    running = Exec(tmp_path, "--", "sh", "-c", "echo done", env=env)
    await asyncio.wait_for(finish_arrived.wait(), 20)
    os.kill(await running.pid(), signal.SIGTERM)
    ran = await running.wait(20)
    assert ran.status == 0 and b"interrupted by SIGTERM while reporting" in ran.err
    assert [f.name.rsplit("-", 1)[1] for f in Spool(tmp_path / "spool").pending()] == ["finish.json"]
    hold[0] = False
    assert (await cronmon_exec(tmp_path, "--flush", env=env)).status == 0
    facts, history = await recorded(server)
    assert facts.checkins == {"start": 1, "success": 1} and facts.open_runs == ()
    assert await log_of(server, history[1]) == "done\n"


def test_the_tail_keeps_the_last_bytes_in_bounded_memory():
    from exporter.runner import Tail

    for limit in (1, 7, 4096):
        tail, whole = Tail(limit), b""
        for size in (0, 1, limit - 1, limit, limit + 1, 3 * limit, 5, 2 * limit):
            chunk = bytes((whole.__len__() + i) % 26 + 97 for i in range(size))
            tail.add(chunk)
            whole += chunk
            assert len(tail.buffer) <= 2 * limit
            assert tail.value() == whole[-limit:]
    cut = Tail(4)
    cut.add("aéaéaé".encode())  # the last 4 bytes start inside an "é": that byte is dropped
    assert cut.value() == "aé".encode()


async def test_two_flushes_at_once_deliver_each_report_once(serve, aiohttp_server, tmp_path):
    port = free_port()
    spool, files = await spool_two_runs_while_down(tmp_path, port)
    server = await serve()
    requests: list[str] = []

    async def slow(request: web.Request) -> web.Response:  # slow enough for the flushes to overlap
        requests.append(request.path)
        await asyncio.sleep(0.3)
        async with ClientSession() as session, session.request(
            request.method, f"http://127.0.0.1:{server.port}{request.path_qs}", data=await request.read(),
        ) as upstream:
            return web.Response(status=upstream.status, text=await upstream.text())

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    await aiohttp_server(app, host="127.0.0.1", port=port)  # where the spooled reports point
    env = {"CRONMON_SPOOL_DIR": str(spool)}
    first, second = await asyncio.gather(*(cronmon_exec(tmp_path, "--flush", env=env) for _ in range(2)))
    assert first.status == second.status == 0, (first.err, second.err)
    assert len(requests) == 4 and Spool(spool).pending() == []
    await assert_two_runs_recorded_once(server)


def test_exec_starts_without_the_servers_imports():
    """`cronmon exec` runs with every job, so the `cronmon` script's entry
    point reaches it without pydantic, redis, aiohttp or the config models
    (they were half a second and 20 MB of every run; bench/exec_overhead.py)."""
    scripts = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cronmon"] == "exporter.entry:main"
    code = (
        "import sys; from exporter import entry, runner; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pydantic', 'redis', 'aiohttp', 'yaml', 'httpx', 'prometheus_client', 'croniter'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"
