"""Reload parsing in a child process (exporter/config_child.py): the same
config, the same errors, a crash or hang is a failed reload, and the event
loop runs between the chunks it unpickles."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from exporter import config_child
from exporter.config import ConfigError, load_config
from exporter.config_child import parse_in_child

from .conftest import T0

ROOT = Path(__file__).resolve().parent.parent


def fleet(n: int) -> str:
    """n monitors of both schedule kinds, with labels, groups and meta rules."""
    lines = [
        "groups:\n  - {name: nightly, metrics: [duration_histogram]}\n",
        "monitors:\n",
    ]
    for i in range(n):
        schedule = "{interval: 1h}" if i % 2 else '{cron: "*/5 * * * *", timezone: Europe/Berlin}'
        lines.append(
            f"  - {{id: m{i:04d}, schedule: {schedule}, grace: 2m, labels: {{team: t{i % 7}}},"
            f" group: nightly, meta_rules: ['rows < 1']}}\n"
        )
    return "".join(lines)


async def test_a_config_parsed_in_the_child_equals_one_parsed_here(tmp_path):
    big = tmp_path / "fleet.yaml"
    big.write_text(fleet(3 * config_child.CHUNK + 7))  # several chunks and a partial one
    for path in (ROOT / "config", big):
        assert await parse_in_child(path, T0) == load_config(path, now=T0)


async def test_a_bad_config_fails_with_the_same_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "monitors:\n"
        "  - {id: a, schedule: {cron: '0 3 * * *', timezone: Mars/Olympus}}\n"
        "  - {id: a, schedule: {interval: 1h}, gracee: 1m}\n"
    )
    with pytest.raises(ConfigError) as here:
        load_config(bad, now=T0)
    with pytest.raises(ConfigError) as there:
        await parse_in_child(bad, T0)
    assert there.value.problems == here.value.problems
    assert len(there.value.problems) >= 2


async def test_a_missing_path_fails_as_load_config_does(tmp_path):
    with pytest.raises(ConfigError) as there:
        await parse_in_child(tmp_path / "absent.yaml", T0)
    assert "no such file or directory" in str(there.value)


def fake_interpreter(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


async def test_a_crashed_parser_fails_the_reload_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", fake_interpreter(tmp_path, "echo 'MemoryError' >&2\nexit 3\n"))
    with pytest.raises(ConfigError) as failed:
        await parse_in_child(ROOT / "config", T0)
    message = str(failed.value)
    assert "config parser process failed (exit status 3): MemoryError" in message


async def test_a_hung_parser_is_killed_and_fails_the_reload(tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    monkeypatch.setattr(sys, "executable", fake_interpreter(tmp_path, f"echo $$ > {pid_file}\nexec sleep 30\n"))
    monkeypatch.setattr(config_child, "TIMEOUT_S", 0.5)
    with pytest.raises(ConfigError) as failed:
        await parse_in_child(ROOT / "config", T0)
    assert "the config parser process did not finish in" in str(failed.value)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


async def test_the_event_loop_runs_between_chunks(tmp_path):
    """What the child is for: reading its answer never holds the loop for
    the whole config. A task that counts loop turns gets at least one turn
    per chunk while the config is read."""
    big = tmp_path / "fleet.yaml"
    chunks = 8
    big.write_text(fleet(chunks * config_child.CHUNK))
    turns = 0
    stop = asyncio.Event()

    async def count() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count())
    # The child's parse itself is awaited (a pipe read): count only the
    # unpickling, by reading a stream written here.
    import io

    stream = io.BytesIO()
    config_child.write_parsed(str(big), T0, stream)
    stream.seek(0)
    turns = 0
    config = await config_child._read(stream)
    stop.set()
    await counter
    assert len(config.monitors) == chunks * config_child.CHUNK
    assert turns >= chunks


def test_the_child_lowers_its_cpu_priority(tmp_path, monkeypatch):
    """Serving processes keep the cores while a reload parses."""
    niced = []
    monkeypatch.setattr(os, "nice", niced.append)
    monkeypatch.setattr(config_child.gc, "disable", lambda: None)  # main() is the child's: not this process's
    out = tmp_path / "out"
    with open(out, "wb") as sink:
        monkeypatch.setattr(sys, "stdout", type("S", (), {"buffer": sink, "flush": lambda self: None})())
        assert config_child.main([str(ROOT / "config"), str(T0)]) == 0
    assert niced == [config_child._NICENESS] and niced[0] > 0
    assert out.stat().st_size > 0


async def test_sighups_sent_to_the_whole_process_tree_do_not_fail_the_parse(tmp_path):
    """Operators and bench/compare.py signal every cronmon process: the
    parser ignores SIGHUP (reloading is its parent's business)."""
    big = tmp_path / "fleet.yaml"
    big.write_text(fleet(4000))
    parsing = asyncio.create_task(parse_in_child(big, T0))
    hits = 0
    while not parsing.done():
        for pid in children_running("exporter.config_child"):
            os.kill(pid, signal.SIGHUP)
            hits += 1
        await asyncio.sleep(0.01)
    assert (await parsing) == load_config(big, now=T0)
    assert hits > 0  # the signals did reach it


def children_running(needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == os.getpid() and needle.encode() in cmdline:
            found.append(int(entry))
    return found


async def test_no_collector_pass_walks_a_reloaded_config_before_it_is_frozen(tmp_path, monkeypatch):
    """The cyclic collector is off from the first unpickled object of a
    reload until the new config is frozen (heap.py), even
    while the event loop keeps allocating meanwhile (pings); on again
    afterwards. A pass in between walked the whole new config: 40-85 ms of
    the event loop at 10,000 monitors."""
    import gc
    import time

    import exporter.reloader as reloader_module
    from exporter.reloader import Reloader
    from exporter.settings import Settings

    path = tmp_path / "fleet.yaml"
    path.write_text(fleet(1500))
    reloader = Reloader(Settings(config_path=path, data_dir=tmp_path / "data"), lambda: T0)
    reloader.load_initial()
    path.write_text(fleet(1500) + "# changed\n")

    events: list[tuple[str, float]] = []
    read, freeze = config_child._read, reloader_module.freeze_long_lived

    async def reading(stream):
        events.append(("read", time.monotonic()))
        return await read(stream)

    def freezing(*args, **kwargs):
        events.append(("freeze", time.monotonic()))
        return freeze(*args, **kwargs)

    def collected(phase, info):
        if phase == "start":
            events.append(("gc", time.monotonic()))

    monkeypatch.setattr(config_child, "_read", reading)
    monkeypatch.setattr(config_child, "freeze_long_lived", freezing)
    monkeypatch.setattr(reloader_module, "freeze_long_lived", freezing)
    stop = asyncio.Event()

    async def allocate():  # cyclic garbage, as a busy event loop makes
        while not stop.is_set():
            for _ in range(2000):
                cycle: list = []
                cycle.append(cycle)
            await asyncio.sleep(0)

    allocator = asyncio.create_task(allocate())
    gc.callbacks.append(collected)
    try:
        await reloader.reload()
    finally:
        gc.callbacks.remove(collected)
        stop.set()
        await allocator
    names = [name for name, _ in events]
    start, end = names.index("read"), names.index("freeze")
    assert "gc" not in names[start:end], names
    assert "gc" in names[:start]  # the allocator does make the collector run
    assert gc.isenabled()
