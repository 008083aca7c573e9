"""A real Sentinel-managed Redis for the tests: a primary with two
replicas (replicaof) and three sentinels (quorum 2, down after 1 s), all the
redis-server cronmon embeds (``redis-server <conf> --sentinel`` is
Sentinel), on free loopback ports, started and stopped by the suite."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis

from exporter.embedded import find_redis_server

from .conftest import free_port

SERVICE = "cronmon-ha"


def _wait_port(port: int, process: subprocess.Popen, timeout: float = 10.0, password: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis process on port {port} exited with {process.returncode}")
        try:
            redis.Redis(port=port, socket_timeout=0.5, password=password).ping()
            return
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis process on port {port} did not start in {timeout}s")


@dataclass
class SentinelGroup:
    primary_port: int
    replica_ports: list[int]
    sentinel_ports: list[int]
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)
    password: str | None = None  # the data nodes' requirepass
    sentinel_password: str | None = None  # the sentinels' requirepass

    def url(self, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.sentinel_password:
            query += ("&" if query else "?") + f"sentinel_password={quote(self.sentinel_password, safe='')}"
        return f"redis+sentinel://{credentials}{hosts}/{SERVICE}/0{query}"

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, decode_responses=True, password=self.sentinel_password)

    def primary_per_sentinels(self) -> set[int]:
        ports = set()
        for port in self.sentinel_ports:
            with self.sentinel(port) as client:
                ports.add(int(client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1]))
        return ports


def _settled(group: SentinelGroup) -> bool:
    """Every replica in sync and every sentinel seeing the replicas and its peers."""
    try:
        with redis.Redis(port=group.primary_port, socket_timeout=1, decode_responses=True,
                         password=group.password) as primary:
            info = primary.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        if len([r for r in online if r.get("state") == "online"]) != len(group.replica_ports):
            return False
        for port in group.sentinel_ports:
            with group.sentinel(port) as sentinel:
                state = sentinel.execute_command("SENTINEL", "MASTER", SERVICE)
                state = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
                if int(state["num-slaves"]) != len(group.replica_ports):
                    return False
                if int(state["num-other-sentinels"]) != len(group.sentinel_ports) - 1:
                    return False
        return True
    except redis.RedisError:
        return False


@contextlib.contextmanager
def sentinel_group_running(
    tmp_path: Path, password: str | None = None, sentinel_password: str | None = None
) -> Iterator[SentinelGroup]:
    """A primary, two replicas and three sentinels on free loopback ports,
    settled (replicas in sync, sentinels seeing each other), then stopped.
    `password`: the data nodes require it; `sentinel_password`: the
    sentinels require it (of cronmon and of each other)."""
    binary = find_redis_server()
    group = SentinelGroup(free_port(), [free_port(), free_port()], [free_port(), free_port(), free_port()],
                          password=password, sentinel_password=sentinel_password)
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if password:
        common += ["--requirepass", password, "--masterauth", password]

    def start(port: int, args: list[str]) -> None:
        workdir = tmp_path / f"redis-{port}"
        workdir.mkdir(parents=True)
        log = open(workdir / "log", "wb")  # noqa: SIM115 (closed with the process)
        group.processes[port] = subprocess.Popen(args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    try:
        start(group.primary_port, [binary, "--port", str(group.primary_port), *common])
        _wait_port(group.primary_port, group.processes[group.primary_port], password=password)
        for port in group.replica_ports:
            start(port, [binary, "--port", str(port), *common, "--replicaof", "127.0.0.1", str(group.primary_port)])
        for port in group.sentinel_ports:
            conf = tmp_path / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {group.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 3000\n"
                f"sentinel parallel-syncs {SERVICE} 2\n"
                + (f'sentinel auth-pass {SERVICE} "{password}"\n' if password else "")
                + (f'requirepass "{sentinel_password}"\nsentinel sentinel-pass "{sentinel_password}"\n'
                   if sentinel_password else "")
            )
            start(port, [binary, str(conf), "--sentinel"])
        for port, process in group.processes.items():
            _wait_port(port, process, password=sentinel_password if port in group.sentinel_ports else password)
        deadline = time.monotonic() + 30
        while not _settled(group):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel group did not settle in 30s")
            time.sleep(0.1)
        yield group
    finally:
        for process in group.processes.values():
            if process.poll() is None:
                process.kill()
        for process in group.processes.values():
            process.wait(10)
