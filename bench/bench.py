#!/usr/bin/env python3
"""Rerunnable benchmark: ping throughput and /metrics latency.

    .venv/bin/python bench/bench.py [--monitors 1000] [--seconds 15]

(`python3 dev.py test` or `python3 dev.py serve` creates .venv first.)

Needs `wrk` (Debian package wrk). Starts `cronmon serve` on the embedded
Redis in a temporary data dir with N interval monitors, then:

1. pings: wrk, 2 threads, 32 connections, GET /ping/<key>/<slug> spread
   over all N monitors;
2. /metrics: wrk, 1 connection, after every monitor has state.

Half the monitors are interval heartbeats, half `*/5 * * * *` cron jobs in
Europe/Berlin.

Prints the machine it ran on. Load generator, cronmon and redis-server
share the machine's cores, so treat figures as relative.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-ping-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url: str, seconds: int, threads: int, connections: int, script: str | None = None, env=None) -> str:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    return subprocess.run([*args, url], capture_output=True, text=True, check=True, env=env).stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--monitors", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="cronmon-bench-"))
    config = tmp / "monitors.yaml"
    # Half interval heartbeats, half cron jobs in a DST zone (cron pings cost
    # more: the arrival's candidate slots are computed with croniter).
    schedules = ("{interval: 1h}", '{cron: "*/5 * * * *", timezone: Europe/Berlin}')
    config.write_text(
        "monitors:\n"
        + "".join(
            f"  - {{id: m{i:04d}, schedule: {schedules[i % 2]}, labels: {{team: t{i % 10}, severity: warning}}}}\n"
            for i in range(args.monitors)
        )
    )
    port = free_port()
    env = {**os.environ, "CRONMON_PING_KEY": KEY}
    server = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--listen",
         f"127.0.0.1:{port}", "--data-dir", str(tmp / "data"), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")
        print(f"monitors: {args.monitors}; load generator, cronmon and redis-server share those cores\n")
        out = wrk(base + "/", args.seconds, 2, 32, str(ROOT / "bench/ping.lua"),
                  {**os.environ, "BENCH_MONITORS": str(args.monitors), "BENCH_PING_KEY": KEY})
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        print(f"pings: {float(rps):.0f} per second (wrk -t2 -c32 -d{args.seconds}s, spread over all monitors)")
        lat = dict(re.findall(r"\s(50%|90%|99%)\s+([\d.]+\w+)", out))
        print(f"  ping latency: p50 {lat.get('50%')}, p90 {lat.get('90%')}, p99 {lat.get('99%')}")
        if non2xx:
            print(f"  non-2xx responses: {non2xx.group(1)}")
        body = urllib.request.urlopen(base + "/metrics").read()
        lines = body.count(b"\n")
        print(f"\n/metrics: {len(body) / 1e6:.1f} MB, {lines} lines")
        out = wrk(base + "/metrics", args.seconds, 1, 1)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
        lat = dict(re.findall(r"\s(50%|90%|99%)\s+([\d.]+\w+)", out))
        print(f"/metrics latency (1 connection): p50 {lat.get('50%')}, p90 {lat.get('90%')}, p99 {lat.get('99%')}; {float(rps):.1f} scrapes/s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
