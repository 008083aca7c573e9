#!/usr/bin/env python3
"""Ingest benchmark: cronmon on a local 3-primary Redis Cluster vs. on a single Redis.

    .venv/bin/python bench/cluster_ingest.py [--seconds 10] [--workers N] [--json PATH]

Needs `wrk` (Debian package wrk) and the redis-server/redis-cli cronmon
embeds (exporter.embedded.find_redis_server); the cluster comes from
tests/cluster.py (LocalCluster). Only 127.0.0.1 is bound or contacted.

What it does, in one run:

1. starts a single redis-server (no persistence) with one replica
   (--replicaof), and a LocalCluster of 3 primaries with 1 replica each, so
   both sides replicate;
2. for each configuration below starts `cronmon serve --workers N` (default:
   the core count) on the 1,000-monitor config of bench/compare.py's ingest
   phase (its write_config), with a fresh data dir and a fresh --key-prefix,
   sends one ping as a check, warms up with a 2 s wrk run, then measures
   with exactly compare.py's ingest driver (wrk -t2 -c32 --latency with
   bench/compare_load.lua: GET /ping/<key>/m<i> spread over the 1,000
   monitors) for --seconds, and stops that cronmon again:
     embedded          cronmon's own embedded Redis (no --redis-url): the
                       setup of compare.py's figures, for reference
     single            redis://127.0.0.1:P/0, the baseline (async replication)
     cluster wait=0    redis+cluster://...?wait_replicas=0 (async replication,
                       like the single Redis)
     cluster wait=1    redis+cluster://... (default wait_replicas=1: a batch of
                       check-ins is answered only after WAIT 1 on every
                       primary it touched)
3. prints a table: pings/s, p50 and p99 latency, non-2xx and socket errors,
   and pings/s and p99 as a ratio to the single-Redis baseline; plus the
   keys each redis-server holds afterwards (shows the sharding over the 3
   primaries and that the replicas got the data) and what cronmon logged at
   warning or above. --json PATH also writes the report as JSON.

How to read it: the ratio "cluster wait=0 / single" is the cost of the
cluster client (slot routing, a batch split over 3 primaries, more
connections); "cluster wait=1 / cluster wait=0" is the cost of waiting for
a replica's acknowledgement (one more round trip per primary per batch).
On this kind of machine (e.g. 2 cores) cronmon's serve process, its
workers, wrk and every redis-server share the same cores: the cluster's 6
redis-servers compete for CPU with cronmon (the single side has 2), and all
"network" hops are loopback. So the figures show what a cluster costs on ONE
machine, not the scale-out that a cluster spread over real machines gives.
The Redis servers not in use stay up (idle) during the other phases; the
configurations run in the fixed order above; run it twice to see the noise.

Every process it starts (redis-servers, cronmon and its workers, wrk) is
stopped at the end, also on an error, Ctrl-C or SIGTERM. Exit status 1 if
the run was aborted or a configuration's cronmon did not start (its log is
printed and the other configurations still run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import importlib.util  # noqa: E402

import redis  # noqa: E402  (cronmon's own dependency)


def _load_compare():
    """bench/compare.py as a module. Not `from bench.compare import`: run as a
    script, this file's directory comes first on sys.path, where `bench` is
    bench/bench.py, not the package."""
    spec = importlib.util.spec_from_file_location("cronmon_bench_compare", ROOT / "bench" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_compare = _load_compare()
HOST, KEY, Children = _compare.HOST, _compare.KEY, _compare.Children
fmt, ratio, rfmt, table, log = _compare.fmt, _compare.ratio, _compare.rfmt, _compare.table, _compare.log
free_port, http_get, wait_until = _compare.free_port, _compare.http_get, _compare.wait_until
start_cronmon, start_session, stop = _compare.start_cronmon, _compare.start_session, _compare.stop
tree_rss, write_config, wrk_pings = _compare.tree_rss, _compare.write_config, _compare.wrk_pings

from exporter.embedded import find_redis_server  # noqa: E402
from tests.cluster import LocalCluster  # noqa: E402

N_MONITORS = 1000  # compare.py's ingest phase
CONNS = 32  # compare.py's ingest phase: wrk -t2 -c32
WARMUP_S = 2


# --------------------------------------------------------------------------
# Redis: a single primary with a replica; the cluster


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def _answers(port: int) -> bool:
    try:
        with _client(port) as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


def start_single_redis(children: Children, tmp: Path) -> dict:
    """A redis-server primary and one replica of it; returns their ports."""
    server = find_redis_server()
    ports = {}
    for role in ("primary", "replica"):
        port = free_port()
        workdir = tmp / f"redis-{role}"
        workdir.mkdir(parents=True)
        args = [server, "--port", str(port), "--bind", HOST, "--dir", str(workdir),
                "--save", "", "--appendonly", "no"]
        if role == "replica":
            args += ["--replicaof", HOST, str(ports["primary"])]
        logfile = open(workdir / "log", "ab")
        proc = start_session(children, args, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT)
        logfile.close()
        wait_until(lambda port=port: _answers(port), 20, f"redis-server ({role}) on {port}", proc)
        ports[role] = port

    def in_sync() -> bool:
        with _client(ports["replica"]) as c:
            return c.info("replication").get("master_link_status") == "up"

    took = wait_until(in_sync, 30, "the single Redis' replica to sync")
    log(f"single redis-server on {ports['primary']}, replica on {ports['replica']} (in sync after {took:.1f}s)")
    return ports


def reset_stats(ports: list[int]) -> None:
    for port in ports:
        try:
            with _client(port) as c:
                c.config_resetstat()
        except redis.RedisError:
            pass


def command_calls(ports: list[int]) -> dict[str, int]:
    """Commands the primaries among `ports` executed since reset_stats (INFO
    commandstats, summed over the primaries), most called first."""
    total: Counter = Counter()
    for port in ports:
        try:
            with _client(port) as c:
                if c.info("replication").get("role") == "slave":
                    continue
                for name, stats in c.info("commandstats").items():
                    total[name.removeprefix("cmdstat_")] += int(stats.get("calls", 0))
        except redis.RedisError:
            continue
    return dict(total.most_common(8))


def dbsizes(ports: list[int]) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for port in ports:
        try:
            with _client(port) as c:
                role = c.info("replication").get("role", "?")
                out[f"{port} ({'replica' if role == 'slave' else 'primary'})"] = c.dbsize()
        except redis.RedisError as exc:
            out[str(port)] = f"error: {exc}"
    return out


# --------------------------------------------------------------------------
# One configuration


def cronmon_log(path: Path) -> dict:
    """What cronmon wrote to stderr (log level warning): count, kinds, lines."""
    if not path.exists():
        return {"lines": 0, "kinds": {}, "sample": []}
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    kinds = Counter(" ".join(ln.split()[2:6]) for ln in lines)
    sample, seen = [], set()
    for ln in lines:  # the first 15 distinct lines (timestamps stripped for the distinctness)
        key = " ".join(ln.split()[2:])
        if key not in seen:
            seen.add(key)
            sample.append(ln[:400])
        if len(sample) >= 15:
            break
    return {"lines": len(lines), "kinds": dict(kinds.most_common(10)), "sample": sample}


def measure(children: Children, tmp: Path, config: Path, name: str, redis_url: str | None,
            workers: int | None, seconds: int, key_ports: list[int]) -> dict:
    sub = tmp / ("cronmon-" + name.replace(" ", "-").replace("=", ""))
    sub.mkdir()
    prefix = None if redis_url is None else f"bench{uuid.uuid4().hex[:8]}"  # embedded: a fresh data dir
    log(f"{name}: starting cronmon ({redis_url or 'embedded Redis'}, --key-prefix {prefix or 'default'})")
    res: dict = {"name": name, "redis_url": redis_url, "key_prefix": prefix}
    try:
        serve, base = start_cronmon(children, sub, config, workers, redis_url=redis_url, key_prefix=prefix)
    except RuntimeError as exc:  # it exited or never got ready: keep what it logged, go on with the next
        log(f"{name}: ERROR: {exc}")
        for proc in [p for p in children.procs if "exporter.cli" in p.args]:
            stop(proc)
            children.procs.remove(proc)
        res["error"] = str(exc)
        res["cronmon_log"] = cronmon_log(sub / "cronmon.log")
        for line in res["cronmon_log"]["sample"]:
            log(f"{name}:   {line}")
        return res
    try:
        status, _, body = http_get(f"{base}/ping/{KEY}/m0000", timeout=10)
        res["check_ping"] = {"status": status, "body": body[:200].decode(errors="replace")}
        if not 200 <= status < 300:
            log(f"{name}: WARNING: check ping answered {status}: {body[:200]!r}")
        log(f"{name}: warm-up, wrk {WARMUP_S} s")
        warm = wrk_pings(children, base, N_MONITORS, WARMUP_S, CONNS)
        res["warmup"] = {k: warm[k] for k in ("rps", "requests", "non2xx", "socket_error_total")}
        log(f"{name}: measuring, wrk {seconds} s")
        reset_stats(key_ports)
        res["wrk"] = wrk_pings(children, base, N_MONITORS, seconds, CONNS)
        res["redis_commands"] = command_calls(key_ports) if key_ports else {}
        res["rss"] = tree_rss(serve.pid)
        res["alive_after"] = serve.poll() is None
        w = res["wrk"]
        log(f"{name}: {w['rps']:,.0f} pings/s, p99 {fmt(w['p99_ms'], ' ms', 2)}, non-2xx {w['non2xx']:,}")
    finally:
        stop(serve)
        children.procs.remove(serve)
    res["keys"] = dbsizes(key_ports) if key_ports else {}
    res["cronmon_log"] = cronmon_log(sub / "cronmon.log")
    return res


# --------------------------------------------------------------------------
# Report


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()

    def version(args: list[str]) -> str:
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return ((p.stdout or "") + (p.stderr or "")).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    return {"nproc": nproc, "cpu_count": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "platform": platform.platform(),
            "redis_server": version([find_redis_server(), "--version"]),
            "wrk": version(["wrk", "-v"]).split(" Copyright")[0],
            "loadavg_at_start": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


def render(rep: dict) -> str:
    m = rep["machine"]
    out = [f"machine: nproc {m['nproc']}, CPU {m['cpu_model']}, Python {m['python']}, {m['platform']}; "
           f"{m['redis_server']}; {m['wrk']}; load average at start {m['loadavg_at_start']}",
           f"cronmon --workers {rep['workers']}; {N_MONITORS:,} monitors; warm-up {WARMUP_S} s; "
           f"measured {rep['seconds']} s per configuration",
           f"wrk: {rep['wrk_command'] or '-'}", ""]
    runs = rep["runs"]
    base = next((r for r in runs if r["name"] == "single" and "wrk" in r), None)
    rows = []
    for r in runs:
        w = r.get("wrk")
        if not w:
            rows.append([r["name"], "-", "-", "-", "-", "-", "-", "-", f"(not measured: {r.get('error', '?')})"])
            continue
        b = base["wrk"] if base else {}
        errs = ", ".join(f"{k} {v}" for k, v in w["socket_errors"].items() if v) or "0"
        rows.append([r["name"], fmt(w["rps"], "", 0), rfmt(ratio(w["rps"], b.get("rps"))),
                     fmt(w["p50_ms"], " ms", 2), fmt(w["p99_ms"], " ms", 2),
                     rfmt(ratio(w["p99_ms"], b.get("p99_ms"))), fmt(w["requests"]), fmt(w["non2xx"]), errs])
    out.append(table(f"Ingest, wrk -t2 -c{CONNS} -d{rep['seconds']}s, GET pings over {N_MONITORS:,} monitors "
                     "(ratios: to the single Redis)",
                     ["configuration", "pings/s", "x single", "p50", "p99", "x single", "requests", "non-2xx",
                      "socket errors"], rows))
    out.append("")
    out.append("Configurations")
    for r in runs:
        out.append(f"  {r['name']}: {r.get('redis_url') or 'embedded Redis (no --redis-url)'}")
    out.append("")
    out.append("Keys per redis-server after each configuration (cumulative per server; fresh key prefix each)")
    for r in runs:
        if r.get("keys"):
            out.append(f"  {r['name']}: " + ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}"
                                                      for k, v in r["keys"].items()))
    out.append("")
    out.append("Redis commands per ping during the measurement (INFO commandstats, all primaries; calls / requests)")
    for r in runs:
        if r.get("redis_commands") and r.get("wrk", {}).get("requests"):
            n = r["wrk"]["requests"]
            out.append(f"  {r['name']}: " + ", ".join(f"{k} {v / n:.2f}" for k, v in r["redis_commands"].items()))
    out.append("")
    out.append("cronmon's log (stderr, level warning and above)")
    for r in runs:
        lg = r.get("cronmon_log") or {}
        cp = r.get("check_ping") or {}
        head = f"  {r['name']}: {lg.get('lines', 0)} line(s); check ping {cp.get('status', '-')}"
        if r.get("error"):
            head += f"; FAILED: {r['error']}"
        if r.get("alive_after") is False:
            head += "; cronmon had EXITED by the end of the measurement"
        out.append(head)
        for ln in lg.get("sample", []):
            out.append(f"      {ln}")
    if rep.get("notes"):
        out.append("")
        out.append("Notes")
        out.extend(f"  {n}" for n in rep["notes"])
    return "\n".join(out)


# --------------------------------------------------------------------------


def run(args: argparse.Namespace, children: Children, tmp: Path, rep: dict, holder: dict) -> None:
    config = tmp / "monitors.yaml"
    write_config(config, N_MONITORS)
    single = start_single_redis(children, tmp / "single")
    cluster = holder["cluster"] = LocalCluster(tmp / "cluster", masters=3, replicas_per_master=1)
    log("starting the local Redis Cluster (3 primaries, 1 replica each)")
    cluster.start()
    log(f"cluster up in {cluster.startup_seconds:.1f}s: {cluster.url}")
    rep["single_redis"] = single
    rep["cluster"] = {"url": cluster.url, "ports": cluster.all_ports(),
                      "startup_seconds": round(cluster.startup_seconds or 0, 2)}
    single_ports = [single["primary"], single["replica"]]
    plan = []
    if not args.no_embedded:
        plan.append(("embedded", None, []))
    plan += [("single", f"redis://{HOST}:{single['primary']}/0", single_ports),
             ("cluster wait=0", cluster.url + "?wait_replicas=0", cluster.all_ports()),
             ("cluster wait=1", cluster.url, cluster.all_ports())]
    for name, url, ports in plan:
        r = measure(children, tmp, config, name, url, args.workers, args.seconds, ports)
        rep["runs"].append(r)
        if "wrk" in r:
            rep["wrk_command"] = rep["wrk_command"] or r["wrk"]["command"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured wrk run (default 10)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="cronmon serve --workers (default: cores)")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-Redis reference run")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed (Debian package wrk)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rep: dict = {"machine": machine(), "workers": args.workers, "seconds": args.seconds, "n_monitors": N_MONITORS,
                 "connections": CONNS, "warmup_seconds": WARMUP_S, "wrk_command": None, "runs": [], "notes": []}
    children = Children()
    holder: dict = {"cluster": None}
    tmp = Path(tempfile.mkdtemp(prefix="cronmon-cluster-ingest-"))
    t0 = time.monotonic()
    failed = False
    try:
        run(args, children, tmp, rep, holder)
    except BaseException as exc:
        failed = True
        rep["notes"].append(f"ABORTED: {type(exc).__name__}: {exc}")
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            import traceback
            traceback.print_exc()
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()  # cronmon (and its workers), wrk, the single Redis and its replica
        if holder["cluster"] is not None:
            holder["cluster"].stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rep["notes"].append(f"total run time {time.monotonic() - t0:.0f} s; load average at the end "
                        + " ".join(Path("/proc/loadavg").read_text().split()[:3])
                        + " (anything else running on the machine skews every figure)")
    print(render(rep))
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2, default=str) + "\n")
    return 1 if failed or any("error" in r for r in rep["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
