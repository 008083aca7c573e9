#!/usr/bin/env python3
"""10,000 monitors everywhere: what start-up, check-config, a reload, API
creates and an idle fleet cost as the fleet grows.

    .venv/bin/python bench/fleet_scale.py [--sizes 100,1000,10000] [--api-sizes 10,1000,10000] [--workers N]

For each YAML fleet size N (half `interval: 1h`, half `*/5 * * * *` in
Europe/Berlin, as bench/compare.py writes them):

- `cronmon check-config` on the file: wall time;
- `cronmon serve` (embedded Redis, a fresh data dir): from exec to the
  last monitor answering on its page (start-up);
- a reload after the file changed (SIGHUP): until the new revision's
  extra monitor answers;
- idle cost: CPU of cronmon's process tree (workers, supervisor,
  redis-server) over 20 s with no traffic, as % of one core (the sweeper,
  heartbeats and the scrape cache's change-feed reads when nothing is due).

Then API monitors, with a 100-monitor YAML fleet: creates through
POST /api/v1/monitors until the API fleet holds each of --api-sizes, then
50 more creates timed one by one (p50, p95): a create must cost the same
at 10 as at 10,000 API monitors.

Timings are wall clock on a shared machine: compare the rows of one run,
not runs of different days. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (children, process trees, config writer)

TOKEN = "bench-admin-token-0123456789abcdef"


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def check_config_seconds(config: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "exporter.cli", "check-config", str(config)], cwd=compare.ROOT,
                         capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"check-config failed: {out.stderr.strip()[:500]}")
    return took


def answers(base: str, monitor: str) -> bool:
    return compare.http_get(f"{base}/monitors/{monitor}", timeout=5)[0] == 200


def wait_answering(base: str, monitor: str, proc, timeout: float = 600) -> float:
    """Until `monitor`'s page answers 200 on 3 fresh connections in a row
    (with workers, each may land on another process)."""
    streak = [0]

    def check() -> bool:
        streak[0] = streak[0] + 1 if answers(base, monitor) else 0
        return streak[0] >= 3

    return compare.wait_until(check, timeout, f"monitor {monitor}", proc)


def yaml_fleet(children: compare.Children, n: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cronmon-fleet-") as name:
        tmp = Path(name)
        config = tmp / "monitors.yaml"
        compare.write_config(config, n)
        row: dict = {"monitors": n, "check_config_s": check_config_seconds(config)}
        t0 = time.perf_counter()
        proc, base = compare.start_cronmon(children, tmp, config, workers)
        try:
            wait_answering(base, f"m{n - 1:04d}", proc)
            row["startup_s"] = time.perf_counter() - t0
            compare.write_config(config, n + 1, revision=1)
            t0 = time.perf_counter()
            for pid in compare.sighup_targets(proc.pid):
                os.kill(pid, signal.SIGHUP)
            wait_answering(base, f"m{n:04d}", proc)
            row["reload_s"] = time.perf_counter() - t0
            time.sleep(5)  # let the reload's re-bases settle
            pids = list(compare.process_tree(proc.pid))
            before, t0 = cpu_seconds(pids), time.perf_counter()
            time.sleep(20)
            row["idle_cpu_pct"] = 100 * (cpu_seconds(pids) - before) / (time.perf_counter() - t0)
        finally:
            compare.stop(proc)
            children.procs.remove(proc)
    return row


def post_json(url: str, body: dict) -> tuple[int, float]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status = resp.status
            resp.read()
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - t0


def create_many(base: str, ids: range, threads: int = 4) -> None:
    failures: list[str] = []
    chunks = [ids[i::threads] for i in range(threads)]

    def worker(chunk) -> None:
        for i in chunk:
            status, _ = post_json(f"{base}/api/v1/monitors", {"id": f"api{i:05d}", "schedule": {"interval": "1h"}})
            if status != 201:
                failures.append(f"api{i:05d}: {status}")

    pool = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} creates failed, e.g. {failures[:3]}")


def api_fleet(children: compare.Children, sizes: list[int], workers: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cronmon-api-fleet-") as name:
        tmp = Path(name)
        config = tmp / "monitors.yaml"
        compare.write_config(config, 100)
        config.write_text(config.read_text().replace("monitors:\n", (
            "api_tokens:\n  - {name: admin, env: BENCH_ADMIN_TOKEN, owner: admin, scope: write}\nmonitors:\n"), 1))
        # No per-owner quota: the fleet outgrows the default 10,000.
        proc, base = compare.start_cronmon(children, tmp, config, workers, env={"BENCH_ADMIN_TOKEN": TOKEN},
                                           extra=("--monitors-per-owner", "0"))
        try:
            wait_answering(base, "m0099", proc)
            have = 0
            for size in sizes:
                compare.log(f"API fleet: creating up to {size:,}")
                create_many(base, range(have, size))
                have = size
                times = []
                for i in range(50):
                    status, took = post_json(f"{base}/api/v1/monitors",
                                             {"id": f"probe{size}-{i}", "schedule": {"interval": "1h"}})
                    if status != 201:
                        raise RuntimeError(f"create at {size}: {status}")
                    times.append(took * 1000)
                times.sort()
                rows.append({"api_monitors": size, "p50_ms": statistics.median(times),
                             "p95_ms": times[int(len(times) * 0.95) - 1]})
        finally:
            compare.stop(proc)
            children.procs.remove(proc)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--api-sizes", default="10,1000,10000")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    api_sizes = [int(s) for s in args.api_sizes.split(",") if s]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(compare.machine_line())
    children = compare.Children()
    try:
        fleet = []
        for n in sizes:
            compare.log(f"YAML fleet of {n:,}")
            fleet.append(yaml_fleet(children, n, args.workers))
        api = api_fleet(children, api_sizes, args.workers) if api_sizes else []
    finally:
        children.stop_all()
    print(compare.table(f"YAML monitors, --workers {args.workers}",
                        ["monitors", "check-config", "start-up", "reload (changed file)", "idle CPU"],
                        [[f"{r['monitors']:,}", f"{r['check_config_s']:.2f} s", f"{r['startup_s']:.2f} s",
                          f"{r['reload_s']:.2f} s", f"{r['idle_cpu_pct']:.1f}% of a core"] for r in fleet]))
    if api:
        print()
        print(compare.table("API monitors: 50 creates, one at a time, POST /api/v1/monitors",
                            ["API monitors before", "create p50", "create p95"],
                            [[f"{r['api_monitors']:,}", f"{r['p50_ms']:.1f} ms", f"{r['p95_ms']:.1f} ms"]
                             for r in api]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
