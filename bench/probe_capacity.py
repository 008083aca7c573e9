#!/usr/bin/env python3
"""Rerunnable benchmark: how many 60-second active monitors one process keeps on schedule.

    .venv/bin/python bench/probe_capacity.py [--monitors 2000] [--seconds 150] [--target-delay 0.05]
                                             [--concurrency 64]

(`python3 dev.py test` or `python3 dev.py serve` creates .venv first.)

Starts a local HTTP target (aiohttp, in a child process; answers after
--target-delay seconds, standing in for a real endpoint's latency) and
`cronmon serve` on the embedded Redis with N monitors, each an `http:`
check of the target every 60 s. After a minute of warm-up (the first checks
are spread over the first interval) it measures for --seconds and reports:

- checks done vs. expected (N x seconds / 60),
- how late checks started after their due time (cronmon's own
  cronmon_probe_schedule_lag_seconds histogram, over the measured window),
- cronmon's CPU use (process_cpu_seconds_total).

"On schedule" = at least 99% of the expected checks done and 99% of them
started less than 1 s late. Target, cronmon and redis-server share the
machine's cores; the machine is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TARGET = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web
    delay = float(sys.argv[2])
    async def ok(request):
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("cronmon_probe_schedule_lag_seconds", "process_cpu_seconds_total")):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
        elif line.startswith("cronmon_runs_total{") and 'outcome="ok"' in line:
            values["checks"] = values.get("checks", 0.0) + float(line.rpartition(" ")[2])
        elif line.startswith("cronmon_runs_total{") and ('outcome="error"' in line or 'outcome="warning"' in line):
            values["bad"] = values.get("bad", 0.0) + float(line.rpartition(" ")[2])
    return values


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and all its descendants (Linux)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(more)
        tree |= more
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--monitors", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=150)
    parser.add_argument("--target-delay", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cronmon serve --workers (default: cores)")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")
    print(f"{args.monitors} monitors every 60s against a target answering in {args.target_delay}s; "
          f"--probe-concurrency {args.concurrency}")
    target_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        target_file = Path(tmp) / "target.py"
        target_file.write_text(TARGET)
        target = subprocess.Popen([sys.executable, str(target_file), str(target_port), str(args.target_delay)])
        lines = ["monitors:"]
        for i in range(args.monitors):
            lines.append(f'  - {{id: site-{i}, http: {{url: "http://127.0.0.1:{target_port}/{i}", interval: 60s, '
                         f'slow: 5s, timeout: 10s}}, grace: 30s}}')
        config = Path(tmp) / "monitors.yaml"
        config.write_text("\n".join(lines) + "\n")
        env = {**os.environ, "CRONMON_PING_KEY": "bench-probe-key"}
        cronmon = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(Path(tmp) / "data"), "--probe-concurrency", str(args.concurrency),
             "--workers", str(args.workers), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,  # not the start-up list of N ping URLs
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(base + "/-/ready", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("cronmon did not become ready") from None
                    time.sleep(0.2)
            print("warming up for 65s (the first checks spread over the first minute) ...")
            time.sleep(65)
            before, cpu_before = scrape(base), tree_cpu_seconds(cronmon.pid)
            started = time.monotonic()
            time.sleep(args.seconds)
            after, cpu_after = scrape(base), tree_cpu_seconds(cronmon.pid)
            elapsed = time.monotonic() - started
        finally:
            cronmon.send_signal(signal.SIGTERM)
            cronmon.wait(60)
            target.terminate()
            target.wait(10)

    done = after.get("checks", 0) + after.get("bad", 0) - before.get("checks", 0) - before.get("bad", 0)
    expected = args.monitors * elapsed / 60
    count = after["cronmon_probe_schedule_lag_seconds_count"] - before["cronmon_probe_schedule_lag_seconds_count"]
    print(f"checks: {done:.0f} done, {expected:.0f} expected ({100 * done / expected:.1f}%); "
          f"{after.get('bad', 0) - before.get('bad', 0):.0f} were not ok")
    for bound in ("0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0"):
        name = f'cronmon_probe_schedule_lag_seconds_bucket{{le="{bound}"}}'
        within = after.get(name, 0) - before.get(name, 0)
        print(f"  started <= {bound:>4}s late: {100 * within / count if count else 0:5.1f}%")
    cpu = cpu_after - cpu_before
    print(f"cronmon CPU (all its processes, redis-server included): {100 * cpu / elapsed:.0f}% of one core; "
          f"--workers {args.workers}")
    on_time = (after.get('cronmon_probe_schedule_lag_seconds_bucket{le="1.0"}', 0)
               - before.get('cronmon_probe_schedule_lag_seconds_bucket{le="1.0"}', 0))
    on_schedule = done >= 0.99 * expected and count and on_time >= 0.99 * count
    print("ON SCHEDULE" if on_schedule else "NOT on schedule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
