#!/usr/bin/env python3
"""Where a ping's CPU goes: each process's share, and how idle the machine is.

    .venv/bin/python bench/cpu_split.py [--seconds 10] [--workers 1 2] [--rounds 2]

For each --workers count in turn (and the Pushgateway, for the machine's
idle share under its load), `rounds` times: starts `cronmon serve` on
1,000 monitors with its embedded Redis (as bench/compare.py), warms it
up, then runs the same `wrk -t2 -c32` ping load as compare.py and prints

- pings/s and p99,
- the CPU (user + system, /proc/<pid>/stat) of every cronmon process and
  of redis-server, in µs per ping,
- the share of the machine's CPU time that was idle (/proc/stat).

An idle share well above the Pushgateway's means the processes wait for
each other rather than for a core (README, "Performance"). Rounds run
interleaved (1, 2, 1, 2, ...): the machine is shared, and only figures
taken close together compare. Needs wrk and prometheus-pushgateway; only
127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the same children, config, wrk and Pushgateway handling)

N = 1000


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid`, 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_times() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[3] + values[4]


def measured(run, pids: dict[int, str]) -> tuple[dict, dict[str, float], float]:
    """Run `run()` (a wrk run); its result, each process's CPU seconds meanwhile, and the idle share."""
    cpu_before = {pid: process_cpu(pid) for pid in pids}
    total_before, idle_before = machine_times()
    result = run()
    total_after, idle_after = machine_times()
    spent = {f"{name} {pid}": process_cpu(pid) - cpu_before[pid] for pid, name in pids.items()}
    return result, spent, (idle_after - idle_before) / max(1, total_after - total_before)


def cronmon_round(children: compare.Children, workers: int, seconds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cronmon-cpu-split-") as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "monitors.yaml"
        compare.write_config(config, N)
        serve, base = compare.start_cronmon(children, tmp, config, workers)
        try:
            compare.wrk_pings(children, base, N, 3, 32)  # warm-up: scripts loaded, state exists
            pids = compare.process_tree(serve.pid)
            result, spent, idle = measured(lambda: compare.wrk_pings(children, base, N, seconds, 32), pids)
        finally:
            compare.stop(serve)
    pings = max(1, result["requests"])
    print(f"cronmon --workers {workers}: {result['rps']:,.0f} pings/s, p99 {result['p99_ms']:.1f} ms, "
          f"machine idle {idle:.1%}")
    for name, seconds_spent in sorted(spent.items(), key=lambda item: -item[1]):
        if seconds_spent > 0.01:
            print(f"  {name:<24} {seconds_spent:6.2f} s CPU  {seconds_spent / pings * 1e6:6.1f} µs a ping")


def pushgateway_round(children: compare.Children, seconds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cronmon-cpu-split-") as tmp_name:
        gateway, base = compare.start_pushgateway(children, Path(tmp_name))
        try:
            compare.wrk_pushes(children, base, N, 3, 32)
            result, spent, idle = measured(lambda: compare.wrk_pushes(children, base, N, seconds, 32),
                                           {gateway.pid: "pushgateway"})
        finally:
            compare.stop(gateway)
    pushes = max(1, result["requests"])
    cpu = sum(spent.values())
    print(f"pushgateway: {result['rps']:,.0f} pushes/s, p99 {result['p99_ms']:.1f} ms, machine idle {idle:.1%}, "
          f"{cpu / pushes * 1e6:.1f} µs a push")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-pushgateway", action="store_true", help="skip the Pushgateway's round")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; wrk -t2 -c32 -d{args.seconds}s over {N:,} monitors; "
          f"CPU from /proc, per ping of the run")
    children = compare.Children()
    try:
        for _ in range(args.rounds):
            if not args.no_pushgateway:
                pushgateway_round(children, args.seconds)
            for workers in args.workers:
                cronmon_round(children, workers, args.seconds)
    finally:
        children.stop_all()


if __name__ == "__main__":
    main()
