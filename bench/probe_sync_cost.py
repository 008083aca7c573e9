#!/usr/bin/env python3
"""What one API change costs the shared active-check schedule in Redis.

    .venv/bin/python bench/probe_sync_cost.py [--monitors 10000] [--calls 5]

Every process publishes its active monitors to the shared schedule when its
registry changes (probes.Prober.sync). This measures one such update with
N active monitors in the schedule and one of them changed, made two ways:

- full: the whole list (what every change cost before 2026-12-07, and
  what a reload or start-up still sends): probe_sync.lua over N entries;
- partial: only the changed monitor (what an API create, edit or delete
  now sends: Registry.api_changes_since).

It prints the script's time in Redis (INFO commandstats; Redis answers no
other client meanwhile, so this is also what a ping can wait behind) and
the wall time of the call. Starts a private redis-server (bench/record_cost.py's
start_redis: the embedded binary, unix socket, AOF as the embedded
default) in a temp dir; nothing else is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import redis.asyncio as redis  # noqa: E402
from record_cost import start_redis  # noqa: E402

from exporter.store import Store, connect  # noqa: E402


async def measure(url: str, monitors: int, calls: int) -> None:
    store = Store(connect(url))
    admin = redis.Redis.from_url(url)
    try:
        now = time.time()
        entries = [(f"m{i:05d}", f'{{"i": 60, "u": "https://example.com/{i}"}}', now + i % 60)
                   for i in range(monitors)]
        await store.sync_probes(entries)
        last = entries[-1][0]
        variants = {
            f"full: {monitors:,} entries, one of them changed": lambda version: store.sync_probes(
                [*entries[:-1], (last, f'{{"i": {version}}}', now)]),
            "partial: the one that changed": lambda version: store.sync_probes(
                [(last, f'{{"i": {version}}}', now)], []),
        }
        version = 100
        for label, call in variants.items():
            await admin.config_resetstat()
            started = time.perf_counter()
            for _ in range(calls):
                version += 1
                assert await call(version) == 1  # each call changes that one entry
            wall = (time.perf_counter() - started) / calls
            stats = (await admin.info("commandstats"))["cmdstat_evalsha"]
            print(f"{label:45s} Redis {stats['usec_per_call'] / 1000:7.2f} ms a call, wall {wall * 1000:7.2f} ms")
    finally:
        await store.close()
        await admin.aclose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monitors", type=int, default=10000)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cronmon-probe-sync-"))
    server, url = await start_redis(tmp)  # as bench/record_cost.py: the embedded binary, AOF on
    try:
        await measure(url, args.monitors, args.calls)
    finally:
        server.terminate()
        await server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
