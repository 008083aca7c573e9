"""`cronmon serve --workers N`: N processes on one port, sharing one Redis.

The parent is a supervisor. It owns the embedded redis-server (when no
Redis URL is given) and starts N worker processes, each a plain
single-process `cronmon serve` on the same address with SO_REUSEPORT, so
the kernel spreads connections across them. Workers share nothing but
Redis, which is the design's rule anyway (replicas are stateless): the
scrape cache reads the store's change feed, sweeps are compare-and-set,
active checks are claimed once. Only worker 0 runs the alert bridge, so
Alertmanager gets one stream of posts.

Signals: SIGHUP is forwarded to every worker (each reloads its config; a
worker that takes POST /-/reload reloads and asks the parent to forward a
SIGHUP to all, so every worker converges on the same config). SIGTERM and
SIGINT stop the workers, then the embedded Redis. A worker that dies is
started again after a second; every worker dies with the parent
(PR_SET_PDEATHSIG), so a kill -9 of the parent leaves nothing behind.

cronmon's own HTTP and probe metrics are kept in prometheus_client's
multiprocess files (a directory the parent makes), so a scrape on any
worker reports the sum over all of them and counters never jump.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from .embedded import EmbeddedRedis, EmbeddedRedisError, die_with_parent

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "CRONMON_WORKER_INDEX"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_index() -> int | None:
    """This process's worker number, None when not run by a supervisor."""
    raw = os.environ.get(WORKER_INDEX_ENV)
    return int(raw) if raw is not None and raw.isdigit() else None


def ask_parent_to_reload() -> None:
    """From a worker: make the supervisor forward SIGHUP to every worker."""
    if worker_index() is not None:
        os.kill(os.getppid(), signal.SIGHUP)


def supervise(argv: list[str], workers: int, redis_url: str | None, data_dir: Path, redis_binary: str | None,
              redis_allocator: str) -> int:
    """Run `workers` copies of `cronmon serve <argv>` until SIGTERM/SIGINT."""
    return asyncio.run(_supervise(argv, workers, redis_url, data_dir, redis_binary, redis_allocator))


async def _supervise(argv: list[str], workers: int, redis_url: str | None, data_dir: Path,
                     redis_binary: str | None, redis_allocator: str) -> int:
    loop = asyncio.get_running_loop()
    # First: a SIGTERM while the embedded Redis starts stops it again (with
    # its final save) instead of killing the supervisor mid-way.
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    embedded = None if redis_url else EmbeddedRedis(data_dir, redis_binary, allocator=redis_allocator)
    if embedded is not None:
        try:
            redis_url = await embedded.start()
        except EmbeddedRedisError as exc:
            print(f"cronmon: {exc}", file=sys.stderr)
            return 1
    metrics_dir = tempfile.mkdtemp(prefix="cronmon-metrics-")
    children: dict[int, asyncio.subprocess.Process] = {}
    started: dict[int, float] = {}

    async def start(index: int) -> None:
        assert redis_url is not None  # given, or the embedded server's
        env = {**os.environ, WORKER_INDEX_ENV: str(index), MULTIPROC_ENV: metrics_dir}
        command = [sys.executable, "-m", "exporter.cli", "serve", *argv, "--workers", "1", "--redis-url", redis_url]
        children[index] = await asyncio.create_subprocess_exec(*command, env=env, preexec_fn=die_with_parent)
        started[index] = loop.time()

    def forward_hup() -> None:
        for child in children.values():
            if child.returncode is None:
                child.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, forward_hup)

    def forward_usr1() -> None:  # the workers log their tasks (cli.log_tasks)
        for child in children.values():
            if child.returncode is None:
                child.send_signal(signal.SIGUSR1)

    loop.add_signal_handler(signal.SIGUSR1, forward_usr1)
    status = 0
    try:
        for index in range(workers):
            if not stopping.is_set():
                await start(index)
        while not stopping.is_set():
            waiters = {asyncio.ensure_future(child.wait()): index for index, child in children.items()}
            stop_waiter = asyncio.ensure_future(stopping.wait())
            done, pending = await asyncio.wait({*waiters, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if stopping.is_set():
                break
            for task in done:
                finished = waiters.get(task)
                if finished is None:
                    continue
                code = children[finished].returncode
                if loop.time() - started[finished] < 5 and code in (1, 2):
                    # It could not start at all (port in use, ...); it said why.
                    status = int(code or 1)
                    stopping.set()
                    break
                log.warning("worker %d exited with status %s; starting it again in 1s", finished, code)
                await asyncio.sleep(1)
                await start(finished)
    finally:
        for child in children.values():
            if child.returncode is None:
                child.terminate()
        for child in children.values():
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()
        if embedded is not None:
            await embedded.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
