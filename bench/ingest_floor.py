#!/usr/bin/env python3
"""How close to the Pushgateway can a ping server on cronmon's stack get?

    .venv/bin/python bench/ingest_floor.py [--seconds 8] [--rounds 3] [--workers N]

Issue 9 asks for ingest at half the Pushgateway's pushes/s. This runs, in
one go and with the same `wrk -t2 -c32` over 1,000 targets as
bench/compare.py, each round in turn:

1. the Pushgateway (`--push.disable-consistency-check`), PUTs of 5 samples;
2. bench/floor_server.py --mode empty: aiohttp answering "OK" and nothing else;
3. --mode redis: plus one HINCRBY per ping, pipelined per event-loop turn,
   on a redis-server with the embedded default's AOF (fsync every second);
4. --mode script: the same with one EVALSHA of a three-command Lua script;
5. --mode raw: the same EVALSHA over a bare asyncio protocol with hiredis
   instead of redis-py's pipeline (what cronmon's store does on one server,
   exporter/redis_lane.py);
6. --mode protocol: no aiohttp: a bare asyncio protocol with httptools
   answering "OK" (what cronmon's ping fast path is built on);
7. --mode protocol-raw: that protocol with raw's EVALSHA per ping;
8. cronmon with its record step stubbed (bench/variant/sitecustomize.py,
   `http-only`): the fast path, request metrics, authentication, the
   check-in parsed;
9. cronmon with a one-line script in place of record.lua
   (`no-record-script`): all of a ping's Python, none of its Redis work;
10. cronmon itself (`cronmon serve`, embedded Redis, 1,000 monitors).

2-7 use `--workers` processes on one socket, as cronmon does. They run no
cronmon code: they are the floor of the HTTP server + a Redis client + a Lua
script per check-in on this machine, which cronmon's ping can only add to; 8-10 show
what each layer of cronmon's ping adds. The report gives each one's
pings/s, p99 and ratio to the Pushgateway of the same round (the machine
is shared: only same-round ratios mean anything).
Needs wrk and prometheus-pushgateway; only 127.0.0.1 and a unix socket in
a temp dir are used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
import compare  # noqa: E402  (the same children, wrk and Pushgateway handling)

from exporter.embedded import find_redis_server  # noqa: E402

N = 1000


def start_redis(children: compare.Children, tmp: Path) -> str:
    sock = tmp / "floor-redis.sock"
    compare.start_session(children, [find_redis_server(), "--port", "0", "--unixsocket", str(sock), "--dir", str(tmp),
                                     "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    compare.wait_until(sock.exists, 20, "redis-server")
    return f"unix://{sock}"


def start_floor(children: compare.Children, mode: str, workers: int, redis_url: str) -> tuple[subprocess.Popen, str]:
    port = compare.free_port()
    args = [sys.executable, str(compare.BENCH / "floor_server.py"), "--port", str(port), "--workers", str(workers),
            "--mode", mode]
    if mode != "empty":
        args += ["--redis", redis_url]
    proc = compare.start_session(children, args, cwd=compare.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://{compare.HOST}:{port}"
    compare.wait_until(lambda: compare.ready(base + "/ping/x"), 30, f"floor server ({mode})", proc)
    return proc, base


def variant_dir(variant: str) -> str:
    return f"cronmon-{variant or 'plain'}"


def start_variant(children: compare.Children, tmp: Path, config: Path, workers: int, variant: str) -> str:
    """`cronmon serve` (embedded Redis under tmp) with a bench variant
    (bench/variant/sitecustomize.py; "" for none) in every process."""
    tmp.mkdir()
    pythonpath = os.pathsep.join([str(compare.BENCH / "variant"), os.environ.get("PYTHONPATH", "")])
    _, base = compare.start_cronmon(children, tmp, config, workers,
                                    env={"CRONMON_BENCH_VARIANT": variant, "PYTHONPATH": pythonpath})
    return base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    for tool in ("wrk", compare.PUSHGATEWAY):
        if not shutil.which(tool):
            print(f"{tool} is needed (Debian packages wrk, prometheus-pushgateway)", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(compare.machine_line())
    children = compare.Children()
    tmp = Path(tempfile.mkdtemp(prefix="cronmon-floor-"))
    floors = {"aiohttp, empty handler": "empty", "aiohttp + 1 HINCRBY": "redis",
              "aiohttp + 1 EVALSHA (3 commands)": "script", "aiohttp + 1 EVALSHA, bare Redis protocol": "raw",
              "httptools protocol, empty": "protocol", "httptools protocol + 1 EVALSHA, bare": "protocol-raw"}
    names = ["pushgateway", *floors, "cronmon, record stubbed", "cronmon, no record.lua", "cronmon ping"]
    variants = {"cronmon, record stubbed": "http-only", "cronmon, no record.lua": "no-record-script",
                "cronmon ping": ""}
    results: dict[str, list[dict]] = {name: [] for name in names}
    try:
        redis_url = start_redis(children, tmp)
        _, pgw = compare.start_pushgateway(children, tmp)
        config = tmp / "monitors.yaml"
        compare.write_config(config, N)
        bases = {name: start_variant(children, tmp / variant_dir(v), config, args.workers, v)
                 for name, v in variants.items()}
        for round_ in range(1, args.rounds + 1):
            compare.log(f"round {round_}: pushgateway")
            results[names[0]].append(compare.wrk_pushes(children, pgw, N, args.seconds, 32))
            for name, mode in floors.items():
                compare.log(f"round {round_}: {name}")
                proc, base = start_floor(children, mode, args.workers, redis_url)
                try:
                    compare.wrk_pings(children, base, N, 2, 32)  # warm-up
                    results[name].append(compare.wrk_pings(children, base, N, args.seconds, 32))
                finally:
                    compare.stop(proc)
                    children.procs.remove(proc)
            for name, base in bases.items():
                compare.log(f"round {round_}: {name}")
                compare.wrk_pings(children, base, N, 2, 32)  # warm-up
                results[name].append(compare.wrk_pings(children, base, N, args.seconds, 32))
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"wrk -t2 -c32 -d{args.seconds}s over {N:,} targets, {args.rounds} rounds, --workers {args.workers}; "
          "ratio: to the Pushgateway of the same round, median over rounds")
    header = ["", "req/s (median)", "p99 (median)", "non-2xx", "ratio to pushgateway (per round)"]
    rows = []
    for name in names:
        runs = results[name]
        ratios = [r["rps"] / p["rps"] for r, p in zip(runs, results[names[0]]) if p["rps"]]
        rows.append([
            name,
            compare.fmt(statistics.median(r["rps"] for r in runs)),
            compare.fmt(statistics.median(r["p99_ms"] or 0 for r in runs), " ms", 2),
            compare.fmt(sum(r["non2xx"] for r in runs)),
            f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})",
        ])
    print(compare.table("", header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
