#!/usr/bin/env python3
"""Instructions a ping costs cronmon's worker and its Redis, counted by callgrind.

    .venv/bin/python bench/instructions.py [--pings 3000] [--root DIR ...]

Why: the wall-clock benchmarks (compare.py, cpu_split.py, record_cost.py)
measure what matters, but on this shared machine two runs of the same
commit differ by 10-20%, more than most single changes to the ping path
gain. An instruction count does not drift with the machine's load:
callgrind (valgrind) counts the instructions a process executes, the same
to within ~1% run after run. It misses what instructions do not show
(cache misses, syscall and scheduling costs), so a change is judged by
both: this for the direction and size, compare.py for the end result.

For each --root (a checkout of cronmon; default: this one, so that two
commits compare as `git worktree add /tmp/base <commit>` and
`--root /tmp/base --root .`), it starts `cronmon serve --workers 1` with
its embedded Redis on 1,000 monitors (bench/compare.py's config), both
processes under `valgrind --tool=callgrind`, sends warm-up pings, zeroes
the counts (callgrind_control -z), sends `--pings` plain Healthchecks pings
over 32 keep-alive connections (as compare.py's wrk load, spread over the
monitors), dumps the counts (callgrind_control -d) and prints each
process's instructions per ping. Under valgrind the server runs ~50x
slower: a run takes about a minute. Needs Debian's valgrind; only
127.0.0.1 and a unix socket in a temp dir are used.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the config, the ping key, children and readiness)

from exporter.embedded import find_redis_server  # noqa: E402  (the wheel's binary: the same for every root)

N_MONITORS = 1000
CONNECTIONS = 32


def total_instructions(out_prefix: Path) -> int:
    """The instruction count of the newest callgrind dump named out_prefix*."""
    dumps = sorted(glob.glob(f"{out_prefix}*"), key=os.path.getmtime)
    for line in Path(dumps[-1]).read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


async def ping_load(port: int, pings: int, first: int) -> None:
    """`pings` GETs of /ping/<key>/m<NNNN> over CONNECTIONS keep-alive
    connections, one request at a time on each; every answer must be 200."""
    counter = iter(range(first, first + pings))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(compare.HOST, port)
        try:
            for n in counter:
                path = f"/ping/{compare.KEY}/m{n % N_MONITORS:04d}"
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {compare.HOST}:{port}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                if status != b"200":
                    raise RuntimeError(f"{path}: HTTP {status.decode()}")
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))


def start_serve(root: Path, tmp: Path, config: Path, port: int, children: compare.Children,
                wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.Popen:
    """`cronmon serve --workers 1` of the checkout at `root` on `config`,
    its data in tmp/data, run under `wrapper` (valgrind's command, or none)."""
    args = [*wrapper, sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
            "--listen", f"{compare.HOST}:{port}", "--data-dir", str(tmp / "data"),
            "--log-level", "warning", "--workers", "1"]
    return compare.start_session(
        children, args, cwd=root,
        env={**os.environ, "CRONMON_PING_KEY": compare.KEY, "PYTHONPATH": str(root), **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def prefill(root: Path, tmp: Path, config: Path, seconds: int, children: compare.Children) -> None:
    """Bring the store in tmp/data to a steady state: `seconds` of
    compare.py's wrk ping load on a cronmon run without valgrind, then a
    clean stop (its Redis saves). Without it every monitor's store is a few
    pings old: its history, recently closed runs and uptime buckets are
    small, and their cost a ping is not what a long-running server pays."""
    port = compare.free_port()
    serve = start_serve(root, tmp, config, port, children)
    base = f"http://{compare.HOST}:{port}"
    try:
        compare.wait_until(lambda: compare.ready(base + "/-/ready"), 120, "cronmon", serve)
        result = compare.wrk_pings(children, base, N_MONITORS, seconds, CONNECTIONS)
        if result["non2xx"] or result["socket_error_total"]:
            raise RuntimeError(f"prefill: {result['non2xx']} non-2xx, {result['socket_error_total']} socket errors")
        # A compact AOF (its RDB preamble) loads in seconds under valgrind;
        # the tail of a long run takes minutes.
        client = redis.Redis(unix_socket_path=str(tmp / "data" / "redis.sock"))
        try:
            compare.wait_until(lambda: not client.info("persistence")["aof_rewrite_in_progress"], 120,
                               "an AOF rewrite in progress", serve)
            client.bgrewriteaof()
            time.sleep(0.2)
            compare.wait_until(lambda: not client.info("persistence")["aof_rewrite_in_progress"], 120,
                               "the AOF rewrite", serve)
        finally:
            client.close()
    finally:
        compare.stop(serve)


def measure(root: Path, pings: int, children: compare.Children, prefill_seconds: int = 0) -> tuple[float, float]:
    """(worker, redis-server) instructions per ping for the checkout at `root`."""
    with tempfile.TemporaryDirectory(prefix="cronmon-instructions-") as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "monitors.yaml"
        compare.write_config(config, N_MONITORS)
        if prefill_seconds:
            prefill(root, tmp, config, prefill_seconds, children)
        worker_out, redis_out = tmp / "worker.callgrind", tmp / "redis.callgrind"
        # The embedded Redis runs under callgrind too, through a wrapper
        # named as its binary (CRONMON_REDIS_SERVER).
        wrapper = tmp / "redis-server"
        wrapper.write_text(
            "#!/bin/sh\nexec valgrind --tool=callgrind "
            f"--callgrind-out-file={shlex.quote(str(redis_out))} {shlex.quote(find_redis_server())} \"$@\"\n"
        )
        wrapper.chmod(0o755)
        port = compare.free_port()
        serve = start_serve(root, tmp, config, port, children,
                            ("valgrind", "--tool=callgrind", f"--callgrind-out-file={worker_out}"),
                            {"CRONMON_REDIS_SERVER": str(wrapper)})
        base = f"http://{compare.HOST}:{port}"
        try:
            compare.wait_until(lambda: compare.ready(base + "/-/ready"), 300, "cronmon under valgrind", serve)
            # Every monitor's state exists and every cache is warm.
            asyncio.run(ping_load(port, 2 * N_MONITORS, 0))
            # The one child: the embedded Redis (valgrind runs its program in
            # its own process, so the pids are the programs').
            (redis_pid,) = (pid for pid in compare.process_tree(serve.pid) if pid != serve.pid)
            for pid in (serve.pid, redis_pid):
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
            asyncio.run(ping_load(port, pings, 2 * N_MONITORS))
            for pid in (serve.pid, redis_pid):
                subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
            time.sleep(0.5)
            return total_instructions(worker_out) / pings, total_instructions(redis_out) / pings
        finally:
            compare.stop(serve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=3000, help="measured pings (after 2,000 warm-up pings)")
    parser.add_argument("--prefill", type=int, default=0, metavar="SECONDS",
                        help="first bring the store to a steady state with SECONDS of wrk pings (compare.py's "
                             "load) without valgrind; 20 fills every monitor's recently closed runs to their cap")
    parser.add_argument("--root", type=Path, action="append",
                        help="a cronmon checkout to measure (repeatable; default: this one)")
    args = parser.parse_args()
    roots = args.root or [compare.ROOT]
    print(f"instructions per plain ping (callgrind), {args.pings:,} pings over {CONNECTIONS} connections, "
          f"{N_MONITORS:,} monitors, --workers 1, embedded Redis"
          + (f", after {args.prefill} s of wrk pings" if args.prefill else ""))
    children = compare.Children()
    try:
        for root in roots:
            worker, redis_server = measure(root.resolve(), args.pings, children, args.prefill)
            print(f"  {str(root):<30} worker {worker:>10,.0f}   redis-server {redis_server:>10,.0f}   "
                  f"both {worker + redis_server:>10,.0f}")
    finally:
        children.stop_all()


if __name__ == "__main__":
    main()
