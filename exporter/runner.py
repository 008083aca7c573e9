"""`cronmon exec`: run a job and report its run to cronmon.

    cronmon exec [--url PING_URL | --server URL --monitor ID] [options] -- command args...

Sends a start with a fresh run id (``/start?rid=``), runs the command with
stdin, stdout and stderr passed through (SIGTERM, SIGINT and SIGHUP are
forwarded to its process group), then the finish: ``/<exit status>?rid=
&duration=`` with the last ``--log-tail`` KiB of the combined output as the
POST body (the run's log). The job's exit status is cronmon exec's (128+N
for a job killed by signal N).

A report cronmon does not take (network error, 429, 5xx) is retried with
exponential backoff for ``--retry-for``; then it is written to the spool
(exporter/spool.py), which the next ``cronmon exec`` on the machine (of any
job) delivers before its own start, or ``cronmon exec --flush``. 4xx other
than 429 is final: the error is printed and the report dropped.

HTTP is plain http.client: cronmon exec runs before and after every job, and
importing httpx would add ~0.15 s to each run. Proxy variables are not read.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import os
import random
import select
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from . import __version__
from .durations import parse_duration
from .spool import Report, Spool, default_dir

DEFAULT_LOG_TAIL_KIB = 9  # cronmon keeps 10,000 bytes of a log by default
DEFAULT_RETRY_FOR = 60.0
DEFAULT_KILL_AFTER = 5.0
ATTEMPT_TIMEOUT = 10.0  # one HTTP request, at most
START_RETRY_FOR = 10.0  # the job waits for its start at most this long (then it is spooled)
DRAIN_AFTER_EXIT = 2.0  # output still arriving after the job exited (its background children)
_READ_CHUNK = 65536
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class UsageError(Exception):
    pass


# -- the command line -------------------------------------------------------

def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `exec` subcommand's parser, added to cronmon's subcommands."""
    parser = commands.add_parser(
        "exec",
        help="run a job and report its start, end, exit status and output to cronmon",
        description=(
            "Run COMMAND and report the run to cronmon: a start, then the exit status, duration and the "
            "tail of the output as the run's log. Reports cronmon cannot take are retried, then kept in "
            "a local spool and delivered by the next cronmon exec on this machine (or --flush). The exit "
            "status is the job's (128+N for a job killed by signal N)."
        ),
    )
    parser.add_argument(
        "--url", metavar="PING_URL",
        help="the monitor's ping URL (http://host:9879/ping/<uuid> or .../ping/<ping key>/<id>); "
             "env CRONMON_URL, which keeps the secret out of crontabs and ps",
    )
    parser.add_argument("--server", metavar="URL", help="cronmon's base URL, with --monitor; env CRONMON_SERVER")
    parser.add_argument(
        "--monitor", metavar="ID",
        help="the monitor's id (then the ping key comes from env CRONMON_PING_KEY) or its UUID; env CRONMON_MONITOR",
    )
    parser.add_argument(
        "--timeout", type=_duration, metavar="DURATION",
        help="stop the job after DURATION (SIGTERM to its process group, SIGKILL --kill-after later) "
             "and report a failure",
    )
    parser.add_argument(
        "--kill-after", type=_duration, default=DEFAULT_KILL_AFTER, metavar="DURATION",
        help=f"after --timeout, how long the job has to exit before SIGKILL (default {DEFAULT_KILL_AFTER:g}s)",
    )
    parser.add_argument(
        "--log-tail", type=_kib, default=DEFAULT_LOG_TAIL_KIB, metavar="KiB",
        help=f"send the last KiB of the job's combined stdout and stderr as the run's log (default "
             f"{DEFAULT_LOG_TAIL_KIB}; cronmon keeps 10,000 bytes by default; 0: no log)",
    )
    parser.add_argument(
        "--retry-for", type=_duration, default=DEFAULT_RETRY_FOR, metavar="DURATION",
        help=f"retry a report cronmon does not take (network error, 429, 5xx) for this long before "
             f"spooling it (default {DEFAULT_RETRY_FOR:g}s)",
    )
    parser.add_argument(
        "--spool-dir", type=Path, metavar="DIR",
        help="where undelivered reports wait (default env CRONMON_SPOOL_DIR, else "
             "$XDG_STATE_HOME/cronmon/spool, else ~/.local/state/cronmon/spool)",
    )
    parser.add_argument("--no-start", action="store_true", help="do not send a start, only the finish")
    parser.add_argument("--quiet", action="store_true", help="print nothing of cronmon exec's own but errors")
    parser.add_argument(
        "--flush", action="store_true",
        help="deliver the spooled reports and exit (0: the spool is empty; 1: some are still there)",
    )
    # dest "job": cronmon's subcommand is args.command
    parser.add_argument("job", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG ...]")
    return parser


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _kib(text: str) -> int:
    if not text.isdigit() or int(text) > 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of KiB from 0 to 100")
    return int(text)


class Console:
    def __init__(self, quiet: bool):
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            self.error(message)

    @staticmethod
    def error(message: str) -> None:
        with contextlib.suppress(OSError):
            print(f"cronmon exec: {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> int:
    console = Console(args.quiet)
    command = list(args.job)
    if command[:1] == ["--"]:
        command = command[1:]
    spool = Spool(args.spool_dir or default_dir(env))
    if args.flush:
        if command:
            console.error("--flush takes no command")
            return 2
        return flush_command(spool, args.retry_for, console)
    if not command:
        console.error("no command given: cronmon exec [options] -- COMMAND [ARG ...]")
        return 2
    try:
        base = ping_base(args.url, args.server, args.monitor, env)
    except UsageError as exc:
        console.error(str(exc))
        return 2
    return run(command, base, args, spool, console)


def ping_base(url: str | None, server: str | None, monitor: str | None, env: Mapping[str, str]) -> str:
    """The monitor's ping URL, from the options or the environment."""
    if url and (server or monitor):
        raise UsageError("give --url or --server with --monitor, not both")
    if not (server or monitor):
        url = url or env.get("CRONMON_URL")
    if url:
        if urlsplit(url).scheme not in ("http", "https"):
            raise UsageError(f"the ping URL must start with http:// or https://, not {url.split(':')[0]!r}")
        return url
    server = server or env.get("CRONMON_SERVER")
    monitor = monitor or env.get("CRONMON_MONITOR")
    if not server or not monitor:
        raise UsageError("no ping URL: give --url (or env CRONMON_URL), or --server and --monitor")
    if urlsplit(server).scheme not in ("http", "https"):
        raise UsageError(f"--server must start with http:// or https://, not {server!r}")
    server = server.rstrip("/")
    if _is_uuid(monitor):
        return f"{server}/ping/{monitor}"
    key = env.get("CRONMON_PING_KEY")
    if not key:
        raise UsageError(f"--monitor {monitor} needs the ping key in env CRONMON_PING_KEY (or give its UUID)")
    return f"{server}/ping/{quote(key, safe='')}/{quote(monitor, safe='')}"


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def action_url(base: str, action: str, params: dict[str, str]) -> str:
    """`base` + `/action`, its query string kept and `params` added."""
    parts = urlsplit(base)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + action, urlencode(query), ""))


# -- delivery ---------------------------------------------------------------

def send_once(report: Report, timeout: float) -> tuple[int, str, float | None]:
    """One HTTP request: (status, first part of the answer, Retry-After in
    seconds or None). Raises OSError or http.client.HTTPException."""
    parts = urlsplit(report.url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout)
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    headers = {"User-Agent": f"cronmon-exec/{__version__}", "Connection": "close"}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
    if report.body is not None:
        headers["Content-Type"] = "text/plain; charset=utf-8"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET" if report.body is None else "POST", target, body=report.body, headers=headers)
        response = connection.getresponse()
        text = response.read(2000).decode("utf-8", errors="replace").strip()
        return response.status, text, _retry_after(response.getheader("Retry-After"))
    finally:
        connection.close()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Delivery:
    result: str  # "delivered", "refused" (final 4xx) or "unreachable" (still failing at the deadline)
    problem: str = ""


def deliver(report: Report, retry_until: float, sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Send a report, retrying network errors, 429 and 5xx with exponential
    backoff (Retry-After honoured) until the monotonic `retry_until`; at
    least one attempt is made."""
    delay = 0.5
    while True:
        remaining = retry_until - time.monotonic()
        try:
            status, text, retry_after = send_once(report, min(ATTEMPT_TIMEOUT, max(2.0, remaining)))
        except (OSError, http.client.HTTPException) as exc:
            problem, wait, retry_after = f"cannot reach cronmon: {exc or type(exc).__name__}", delay, None
        else:
            if 200 <= status < 300:
                return Delivery("delivered")
            problem = f"cronmon answered {status} {text[:200]}".strip()
            if status != 429 and status < 500:
                return Delivery("refused", problem)
            wait = retry_after if retry_after is not None else delay
        wait *= random.uniform(1.0, 1.2) if retry_after is None else 1.0
        if time.monotonic() + wait > retry_until:
            return Delivery("unreachable", problem)
        sleep(wait)
        delay = min(delay * 2, 10.0)


def flush(spool: Spool, retry_until: float, console: Console) -> bool:
    """Deliver the spool, oldest first, stopping at the first report cronmon
    still does not take. Call with the flush lock held. True: it is empty."""
    delivered = 0
    for path in spool.pending():
        try:
            report = spool.load(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            with contextlib.suppress(OSError):
                console.error(f"spooled report {path.name} is unreadable ({exc}); set aside as {spool.set_aside(path)}")
            continue
        outcome = deliver(report, retry_until)
        if outcome.result == "unreachable":
            left = len(spool.pending())
            console.error(f"{left} report(s) stay in the spool {spool.directory}: {outcome.problem}")
            if delivered:
                console.say(f"delivered {delivered} spooled report(s)")
            return False
        if outcome.result == "refused":
            console.error(f"dropped the spooled {report.kind} of run {report.rid}: {outcome.problem}")
        else:
            delivered += 1
        spool.remove(path)
    if delivered:
        console.say(f"delivered {delivered} spooled report(s)")
    return True


def flush_command(spool: Spool, retry_for: float, console: Console) -> int:
    if not spool.pending():
        return 0
    try:
        with spool.locked(wait=retry_for) as held:
            if not held:
                console.error(f"another cronmon exec is flushing {spool.directory}")
                return 1
            return 0 if flush(spool, time.monotonic() + retry_for, console) else 1
    except OSError as exc:
        console.error(f"cannot use the spool {spool.directory}: {exc}")
        return 1


def keep(spool: Spool, report: Report, console: Console, problem: str) -> None:
    """Spool a report cronmon did not take."""
    try:
        path = spool.add(report)
    except OSError as exc:
        console.error(f"{problem}; could not spool the {report.kind} of run {report.rid} ({exc}): it is lost")
        return
    console.error(f"{problem}; the {report.kind} is spooled as {path} for a later cronmon exec (or --flush)")


# -- the job ----------------------------------------------------------------

class Tail:
    """The last `limit` bytes of a stream, in at most about twice that."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buffer = bytearray()
        self.cut = False  # something was dropped from the front

    def add(self, data: bytes) -> None:
        if self.limit == 0:
            return
        if len(data) >= self.limit:
            self.cut = self.cut or len(data) > self.limit or bool(self.buffer)
            self.buffer = bytearray(data[-self.limit:])
            return
        self.buffer += data
        if len(self.buffer) > 2 * self.limit:
            del self.buffer[: len(self.buffer) - self.limit]
            self.cut = True

    def value(self) -> bytes:
        if not self.limit:
            return b""
        data = bytes(self.buffer[-self.limit:])
        if self.cut or len(self.buffer) > self.limit:
            # Cut on a character boundary: drop UTF-8 continuation bytes.
            start = 0
            while start < min(3, len(data)) and data[start] & 0xC0 == 0x80:
                start += 1
            data = data[start:]
        return data


@dataclass(frozen=True)
class JobResult:
    status: int  # the exit status, 128+N for signal N
    duration: float
    log: bytes
    timed_out: bool = False


def run_job(command: list[str], timeout: float | None, kill_after: float, tail: Tail, console: Console) -> JobResult:
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
    except OSError as exc:
        status = 127 if isinstance(exc, FileNotFoundError) else 126
        message = f"cannot run {command[0]}: {exc.strerror or exc}"
        console.error(message)
        tail.add(f"cronmon exec: {message}\n".encode())
        return JobResult(status, time.monotonic() - started, tail.value())

    def forward(signum: int, frame: object) -> None:
        if process.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        timed_out = _pump(process, started, timeout, kill_after, tail)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    duration = time.monotonic() - started
    code = process.returncode
    assert code is not None
    status = 128 - code if code < 0 else code
    if timed_out:
        with contextlib.suppress(OSError):  # what is left of its processes
            os.killpg(process.pid, signal.SIGKILL)
        message = f"timed out after {_seconds(timeout or 0)}: stopped the job (exit status {status})"
        console.error(message)
        tail.add(f"\ncronmon exec: {message}\n".encode())
    elif code < 0:
        tail.add(f"\ncronmon exec: the job was killed by signal {-code} ({_signal_name(-code)})\n".encode())
    return JobResult(status, duration, tail.value(), timed_out)


def _pump(process: subprocess.Popen, started: float, timeout: float | None, kill_after: float, tail: Tail) -> bool:
    """Pass the job's output through (and into `tail`) until it has exited
    and its pipes are closed (or DRAIN_AFTER_EXIT after its exit); stop it
    at the timeout. True if it timed out."""
    assert process.stdout is not None and process.stderr is not None
    selector = selectors.DefaultSelector()
    targets = {process.stdout.fileno(): 1, process.stderr.fileno(): 2}
    for fd, target in targets.items():
        selector.register(fd, selectors.EVENT_READ, target)
    passing = {1: True, 2: True}
    term_at = started + timeout if timeout is not None else None
    kill_at: float | None = None
    timed_out = False
    exited_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if term_at is not None and now >= term_at:
                timed_out, term_at, kill_at = True, None, now + kill_after
                _signal_group(process, signal.SIGTERM)
            if kill_at is not None and now >= kill_at:
                kill_at = None
                _signal_group(process, signal.SIGKILL)
            wait = min([0.25] + [t - now for t in (term_at, kill_at) if t is not None])
            if not targets:
                try:
                    process.wait(timeout=max(wait, 0.001))
                    return timed_out
                except subprocess.TimeoutExpired:
                    continue
            if exited_at is None and process.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT:
                return timed_out  # a background child still holds the pipes
            for key, _ in selector.select(max(wait, 0)):
                fd = key.fd
                data = os.read(fd, _READ_CHUNK)
                if not data:
                    selector.unregister(fd)
                    del targets[fd]
                    continue
                tail.add(data)
                if passing[key.data]:
                    passing[key.data] = _write_all(key.data, data)
    finally:
        selector.close()
        process.stdout.close()
        process.stderr.close()
        if process.returncode is None:
            process.wait()


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of `data`; False if the stream is gone (stop passing it)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # a non-blocking stdout we inherited: wait until it drains
            select.select([], [fd], [], 1.0)
        except OSError:
            return False
    return True


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    if process.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, sig)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


# -- one run ----------------------------------------------------------------

def run(command: list[str], base: str, args: argparse.Namespace, spool: Spool, console: Console) -> int:
    rid = str(uuid.uuid4())
    down = False
    if spool.pending():  # earlier reports first; one quick try each, not a long wait before the job
        try:
            with spool.locked(wait=0) as held:
                down = held and not flush(spool, time.monotonic(), console)
        except OSError as exc:
            console.error(f"cannot use the spool {spool.directory}: {exc}")
    if not args.no_start:
        start = Report(action_url(base, "start", {"rid": rid}), "start", rid, None, time.time())
        if down:
            keep(spool, start, console, "cronmon did not take the spooled reports")
        else:
            outcome = deliver(start, time.monotonic() + min(args.retry_for, START_RETRY_FOR))
            if outcome.result == "unreachable":
                keep(spool, start, console, outcome.problem)
            elif outcome.result == "refused":
                console.error(f"the start was refused: {outcome.problem}")

    job = run_job(command, args.timeout, args.kill_after, Tail(args.log_tail * 1024), console)

    params = {"rid": rid, "duration": f"{job.duration:.3f}"}
    if job.timed_out:
        action, params["exit_code"] = "fail", str(job.status)
    else:
        action = str(job.status)
    body = job.log if args.log_tail else None
    finish = Report(action_url(base, action, params), "finish", rid, body, time.time())
    try:
        with _interruptible():
            report_finish(finish, args.retry_for, spool, console)
    except _Interrupted as exc:  # stopped while reporting: keep the result
        keep(spool, finish, console, f"interrupted by {_signal_name(exc.signum)} while reporting")
    if not job.timed_out:
        console.say(f"exit status {job.status} after {job.duration:.2f}s")
    return job.status if job.status or not job.timed_out else 124


class _Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP raise _Interrupted (the job is over: a
    stop now must not lose its finish, it is spooled instead)."""

    def stop(signum: int, frame: object) -> None:
        raise _Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in _FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report_finish(finish: Report, retry_for: float, spool: Spool, console: Console) -> None:
    """Deliver the finish after whatever is spooled (a spooled start of the
    same run must land first), else spool it."""
    retry_until = time.monotonic() + retry_for
    if not spool.pending():
        outcome = deliver(finish, retry_until)
    else:
        try:
            with spool.locked(wait=retry_for) as held:
                if not held:
                    keep(spool, finish, console, "another cronmon exec holds the spool")
                    return
                if not flush(spool, retry_until, console):
                    keep(spool, finish, console, "cronmon did not take the spooled reports")
                    return
                outcome = deliver(finish, retry_until)
        except OSError as exc:
            console.error(f"cannot use the spool {spool.directory}: {exc}")
            outcome = deliver(finish, retry_until)
    if outcome.result == "unreachable":
        keep(spool, finish, console, outcome.problem)
    elif outcome.result == "refused":
        console.error(f"the finish was refused: {outcome.problem}")
