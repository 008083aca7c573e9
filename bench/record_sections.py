#!/usr/bin/env python3
"""What each part of record.lua costs Redis, for a plain ping.

    .venv/bin/python bench/record_sections.py [--calls 20000] [--rounds 4] [--aof]

Starts a private redis-server (the embedded binary, unix socket, AOF off
unless --aof) with 1,000 monitors (as bench/record_cost.py), records a
success for each through Core.record, and captures the script arguments of
a second success for each (a plain Healthchecks ping: no run id, no body).
Then, for record.lua and for copies of it cut short (`return 1` put before
each top-level statement named in CUTS), it sends `--calls` EVALSHAs of
those arguments, pipelined 200 at a time, and reads commandstats'
usec_per_call for EVALSHA: the script's own time inside Redis, without
the network. The minimum of `--rounds` rounds is printed (the machine is
shared: the minimum is the least disturbed), with what each part adds to
the one before.

A cut copy still writes what the part before it wrote, so every round
runs on the same data. Only the unix socket in a temp dir is used.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
import record_cost  # noqa: E402  (the same Redis, config and monitors)
import redis.asyncio as redis  # noqa: E402

from exporter import credentials  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.core import Core, Registry  # noqa: E402
from exporter.model import CheckIn, Kind  # noqa: E402
from exporter.store import Store, StoreLimits, connect, record_script  # noqa: E402

MONITORS = 1000
# Top-level statements of record.lua: the script is cut just before the
# first line that starts with each (in this order, as they appear).
CUTS = (
    ("the call and the shared prelude", "local state, runs, tmo"),
    ("decoding the arguments", "local log_body"),
    ("reading the state (HMGET)", "local expected = num"),
    ("duplicate checks, run lookup, slot", "local limit = rate_count"),
    ("rate limit, counters, entry", "local function drop_run"),
    ("arrival and completion (counters, uptime, closed runs)", "if result_run ~= ''"),
    ("log, meta, probe, idempotency", "local state_fields, n_state_fields = flatten(put)"),
    ("writing the state (HSET)", "push_history(history"),
    ("history (LPUSH, LTRIM)", "-- open_runs, if still held"),
    ("deadline index and change feed", "return 'ok"),
)


def cut_copies(source: str) -> list[tuple[str, str]]:
    """(what the part before the cut does, the script cut there), in order;
    the cut points are searched in record.lua's part only, not the prelude."""
    lines = source.split("\n")
    body_start = source[: source.index("-- Record one check-in atomically")].count("\n")
    copies = []
    for label, start in CUTS:
        index = next((i for i in range(body_start, len(lines)) if lines[i].startswith(start)), None)
        if index is None:
            raise SystemExit(f"record.lua has no top-level line starting with {start!r}: update CUTS")
        copies.append((label, "\n".join(lines[:index]) + "\nreturn 1\n"))
    return copies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--aof", action="store_true", help="with the embedded default's AOF (fsync every second)")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cronmon-record-sections-") as tmp_name:
        tmp = Path(tmp_name)
        process, url = await record_cost.start_redis(tmp, aof=opts.aof)
        try:
            record_cost.write_config(tmp / "monitors.yaml", MONITORS)
            config = load_config(tmp / "monitors.yaml", now=time.time())
            registry = Registry.build(config, credentials.resolve(config, tmp, {"CRONMON_PING_KEY": "k" * 22}))
            store = Store(connect(url), "bench", StoreLimits())
            core = Core(store, registry, time.time)

            def ping(i: int) -> CheckIn:
                return CheckIn(monitor_id=f"m{i:04d}", kind=Kind.SUCCESS, received_at=time.time(),
                               source_ip="127.0.0.1", user_agent="curl/8.0")

            for i in range(MONITORS):
                await core.record(ping(i))
            captured: list[tuple[list, list]] = []
            send = store._batch.call
            store._lane_calls = None  # every check-in through _batch.call, with its keys and args

            async def capture(script, keys, args):
                captured.append((keys, args))
                return await send(script, keys, args)

            store._batch.call = capture  # type: ignore[method-assign]
            for i in range(MONITORS):
                await core.record(ping(i))
            store._batch.call = send  # type: ignore[method-assign]
            await store.close()

            full = record_script(StoreLimits())
            client = redis.from_url(url)
            results = []
            for label, source in [*cut_copies(full), ("all of record.lua", full)]:
                sha = await client.script_load(source)
                best = float("inf")
                for _ in range(opts.rounds):
                    await client.config_resetstat()
                    for start in range(0, opts.calls, 200):
                        pipe = client.pipeline(transaction=False)
                        for j in range(start, min(start + 200, opts.calls)):
                            keys, args = captured[j % len(captured)]
                            pipe.evalsha(sha, len(keys), *keys, *args)
                        await pipe.execute()
                    stats = (await client.info("commandstats"))["cmdstat_evalsha"]
                    best = min(best, float(stats["usec_per_call"]))
                results.append((label, best))
            await client.aclose()
        finally:
            process.terminate()
            await process.wait()

    print(f"record.lua for a plain ping, {opts.calls:,} EVALSHAs a round, min of {opts.rounds} rounds, "
          f"AOF {'everysec' if opts.aof else 'off'}; usec_per_call up to the end of each part")
    previous = 0.0
    for label, usec in results:
        print(f"  {label:<58} {usec:6.1f} µs  (+{usec - previous:5.1f})")
        previous = usec


if __name__ == "__main__":
    asyncio.run(main())
