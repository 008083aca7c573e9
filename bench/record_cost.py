#!/usr/bin/env python3
"""What one check-in costs, without HTTP: Redis CPU and cronmon's Python CPU.

    .venv/bin/python bench/record_cost.py [--monitors 1000] [--checkins 20000] [--concurrency 32]

Starts a private redis-server (the embedded binary, unix socket, with the
embedded default's AOF, fsync every second; `--no-aof` for none) in a temp dir, loads N monitors (half `interval: 1h`, half
`*/5 * * * *` in Europe/Berlin, as bench/compare.py), then sends check-ins
through Core.record, `--concurrency` at a time (so they are batched as
they are under HTTP load): successes, every tenth a start and its finish
with a run id. It prints, per check-in:

- redis-server CPU (user + system, from /proc/<pid>/stat),
- this process's CPU (cronmon's core, store and redis-py: what a worker
  spends on a ping beyond aiohttp's own request handling),
- Redis commands run inside the scripts (INFO commandstats) and EVALSHA
  calls sent.

Nothing is timed against a threshold: compare the figures of two commits
on the same machine (`git stash`, run, `git stash pop`, run). Only the
unix socket in the temp dir is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter import credentials  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.core import Core, Registry  # noqa: E402
from exporter.embedded import find_redis_server  # noqa: E402
from exporter.model import CheckIn, Kind  # noqa: E402
from exporter.store import Store, StoreLimits, connect  # noqa: E402


def ticks(pid: int) -> float:
    """CPU seconds (user + system) of process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def start_redis(tmp: Path, aof: bool = True) -> tuple[asyncio.subprocess.Process, str]:
    sock = tmp / "redis.sock"
    process = await asyncio.create_subprocess_exec(
        find_redis_server(), "--port", "0", "--unixsocket", str(sock), "--dir", str(tmp), "--save", "",
        "--appendonly", "yes" if aof else "no", "--appendfsync", "everysec",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    for _ in range(200):
        if sock.exists():
            return process, f"unix://{sock}"
        await asyncio.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def write_config(path: Path, n: int) -> None:
    schedules = ("{interval: 1h}", '{cron: "*/5 * * * *", timezone: Europe/Berlin}')
    path.write_text("monitors:\n" + "".join(
        f"  - {{id: m{i:04d}, schedule: {schedules[i % 2]}, labels: {{team: t{i % 10}}}}}\n" for i in range(n)
    ))


def checkins(n_monitors: int, count: int, now: float) -> list[CheckIn]:
    rng = random.Random(1)
    out: list[CheckIn] = []
    while len(out) < count:
        monitor = f"m{rng.randrange(n_monitors):04d}"
        if rng.random() < 0.1:
            rid = f"{rng.getrandbits(128):032x}"
            rid = f"{rid[:8]}-{rid[8:12]}-4{rid[13:16]}-a{rid[17:20]}-{rid[20:]}"
            out.append(CheckIn(monitor_id=monitor, kind=Kind.START, received_at=now, run_id=rid))
            out.append(CheckIn(monitor_id=monitor, kind=Kind.SUCCESS, received_at=now, run_id=rid, exit_code=0))
        else:
            out.append(CheckIn(monitor_id=monitor, kind=Kind.SUCCESS, received_at=now, source_ip="127.0.0.1",
                               user_agent="curl/7.88.1"))
    return out[:count]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--monitors", type=int, default=1000)
    parser.add_argument("--checkins", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up)")
    parser.add_argument("--no-aof", action="store_true", help="redis-server without its append-only file")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cronmon-record-cost-") as tmp_name:
        tmp = Path(tmp_name)
        process, url = await start_redis(tmp, aof=not opts.no_aof)
        try:
            write_config(tmp / "monitors.yaml", opts.monitors)
            now = time.time()
            config = load_config(tmp / "monitors.yaml", now=now)
            registry = Registry.build(config, credentials.resolve(config, tmp, {"CRONMON_PING_KEY": "k" * 22}))
            store = Store(connect(url), "bench", StoreLimits())
            core = Core(store, registry, time.time)
            client = store.client

            async def run(batch: list[CheckIn]) -> None:
                queue = iter(batch)

                async def lane() -> None:
                    for checkin in queue:
                        await core.record(checkin)

                await asyncio.gather(*(lane() for _ in range(opts.concurrency)))

            await run(checkins(opts.monitors, 2000, time.time()))  # warm-up: scripts loaded, keys exist
            results = []
            for _ in range(opts.rounds):
                batch = checkins(opts.monitors, opts.checkins, time.time())
                await client.config_resetstat()
                redis_before, own_before, wall = ticks(process.pid), own_cpu(), time.perf_counter()
                await run(batch)
                wall = time.perf_counter() - wall
                redis_cpu, python_cpu = ticks(process.pid) - redis_before, own_cpu() - own_before
                stats = await client.info("commandstats")
                inner = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_config"))
                evalsha = stats.get("cmdstat_evalsha", {}).get("calls", 0)
                results.append((redis_cpu, python_cpu, wall, inner, evalsha))
            await store.close()
        finally:
            process.terminate()
            await process.wait()

    n = opts.checkins
    print(f"{opts.monitors} monitors, {n} check-ins a round, concurrency {opts.concurrency}, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, AOF {'off' if opts.no_aof else 'everysec'}")
    print(f"{'round':>5} {'redis µs/checkin':>17} {'python µs/checkin':>18} {'checkins/s':>11} "
          f"{'redis calls/checkin':>20} {'EVALSHA/checkin':>16}")
    for i, (redis_cpu, python_cpu, wall, inner, evalsha) in enumerate(results, 1):
        print(f"{i:>5} {redis_cpu / n * 1e6:>17.1f} {python_cpu / n * 1e6:>18.1f} {n / wall:>11,.0f} "
              f"{inner / n:>20.1f} {evalsha / n:>16.2f}")


if __name__ == "__main__":
    asyncio.run(main())
