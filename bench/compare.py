#!/usr/bin/env python3
"""Side-by-side benchmark: cronmon against the Prometheus Pushgateway.

    .venv/bin/python bench/compare.py [--seconds 10] [--rounds 3] [--workers N] [--quick] [--json PATH]

Needs `wrk` and `/usr/bin/prometheus-pushgateway` (Debian packages wrk and
prometheus-pushgateway). Uses only the standard library otherwise.

Starts, on free loopback ports, `cronmon serve` (embedded Redis in a temp
data dir; half `interval: 1h` monitors, half `*/5 * * * *` cron monitors in
Europe/Berlin) and a Pushgateway (no persistence), then measures:

1. ingest at 1,000 monitors / groups: wrk -t2 -c32, cronmon GET pings vs.
   Pushgateway PUTs of 5 samples (req/s, p50, p99, non-2xx), after a
   WARMUP_SECONDS run of each, in --rounds rounds that alternate which
   goes first; the ratio checked is the median round's, the p99 the worst
   round's (see "Why rounds" below);
2. state: every monitor gets a start and a success (10% a fail), every
   Pushgateway group 5 series; at 1,000 and then 10,000 (cronmon reloads a
   10,000-monitor config, SIGHUP);
3. /metrics at 1,000 and 10,000, with Accept-Encoding: gzip: wrk -t1 -c1
   (p50, p99, scrapes/s) and one fetch for raw / on-the-wire bytes, lines and
   series;
4. series per monitor in cronmon's /metrics;
5. RSS of cronmon's whole process tree (serve, redis-server, workers) and of
   the Pushgateway;
6. worst ping latency (one keep-alive connection, sequential pings) while
   /metrics is scraped in a loop, then also while cronmon gets SIGHUP every
   second;
7. burst: wrk -t2 -c1000 on both.

--quick (smoke test, < 2 minutes): 3 s phases and 1,000 monitors for the
"10,000" phases too. --workers N (default: cronmon's own default for this
machine with its embedded Redis, cli.default_workers: one per core less one
for Redis, at least 1) is passed to `cronmon serve` if it knows the flag. The report goes to stdout (progress to
stderr), optionally also as JSON to --json PATH. Load generator, cronmon,
redis-server and the Pushgateway share the machine's cores: treat figures
as relative. Only 127.0.0.1 is contacted.

Why rounds: on a shared 2-core machine the two servers' throughput drifts
with the machine's load by 10-20% within minutes, and one run of each,
one after the other, compares two different moments. Alternating them in
rounds (cronmon first in odd rounds, the Pushgateway first in even ones)
and taking the median of the rounds' ratios compares like with like; the
warm-up run of each (not counted) means neither is measured in its first
seconds after start, which a server in service never is.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
KEY = "bench-ping-key"
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
PUSH_BODY = b"m1 1\nm2 2\nm3 3\nm4 4\nm5 5\n"
GZIP = {"Accept-Encoding": "gzip"}
# The unmeasured load each server gets before phase 1's rounds.
WARMUP_SECONDS = 3
HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Child processes


class Children:
    """Every child we start, so that all of them are stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(args, **kw)
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], timeout: float, **kw) -> str:
        """Run to completion (bounded by timeout) and return stdout."""
        proc = self.start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            stop(proc)
            self.procs.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} exited {proc.returncode}: {err.strip()[:500]}")
        return out

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after timeout. For a session leader (cronmon,
    pushgateway) SIGTERM goes to the leader first, so cronmon stops its own
    redis-server and workers; whatever is left of its group is then sent
    SIGTERM and finally SIGKILL."""
    group = _is_group_leader(proc)
    deadline = time.monotonic() + timeout
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM, False)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    if group and _group_alive(proc.pid):
        _signal(proc, signal.SIGTERM, True)
        while _group_alive(proc.pid) and time.monotonic() < deadline + 5:
            proc.poll()
            time.sleep(0.1)
    if proc.poll() is None or (group and _group_alive(proc.pid)):
        log(f"pid {proc.pid} ({proc.args[0]}) did not stop in time; killing it")
        _signal(proc, signal.SIGKILL, group)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _is_group_leader(proc: subprocess.Popen) -> bool:
    return getattr(proc, "own_group", False)


def start_session(children: Children, args: list[str], **kw) -> subprocess.Popen:
    """Start a child in its own session / process group (killed as a group)."""
    proc = children.start(args, start_new_session=True, **kw)
    proc.own_group = True
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_get(url: str, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> float:
    """Poll check() until true; return the seconds it took. Bounded by timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            if check():
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f}s")


def ready(url: str) -> bool:
    return http_get(url, timeout=2)[0] == 200


# --------------------------------------------------------------------------
# The two servers


def write_config(path: Path, n: int, revision: int = 0) -> None:
    """N monitors; `revision` changes the file's bytes (a comment), so a
    reload after it must parse the whole file again."""
    schedules = ("{interval: 1h}", '{cron: "*/5 * * * *", timezone: Europe/Berlin}')
    lines = [f"# revision {revision}\n"] + [
        f"  - {{id: m{i:04d}, schedule: {schedules[i % 2]}, labels: {{team: t{i % 10}, severity: warning}}}}\n"
        for i in range(n)
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("monitors:\n" + "".join(lines))
    tmp.replace(path)  # a reload never sees half a file


def cronmon_knows_workers() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "serve", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    ).stdout
    return "--workers" in out


def documented_workers() -> int:
    """The worker count `cronmon serve` picks on this machine with its
    embedded Redis (the cores, for a checkout older than the rule)."""
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    try:
        from exporter.cli import default_workers
    except ImportError:
        return os.cpu_count() or 1
    return default_workers(os.cpu_count(), embedded_redis=True)


def start_cronmon(children: Children, tmp: Path, config: Path, workers: int | None,
                  redis_url: str | None = None, key_prefix: str | None = None, env: dict | None = None,
                  extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """redis_url None: the embedded Redis (under tmp/data); key_prefix None: cronmon's default;
    env: variables added to ours; extra: more `cronmon serve` flags. Returns once /-/ready answers."""
    port = free_port()
    args = [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
            "--listen", f"{HOST}:{port}", "--data-dir", str(tmp / "data"), "--log-level", "warning"]
    if workers is not None:
        args += ["--workers", str(workers)]
    if redis_url is not None:
        args += ["--redis-url", redis_url]
    if key_prefix is not None:
        args += ["--key-prefix", key_prefix]
    args += list(extra)
    logfile = open(tmp / "cronmon.log", "ab")
    proc = start_session(children, args, cwd=ROOT, env={**os.environ, "CRONMON_PING_KEY": KEY, **(env or {})},
                         stdout=subprocess.DEVNULL, stderr=logfile)
    logfile.close()
    base = f"http://{HOST}:{port}"
    took = wait_until(lambda: ready(base + "/-/ready"), 120, "cronmon", proc)
    if workers and workers > 1:
        # /-/ready is answered by the first worker up; connections made
        # before the others listen all go to it (SO_REUSEPORT spreads only
        # over the sockets listening then), and a benchmark would measure one.
        took += wait_until(lambda: listeners(port) >= workers, 120, f"all {workers} cronmon workers listening", proc)
    log(f"cronmon ready on {base} in {took:.1f}s")
    return proc, base


def listeners(port: int) -> int:
    """Sockets listening on `port` (one per SO_REUSEPORT worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":  # 0A: LISTEN
                count += 1
    return count


def start_pushgateway(children: Children, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    logfile = open(tmp / "pushgateway.log", "ab")
    # An explicit empty --persistence.file: Debian's build defaults it to
    # /var/lib/prometheus/pushgateway.data, which would carry groups between runs.
    proc = start_session(children, [PUSHGATEWAY, f"--web.listen-address={HOST}:{port}",
                                    "--persistence.file=", "--push.disable-consistency-check"],
                         stdout=subprocess.DEVNULL, stderr=logfile)
    logfile.close()
    base = f"http://{HOST}:{port}"
    took = wait_until(lambda: ready(base + "/-/ready"), 30, "pushgateway", proc)
    log(f"pushgateway ready on {base} in {took:.1f}s")
    groups = http_get(base + "/metrics")[2].count(b"\npush_time_seconds{")
    if groups:
        raise RuntimeError(f"pushgateway started with {groups} groups already in it")
    return proc, base


def reload_cronmon(proc: subprocess.Popen, base: str, n: int) -> float:
    """SIGHUP; done once the last monitor answers on its page 5 times in a row."""
    for pid in sighup_targets(proc.pid):
        os.kill(pid, signal.SIGHUP)
    streak = [0]

    def check() -> bool:
        ok = http_get(f"{base}/monitors/m{n - 1:04d}", timeout=5)[0] == 200
        streak[0] = streak[0] + 1 if ok else 0
        return streak[0] >= 5

    return wait_until(check, 120, f"cronmon reload to {n} monitors", proc)


# --------------------------------------------------------------------------
# Process tree and RSS


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        table[int(entry)] = (ppid, comm)
    return table


def process_tree(root: int) -> dict[int, str]:
    """root and all its descendants: pid -> comm."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in tree:
            tree[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
    return tree


def sighup_targets(root: int) -> list[int]:
    """The serve process and its cronmon children (not redis-server)."""
    return [pid for pid, comm in process_tree(root).items() if pid == root or "redis" not in comm]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_rss(root: int) -> dict:
    parts = [{"pid": pid, "comm": comm, "mb": round(rss_mb(pid), 1)} for pid, comm in process_tree(root).items()]
    return {"total_mb": round(sum(p["mb"] for p in parts), 1), "processes": parts}


# --------------------------------------------------------------------------
# wrk


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    for unit in ("us", "ms", "m", "s"):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * _UNITS[unit]
            except ValueError:
                continue
    return float("nan")


def parse_wrk(out: str) -> dict:
    res = {"rps": 0.0, "requests": 0, "non2xx": 0, "socket_errors": {}, "p50_ms": None, "p99_ms": None,
           "max_ms": None}
    in_dist = False
    for raw in out.splitlines():
        line = raw.strip()
        words = line.split()
        if line.startswith("Latency Distribution"):
            in_dist = True
        elif in_dist and words and words[0].endswith("%") and len(words) == 2:
            res[f"p{words[0][:-1]}_ms"] = _ms(words[1])
        else:
            in_dist = False
        if words[:1] == ["Latency"] and len(words) >= 4:
            res["max_ms"] = _ms(words[3])
        elif line.startswith("Requests/sec:"):
            res["rps"] = float(words[1])
        elif " requests in " in line:
            res["requests"] = int(words[0])
        elif line.startswith("Non-2xx or 3xx responses:"):
            res["non2xx"] = int(words[-1])
        elif line.startswith("Socket errors:"):
            for part in line.split(":", 1)[1].split(","):
                name, count = part.split()
                res["socket_errors"][name] = int(count)
    res["socket_error_total"] = sum(res["socket_errors"].values())
    return res


def wrk(children: Children, url: str, seconds: int, threads: int, conns: int, script: str | None = None,
        env: dict | None = None, headers: dict | None = None, timeout_s: int | None = None) -> dict:
    """Run wrk; timeout_s None keeps wrk's default request timeout (2 s)."""
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if timeout_s:
        args.append(f"--timeout={timeout_s}s")
    if script:
        args += ["-s", str(BENCH / script)]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    out = children.run([*args, url], timeout=seconds + 60, env={**os.environ, **(env or {})},
                       preexec_fn=_raise_nofile)
    res = parse_wrk(out)
    res["command"] = " ".join(args[:-1] + [url])
    return res


def wrk_pings(children: Children, base: str, n: int, seconds: int, conns: int) -> dict:
    return wrk(children, base + "/", seconds, 2, conns, "compare_load.lua",
               {"COMPARE_TARGET": "ping", "COMPARE_N": str(n), "COMPARE_PING_KEY": KEY})


def wrk_pushes(children: Children, base: str, n: int, seconds: int, conns: int) -> dict:
    return wrk(children, base + "/", seconds, 2, conns, "compare_load.lua",
               {"COMPARE_TARGET": "push", "COMPARE_N": str(n)})


def ingest_rounds(children: Children, cbase: str, pbase: str, n: int, seconds: int, rounds: int) -> dict:
    """Phase 1: a warm-up run of each server, then `rounds` rounds of one
    run each, alternating which goes first (see "Why rounds"). The rounds
    are kept; "cronmon" and "pushgateway" are the median round's (by the
    ratio of their req/s)."""
    wrk_pings(children, cbase, n, WARMUP_SECONDS, 32)
    wrk_pushes(children, pbase, n, WARMUP_SECONDS, 32)
    done = []
    for i in range(rounds):
        runs = {}
        for side in (("cronmon", "pushgateway") if i % 2 == 0 else ("pushgateway", "cronmon")):
            runs[side] = (wrk_pings(children, cbase, n, seconds, 32) if side == "cronmon"
                          else wrk_pushes(children, pbase, n, seconds, 32))
        runs["ratio"] = ratio(runs["cronmon"]["rps"], runs["pushgateway"]["rps"])
        log(f"  round {i + 1}: cronmon {runs['cronmon']['rps']:,.0f} req/s, "
            f"pushgateway {runs['pushgateway']['rps']:,.0f} req/s, {rfmt(runs['ratio'])}")
        done.append(runs)
    median = sorted(done, key=lambda r: r["ratio"] or 0)[(len(done) - 1) // 2]
    return {"n": n, "rounds": done, "cronmon": median["cronmon"], "pushgateway": median["pushgateway"],
            "ratio": median["ratio"], "worst_cronmon_p99_ms": max(r["cronmon"]["p99_ms"] or float("inf") for r in done)}


# --------------------------------------------------------------------------
# Plain HTTP loops (state, latency under load)


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


class Conn:
    """One keep-alive connection that reconnects after an error."""

    def __init__(self, base: str, timeout: float = 15):
        self.port, self.timeout = _port(base), timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        """Status and body; status 0 for a connection error."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_batches(base: str, batches: list[list[tuple[str, str, bytes | None]]], budget_s: float) -> Counter:
    """One thread and connection per batch, its requests in order; status counts.
    Bounded: each batch is finite, and unsent requests past budget_s count as 'skipped'."""
    deadline = time.monotonic() + budget_s
    counts: Counter = Counter()
    lock = threading.Lock()

    def worker(batch) -> None:
        conn, local = Conn(base), Counter()
        for i, (method, path, body) in enumerate(batch):
            if time.monotonic() > deadline:
                local["skipped"] += len(batch) - i
                break
            local[conn.request(method, path, body)[0]] += 1
        conn.close()
        with lock:
            counts.update(local)

    threads = [threading.Thread(target=worker, args=(b,), daemon=True) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(budget_s + 60)
    return counts


def give_cronmon_state(base: str, ids: range, threads: int = 4) -> tuple[Counter, float]:
    """Each monitor: POST start, then POST success (fail for 10%, both schedule kinds)."""
    batches: list[list] = [[] for _ in range(threads)]
    for i in ids:
        ending = "/fail" if (i // 2) % 10 == 0 else ""
        batches[i % threads] += [("POST", f"/ping/{KEY}/m{i:04d}/start", b""),
                                 ("POST", f"/ping/{KEY}/m{i:04d}{ending}", b"")]
    t0 = time.monotonic()
    counts = run_batches(base, batches, budget_s=300)
    return counts, time.monotonic() - t0


def push_groups(base: str, ids: range, threads: int = 4) -> tuple[Counter, float]:
    batches: list[list] = [[] for _ in range(threads)]
    for i in ids:
        batches[i % threads].append(("PUT", f"/metrics/job/j{i}", PUSH_BODY))
    t0 = time.monotonic()
    counts = run_batches(base, batches, budget_s=300)
    return counts, time.monotonic() - t0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def pings_under_load(base: str, n: int, seconds: float, serve: subprocess.Popen, reload_every: float | None,
                     config: Path | None = None) -> dict:
    """Sequential pings on one connection while another thread scrapes
    /metrics (gzip) in a loop and, with reload_every, a third sends SIGHUP
    (after changing the config's bytes first when `config` is given, so
    that every reload parses all N monitors)."""
    stop_at = time.monotonic() + seconds
    latencies: list[float] = []
    statuses: Counter = Counter()
    scrapes: Counter = Counter()
    hups = [0]

    def pinger() -> None:
        conn = Conn(base, timeout=10)
        for i in range(1_000_000):
            if time.monotonic() > stop_at:
                break
            t0 = time.perf_counter()
            status = conn.request("GET", f"/ping/{KEY}/m{(i * 7) % n:04d}")[0]
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[status] += 1
        conn.close()

    def scraper() -> None:
        conn = Conn(base, timeout=60)
        for _ in range(100_000):
            if time.monotonic() > stop_at:
                break
            scrapes[conn.request("GET", "/metrics", headers=GZIP)[0]] += 1
        conn.close()

    def reloader() -> None:
        for _ in range(int(seconds / reload_every) + 1):
            if time.monotonic() > stop_at:
                break
            if config is not None:
                write_config(config, n, hups[0] + 1)
            for pid in sighup_targets(serve.pid):
                try:
                    os.kill(pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass
            hups[0] += 1
            time.sleep(reload_every)

    before = process_tree(serve.pid)
    roles = [pinger, scraper] + ([reloader] if reload_every else [])
    threads = [threading.Thread(target=f, daemon=True) for f in roles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 90)
    after = process_tree(serve.pid)
    return {
        "pings": len(latencies), "statuses": {str(k): v for k, v in statuses.items()},
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "scrapes": {str(k): v for k, v in scrapes.items()}, "sighups": hups[0],
        "processes_lost": sorted(f"{pid} {comm}" for pid, comm in before.items() if pid not in after),
    }


# --------------------------------------------------------------------------
# /metrics contents


def fetch_metrics(base: str) -> dict:
    """One fetch without and one with gzip: sizes, lines, series."""
    status, _, raw = http_get(base + "/metrics", timeout=120)
    zstatus, zheaders, wire = http_get(base + "/metrics", GZIP, timeout=120)
    encoding = {k.lower(): v for k, v in zheaders.items()}.get("content-encoding", "identity")
    text = gzip.decompress(wire) if encoding == "gzip" else wire
    lines = text.splitlines()
    return {
        "status": status, "gzip_status": zstatus, "raw_bytes": len(raw), "gzip_wire_bytes": len(wire),
        "content_encoding": encoding, "gzip_level6_bytes": len(gzip.compress(raw, 6)),
        "lines": len(lines), "series": sum(1 for ln in lines if ln and not ln.startswith(b"#")),
        "_body": raw,
    }


def series_of(body: bytes, monitor: str) -> int:
    needle = f'monitor="{monitor}"'.encode()
    return sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#") and needle in ln)


def families_of(body: bytes, monitor: str) -> list[str]:
    needle = f'monitor="{monitor}"'.encode()
    names = {ln.split(b"{", 1)[0].decode() for ln in body.splitlines() if not ln.startswith(b"#") and needle in ln}
    return sorted(names)


# --------------------------------------------------------------------------
# Report


def fmt(value, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def rfmt(r: float | None) -> str:
    # (Three decimals: a ratio just under a limit, 0.4986x, must not print as 0.50x.)
    return "-" if r is None else f"{r:.3f}x"


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = [title]
    for j, row in enumerate(cells):
        out.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(out)


def wrk_row(name: str, r: dict) -> list:
    errs = ", ".join(f"{k} {v}" for k, v in r["socket_errors"].items() if v) or "0"
    return [name, fmt(r["rps"]), fmt(r["p50_ms"], " ms", 2), fmt(r["p99_ms"], " ms", 2), fmt(r["requests"]),
            fmt(r["non2xx"]), errs]


WRK_HEADER = ["", "req/s", "p50", "p99", "requests", "non-2xx", "socket errors"]


def render(rep: dict) -> str:
    out = [rep["machine_line"], rep["setup_line"], ""]
    ph = rep["phases"]
    if "ingest" in ph:
        ing, rows = ph["ingest"], []
        for i, r in enumerate(ing["rounds"], 1):
            c, p = r["cronmon"], r["pushgateway"]
            rows += [wrk_row(f"round {i}: cronmon GET ping", c), wrk_row(f"round {i}: pushgateway PUT 5 samples", p),
                     [f"round {i}: ratio cronmon/pgw", rfmt(r["ratio"]), "", rfmt(ratio(c["p99_ms"], p["p99_ms"])),
                      "", "", ""]]
        rows.append(["median round's ratio", rfmt(ing["ratio"]), "", "", "", "", ""])
        out.append(table(f"1. Ingest, {ing['n']:,} monitors / groups (wrk -t2 -c32 -d{rep['seconds']}s, "
                         f"{len(ing['rounds'])} round(s) after a {WARMUP_SECONDS} s warm-up of each)",
                         WRK_HEADER, rows))
        out.append("")
    if ph.get("state"):
        rows = []
        for s in ph["state"]:
            rows.append([f"cronmon, {s['n']:,} monitors", fmt(s["cronmon"]["requests"]), fmt(s["cronmon"]["seconds"], " s"),
                         ", ".join(f"{k}: {v}" for k, v in s["cronmon"]["statuses"].items()),
                         fmt(s.get("reload_seconds"), " s")])
            rows.append([f"pushgateway, {s['n']:,} groups", fmt(s["pushgateway"]["requests"]),
                         fmt(s["pushgateway"]["seconds"], " s"),
                         ", ".join(f"{k}: {v}" for k, v in s["pushgateway"]["statuses"].items()), ""])
        out.append(table("2. State (cronmon: start + success, 10% fail, per monitor; pushgateway: PUT 5 series per group)",
                         ["", "requests", "took", "statuses", "reload to N"], rows))
        out.append("")
    if ph.get("metrics"):
        rows = []
        for m in ph["metrics"]:
            c, p = m["cronmon"], m["pushgateway"]
            for name, r in (("cronmon", c), ("pushgateway", p)):
                rows.append([f"{name}, {m['n']:,}", fmt(r["wrk"]["p50_ms"], " ms", 1), fmt(r["wrk"]["p99_ms"], " ms", 1),
                             fmt(r["wrk"]["rps"], "", 2), fmt(r["raw_bytes"]), fmt(r["gzip_wire_bytes"]),
                             r["content_encoding"], fmt(r["lines"]), fmt(r["series"])])
            rows.append([f"ratio, {m['n']:,}", rfmt(ratio(c["wrk"]["p50_ms"], p["wrk"]["p50_ms"])),
                         rfmt(ratio(c["wrk"]["p99_ms"], p["wrk"]["p99_ms"])), rfmt(ratio(c["wrk"]["rps"], p["wrk"]["rps"])),
                         rfmt(ratio(c["raw_bytes"], p["raw_bytes"])), rfmt(ratio(c["gzip_wire_bytes"], p["gzip_wire_bytes"])),
                         "", rfmt(ratio(c["lines"], p["lines"])), rfmt(ratio(c["series"], p["series"]))])
        out.append(table(f"3. /metrics with Accept-Encoding: gzip (wrk -t1 -c1 -d{rep['seconds']}s; sizes from one fetch)",
                         ["", "p50", "p99", "scrapes/s", "raw bytes", "bytes w/ gzip", "encoding", "lines", "series"], rows))
        for m in ph["metrics"]:
            c = m["cronmon"]
            if c["content_encoding"] != "gzip":
                out.append(f"  note: cronmon did not compress at {m['n']:,} (Content-Encoding {c['content_encoding']}); "
                           f"gzip -6 of its body would be {c['gzip_level6_bytes']:,} bytes")
        out.append("")
    if "series" in ph:
        s = ph["series"]
        rows = [[mon, fmt(count)] for mon, count in s["per_monitor"].items()]
        rows.append(["min / max", f"{s['min']} / {s['max']}"])
        out.append(table(f"4. Series per monitor in cronmon's /metrics ({s['n']:,} monitors)", ["monitor", "series"], rows))
        out.append(f"  families for {next(iter(s['per_monitor']))}: {', '.join(s['families'])}")
        out.append("")
    if ph.get("rss"):
        rows = []
        for r in ph["rss"]:
            procs = ", ".join(f"{p['comm']} {p['mb']:.0f}" for p in r["cronmon"]["processes"])
            rows.append([f"cronmon, {r['n']:,} monitors", fmt(r["cronmon"]["total_mb"], " MB"),
                         fmt(r["cronmon"]["total_mb"] * 10000 / r["n"], " MB"), procs])
            rows.append([f"pushgateway, {r['n']:,} groups", fmt(r["pushgateway"]["total_mb"], " MB"),
                         fmt(r["pushgateway"]["total_mb"] * 10000 / r["n"], " MB"), ""])
            rows.append(["ratio cronmon/pgw", rfmt(ratio(r["cronmon"]["total_mb"], r["pushgateway"]["total_mb"])), "", ""])
        out.append(table("5. RSS (VmRSS, whole process tree)", ["", "total", "per 10,000", "processes (MB)"], rows))
        out.append("")
    if "under_load" in ph:
        rows = []
        for name, r in ph["under_load"]["runs"].items():
            rows.append([name, fmt(r["pings"]), fmt(r["p50_ms"], " ms", 2), fmt(r["p99_ms"], " ms", 1),
                         fmt(r["max_ms"], " ms", 1), ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
                         ", ".join(f"{k}: {v}" for k, v in r["scrapes"].items()), fmt(r["sighups"]),
                         ", ".join(r["processes_lost"]) or "none"])
        out.append(table(f"6. Ping latency (1 connection, sequential) under load, {ph['under_load']['n']:,} monitors, "
                         f"{rep['seconds']} s each",
                         ["", "pings", "p50", "p99", "max", "ping statuses", "scrapes", "SIGHUPs", "processes lost"], rows))
        out.append("")
    if "burst" in ph:
        b = ph["burst"]
        out.append(table(f"7. Burst, 1,000 concurrent clients (wrk -t2 -c1000 -d{rep['seconds']}s), {b['n']:,} monitors / groups",
                         WRK_HEADER, [wrk_row("cronmon GET ping", b["cronmon"]), wrk_row("pushgateway PUT", b["pushgateway"])]))
        out.append("")
    if rep.get("checks"):
        out.append("Done-when check")
        for c in rep["checks"]:
            out.append(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['name']}: {c['figures']}")
        out.append("")
    if rep.get("notes"):
        out.append("Notes")
        out.extend(f"  {n}" for n in rep["notes"])
    return "\n".join(out)


def checks(rep: dict) -> list[dict]:
    ph, res = rep["phases"], []

    def add(name: str, ok: bool, figures: str) -> None:
        res.append({"name": name, "pass": bool(ok), "figures": figures})

    ing = ph["ingest"]
    c, p, r = ing["cronmon"], ing["pushgateway"], ing["ratio"]
    add("ingest >= 0.5x Pushgateway req/s (median round)", r is not None and r >= 0.5,
        f"{c['rps']:,.0f} vs {p['rps']:,.0f} req/s = {rfmt(r)} (rounds: "
        + ", ".join(rfmt(x["ratio"]) for x in ing["rounds"]) + ")")
    worst = ing["worst_cronmon_p99_ms"]
    add("cronmon ping p99 <= 20 ms (worst round)", worst <= 20,
        f"{fmt(worst, ' ms', 2)} ({rfmt(ratio(worst, 20))} of the limit; pushgateway in the median round "
        f"{fmt(p['p99_ms'], ' ms', 2)})")
    big = ph["metrics"][-1]
    mc, mp = big["cronmon"], big["pushgateway"]
    r = ratio(mc["wrk"]["p50_ms"], mp["wrk"]["p50_ms"])
    add(f"/metrics p50 at {big['n']:,} <= 1.0x Pushgateway", r is not None and r <= 1.0,
        f"{fmt(mc['wrk']['p50_ms'], ' ms')} vs {fmt(mp['wrk']['p50_ms'], ' ms')} = {rfmt(r)}")
    r = ratio(mc["gzip_wire_bytes"], mp["gzip_wire_bytes"])
    add(f"gzip'd /metrics bytes at {big['n']:,} <= 8x Pushgateway", r is not None and r <= 8,
        f"{mc['gzip_wire_bytes']:,} ({mc['content_encoding']}) vs {mp['gzip_wire_bytes']:,} ({mp['content_encoding']}) = {rfmt(r)}")
    s = ph["series"]
    add("<= 30 series per default monitor", s["max"] <= 30, f"min {s['min']}, max {s['max']} ({rfmt(s['max'] / 30)} of the limit)")
    b = ph["burst"]["cronmon"]
    add("no non-2xx at 1,000 concurrent clients", b["non2xx"] == 0,
        f"{b['non2xx']:,} non-2xx of {b['requests']:,} ({100 * b['non2xx'] / max(b['requests'], 1):.2f}%), "
        f"socket errors {b['socket_error_total']:,}, {b['rps']:,.0f} req/s "
        f"({rfmt(ratio(b['rps'], ph['burst']['pushgateway']['rps']))} of pushgateway)")
    runs = ph["under_load"]["runs"]
    worst = max((r["max_ms"] or float("inf")) for r in runs.values())
    add("worst ping latency during scrape/reload <= 100 ms", worst <= 100,
        "; ".join(f"{k}: max {fmt(v['max_ms'], ' ms')}, p99 {fmt(v['p99_ms'], ' ms')}" for k, v in runs.items())
        + f" (worst {rfmt(worst / 100)} of the limit)")
    return res


def machine_line() -> str:
    def version(args: list[str]) -> str:
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return ((p.stdout or "") + (p.stderr or "")).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    wrk_v = version(["wrk", "-v"]).split(" Copyright")[0]
    pgw_v = version([PUSHGATEWAY, "--version"])
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
            f"Python {platform.python_version()}, {wrk_v}, {pgw_v}; load average at start {load}")


# --------------------------------------------------------------------------
# Phases


def run(args: argparse.Namespace, children: Children, tmp: Path, rep: dict) -> None:
    secs = args.seconds
    sizes = [1000] if args.quick else [1000, 10000]
    config = tmp / "monitors.yaml"
    write_config(config, sizes[0])
    workers = args.workers if args.workers is not None else documented_workers()
    if not cronmon_knows_workers():
        log(f"WARNING: `cronmon serve --help` has no --workers; starting without --workers {workers}")
        rep["notes"].append(f"cronmon serve has no --workers flag: ran single-process (asked for {workers})")
        workers = None
    rep["workers"] = workers
    rep["setup_line"] = (f"cronmon workers: {workers if workers is not None else 'n/a (flag unknown)'}; "
                         f"phases {secs} s; sizes {', '.join(f'{n:,}' for n in sizes)}"
                         f"{' (--quick)' if args.quick else ''}; load generator and servers share the cores")
    serve, cbase = start_cronmon(children, tmp, config, workers)
    pgw, pbase = start_pushgateway(children, tmp)
    ph = rep["phases"]

    n = sizes[0]
    log(f"phase 1: ingest at {n:,}, {args.rounds} round(s) after a {WARMUP_SECONDS} s warm-up of each")
    ph["ingest"] = ingest_rounds(children, cbase, pbase, n, secs, args.rounds)
    ph["state"], ph["metrics"], ph["rss"] = [], [], []
    done = 0
    for n in sizes:
        state: dict = {"n": n}
        if n > done and done:
            write_config(config, n)
            log(f"reloading cronmon with {n:,} monitors (SIGHUP)")
            try:
                state["reload_seconds"] = reload_cronmon(serve, cbase, n)
            except RuntimeError as exc:  # fall back to a restart on the same data dir
                log(f"WARNING: {exc}; restarting cronmon instead")
                rep["notes"].append(f"reload to {n:,} monitors failed ({exc}); restarted cronmon instead")
                stop(serve)
                children.procs.remove(serve)
                serve, cbase = start_cronmon(children, tmp, config, workers)
        log(f"phase 2: state for {n:,} monitors / groups")
        counts, took = give_cronmon_state(cbase, range(n))
        state["cronmon"] = {"requests": sum(counts.values()), "seconds": took, "statuses": dict(counts)}
        counts, took = push_groups(pbase, range(n))
        state["pushgateway"] = {"requests": sum(counts.values()), "seconds": took, "statuses": dict(counts)}
        ph["state"].append(state)
        done = n
        log(f"phase 3: /metrics at {n:,}")
        entry = {"n": n}
        for name, base in (("cronmon", cbase), ("pushgateway", pbase)):
            entry[name] = fetch_metrics(base)
            entry[name]["wrk"] = wrk(children, base + "/metrics", secs, 1, 1, headers=GZIP, timeout_s=60)
        ph["metrics"].append(entry)
        ph["rss"].append({"n": n, "cronmon": tree_rss(serve.pid), "pushgateway": tree_rss(pgw.pid)})

    n = sizes[-1]
    log("phase 4: series per monitor")
    body = ph["metrics"][-1]["cronmon"]["_body"]
    sample = [f"m{i:04d}" for i in sorted({0, 1, 2, 3, n // 2, n - 1})]
    per = {m: series_of(body, m) for m in sample}
    ph["series"] = {"n": n, "per_monitor": per, "min": min(per.values()), "max": max(per.values()),
                    "families": families_of(body, sample[0])}

    log(f"phase 7: burst, 1,000 connections, at {n:,}")  # before 6: SIGHUPs leave reloads queued
    ph["burst"] = {"n": n, "cronmon": wrk_pings(children, cbase, n, secs, 1000),
                   "pushgateway": wrk_pushes(children, pbase, n, secs, 1000)}

    log(f"phase 6: ping latency under scrapes, then scrapes + SIGHUP every second, at {n:,}")
    ph["under_load"] = {"n": n, "runs": {
        "scrapes": pings_under_load(cbase, n, secs, serve, None),
        "scrapes + SIGHUP/1s": pings_under_load(cbase, n, secs, serve, 1.0),
        "scrapes + changed config, SIGHUP/3s": pings_under_load(cbase, n, secs, serve, 3.0, config),
    }}
    rep["checks"] = checks(rep)


def server_logs(tmp: Path) -> list[str]:
    """Warnings and errors cronmon logged (log level warning), summarised."""
    path = tmp / "cronmon.log"
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines:
        return ["cronmon logged nothing at level warning or above"]
    kinds = Counter(" ".join(ln.split()[2:6]) for ln in lines)  # level, logger, start of the message
    notes = [f"cronmon logged {len(lines)} line(s) at warning or above; most common:"]
    notes += [f"  {count} x {kind}" for kind, count in kinds.most_common(5)]
    notes += ["  last: " + lines[-1][:200]]
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each timed phase (default 10)")
    parser.add_argument("--workers", type=int, default=None,
                        help="cronmon serve --workers (default: cronmon's default here, see documented_workers)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="phase 1's alternating rounds of each server (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="3 s phases, 1,000 monitors throughout (< 2 minutes)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 3)
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for tool in ("wrk", PUSHGATEWAY):
        if not shutil.which(tool):
            print(f"{tool} is needed (Debian packages wrk, prometheus-pushgateway)", file=sys.stderr)
            return 1
    # Ctrl-C and SIGTERM unwind through the finally blocks that stop every child
    # (SIGINT explicitly: a shell starting us in the background ignores it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rep: dict = {"machine_line": machine_line(), "setup_line": "", "seconds": args.seconds, "quick": args.quick,
                 "phases": {}, "checks": [], "notes": []}
    print(rep["machine_line"], file=sys.stderr)
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="cronmon-compare-"))
    t0 = time.monotonic()
    failed = False
    try:
        run(args, children, tmp, rep)
    except BaseException as exc:
        failed = True
        rep["notes"].append(f"ABORTED: {type(exc).__name__}: {exc}")
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            import traceback
            traceback.print_exc()
    finally:
        children.stop_all()
        rep["notes"] += server_logs(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    rep["notes"].append(f"total run time {time.monotonic() - t0:.0f} s")
    for m in rep["phases"].get("metrics", []):
        for side in ("cronmon", "pushgateway"):
            m[side].pop("_body", None)
    print(render(rep))
    if args.json:
        args.json.write_text(json.dumps(rep, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
