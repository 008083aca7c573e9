"""The store: the only module that speaks Redis; it implements
storage.StateStore (whose docstrings are the contracts).

Key layout on one server (prefix configurable, default ``cronmon``; on a
cluster the same keys carry a shard's hash tag, see keyspace.py). Every key
of one monitor carries the monitor id as its hash tag, so a Lua script can
update all of them atomically::

    cronmon:{<id>}:state     hash: timestamps, accounting, thresholds, version
    cronmon:{<id>}:runs      hash: open run id -> {"s": start, "a": anonymous, "t": timed out}
    cronmon:{<id>}:tmo       zset: open run id -> instant it passes max_runtime
    cronmon:{<id>}:closed    zset: recently closed client run ids (dedupes retried starts, completions)
    cronmon:{<id>}:abandoned zset: timed-out runs given up when the job ran again -> start
    cronmon:{<id>}:idem      zset: idempotency keys of recent check-ins -> when recorded
    cronmon:{<id>}:counters  hash: check-ins by kind (c:<kind>, a completion c:<kind>:<outcome>),
                             other outcomes (o:<outcome>), duration histogram
    cronmon:{<id>}:history   list: newest-first events, capped
    cronmon:{<id>}:logs      hash: event seq -> log body, capped via :logids
    cronmon:{<id>}:meta      hash: last numeric meta values, capped in count
    cronmon:{<id>}:uptime    hash: outcomes per UTC hour (48h) and day (31d)
    cronmon:{<id>}:audit     list: API changes to the monitor, newest first, capped
    cronmon:due              zset: monitor id -> when the sweeper must look at it
    cronmon:changes          zset: monitor id -> feed sequence number of its latest change
    cronmon:changes:seq      the feed's sequence counter (see changes_since)
    cronmon:monitors         hash: API-created monitor id -> definition (json)
    cronmon:monitors:revision  bumped on every definition change
    cronmon:monitors:changes   zset: API monitor id -> revision of its latest change (deletes too)
    cronmon:documents:<name>   hash: id -> small API document (CrossCheck flight groups)
    cronmon:probes             hash: active monitor id -> its check's fingerprint (url, interval, ...)
    cronmon:probes:schedule    zset: active monitor id -> when its next check is due

Where Redis is: the embedded server (no URL), one server (redis://,
rediss://, unix://), a primary found through Sentinel
(redis+sentinel://host:port[,host:port...]/<service>[/db]) or a Redis
Cluster (redis+cluster://host:port[,host:port...]); see connect.

Every check-in is one round trip (record.lua). The deadline index and the
change feed are updated inside the same script, which keeps them exact
and race-free everywhere: on a cluster the monitor's shard of each index
is in the monitor's slot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast
from urllib.parse import parse_qs, unquote

import hiredis
import orjson
import redis.asyncio as redis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot

from .errors import StoreUnavailable
from .evaluate import ArrivalPlan, SweepPlan
from .keyspace import Cursor, Keyspace
from .model import CheckIn, Details, Facts, Monitor, OpenRun, Outage, Outcome
from .redis_lane import PreparedCall, ScriptLane
from .rules import is_bad, too_short_outcome
from .storage import DURATION_BUCKETS, Quota, RecordResult, StoreLimits

log = logging.getLogger(__name__)



# The stored fingerprint of a monitor the config no longer declares.
REMOVED_FINGERPRINT = "removed"

# Outages are kept while a slot they forgive can still be swept (sweeps keep
# every monitor's accounting near now; 35 days covers the longest uptime
# window), and at most this many (a flapping Redis must not grow the list
# every miss decision reads).
OUTAGES_KEPT_SECONDS = 35 * 86400
OUTAGES_KEPT = 100


_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    OSError,
    # A cluster that is failing over or resharding: CLUSTERDOWN, a slot
    # no live primary serves, TRYAGAIN (a multi-key command on a slot in
    # the middle of a migration) still answered after redis-py's retries,
    # a redirection it could not follow. The command did not run.
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    redis_errors.AskError,
    redis_errors.SlotNotCoveredError,
    redis_errors.RedisClusterException,
)


def _unavailable_message(exc: Exception) -> str:
    if isinstance(exc, MasterNotFoundError):
        # redis-py appends the full repr of each unreachable sentinel's client
        # (kilobytes of it) to the message: keep its sentence and a count.
        text, _, errors = str(exc).partition(" : ")
        unreachable = f" ({errors.count(' - ')} sentinel(s) unreachable)" if errors else ""
        return f"store unavailable: {type(exc).__name__}: {text}{unreachable}"
    return f"store unavailable: {type(exc).__name__}: {exc}"


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, (redis_errors.CrossSlotTransactionError, redis_errors.InvalidPipelineStack)):
        return exc  # a bug in how cronmon names its keys, never an outage
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailable(_unavailable_message(exc))
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith("MISCONF"):
        # Redis refuses writes because it cannot persist: nothing was written.
        return StoreUnavailable(_unavailable_message(exc))
    return exc


class _Batcher:
    """Sends the scripts called in one turn of the event loop as one
    pipeline: check-ins that arrive together cost one Redis round trip and
    one pooled connection, not one each.

    Each script still runs atomically on its own and replies on its own, in
    the order called; the pipeline is not a transaction, so batching
    changes no semantics. A script Redis does not have yet (NOSCRIPT: it
    did not run) is loaded and its call sent again. A connection failure
    fails every call of the batch with StoreUnavailable (their scripts may
    or may not have run, exactly as for a single call whose reply is lost).
    """

    def __init__(self, client: redis.Redis | RedisCluster, limit: int = 256, wait: bool = True):
        self.client = client
        self.limit = limit
        # Sentinel and cluster: how many replicas must hold a batch's writes
        # before they are acknowledged (WAIT); None on one server and for
        # a batcher of reads.
        self._wait = _wait_policy(client) if wait else None
        self._pending: list[tuple[Any, list, list, asyncio.Future]] = []
        self._scheduled = False
        self._sending: set[asyncio.Task] = set()  # the loop keeps only weak references

    def call(self, script: Any, keys: list, args: list) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[: self.limit], self._pending[self.limit :]
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list) -> None:
        try:
            replies = await self._execute(batch)
            missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
            if missing:
                for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                    await self.client.script_load(script.script)
                for i, reply in zip(missing, await self._execute([batch[i] for i in missing])):
                    replies[i] = reply
        except Exception as exc:
            error = _translate(exc)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (*_, future), reply in zip(batch, replies):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(_translate(reply))
            else:
                future.set_result(reply)

    async def _execute(self, batch: list) -> list:
        nodes: list[ClusterNode | None] = [None]
        targets: list[dict[str, Any]] = [{}] * len(batch)
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()  # the slot map (read once, again after a failover)
            # Every key of a script is in one slot (keyspace.py): the node of
            # its first key, given to redis-py, spares it hashing all 16 keys
            # of each script to find that out (a third of a batch's CPU). A
            # MOVED or ASK reply is still followed by slot.
            targets = [{"target_nodes": _primary_of(self.client, keys[0])} for _, keys, _, _ in batch]
            nodes = list({id(t["target_nodes"]): t["target_nodes"] for t in targets}.values())
        async with self.client.pipeline(transaction=False) as pipe:
            for (script, keys, args, _), target in zip(batch, targets):
                # (execute_command: redis-py blocks the evalsha method in cluster
                # pipelines, not the command.)
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **target)
            if self._wait is None or self._wait[0] == 0:
                return await pipe.execute(raise_on_error=False)
            # WAIT returns once `replicas` replicas hold every write sent
            # before it on the same connection (or the timeout passed): in
            # the same round trip, after the scripts. On a cluster, one WAIT
            # per primary the batch went to (the pipeline sends each node's
            # commands in order on one connection). A script redirected
            # during a reshard (MOVED/ASK) is resent on its own after its
            # node's WAIT: it is acknowledged on the primary's word alone.
            replicas, timeout_ms = self._wait
            for node in nodes:
                pipe.execute_command("WAIT", replicas, timeout_ms, **({"target_nodes": node} if node else {}))
            replies = await pipe.execute(raise_on_error=False)
            replies, acks = replies[: len(batch)], replies[len(batch) :]
            for acked in acks:
                if isinstance(acked, Exception):
                    raise acked
                if int(acked) < replicas:
                    # Applied on the primary only: a failover now could lose
                    # it, so it is not acknowledged (503; the retry is a
                    # duplicate).
                    raise redis_errors.ConnectionError(
                        f"only {acked} of {replicas} replica(s) confirmed the write within {timeout_ms} ms"
                    )
            return replies


class _LaneCalls:
    """_Batcher's contract over the store's fast lane (redis_lane.py), for
    one server without TLS: the calls of one loop turn leave together (a
    write per redis_lane.FLUSH_AT calls) at a fraction of redis-py's CPU.
    Never where a batch must WAIT for
    replicas (ScriptLane.for_client gives no lane for Sentinel or a
    cluster)."""

    def __init__(self, client: redis.Redis, lane: ScriptLane):
        self.client, self.lane = client, lane

    # (call and call_prepared hand back _reply's coroutine rather than
    # await it: one coroutine frame fewer on every check-in.)
    def call(self, script: Any, keys: list, args: list) -> Awaitable[Any]:
        return self._reply(script, lambda: self.lane.call(script.sha, keys, args))

    def call_prepared(self, script: Any, head: PreparedCall, args: tuple[bytes, ...]) -> Awaitable[Any]:
        """call() of the EVALSHA of `script` that `head` begins (made for
        script.sha), completed by `args`."""
        return self._reply(script, lambda: self.lane.call_prepared(head, args))

    async def _reply(self, script: Any, send: Callable[[], asyncio.Future]) -> Any:
        try:
            reply = await send()
            if isinstance(reply, Exception) and _is_noscript(reply):  # it did not run: load it, call again
                await self.client.script_load(script.script)
                reply = await send()
        except Exception as exc:
            raise _translate(exc) from exc
        if isinstance(reply, Exception):
            raise _translate(reply)
        return reply


class _RoutedReads:
    """The reads Store._chunks queues, each sent straight to its key's node
    on a cluster (see Store._routed)."""

    def __init__(self, pipe: Any, routed: Callable[[str], dict[str, Any]]):
        self.pipe, self.routed = pipe, routed
        self._last_key = ""

    def hgetall(self, key: str) -> None:
        self._last_key = key
        self.pipe.execute_command("HGETALL", key, **self.routed(key))

    def hget(self, key: str, field: str) -> None:
        self._last_key = key
        self.pipe.execute_command("HGET", key, field, **self.routed(key))

    def lrange(self, key: str, start: int, end: int) -> None:
        self._last_key = key
        self.pipe.execute_command("LRANGE", key, start, end, **self.routed(key))

    def nothing(self) -> None:
        """A placeholder reply (an empty string), from the node of the last key read."""
        self.pipe.execute_command("ECHO", "", **self.routed(self._last_key))


def _wait_policy(client: Any) -> tuple[int, int] | None:
    if isinstance(client, _Cluster):
        return client.wait_replicas, client.wait_timeout_ms
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, _SentinelPool):
        return pool.wait_replicas, pool.wait_timeout_ms
    return None


def _primary_of(client: RedisCluster, key: str) -> ClusterNode:
    """The primary serving `key`'s slot, from the client's slot map."""
    node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
    if node is None:
        raise redis_errors.SlotNotCoveredError(f"no primary serves the slot of {key!r}")
    return node


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, redis_errors.NoScriptError) or (
        isinstance(reply, redis_errors.ResponseError) and str(reply).startswith("NOSCRIPT")
    )


def _script(name: str, constants: str = "") -> str:
    """lua/<name>.lua after the shared helpers, and `constants` (Lua)."""
    common = resources.files("exporter").joinpath("lua/common.lua").read_text()
    return common + "\n" + constants + resources.files("exporter").joinpath(f"lua/{name}.lua").read_text()


def _lua_literal(value: Any) -> str:
    """A number, a list of numbers or a table of those as a Lua constant."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{name} = {_lua_literal(item)}" for name, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(_lua_literal(item) for item in value) + "}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number for a Lua constant: {value!r}")
    return repr(value)


def record_script(limits: StoreLimits) -> str:
    """record.lua with the store's limits and the duration histogram's
    buckets written in as Lua constants (LIMITS, duration_buckets()):
    decoded from json arguments they were ~20 numbers for strtod on every
    check-in. A store with other limits loads a script of its own (another
    SHA1), so replicas with different limits never share one."""
    constants = _lua_literal({
        "history": limits.history, "logs": limits.logs, "meta_keys": limits.meta_keys,
        "open_runs": limits.open_runs, "closed_runs": limits.closed_runs,
        "idempotency_keys": limits.idempotency_keys, "idempotency_window": limits.idempotency_window,
    })
    return _script("record", (
        "-- The store's limits (store.record_script).\n"
        f"local LIMITS = {constants}\n"
        f"local function duration_buckets() return {_lua_literal(DURATION_BUCKETS)} end\n"
    ))


_DEFAULT_LIMITS = StoreLimits()


class Store:
    """cronmon's state in Redis: the implementation of storage.StateStore
    (the contract of every method is there); the rest of cronmon never
    sees a key or a command (see Keyspace for where each key lives, on one
    server and on a cluster)."""

    def __init__(
        self, client: redis.Redis | RedisCluster, prefix: str = "cronmon", limits: StoreLimits = _DEFAULT_LIMITS
    ):
        self.client = client
        self.prefix = prefix
        self.limits = limits
        self.keys = Keyspace(prefix, cluster=isinstance(client, RedisCluster))
        self._record = client.register_script(record_script(limits))
        self._sweep = client.register_script(_script("sweep"))
        self._resync = client.register_script(_script("resync"))
        self._define = client.register_script(_script("define"))
        self._quota = client.register_script(_script("quota"))
        self._probe_sync = client.register_script(_script("probe_sync"))
        self._probe_claim = client.register_script(_script("probe_claim"))
        self._heartbeat = client.register_script(_script("heartbeat"))
        self._history = client.register_script(_script("history"))
        self._heartbeat_key = self.keys.shared("heartbeat")
        self._outages_key = self.keys.shared("outages")
        self._probes_key = self.keys.shared("probes")
        self._probe_schedule_key = self.keys.shared("probes:schedule")
        self._lane = ScriptLane.for_client(client)
        self._batch: _Batcher | _LaneCalls
        self._unwaited: _Batcher | _LaneCalls
        # With a lane, check-ins go as PreparedCalls (see _record_constants).
        self._lane_calls: _LaneCalls | None = None
        if self._lane is not None:
            self._batch = self._unwaited = self._lane_calls = _LaneCalls(cast(redis.Redis, client), self._lane)
        else:
            self._batch = _Batcher(client)
            # Reads, and the writes that need no replica's word (heartbeats,
            # the active-check schedule): batched the same way, without WAIT.
            self._unwaited = _Batcher(client, wait=False)
        self._facts = client.register_script(_script("facts"))
        self._record_cache: dict[str, _RecordConstants] = {}

    def _record_constants(self, monitor: Monitor) -> _RecordConstants:
        """record.lua's keys and settings for `monitor` (and with a lane,
        its EVALSHA up to the check-in, encoded), made once per
        Monitor object (a reload or API change makes a new object, so they
        never go stale): a ping would otherwise format 16 key names anew."""
        cached = self._record_cache.get(monitor.id)
        if cached is None or cached.monitor is not monitor:
            k, m = self.key, monitor.id
            keys = [
                k(m, "state"), k(m, "runs"), k(m, "tmo"), k(m, "closed"), k(m, "counters"),
                k(m, "history"), k(m, "logs"), k(m, "logids"), k(m, "meta"), *self._indexes(m, "due"),
                k(m, "ratelimit"), k(m, "uptime"), *self._indexes(m, "changes", "changes:seq"), k(m, "abandoned"),
                k(m, "idem"),
            ]
            settings = _monitor_settings(monitor)
            # The check-in's numbers, the rest of it and its log follow:
            # record.lua's ARGV 3 to 5.
            prepared = PreparedCall.of(self._record.sha, keys, [settings, m], 3) if self._lane_calls else None
            cached = self._record_cache[monitor.id] = _RecordConstants(monitor, keys, settings, prepared)
        return cached

    def key(self, monitor_id: str, part: str) -> str:
        return self.keys.monitor(monitor_id, part)

    async def _routed(self) -> Callable[[str], dict[str, Any]]:
        """For commands over many shards of an index: on a cluster, the
        node serving a key, for pipe.execute_command(..., **routed(key)),
        so redis-py need not parse each of 256 commands to find it (most
        of such a read's CPU); MOVED and ASK are still followed. Nothing on
        one server."""
        if not isinstance(self.client, RedisCluster):
            return lambda key: {}
        client = await self.client.initialize()
        return lambda key: {"target_nodes": _primary_of(client, key)}

    def _indexes(self, monitor_id: str, *names: str) -> list[str]:
        """The shards holding `monitor_id` of these cross-monitor indexes."""
        return [self.keys.index_of(monitor_id, name) for name in names]

    def servers(self) -> tuple[tuple[str, int], ...]:
        """On a cluster, every node the slot map names (address, port):
        active checks must not reach them either. Empty elsewhere (the URL
        names the servers)."""
        if not isinstance(self.client, RedisCluster):
            return ()
        found = set()
        for node in self.client.get_nodes():
            try:
                found.add((str(ipaddress.ip_address(node.host)), int(node.port)))
            except ValueError:
                continue  # a name: cluster nodes announce addresses
        return tuple(sorted(found))

    async def close(self) -> None:
        if self._lane is not None:
            await self._lane.aclose()
        await self.client.aclose()
        pool = getattr(self.client, "connection_pool", None)
        if isinstance(pool, _SentinelPool):
            await pool.sentinel_manager.aclose()  # its connections to the sentinels

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except Exception as exc:
            raise _translate(exc) from exc

    async def record(
        self,
        monitor: Monitor,
        checkin: CheckIn,
        plan: ArrivalPlan,
        generated_run_id: str,
        outcome: Outcome | None = None,
    ) -> RecordResult:
        """Record `checkin`; `outcome` is what a completion records (see
        rules.completion_outcome), None for a start or a log."""
        # One named table per concern (the Lua side reads fields by name);
        # absent values are left out, which Lua sees as nil. (Spelled out
        # field by field: this runs on every ping.)
        extra: dict[str, Any] = {}
        if checkin.source_ip:
            extra["ip"] = checkin.source_ip
        if checkin.user_agent:
            extra["ua"] = checkin.user_agent
        if checkin.release:
            extra["release"] = checkin.release
        if checkin.environment:
            extra["environment"] = checkin.environment
        if checkin.metadata:
            extra["metadata"] = dict(checkin.metadata)
        # (Enum members as they are: a StrEnum is its value in JSON, and
        # .value is a descriptor call on every ping.)
        fields: dict[str, Any] = {"kind": checkin.kind, "generated_run_id": generated_run_id}
        if checkin.run_id:
            fields["run_id"] = checkin.run_id
        if checkin.exit_code is not None:
            fields["exit_code"] = checkin.exit_code
        if checkin.duration is not None:
            fields["duration"] = checkin.duration
        if checkin.message:
            fields["message"] = checkin.message
        if checkin.meta:
            fields["meta"] = dict(checkin.meta)
        if extra:
            fields["extra"] = extra
        if checkin.annotations:
            fields["annotations"] = dict(checkin.annotations)
        if checkin.probe_status_code is not None:
            fields["probe_code"] = checkin.probe_status_code
        if checkin.idempotency_key:
            fields["idempotency_key"] = checkin.idempotency_key
        if outcome is not None:
            fields["outcome"], fields["bad"] = outcome, is_bad(outcome)
        short = too_short_outcome(outcome) if outcome is not None and monitor.min_runtime else None
        if short is not None:
            fields["short_outcome"], fields["short_bad"] = short, is_bad(short)
        if checkin.log_truncated:
            fields["log_truncated"] = True
        constants = self._record_constants(monitor)
        # A NaN must never reach the script: _checkin_json and _doubles
        # refuse it here, before anything is written.
        encoded = _checkin_json(fields)
        numbers = _doubles(
            checkin.received_at, 1.0 if plan.anchored else 0.0, *plan.first, *itertools.chain(*plan.candidates)
        )
        log = checkin.log.encode("utf-8") if checkin.log else b""
        if constants.prepared is not None and self._lane_calls is not None:
            reply = await self._lane_calls.call_prepared(self._record, constants.prepared, (numbers, encoded, log))
        else:
            args = [constants.settings, monitor.id, numbers, encoded, log]
            reply = await self._batch.call(self._record, constants.keys, args)
        # One text, its fields on lines, the run id last (see record.lua).
        status, _, rest = reply.partition("\n")
        if status == "ok":
            seq, duration, run_id = rest.split("\n", 2)
            return RecordResult("ok", int(seq), run_id or None, float(duration) if duration else None)
        if status == "duplicate":
            return RecordResult("duplicate", run_id=rest)
        if status == "slot":
            return RecordResult("slot", slot=float(rest))
        if status == "limited":
            return RecordResult("limited", retry_after=max(1, math.ceil(int(rest) / 1000)))
        return RecordResult("sweep")

    async def facts(self, monitor_id: str) -> Facts:
        """One monitor's facts, read atomically (facts.lua; reads made in
        the same turn of the event loop share a round trip)."""
        keys = [self.key(monitor_id, part) for part in ("state", "runs", "counters", "meta")]
        replies = await self._unwaited.call(self._facts, keys, [])
        return _parse_facts(*(dict(zip(flat[::2], flat[1::2])) for flat in replies))

    async def snapshot(self, monitor_ids: Iterable[str]) -> dict[str, Facts]:
        """Facts of many monitors, pipelined (for /metrics).

        Not one transaction: each monitor's reads are consecutive, and a
        scrape that straddles a check-in shows it either way.
        """
        found: dict[str, Facts] = {}
        # Parsed chunk by chunk, between the round trips: parsing the facts
        # of 10,000 monitors in one go held the event loop for ~200 ms.
        async for part, replies in self._chunks(list(monitor_ids), self._queue_facts):
            for i, monitor_id in enumerate(part):
                found[monitor_id] = _parse_facts(*replies[i * 4 : i * 4 + 4])
        return found

    async def _pipelined(self, ids: list[str], queue: Callable[[Any, str], None]) -> list:
        """Queue each monitor's reads on pipelines; all replies, in order."""
        return [reply async for _, replies in self._chunks(ids, queue) for reply in replies]

    async def _chunks(
        self, ids: list[str], queue: Callable[[Any, str], None], chunk: int = 250
    ) -> AsyncIterator[tuple[list[str], list]]:
        """(monitor ids, their replies), one pipelined round trip per
        `chunk` monitors, so the event loop gets its turn between them."""
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            try:
                routed = await self._routed()
                async with self.client.pipeline(transaction=False) as pipe:
                    reads = _RoutedReads(pipe, routed)
                    for monitor_id in part:
                        queue(reads, monitor_id)
                    replies = await pipe.execute()
            except Exception as exc:
                raise _translate(exc) from exc
            yield part, replies

    def _queue_facts(self, pipe: Any, monitor_id: str) -> None:
        for part in ("state", "runs", "counters", "meta"):
            pipe.hgetall(self.key(monitor_id, part))

    async def apply_sweep(self, monitor: Monitor, plan: SweepPlan, now: float) -> bool:
        """Apply `plan`; False if the monitor changed since it was read."""
        k, m = self.key, monitor.id
        try:
            reply = await self._batch.call(
                self._sweep,
                [
                    k(m, "state"), k(m, "runs"), k(m, "tmo"), k(m, "counters"), k(m, "history"),
                    *self._indexes(m, "due"), k(m, "uptime"), *self._indexes(m, "changes", "changes:seq"),
                ],
                [_named({
                    "monitor": m,
                    "now": now,
                    "expected_version": plan.expected_version,
                    "missed": plan.missed,
                    "accounted_through": plan.accounted_through,
                    "next_slot": plan.next_slot,
                    "timed_out": list(plan.timed_out_runs),
                    "miss_after": monitor.miss_after,  # the deadline index and the sweep-first rule
                    "failure_threshold": monitor.failure_threshold,
                    "recovery_threshold": monitor.recovery_threshold,
                    "history_cap": self.limits.history,
                    "forgiven": plan.forgiven,
                    "lost": list(plan.lost_runs),
                    "bad": _SWEEP_BAD,
                })],
            )
        except Exception as exc:
            raise _translate(exc) from exc
        return reply[0] == "ok"

    async def resync(
        self, monitor: Monitor, expected_version: int, accounted_through: float | None, next_slot: float | None,
        clear: bool = False,
    ) -> bool:
        """Compare-and-set re-base: the new accounting (None: keep it;
        `clear`: forget it, nothing is expected yet), the run timeouts and
        the deadline index redone, the fingerprint stored."""
        k, m = self.key, monitor.id
        try:
            reply = await self._batch.call(
                self._resync,
                [k(m, "state"), k(m, "runs"), k(m, "tmo"), *self._indexes(m, "due", "changes", "changes:seq")],
                [_named({
                    "monitor": m,
                    "expected_version": expected_version,
                    "accounting": "clear" if clear else ("keep" if accounted_through is None else "set"),
                    "accounted_through": accounted_through,
                    "next_slot": next_slot,
                    "miss_after": monitor.miss_after,  # the deadline index and the sweep-first rule
                    "max_runtime": _max_runtime(monitor),
                    "fingerprint": monitor.schedule_fingerprint(),
                })],
            )
        except Exception as exc:
            raise _translate(exc) from exc
        return reply[0] == "ok"

    async def changes_since(self, cursor: Cursor | None) -> tuple[Cursor, list[str] | None]:
        """The change feed: (the feed's position now, the monitors changed
        after `cursor`), in one round trip. The list is None when the
        caller must re-read everything: it has no cursor yet, or the feed
        went backwards (Redis lost its data or was flushed)."""
        return await self._read_feed("changes:seq", "changes", cursor)

    async def _read_feed(self, counter: str, feed: str, since: Cursor | None) -> tuple[Cursor, list[str] | None]:
        """A feed is, per shard, a counter and a zset of id -> the counter's
        value at the id's latest change: (the position now, ids changed
        after `since`, or None when everything must be read: no `since`
        yet, or a counter went backwards).

        Each shard is read with two commands that need not run atomically,
        or even in order (a cluster may redirect one of them during a
        reshard): the new position is the highest score seen, so a change
        that lands after the read has a higher one and is listed next time;
        the counter is only compared with `since` to notice lost data."""
        shards = self.keys.shards
        if since is not None and len(since) != len(shards):
            since = None  # a cursor of another layout: start over
        try:
            routed = await self._routed()
            async with self.client.pipeline(transaction=False) as pipe:
                for shard in shards:
                    key = self.keys.index(shard, counter)
                    pipe.execute_command("GET", key, **routed(key))
                    if since is not None:
                        key = self.keys.index(shard, feed)
                        pipe.execute_command("ZRANGEBYSCORE", key, f"({since[shard]}", "+inf", "WITHSCORES",
                                             withscores=True, score_cast_func=float, **routed(key))
                replies = await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc
        if since is None:
            return tuple(int(raw or 0) for raw in replies), None
        position, changed = list(since), []
        for shard in shards:
            counter_now, entries = int(replies[2 * shard] or 0), replies[2 * shard + 1]
            if counter_now < since[shard]:
                return tuple(int(raw or 0) for raw in replies[::2]), None
            for monitor_id, score in entries:
                changed.append(monitor_id)
                position[shard] = max(position[shard], int(score))
        return tuple(position), changed

    async def fingerprints(self, monitor_ids: list[str]) -> dict[str, str | None]:
        """Each monitor's stored schedule fingerprint (None: none yet)."""
        replies = await self._pipelined(monitor_ids, lambda pipe, m: pipe.hget(self.key(m, "state"), "fp"))
        return dict(zip(monitor_ids, replies))

    async def due(self, now: float, limit: int) -> list[str]:
        """Monitors whose next deadline or run timeout is at or before
        `now`, earliest first (at most `limit`)."""
        try:
            routed = await self._routed()
            async with self.client.pipeline(transaction=False) as pipe:
                for shard in self.keys.shards:
                    key = self.keys.index(shard, "due")
                    pipe.execute_command("ZRANGEBYSCORE", key, "-inf", repr(now), "LIMIT", 0, limit, "WITHSCORES",
                                         withscores=True, score_cast_func=float, **routed(key))
                replies = await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc
        if len(replies) == 1:
            return [monitor_id for monitor_id, _ in replies[0]]
        merged = sorted((entry for reply in replies for entry in reply), key=lambda entry: entry[1])
        return [monitor_id for monitor_id, _ in merged[:limit]]

    async def forget_due(self, monitor_id: str) -> None:
        """Drop a monitor that is no longer configured from the index. Its
        data stays, so counters continue if it comes back, but its
        fingerprint is marked REMOVED_FINGERPRINT: slots that passed while
        it was not configured were never expected of it, so its return
        re-bases its accounting (Core.resync) instead of counting them."""
        try:
            # One slot (the keyspace puts the index shard with the monitor),
            # so this is a transaction on a cluster too.
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.index_of(monitor_id, "due"), monitor_id)
                pipe.hset(self.key(monitor_id, "state"), "fp", REMOVED_FINGERPRINT)
                await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc

    # -- API-created monitors ------------------------------------------------

    async def monitors_revision(self) -> Cursor:
        """Moves on with every change to an API monitor's definition."""
        position, _ = await self.definition_changes(None)
        return position

    async def monitor_definitions(self) -> tuple[Cursor, dict[str, dict]]:
        """Every API monitor's definition, and the revision they are at
        (read first, in a round trip of its own, so a change made while the
        definitions are read is listed again by the next definition_changes)."""
        revision, _ = await self.definition_changes(None)
        try:
            routed = await self._routed()
            async with self.client.pipeline(transaction=False) as pipe:
                for shard in self.keys.shards:
                    key = self.keys.index(shard, "monitors")
                    pipe.execute_command("HGETALL", key, **routed(key))
                replies = await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc
        return revision, {key: json.loads(value) for raw in replies for key, value in raw.items()}

    async def definition_changes(self, since: Cursor | None) -> tuple[Cursor, list[str] | None]:
        """(the definitions' revision now, the API monitors whose definition
        changed after revision `since`), in one round trip; None instead of
        a list when the caller must load them all (`since` None: nothing
        loaded yet; or Redis lost its data)."""
        return await self._read_feed("monitors:revision", "monitors:changes", since)

    async def definitions(self, monitor_ids: list[str]) -> dict[str, dict | None]:
        """Several API monitors' definitions in one round trip (None: deleted)."""
        if not monitor_ids:
            return {}
        groups = self.keys.by_shard(monitor_ids)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for shard, ids in groups.items():
                    pipe.hmget(self.keys.index(shard, "monitors"), ids)
                replies = await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc
        found = {m: value for ids, raw in zip(groups.values(), replies) for m, value in zip(ids, raw)}
        return {m: json.loads(found[m]) if found[m] is not None else None for m in monitor_ids}

    async def monitor_definition(self, monitor_id: str) -> dict | None:
        """One API monitor's definition (None: no such API monitor)."""
        try:
            raw = await self.client.hget(self.keys.index_of(monitor_id, "monitors"), monitor_id)
        except Exception as exc:
            raise _translate(exc) from exc
        return json.loads(raw) if raw is not None else None

    async def define_monitor(
        self, monitor_id: str, mode: str, definition: dict | None = None, audit: dict | None = None,
        quotas: Sequence[Quota] = (),
    ) -> str | tuple[str, int, int]:
        """mode create | update | delete; returns "ok", "exists" or "missing",
        or ("quota", index into `quotas`, ids it holds) when a create would
        go over a quota. Creating adds the id to each quota's set, deleting
        removes it (pass the same quotas). Deleting also deletes the
        monitor's state, counters, history and audit log. `audit` is
        appended to the monitor's audit log in the same script as the
        change, so a change is never without its entry."""
        data_keys = [self.key(monitor_id, part) for part in _MONITOR_PARTS] if mode == "delete" else []
        quota_keys = [self.keys.shared(f"quota:{quota.name}:{quota.owner}") for quota in quotas]
        # On a cluster the quota sets are in another slot than the monitor:
        # its places are taken first (quota.lua) and given back if the
        # create does not happen; a delete gives them back after it. (A
        # process killed between the two leaves a place taken, never the
        # limit passed.) On one server define.lua does both atomically.
        # The places are taken without WAIT (a WAIT that timed out would
        # leave them taken with no monitor); the monitor's own script is
        # WAIT-guarded.
        split = self.keys.cluster and bool(quotas)
        taken: list[str] = []
        try:
            if split and mode == "create":
                take = {"monitor": monitor_id, "mode": "take", "limits": [q.limit for q in quotas]}
                reply = await self._unwaited.call(self._quota, quota_keys, [_named(take)])
                if reply[0] == "quota":
                    return ("quota", int(reply[1]) - 1, int(reply[2]))
                taken = [key for key, added in zip(quota_keys, reply[1:]) if int(added)]
            in_script = [] if split else quota_keys
            indexes = self._indexes(
                monitor_id, "monitors", "monitors:revision", "due", "changes", "changes:seq", "monitors:changes"
            )
            change = {
                "monitor": monitor_id, "mode": mode,
                "definition": json.dumps(definition) if definition is not None else None,
                "audit": json.dumps(audit) if audit is not None else None,
                "audit_cap": self.limits.audit,
                "quota_limits": [] if split else [quota.limit for quota in quotas],
            }
            reply = await self._batch.call(
                self._define, [*indexes, self.key(monitor_id, "audit"), *in_script, *data_keys], [_named(change)]
            )
            if split and mode == "create" and reply[0] != "ok" and taken:
                await self._unwaited.call(self._quota, taken, [_named({"monitor": monitor_id, "mode": "give"})])
            if split and mode == "delete" and reply[0] == "ok":
                await self._unwaited.call(self._quota, quota_keys, [_named({"monitor": monitor_id, "mode": "give"})])
        except Exception as exc:
            raise _translate(exc) from exc
        if reply[0] == "quota":
            return ("quota", int(reply[1]) - 1, int(reply[2]))
        return reply[0]

    async def audit(self, monitor_id: str) -> list[dict]:
        """The monitor's audit log, newest first (at most limits.audit)."""
        try:
            raw = await self.client.lrange(self.key(monitor_id, "audit"), 0, self.limits.audit - 1)
        except Exception as exc:
            raise _translate(exc) from exc
        return [json.loads(item) for item in raw]

    async def details(
        self, monitor_ids: Iterable[str], *, audit: int = 0, history: int = 0
    ) -> dict[str, Details]:
        """For several monitors, in one round trip: facts, uptime buckets
        (see count_uptime in lua/common.lua), the newest `audit` audit
        entries and the newest `history` events."""
        def queue(pipe: Any, monitor_id: str) -> None:
            self._queue_facts(pipe, monitor_id)
            pipe.hgetall(self.key(monitor_id, "uptime"))
            pipe.lrange(self.key(monitor_id, "audit"), 0, audit - 1) if audit else pipe.nothing()
            last = self._history_last(0, history)
            pipe.lrange(self.key(monitor_id, "history"), 0, last) if last >= 0 else pipe.nothing()

        ids = list(monitor_ids)
        replies = await self._pipelined(ids, queue)
        found = {}
        for i, monitor_id in enumerate(ids):
            state, runs, counters, meta, uptime, audit_raw, history_raw = replies[i * 7 : i * 7 + 7]
            found[monitor_id] = Details(
                facts=_parse_facts(state, runs, counters, meta),
                uptime={name: int(value) for name, value in uptime.items() if name != "hour"},
                audit=[json.loads(item) for item in audit_raw or ()],
                history=[json.loads(item) for item in history_raw or ()],
            )
        return found

    # -- active checks ---------------------------------------------------

    async def sync_probes(self, probes: list[tuple[str, str, float]], removed: list[str] | None = None) -> int:
        """Make the shared probe schedule hold exactly these active monitors:
        (monitor id, fingerprint json with the interval as "i", first due);
        with `removed`, only put these in and take those out."""
        try:
            wanted = _strict_json([[m, fp, first] for m, fp, first in probes])
            args = [wanted] if removed is None else [wanted, json.dumps(list(removed))]
            return int(await self._unwaited.call(
                self._probe_sync, [self._probes_key, self._probe_schedule_key], args
            ))
        except Exception as exc:
            raise _translate(exc) from exc

    async def claim_probes(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Checks due at `now` (at most `limit`), each given to one caller
        only: (monitor id, when it was due)."""
        try:
            reply = await self._unwaited.call(
                self._probe_claim, [self._probes_key, self._probe_schedule_key], [_named({"now": now, "limit": limit})]
            )
        except Exception as exc:
            raise _translate(exc) from exc
        return [(reply[i], float(reply[i + 1])) for i in range(0, len(reply), 2)]

    # -- outages -----------------------------------------------------------

    async def heartbeat(self, now: float, gap: float) -> tuple[Outage, ...]:
        """Say that this process can take check-ins at `now`; a gap of more
        than `gap` seconds since the latest heartbeat of any process is
        recorded as an outage first. Returns the outages kept (those that
        ended in the last OUTAGES_KEPT_SECONDS, at most OUTAGES_KEPT)."""
        try:
            beat = {"now": now, "gap": gap, "forget_before": now - OUTAGES_KEPT_SECONDS, "keep": OUTAGES_KEPT}
            reply = await self._unwaited.call(self._heartbeat, [self._heartbeat_key, self._outages_key], [_named(beat)])
        except Exception as exc:
            raise _translate(exc) from exc
        return tuple(Outage(float(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2))

    # -- small documents of the APIs (CrossCheck's flight groups, ...) ------

    async def documents(self, collection: str) -> dict[str, dict]:
        try:
            raw = await self.client.hgetall(self.keys.shared(f"documents:{collection}"))
        except Exception as exc:
            raise _translate(exc) from exc
        return {cast(str, key): json.loads(value) for key, value in raw.items()}

    async def put_document(self, collection: str, document_id: str, document: dict) -> None:
        try:
            await self.client.hset(self.keys.shared(f"documents:{collection}"), document_id, json.dumps(document))
        except Exception as exc:
            raise _translate(exc) from exc

    async def delete_document(self, collection: str, document_id: str) -> bool:
        try:
            return bool(await self.client.hdel(self.keys.shared(f"documents:{collection}"), document_id))
        except Exception as exc:
            raise _translate(exc) from exc

    async def next_sequence(self, name: str) -> int:
        """1, 2, 3, ... per name, shared by all replicas (integer ids of APIs
        that have them)."""
        try:
            return int(await self.client.incr(self.keys.shared(f"sequence:{name}")))
        except Exception as exc:
            raise _translate(exc) from exc

    async def logs(self, monitor_id: str, seqs: list[int]) -> dict[int, str]:
        """Several events' logs in one round trip (missing ones left out)."""
        if not seqs:
            return {}
        try:
            values = await self.client.hmget(self.key(monitor_id, "logs"), [str(s) for s in seqs])
        except Exception as exc:
            raise _translate(exc) from exc
        return {seq: cast(str, value) for seq, value in zip(seqs, values) if value is not None}

    def _history_last(self, offset: int, count: int) -> int:
        """The last index a read of `count` events from `offset` takes:
        never past limits.history, beyond which entries only wait to be
        trimmed (push_history in lua/common.lua). Below `offset`: none."""
        return min(offset + count, self.limits.history) - 1

    async def history(self, monitor_id: str, offset: int = 0, count: int = 50) -> list[dict]:
        try:
            last = self._history_last(offset, count)
            if last < offset:
                return []
            raw = await self.client.lrange(self.key(monitor_id, "history"), offset, last)
        except Exception as exc:
            raise _translate(exc) from exc
        return [json.loads(item) for item in raw]

    async def history_page(
        self, monitor_id: str, *, limit: int, offset: int = 0, kinds: Iterable[str] | None = None,
        run: str | None = None, seq: int | None = None, before: int | None = None,
    ) -> tuple[list[dict], bool]:
        """Events newest first, filtered in Redis (history.lua): of `kinds`,
        of run `run`, the one numbered `seq`, those numbered below `before`;
        `offset` of them skipped, then up to `limit`. Returns (the page,
        whether more match after it)."""
        wanted: dict[str, Any] = {"limit": limit, "offset": offset, "cap": self.limits.history}
        for name, value in (("kinds", sorted(kinds) if kinds is not None else None), ("run", run),
                            ("seq", seq), ("before", before)):
            if value is not None:
                wanted[name] = value
        try:
            reply = await self._unwaited.call(self._history, [self.key(monitor_id, "history")], [json.dumps(wanted)])
        except Exception as exc:
            raise _translate(exc) from exc
        return [json.loads(item) for item in reply[1:]], reply[0] == 1

    async def log(self, monitor_id: str, seq: int) -> str | None:
        try:
            return cast(str | None, await self.client.hget(self.key(monitor_id, "logs"), str(seq)))
        except Exception as exc:
            raise _translate(exc) from exc


# sweep.lua's outcomes and whether each is bad (rules.BAD_OUTCOMES).
_SWEEP_BAD = {o.value: is_bad(o) for o in (Outcome.MISSED, Outcome.TIMEOUT)}


# json.dumps(value, allow_nan=False), without making an encoder per call
# (a check-in's arguments are encoded on every ping): a NaN or an infinity
# raises ValueError.
_strict_json = json.JSONEncoder(allow_nan=False).encode


def _checkin_json(fields: dict[str, Any]) -> bytes:
    """record.lua's check-in argument: what _strict_json makes (the same
    values for cjson), at a tenth of its CPU on every ping.

    orjson writes a NaN or an infinity as null instead of refusing it, so
    a null in its output (never in a plain ping's fields) sends the fields
    through _strict_json, which raises ValueError for those and keeps a
    real None as null; so does anything orjson refuses (a lone surrogate
    from a surrogate-escaped header, an int beyond 64 bits)."""
    try:
        encoded = orjson.dumps(fields)
    except TypeError:  # orjson.JSONEncodeError
        return _strict_json(fields).encode("utf-8")
    if encoded.find(b"null") >= 0:  # (find, not `in`: see fast_ping._read_head)
        return _strict_json(fields).encode("utf-8")
    return encoded


def _named(fields: dict[str, Any]) -> str:
    """A script's named argument table as json, absent (None) fields left
    out: Lua sees them as nil (cjson turns a null into a value that is
    true). A NaN must never reach a script (_strict_json refuses it)."""
    return _strict_json({name: value for name, value in fields.items() if value is not None})

# Every per-monitor key (see the layout at the top).
_MONITOR_PARTS = (
    "state", "runs", "tmo", "closed", "counters", "history", "logs", "logids", "meta", "ratelimit", "uptime",
    "abandoned", "idem",
)


@dataclass(frozen=True)
class _RecordConstants:
    """What record.lua is sent for a monitor on every check-in
    (Store._record_constants)."""

    monitor: Monitor
    keys: list[str]
    settings: bytes
    prepared: PreparedCall | None  # with a lane: EVALSHA up to the check-in


def _monitor_settings(monitor: Monitor) -> bytes:
    """What record.lua needs of a monitor's config: its ARGV 1."""
    max_runtime = _max_runtime(monitor)
    return _doubles(
        monitor.grace,
        monitor.miss_after,
        -1.0 if max_runtime is None else max_runtime,
        monitor.min_runtime or 0.0,
        monitor.failure_threshold,
        monitor.recovery_threshold,
        monitor.rate_limit[0] if monitor.rate_limit else 0,
        monitor.rate_limit[1] if monitor.rate_limit else 0,
    )


def _doubles(*values: float) -> bytes:
    """`values` as little-endian doubles, for a script's struct.unpack
    (no text for cjson to parse with strtod); a NaN or an infinity is
    refused (ValueError), as _strict_json refuses it."""
    if not all(map(math.isfinite, values)):
        raise ValueError(f"not a finite number among {values}")
    packer = _DOUBLES.get(len(values))
    if packer is None:
        packer = _DOUBLES[len(values)] = struct.Struct(f"<{len(values)}d")
    return packer.pack(*values)


_DOUBLES: dict[int, struct.Struct] = {}  # _doubles' packers, by count


def _max_runtime(monitor: Monitor) -> float | None:
    # Nothing times out while paused, so paused runs get no timeout entry.
    if monitor.max_runtime is None or monitor.paused:
        return None
    return monitor.max_runtime


def _float(raw: dict, name: str) -> float | None:
    value = raw.get(name)
    return float(value) if value is not None and value != "" else None


def _parse_facts(state: dict, runs: dict, counters: dict, meta: dict) -> Facts:
    open_runs = []
    for run_id, encoded in runs.items():
        run = json.loads(encoded)
        open_runs.append(OpenRun(run_id, float(run["s"]), run.get("a") == 1, run.get("t") == 1))
    open_runs.sort(key=lambda run: run.started)
    checkins: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    for name, value in counters.items():
        prefix, _, rest = name.partition(":")
        if prefix == "c":  # c:<kind>, or c:<kind>:<outcome> for completions (record.lua)
            kind, _, outcome = rest.partition(":")
            checkins[kind] = checkins.get(kind, 0) + int(value)
            if outcome:
                outcomes[outcome] = outcomes.get(outcome, 0) + int(value)
        elif prefix == "o":  # outcomes of no check-in (missed, timeout), and completions before 2026-12-07
            outcomes[rest] = outcomes.get(rest, 0) + int(value)
        elif prefix == "b":
            index = len(DURATION_BUCKETS) if rest == "inf" else int(rest) - 1
            buckets[index] = int(value)
    last_outcome = state.get("last_outcome")
    last_bad = state.get("last_bad")
    exit_code = state.get("last_exit")
    return Facts(
        version=int(state.get("v", 0)),
        first_checkin=_float(state, "first"),
        last_checkin=_float(state, "last"),
        last_start=_float(state, "last_start"),
        last_success=_float(state, "last_success"),
        last_failure=_float(state, "last_failure"),
        last_duration=_float(state, "last_duration"),
        last_exit_code=int(float(exit_code)) if exit_code is not None and exit_code != "" else None,
        last_outcome=Outcome(last_outcome) if last_outcome else None,
        last_bad_outcome=Outcome(last_bad) if last_bad else None,
        probe_last=_float(state, "probe_t"),
        probe_success=state.get("probe_ok") == "1",
        probe_duration=_float(state, "probe_dur"),
        probe_status_code=int(state["probe_code"]) if state.get("probe_code") else None,
        accounted_through=_float(state, "acc"),
        next_slot=_float(state, "next"),
        consecutive_bad=int(state.get("cbad", 0)),
        consecutive_good=int(state.get("cgood", 0)),
        alerting=state.get("alerting") == "1",
        fingerprint=state.get("fp"),
        open_runs=tuple(open_runs),
        checkins=checkins,
        outcomes=outcomes,
        duration_buckets=tuple(buckets),
        duration_sum=float(counters.get("dsum", 0) or 0),
        duration_count=int(counters.get("dcount", 0) or 0),
        meta={key: float(value) for key, value in meta.items()},
    )


class _HiredisPacking:
    """Pack commands with hiredis' C packer instead of redis-py's Python
    one: 3 µs instead of 30 µs for a check-in's 21-argument EVALSHA, which
    was the largest single cost of a ping. Same bytes on the wire (a test
    compares them)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])  # 'CONFIG GET' -> 'CONFIG', 'GET'
        return [hiredis.pack_command(args)]


_PACKING_CLASSES: dict[type, type] = {}


def _packing(base: type) -> type:
    """`base` (redis-py's connection class for the URL) packing with hiredis."""
    if base not in _PACKING_CLASSES:
        _PACKING_CLASSES[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return _PACKING_CLASSES[base]


# Connections per process. A check-in holds one for a single round trip,
# so a few dozen serve thousands of concurrent clients; beyond that,
# requests queue for a free connection instead of failing.
DEFAULT_MAX_CONNECTIONS = 64
# How long a request waits for a free connection before the store counts
# as unavailable (503). Only a store that stopped answering gets there:
# a healthy Redis frees a connection within milliseconds.
POOL_WAIT_SECONDS = 10.0


# Every connection to a data node: str replies, and timeouts so a dead
# Redis answers 503 instead of hanging.
_CONNECTION_OPTIONS: dict[str, Any] = {
    "decode_responses": True, "socket_timeout": 5, "socket_connect_timeout": 3, "health_check_interval": 30,
}


SENTINEL_SCHEME = "redis+sentinel"
# Sentinel mode: how long a batch of writes waits for its replicas (WAIT)
# before it is refused as unavailable. Below socket_timeout, so the WAIT
# itself never times the connection out.
DEFAULT_WAIT_TIMEOUT_MS = 1000
# Sentinels answer from memory; one that does not within this is skipped.
SENTINEL_SOCKET_TIMEOUT = 1.0


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<service>[/db]``
    URL; ``?wait_replicas=N&wait_timeout=MS`` (defaults 1 and 1000) and
    ``&sentinel_password=...`` (percent-encoded) for sentinels that require one."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    wait_replicas: int = 1
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    # The sentinels' own password (their requirepass), when they have one;
    # the password before the @ is the data nodes'.
    sentinel_password: str | None = None


CLUSTER_SCHEME = "redis+cluster"


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://[[user]:password@]host:port[,host:port...]``
    URL (any nodes of the cluster: the rest are found from them);
    ``?wait_replicas=N&wait_timeout=MS`` (defaults 1 and 1000)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    wait_replicas: int = 1
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def is_cluster_url(url: str) -> bool:
    return url.lower().startswith(CLUSTER_SCHEME + "://")


@dataclass(frozen=True)
class _MultiHostURL:
    hosts: tuple[tuple[str, int], ...]
    path: str
    username: str | None
    password: str | None
    wait_replicas: int
    wait_timeout_ms: int
    options: dict[str, str]


def _parse_multi_host(
    url: str, scheme: str, what: str, form: str, default_port: int, extra: tuple[str, ...] = ()
) -> _MultiHostURL:
    """The parts a Sentinel and a cluster URL share; ValueError naming what
    is wrong (`what`: "Sentinel" or "cluster")."""
    given, sep, rest = url.partition("://")
    if not sep or given.lower() != scheme:
        raise ValueError(f"not a {what} URL (scheme {given!r}, expected {scheme}://): the form is {form}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    found: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        host, colon, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
        if not colon:
            host, port = item, str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad {what} address {item!r} in the Redis URL: expected host:port")
        found.append((host, int(port)))
    if not found:
        raise ValueError(f"no {what} hosts in the Redis URL: the form is {form}")
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    known = ("wait_replicas", "wait_timeout", *extra)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) in the {what} URL: {', '.join(unknown)} (known: {', '.join(known)})"
        )
    for name in extra:
        if len(options.get(name, ())) > 1:
            raise ValueError(f"{name} is given more than once in the {what} URL")

    def number(name: str, default: int, low: int, high: int) -> int:
        values = options.get(name)
        if not values:
            return default
        if len(values) > 1 or not values[0].isdigit() or not low <= int(values[0]) <= high:
            raise ValueError(f"bad {name} {values[-1]!r} in the {what} URL: expected a whole number {low}..{high}")
        return int(values[0])

    return _MultiHostURL(
        tuple(found), path, username, password,
        wait_replicas=number("wait_replicas", 1, 0, 16),
        # Below the 5 s socket timeout, so WAIT never times the connection out.
        wait_timeout_ms=number("wait_timeout", DEFAULT_WAIT_TIMEOUT_MS, 1, 4000),
        options={name: options[name][0] for name in extra if name in options},
    )


def parse_sentinel_url(url: str) -> SentinelURL:
    """ValueError naming what is wrong with `url`."""
    form = "redis+sentinel://[:password@]host:port[,host:port...]/<service>[/db]"
    parsed = _parse_multi_host(url, SENTINEL_SCHEME, "Sentinel", form, 26379, extra=("sentinel_password",))
    parts = [unquote(part) for part in parsed.path.split("/")]
    if not parts or not parts[0]:
        raise ValueError(f"no Sentinel service (master name) in the Redis URL: the form is {form}")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"bad database {'/'.join(parts[1:])!r} in the Redis URL: expected a number after the service")
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelURL(
        parsed.hosts, parts[0], db, parsed.username, parsed.password,
        wait_replicas=parsed.wait_replicas, wait_timeout_ms=parsed.wait_timeout_ms,
        sentinel_password=parsed.options.get("sentinel_password") or None,
    )


def parse_cluster_url(url: str) -> ClusterURL:
    """ValueError naming what is wrong with `url`."""
    form = "redis+cluster://[:password@]host:port[,host:port...]"
    parsed = _parse_multi_host(url, CLUSTER_SCHEME, "cluster", form, 6379)
    if parsed.path.strip("/"):
        raise ValueError(
            f"a cluster has no databases: drop {'/' + parsed.path!r} from the Redis URL (the form is {form})"
        )
    return ClusterURL(
        parsed.hosts, parsed.username, parsed.password,
        wait_replicas=parsed.wait_replicas, wait_timeout_ms=parsed.wait_timeout_ms,
    )


def redis_url_hosts(url: str) -> tuple[tuple[str, int], ...] | None:
    """The hosts of a Sentinel or cluster URL (None for any other URL)."""
    if is_sentinel_url(url):
        return parse_sentinel_url(url).sentinels
    if is_cluster_url(url):
        return parse_cluster_url(url).nodes
    return None


class _SentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (finds the primary, follows failovers) that blocks
    for a free connection like the plain one; carries the WAIT policy."""

    wait_replicas = 1
    wait_timeout_ms = DEFAULT_WAIT_TIMEOUT_MS


def _connect_sentinel(url: str, max_connections: int) -> redis.Redis:
    parsed = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(parsed.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": True,
            **({"password": parsed.sentinel_password} if parsed.sentinel_password else {}),
        },
    )
    client = sentinel.master_for(
        parsed.service,
        connection_pool_class=_SentinelPool,
        max_connections=max_connections,
        timeout=POOL_WAIT_SECONDS,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **_CONNECTION_OPTIONS,
        retry=Retry(NoBackoff(), 0),
    )
    pool = cast(_SentinelPool, client.connection_pool)
    pool.wait_replicas, pool.wait_timeout_ms = parsed.wait_replicas, parsed.wait_timeout_ms
    pool.connection_class = _packing(pool.connection_class)
    return client


class _Cluster(RedisCluster):
    """redis-py's cluster client; carries the WAIT policy, and its pipelines
    notice a failover."""

    wait_replicas = 1
    wait_timeout_ms = DEFAULT_WAIT_TIMEOUT_MS

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            raise redis_errors.RedisClusterException("shard_hint is not supported in cluster mode")
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py builds its own


class _ClusterPipeline(ClusterPipeline):
    """After a connection error or CLUSTERDOWN, the slot map is read again
    before the next command, as redis-py does for a single command (its
    pipelines do so only when they retry, and cronmon never retries: see
    connect). Without this, a pipeline kept dialling a killed primary after
    its replica had taken over its slots."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            replies = await super().execute(raise_on_error, allow_redirections)
        except RedisCluster.ERRORS_ALLOW_RETRY:
            self.cluster_client._initialize = True
            raise
        if any(isinstance(reply, RedisCluster.ERRORS_ALLOW_RETRY) for reply in replies):
            self.cluster_client._initialize = True
        return replies


# Per cluster node. redis-py's cluster client does not queue for a free
# connection (it raises), so this is larger than DEFAULT_MAX_CONNECTIONS;
# batching keeps the number in use far below it.
CLUSTER_MAX_CONNECTIONS = 256


def _connect_cluster(url: str, max_connections: int) -> RedisCluster:
    parsed = parse_cluster_url(url)
    client = _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
        **_CONNECTION_OPTIONS,
        max_connections=max(max_connections, CLUSTER_MAX_CONNECTIONS),
        # No retries of a command whose reply was lost (see connect); MOVED,
        # ASK and TRYAGAIN (the command did not run) are still followed.
        retry=Retry(NoBackoff(), 0),
    )
    client.wait_replicas, client.wait_timeout_ms = parsed.wait_replicas, parsed.wait_timeout_ms
    # hiredis' packer (see _HiredisPacking) for every node's connections:
    # those found later are made from connection_kwargs, the seeds already
    # exist (unconnected).
    packing = _packing(Connection)
    client.nodes_manager.connection_kwargs["connection_class"] = packing
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = packing
    return client


def check_url(url: str) -> None:
    """ValueError, saying what is wrong, for a --redis-url connect() cannot
    use (checked before anything starts: a sentence, not a traceback)."""
    if redis_url_hosts(url) is None:
        redis.connection.parse_url(url)


def connect(url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> redis.Redis | RedisCluster:
    """A client with timeouts, so a dead Redis answers 503 instead of hanging.

    The pool blocks: a burst of more concurrent requests than connections
    (a top-of-the-hour fleet) waits its turn for up to POOL_WAIT_SECONDS
    rather than being refused while Redis is healthy. (redis-py's default
    pool raises at once when its connections are all in use, which a burst
    of 150 clients turned into 503s.)

    No automatic retries: redis-py retries on timeouts and connection errors
    by default, and a script whose reply was lost may already have run, so
    a retry could record a check-in twice. The job's own retry (curl
    --retry on the 503) is the right place, and a retried start or finish
    with a run id is deduplicated by the store.

    ``redis+sentinel://`` (see parse_sentinel_url): the primary Sentinel
    names, followed across failovers; a batch of check-ins is acknowledged
    only once `wait_replicas` replicas hold it (WAIT), so a failover loses
    nothing that was answered 200.

    ``redis+cluster://`` (see parse_cluster_url): a Redis Cluster, the
    store's keys sharded over its slots (see keyspace.py), each batch
    acknowledged once `wait_replicas` replicas of every primary it went to
    hold it.
    """
    if is_sentinel_url(url):
        return _connect_sentinel(url, max_connections)
    if is_cluster_url(url):
        return _connect_cluster(url, max_connections)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_SECONDS,
        **_CONNECTION_OPTIONS,
        retry=Retry(NoBackoff(), 0),
    )
    # After from_url, which picks the class for the URL's scheme (and would
    # override one passed in for unix://).
    pool.connection_class = _packing(pool.connection_class)
    # from_pool: closing the client also closes its pool.
    return redis.Redis.from_pool(pool)
