#!/usr/bin/env python3
"""What `cronmon exec` adds to a job: wall time and peak RSS on `true`.

    .venv/bin/python bench/exec_overhead.py [--runs 30] [--url PING_URL]

Without --url it starts `cronmon serve` (embedded Redis, one worker) on a
free loopback port with one monitor. Each round runs, one after another:
`true` directly, `python -c pass` (the interpreter's start), `python -c
"import exporter.entry, exporter.runner"` (the interpreter plus what
`cronmon exec` imports: the `cronmon` script's entry point keeps the
server's imports out of it), and `cronmon exec --url ... -- true` (a start,
the job, a finish: two HTTP round trips). Wall times and peak RSS (ru_maxrss of the
process, from a small launcher's os.wait4) are reported with medians and p90s, and the
machine they were measured on.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402

KEY = "exec-bench-ping-key-0123456789"
IMPORTS = "python -c 'import exporter.entry, exporter.runner'"
CONFIG = "monitors: [{id: bench, schedule: {interval: 1h}}]\n"


# Peak RSS comes from a small launcher's os.wait4: a process forked from this
# script would report this script's size (Linux keeps the forked image's
# high-water mark across exec), so `true` shows the launcher's ~10 MB floor.
LAUNCHER = """
import os, sys, time
argv = sys.argv[1:]
started = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
print(elapsed, usage.ru_maxrss, code, file=sys.stderr)
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS KiB, exit status) of one process, spawned and
    timed by the launcher (so its own start is not counted)."""
    result = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, check=True,
    )
    *err, last = result.stderr.decode(errors="replace").strip().splitlines() or [""]
    elapsed, rss, code = last.split()
    if code != "0" or err:
        raise SystemExit(f"{argv!r}: exit {code}: {' '.join(err)}")
    return float(elapsed), int(rss), int(code)


def start_cronmon(tmp: Path) -> tuple[subprocess.Popen, str]:
    (tmp / "monitors.yaml").write_text(CONFIG)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(tmp / "monitors.yaml"),
         "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "data"), "--workers", "1",
         "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "CRONMON_PING_KEY": KEY}, stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
                return process, f"http://127.0.0.1:{port}/ping/{KEY}/bench"
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise SystemExit("cronmon serve did not start")


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()} {platform.machine()}, {model}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}")


def summary(name: str, walls: list[float], rss: list[int], base: float) -> str:
    walls_ms = sorted(w * 1000 for w in walls)
    p90 = walls_ms[min(len(walls_ms) - 1, int(len(walls_ms) * 0.9))]
    median = statistics.median(walls_ms)
    return (f"{name:<34} median {median:8.1f} ms  p90 {p90:8.1f} ms  x{median / base:7.1f} of true  "
            f"peak RSS median {statistics.median(rss) / 1024:6.1f} MiB max {max(rss) / 1024:6.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--url", help="a running cronmon's ping URL for a monitor (default: start one)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cronmon-exec-bench-"))
    server = None
    url = args.url
    if url is None:
        server, url = start_cronmon(tmp)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "CRONMON_SPOOL_DIR": str(tmp / "spool")}
    true = [shutil.which("true") or "/bin/true"]
    cases = {
        "true": true,
        "python -c pass": [sys.executable, "-c", "pass"],
        IMPORTS: [sys.executable, "-c", "import exporter.entry, exporter.runner"],
        # What the `cronmon` script runs (project.scripts: exporter.entry:main).
        "cronmon exec -- true": [sys.executable, "-m", "exporter.entry", "exec", "--quiet", "--url", url, "--", *true],
    }
    results: dict[str, tuple[list[float], list[int]]] = {name: ([], []) for name in cases}
    try:
        for argv in cases.values():  # warm the page cache once
            timed(argv, env)
        for _ in range(args.runs):
            for name, argv in cases.items():
                wall, rss, _ = timed(argv, env)
                results[name][0].append(wall)
                results[name][1].append(rss)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    spooled = list((tmp / "spool").glob("*.json")) if (tmp / "spool").exists() else []
    print(f"machine: {machine()}")
    print(f"cronmon: {'started here (embedded Redis, 1 worker)' if args.url is None else 'given URL'}; "
          f"{args.runs} runs each, interleaved; reports left in the spool: {len(spooled)}")
    base = statistics.median(results["true"][0]) * 1000
    for name, (walls, rss) in results.items():
        print(summary(name, walls, rss, base))
    exec_ms = statistics.median(results["cronmon exec -- true"][0]) * 1000
    import_ms = statistics.median(results[IMPORTS][0]) * 1000
    print(f"overhead of cronmon exec on true: {exec_ms - base:.1f} ms a run "
          f"({import_ms - base:.1f} ms of it starting Python and importing what exec needs; "
          f"the rest, {exec_ms - import_ms:.1f} ms, is the start and finish round trips and running the job)")


if __name__ == "__main__":
    main()
