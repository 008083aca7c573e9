"""Redis Cluster (issue 14, part 2): ``--redis-url redis+cluster://...``.

Real clusters of the redis-server cronmon embeds, 3 primaries with a
replica each (tests/cluster.py), started and stopped here. The core
test-suite also runs on one (test_core.py's backends); this module shows
what only a cluster can break: every script stays in one slot, two cronmon
replicas record each check-in and each missed slot exactly once while
`redis-cli --cluster reshard` moves their slots under load, and a
primary killed with SIGKILL fails over with 503s only in the window and no
acknowledged check-in lost.
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from redis.crc import key_slot

from exporter.core import Core
from exporter.errors import StoreUnavailable
from exporter.keyspace import CLUSTER_SHARDS, Keyspace
from exporter.model import CheckIn, Kind
from exporter.store import Store, StoreLimits, connect, parse_cluster_url
from exporter.sweeper import Sweeper
from exporter.web.app import _redis_endpoints

from .cluster import LocalCluster
from .conftest import T0, Clock, free_port, registry_from, write_config
from .failover import PING_KEY, acknowledged_once, ping_through_a_kill, serve

# Every key record.lua, sweep.lua, resync.lua and define.lua are given.
MONITOR_PARTS = ("state", "runs", "tmo", "closed", "counters", "history", "logs", "logids", "meta", "ratelimit",
                 "uptime", "abandoned", "idem", "audit")
INDEXES = ("due", "changes", "changes:seq", "monitors", "monitors:revision", "monitors:changes")


@pytest.fixture
def cluster(tmp_path: Path):
    with LocalCluster(tmp_path / "cluster") as running:
        yield running


def test_cluster_url_errors_name_what_is_wrong():
    parsed = parse_cluster_url("redis+cluster://:s%40cret@10.0.0.1:7000,[::1]:7001,node-c?wait_replicas=0")
    assert parsed.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("node-c", 6379))
    assert (parsed.password, parsed.wait_replicas, parsed.wait_timeout_ms) == ("s@cret", 0, 1000)
    for url, problem in [
        ("redis://h:1", "not a cluster URL (scheme 'redis'"),
        ("redis+cluster://", "no cluster hosts"),
        ("redis+cluster://h:port", "bad cluster address 'h:port'"),
        ("redis+cluster://h:1/0", "a cluster has no databases: drop '/0'"),
        ("redis+cluster://h:1?wait=1", "unknown option(s) in the cluster URL: wait"),
        ("redis+cluster://h:1?wait_replicas=99", "bad wait_replicas '99'"),
    ]:
        with pytest.raises(ValueError) as caught:
            parse_cluster_url(url)
        assert problem in str(caught.value), (url, str(caught.value))
    # Active checks must not reach the cluster's nodes.
    assert _redis_endpoints("redis+cluster://127.0.0.1:7000,127.0.0.1:7001") == (
        ("127.0.0.1", 7000), ("127.0.0.1", 7001),
    )


def test_each_script_touches_one_slot_and_one_server_keeps_its_key_names():
    """A monitor's keys and its shards of the indexes hash to one slot (no
    CROSSSLOT, and they move together in a reshard); the shards spread over
    the slots; on one server the names are those cronmon always used."""
    cluster = Keyspace("cronmon", cluster=True)
    for monitor_id in ["job", "nightly-backup", "a" * 64, "Ünïcode", "x:y{z}"]:
        keys = [cluster.monitor(monitor_id, part) for part in MONITOR_PARTS]
        keys += [cluster.index_of(monitor_id, name) for name in INDEXES]
        assert len({key_slot(key.encode()) for key in keys}) == 1, monitor_id
    shared = [cluster.shared(name) for name in ("heartbeat", "outages", "probes", "probes:schedule", "quota:x:y")]
    assert len({key_slot(key.encode()) for key in shared}) == 1
    slots = {key_slot(cluster.index(shard, "due").encode()) for shard in cluster.shards}
    assert len(slots) == CLUSTER_SHARDS
    owners = collections.Counter(slot * 3 // 16384 for slot in slots)  # three equal masters
    assert min(owners.values()) > CLUSTER_SHARDS / 3 * 0.75, owners
    single = Keyspace("cronmon")
    assert (single.monitor("job", "state"), single.index_of("job", "due"), single.shared("probes")) == (
        "cronmon:{job}:state", "cronmon:due", "cronmon:probes",
    )


def _shard_slot(monitor_id: str) -> int:
    keys = Keyspace("cronmon", cluster=True)
    return key_slot(keys.index_of(monitor_id, "due").encode())


def _ids_in(slots: range, count: int, prefix: str) -> list[str]:
    found, n = [], 0
    while len(found) < count:
        candidate = f"{prefix}{n}"
        if _shard_slot(candidate) in slots:
            found.append(candidate)
        n += 1
    return found


async def _until_taken(call, *args):
    """Call until the store takes it: a job's retry of a 503 (bounded)."""
    for _ in range(200):
        try:
            return await call(*args)
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{call.__name__} was refused for 10 s")


async def _walk(url: str, directory: Path, active: list[str], silent: list[str], *, reshard=None,
                steps: int | None = None) -> tuple[int, dict, dict, dict, int]:
    """Two cronmon replicas (a Core and a Sweeper each, one clock) on `url`:
    every step, each active monitor gets a success with a fresh rid through
    one replica and the same again through the other (a client's retry),
    20 s pass and both sweepers run at once. Runs `steps` steps, or until
    the `reshard` process ended (at least 12). Returns (steps, outcomes and
    check-in counts per monitor, rids in each monitor's history, the rids
    acknowledged, how many steps ended while the reshard was running)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    monitors = [*active, *silent]
    text = "monitors:\n" + "".join(
        f"  - {{id: {m}, schedule: {{interval: 60s}}, grace: 10s}}\n" for m in monitors
    )
    clock = Clock(T0)
    config = write_config(directory, text, f"{prefix}.yaml")
    stores = [Store(connect(url), prefix, StoreLimits(history=1000)) for _ in range(2)]
    cores = [Core(store, registry_from(config, directory), clock) for store in stores]
    sweepers = [Sweeper(core, clock=clock) for core in cores]
    acknowledged: dict[str, list[str]] = collections.defaultdict(list)
    done = during = 0
    try:
        await asyncio.gather(*(_until_taken(s.run_once) for s in sweepers))  # first sight
        while True:
            if steps is not None and done >= steps:
                break
            if steps is None and done >= 12 and reshard.poll() is not None:
                break
            assert done < 400, "the reshard did not end"
            sends = []
            for i, monitor_id in enumerate(active):
                rid = f"{monitor_id}-{done}"
                checkin = CheckIn(monitor_id, Kind.SUCCESS, clock.now, run_id=rid)
                first, other = cores[(done + i) % 2], cores[(done + i + 1) % 2]
                sends.append((monitor_id, rid, _until_taken(first.record, checkin),
                              _until_taken(other.record, checkin)))
            results = await asyncio.gather(*(call for _, _, call, _ in sends))
            retries = await asyncio.gather(*(call for _, _, _, call in sends))
            for (monitor_id, rid, _, _), result, retry in zip(sends, results, retries):
                assert result.status == "ok" and retry.status == "duplicate", (rid, result, retry)
                acknowledged[monitor_id].append(rid)
            clock.advance(20)
            await asyncio.gather(*(_until_taken(s.run_once) for s in sweepers))
            done += 1
            during += reshard is not None and reshard.poll() is None
        facts = await _until_taken(stores[0].snapshot, monitors)
        histories = {m: await _until_taken(stores[1].history, m, 0, 1000) for m in monitors}
    finally:
        for store in stores:
            await store.close()
    counts = {m: (dict(f.outcomes), dict(f.checkins)) for m, f in facts.items()}
    recorded = {m: collections.Counter(e["run"] for e in h if e.get("run")) for m, h in histories.items()}
    return done, counts, recorded, acknowledged, during


async def test_two_replicas_record_exactly_once_while_their_slots_are_resharded_under_load(
    cluster, redis_server, tmp_path
):
    """Most monitors live in the first 3000 slots of the primary of slot 0,
    which `redis-cli --cluster reshard` moves to another primary while two
    cronmon replicas take check-ins (each sent twice, once to each) and
    sweep. Every check-in is recorded once, every retry is a duplicate, and
    the outcome and check-in counts equal those of the same walk on one
    Redis (the misses of the silent monitors included)."""
    source = cluster.master_of_slot(0)
    target = next(port for port in cluster.masters() if port != source)
    moved = range(0, 3000)
    assert all(cluster.master_of_slot(slot) == source for slot in (0, 2999))
    active = _ids_in(moved, 10, "busy") + _ids_in(range(8000, 16384), 2, "far")
    silent = _ids_in(moved, 3, "quiet") + _ids_in(range(8000, 16384), 1, "still")
    reshard = cluster.reshard_async(len(moved), source, target)
    try:
        started = time.monotonic()
        steps, on_cluster, recorded, acknowledged, during = await _walk(
            cluster.url, tmp_path, active, silent, reshard=reshard
        )
        took = time.monotonic() - started
    finally:
        cluster.finish_reshard(reshard)
    # The reshard moved the slots of the monitors while they were driven.
    assert all(cluster.master_of_slot(_shard_slot(m)) == target for m in active[:10] + silent[:3])
    assert during >= 3, f"only {during} steps ran during the reshard"
    _, on_one_redis, _, _, _ = await _walk(redis_server.url, tmp_path, active, silent, steps=steps)
    assert on_cluster == on_one_redis
    for monitor_id in active:
        assert recorded[monitor_id] == collections.Counter(acknowledged[monitor_id]), monitor_id
        assert set(recorded[monitor_id].values()) == {1}
        assert on_cluster[monitor_id][0].get("ok") == steps
    for monitor_id in silent:
        assert on_cluster[monitor_id][0].get("missed", 0) >= steps * 20 // 60 - 1, on_cluster[monitor_id]
    print(f"\ncluster reshard under load: {len(moved)} slots moved; {during} of {steps} steps "
          f"({steps * len(active) * 2} check-ins, half of them retries) ran during it, in {took:.1f}s")


async def test_a_primary_killed_fails_over_and_loses_no_acknowledged_ping(
    aiohttp_server, app_settings, tmp_path, monkeypatch
):
    """SIGKILL the primary that holds the monitor's slot: cronmon answers
    503 (never hangs, never another 5xx) until the cluster promoted one of
    its replicas (cluster-node-timeout 1 s), then 200; every check-in
    answered 200, before and after, is in the new primary's history exactly
    once (WAIT 1 per batch: nothing acknowledged was on the old primary
    alone). Two replicas a primary, so the promoted one still has one to
    WAIT for; with one, every write after the failover would be refused
    until a replica is back (the README says so)."""
    cluster = LocalCluster(tmp_path / "cluster", replicas_per_master=2).start()
    try:
        await _kill_the_primary_of_beat(cluster, aiohttp_server, app_settings, tmp_path, monkeypatch)
    finally:
        cluster.stop()


async def _kill_the_primary_of_beat(cluster, aiohttp_server, app_settings, tmp_path, monkeypatch):
    app, url = await serve(aiohttp_server, app_settings, tmp_path, monkeypatch, cluster.url)
    primary = cluster.master_of_slot(_shard_slot("beat"))
    replicas = cluster.replicas_of(primary)
    run = await ping_through_a_kill(url, lambda: cluster.kill(primary))
    assert cluster.master_of_slot(_shard_slot("beat")) in replicas
    await acknowledged_once(app, run.answers)
    print(f"\ncluster primary kill: {run.summary()}")


def test_serve_runs_on_a_cluster(cluster, tmp_path):
    """`cronmon serve --redis-url redis+cluster://...` as a real process:
    ready, takes a ping from curl, exports it at /metrics."""
    config = write_config(tmp_path, "monitors:\n  - {id: nightly, schedule: {cron: '0 3 * * *'}}\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "data"), "--redis-url", cluster.url, "--workers", "1"],
        env={"PATH": "/usr/bin:/bin", "CRONMON_PING_KEY": PING_KEY}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "cronmon on a cluster did not become ready"
            time.sleep(0.1)
        result = subprocess.run(
            ["curl", "-fsS", "-m", "10", "--retry", "5", f"http://127.0.0.1:{port}/ping/{PING_KEY}/nightly"],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        last_success = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith("cronmon_last_success_timestamp_seconds{") and 'monitor="nightly"' in line]
        assert last_success and last_success[0] > 0, metrics[:2000]
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    assert "Traceback" not in out, out


async def test_active_checks_never_reach_a_cluster_node_the_url_does_not_name(cluster, tmp_path):
    """A check of a replica's port (not in the URL: the store found it in
    the slot map) is refused as cronmon's own Redis before any connection,
    like one of a seed node."""
    from exporter.probes import Prober, make_client

    seeds = set(cluster.startup_ports())
    others = [port for port in cluster.all_ports() if port not in seeds]
    assert others, "the cluster has replicas the URL does not name"
    text = "monitors:\n" + "".join(
        f"  - {{id: node{port}, http: {{url: 'http://127.0.0.1:{port}/', interval: 10s, slow: 1s, timeout: 2s}}}}\n"
        for port in [*others, next(iter(seeds))]
    )
    store = Store(connect(cluster.url), f"t{uuid.uuid4().hex[:12]}", StoreLimits())
    core = Core(store, registry_from(write_config(tmp_path, text), tmp_path), time.time)
    prober = Prober(core, forbidden=_redis_endpoints(cluster.url))
    try:
        await prober.sync()  # the first store call learns the slot map
        async with make_client(4) as client:
            for monitor in core.registry.monitors.values():
                checkin, _ = await prober.check(client, monitor)
                assert checkin.kind is Kind.FAIL and "cronmon's own Redis" in (checkin.message or ""), (
                    monitor.id, checkin.message
                )
    finally:
        await store.close()
