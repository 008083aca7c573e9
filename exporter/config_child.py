"""Parse the config in a child process, for reloads of a serving process.

Why: a 10,000-monitor YAML file costs about 1.2 s of CPU to parse and
validate, and libyaml's composer builds the whole document in one C call
that never releases the GIL (170 ms at 10,000 monitors on an idle machine,
longer on a busy one). In a thread of the serving process that stalled every
ping for as long: 289 ms worst ping in bench/compare.py's changed-config
reload phase. A child process parses instead, at a lower CPU priority
(nice 10, so the serving processes keep the cores), and sends the result
back as a stream of small pickles. The serving process unpickles a few
hundred monitors at a time and yields to its event loop between chunks, so
no step of a reload holds the loop for more than a few milliseconds.

Start-up and `cronmon check-config` parse in-process: nothing is served yet.

The child is this module run as a program by the same interpreter
(`python -m exporter.config_child PATH NOW`, with SIGHUP ignored first).

It writes to stdout a pickle of ("error", problems) for a bad config, or
("config", the Config without its monitors, chunk count) followed by that
many pickled tuples of monitors. It exits 0 in both cases; any other exit
is a crash, which fails the reload and keeps the running config.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import pickle
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import IO

from .config import Config, ConfigError, load_config
from .heap import freeze_long_lived

# Monitors per pickle: ~4 µs each to unpickle, so ~1 ms per chunk.
CHUNK = 250
# A parse that takes longer than this is stuck, not slow (10,000 monitors:
# about 1.5 s on a busy 2-core machine).
TIMEOUT_S = 300.0
_NICENESS = 10
# SIGHUP is how cronmon is told to reload, and operators (and
# bench/compare.py) often send it to every process of the tree: the child
# must not die of it. It starts with SIGHUP blocked (a signal mask survives
# fork and exec), ignores it, and only then unblocks it, so one sent at any
# moment is either discarded or ignored.
_BOOT = (
    "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP}); "
    "import runpy; runpy.run_module('exporter.config_child', run_name='__main__', alter_sys=True)"
)


async def parse_in_child(path: str | Path, now: float) -> Config:
    """`load_config(path, now=now)`, computed in a child process.

    Raises ConfigError exactly as load_config does (the same problems, in
    the same words), and also when the child could not parse at all (it
    crashed, was killed, or timed out): the reload then fails and the
    running config stays.

    The new config's objects are made with the cyclic garbage collector
    off and frozen before it is back on (heap.py: they are long-lived).
    Turned back on before the freeze, its first young pass walked them
    all: 40-85 ms of the event loop at 10,000 monitors (gc.callbacks)."""
    out, err, status = await _run_child(path, now)
    if status != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        why = f": {lines[-1]}" if lines else ""
        raise ConfigError([f"{path}: the config parser process failed (exit status {status}){why}"])
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        config = await _read(io.BytesIO(out))
        freeze_long_lived(collect_young=False)  # all of it young, all of it kept
        return config
    finally:
        if was_enabled:
            gc.enable()


async def _run_child(path: str | Path, now: float) -> tuple[bytes, bytes, int]:
    # Blocked in this thread while it forks (see _BOOT). A SIGHUP for this
    # process meanwhile goes to another thread, or waits: it is not lost.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _BOOT, str(path), repr(now),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        raise ConfigError([f"{path}: the config parser process did not finish in {TIMEOUT_S:.0f} s"]) from None
    finally:
        if proc.returncode is None:  # timed out, or this reload was cancelled
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return out, err, proc.returncode


async def _read(stream: io.BytesIO) -> Config:
    # Call with the collector off: its passes would walk the new config's
    # objects (all long-lived) over and over.
    head = pickle.load(stream)
    if head[0] == "error":
        raise ConfigError(list(head[1]))
    _, config, chunks = head
    monitors: list = []
    for _ in range(chunks):
        await asyncio.sleep(0)  # let pings through between chunks
        monitors.extend(pickle.load(stream))
    return replace(config, monitors=tuple(monitors))


def write_parsed(path: str, now: float, out: IO[bytes]) -> None:
    """The child's work: parse `path` and write the stream parse_in_child reads."""
    try:
        config = load_config(path, now=now)
    except ConfigError as exc:
        pickle.dump(("error", exc.problems), out, protocol=pickle.HIGHEST_PROTOCOL)
        return
    monitors = config.monitors
    chunks = [monitors[i:i + CHUNK] for i in range(0, len(monitors), CHUNK)]
    pickle.dump(("config", replace(config, monitors=()), len(chunks)), out, protocol=pickle.HIGHEST_PROTOCOL)
    for chunk in chunks:
        pickle.dump(chunk, out, protocol=pickle.HIGHEST_PROTOCOL)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m exporter.config_child PATH NOW", file=sys.stderr)
        return 2
    try:
        os.nice(_NICENESS)
    except OSError:
        pass  # a priority we may not lower is no reason not to parse
    gc.disable()  # a short-lived process: refcounting frees what it must
    write_parsed(argv[0], float(argv[1]), sys.stdout.buffer)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
