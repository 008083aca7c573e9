"""The store: the only module that speaks Redis.

Key layout (prefix configurable, default ``cronmon``). Every key of one
monitor carries the monitor id as its hash tag, so a Lua script can update
all of them atomically::

    cronmon:{<id>}:state     hash: timestamps, accounting, thresholds, version
    cronmon:{<id>}:runs      hash: open run id -> {"s": start, "a": anonymous, "t": timed out}
    cronmon:{<id>}:tmo       zset: open run id -> instant it passes max_runtime
    cronmon:{<id>}:closed    zset: recently closed run ids (dedupes retried completions)
    cronmon:{<id>}:abandoned zset: timed-out runs given up when the job ran again -> start
    cronmon:{<id>}:idem      zset: idempotency keys of recent check-ins -> when recorded
    cronmon:{<id>}:counters  hash: check-ins by kind, outcomes, duration histogram
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
rediss://, unix://), or a primary found through Sentinel
(redis+sentinel://host:port[,host:port...]/<service>[/db], see connect).

Every check-in is one round trip (record.lua). The deadline index is
updated inside the same script, which keeps it exact and race-free on a
single Redis server or a Sentinel-managed primary. (On Redis Cluster the
index lives in another slot; supporting Cluster means moving that update
out of the script and relying on the sweeper's compare-and-set alone; not
done yet.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast
from urllib.parse import parse_qs, unquote

import hiredis
import redis.asyncio as redis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from .errors import StoreUnavailable
from .evaluate import ArrivalPlan, SweepPlan
from .model import CheckIn, Details, Facts, Monitor, OpenRun, Outage, Outcome, too_short_outcome

log = logging.getLogger(__name__)

# Run duration histogram buckets (seconds): cron jobs run from seconds to a
# day, so the buckets span 1s .. 24h roughly logarithmically.
DURATION_BUCKETS: tuple[float, ...] = (
    1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200, 86400,
)


# The stored fingerprint of a monitor the config no longer declares.
REMOVED_FINGERPRINT = "removed"

# Outages are kept while a slot they forgive can still be swept (sweeps keep
# every monitor's accounting near now; 35 days covers the longest uptime
# window), and at most this many (a flapping Redis must not grow the list
# every miss decision reads).
OUTAGES_KEPT_SECONDS = 35 * 86400
OUTAGES_KEPT = 100


@dataclass(frozen=True)
class StoreLimits:
    history: int = 500
    logs: int = 100
    meta_keys: int = 32
    open_runs: int = 50
    closed_runs: int = 200
    audit: int = 100
    # A retried check-in with the same idempotency key is a duplicate for
    # this long after the first (24 h, as Stripe's keys), among the last
    # idempotency_keys keys of the monitor.
    idempotency_keys: int = 1000
    idempotency_window: float = 86400.0


@dataclass(frozen=True)
class RecordResult:
    status: str  # "ok" | "duplicate" | "sweep" | "slot" | "limited"
    seq: int | None = None
    run_id: str | None = None
    duration: float | None = None
    slot: float | None = None  # with "slot": the slot the plan must also offer
    retry_after: int | None = None  # with "limited": seconds until allowed again


_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    OSError,
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

    def __init__(self, client: redis.Redis, limit: int = 256):
        self.client = client
        self.limit = limit
        # Sentinel mode: how many replicas must hold a batch's writes before
        # they are acknowledged (WAIT); None elsewhere.
        pool = client.connection_pool
        self._wait = (pool.wait_replicas, pool.wait_timeout_ms) if isinstance(pool, _SentinelPool) else None
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
        async with self.client.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if self._wait is None or self._wait[0] == 0:
                return await pipe.execute(raise_on_error=False)
            # Same connection, same round trip: WAIT returns once `replicas`
            # replicas hold every write sent before it (or the timeout passed).
            replicas, timeout_ms = self._wait
            pipe.execute_command("WAIT", replicas, timeout_ms)
            *replies, acked = await pipe.execute(raise_on_error=False)
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < replicas:
                # Applied on the primary only: a failover now could lose it,
                # so it is not acknowledged (503; the retry is a duplicate).
                raise redis_errors.ConnectionError(
                    f"only {acked} of {replicas} replica(s) confirmed the write within {timeout_ms} ms"
                )
            return replies


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, redis_errors.NoScriptError) or (
        isinstance(reply, redis_errors.ResponseError) and str(reply).startswith("NOSCRIPT")
    )


def _script(name: str) -> str:
    common = resources.files("exporter").joinpath("lua/common.lua").read_text()
    return common + "\n" + resources.files("exporter").joinpath(f"lua/{name}.lua").read_text()


@dataclass(frozen=True)
class Quota:
    """At most `limit` API monitors (0: no limit) in the set `name` of
    `owner`, enforced by define.lua when a monitor is created."""

    name: str
    owner: str
    limit: int


class Store:
    def __init__(self, client: redis.Redis, prefix: str = "cronmon", limits: StoreLimits = StoreLimits()):
        self.client = client
        self.prefix = prefix
        self.limits = limits
        self._record = client.register_script(_script("record"))
        self._sweep = client.register_script(_script("sweep"))
        self._resync = client.register_script(_script("resync"))
        self._define = client.register_script(_script("define"))
        self._probe_sync = client.register_script(_script("probe_sync"))
        self._probe_claim = client.register_script(_script("probe_claim"))
        self._heartbeat = client.register_script(_script("heartbeat"))
        self._history = client.register_script(_script("history"))
        self._heartbeat_key = f"{prefix}:heartbeat"
        self._outages_key = f"{prefix}:outages"
        self._probes_key = f"{prefix}:probes"
        self._probe_schedule_key = f"{prefix}:probes:schedule"
        self._due_key = f"{prefix}:due"
        self._definitions_key = f"{prefix}:monitors"
        self._revision_key = f"{prefix}:monitors:revision"
        self._definitions_feed_key = f"{prefix}:monitors:changes"
        self._limits_json = json.dumps({
            "history": limits.history, "logs": limits.logs, "meta_keys": limits.meta_keys,
            "open_runs": limits.open_runs, "closed_runs": limits.closed_runs, "buckets": DURATION_BUCKETS,
            "idempotency_keys": limits.idempotency_keys, "idempotency_window": limits.idempotency_window,
        })
        self._batch = _Batcher(client)
        self._settings_cache: dict[str, tuple[Monitor, str]] = {}
        self._feed_key = f"{prefix}:changes"
        self._feed_seq_key = f"{prefix}:changes:seq"

    def _settings_json(self, monitor: Monitor) -> str:
        """record.lua's monitor table, encoded once per Monitor object (a
        reload or API change makes a new object, so this never goes stale)."""
        cached = self._settings_cache.get(monitor.id)
        if cached is None or cached[0] is not monitor:
            cached = self._settings_cache[monitor.id] = (monitor, _monitor_settings(monitor))
        return cached[1]

    def key(self, monitor_id: str, part: str) -> str:
        return f"{self.prefix}:{{{monitor_id}}}:{part}"

    async def close(self) -> None:
        await self.client.aclose()
        pool = self.client.connection_pool
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
        model.completion_outcome), None for a start or a log."""
        k = self.key
        m = monitor.id
        extra: dict[str, Any] = {
            name: value
            for name, value in (
                ("ip", checkin.source_ip),
                ("ua", checkin.user_agent),
                ("release", checkin.release),
                ("environment", checkin.environment),
            )
            if value
        }
        if checkin.metadata:
            extra["metadata"] = dict(checkin.metadata)
        # One named table per concern (the Lua side reads fields by name);
        # absent values are left out, which Lua sees as nil.
        fields: dict[str, Any] = {
            "monitor": m, "now": checkin.received_at, "kind": checkin.kind.value,
            "plan": {"anchored": plan.anchored, "first": plan.first, "candidates": plan.candidates},
            "generated_run_id": generated_run_id,
        }
        for name, value in (
            ("run_id", checkin.run_id), ("exit_code", checkin.exit_code), ("duration", checkin.duration),
            ("message", checkin.message), ("meta", dict(checkin.meta) if checkin.meta else None),
            ("extra", extra or None), ("annotations", dict(checkin.annotations) if checkin.annotations else None),
            ("probe_code", checkin.probe_status_code), ("idempotency_key", checkin.idempotency_key),
            ("outcome", outcome.value if outcome is not None else None),
            ("bad", outcome.bad if outcome is not None else None),
        ):
            if value is not None and value != "":
                fields[name] = value
        short = too_short_outcome(outcome) if outcome is not None and monitor.min_runtime else None
        if short is not None:
            fields["short_outcome"], fields["short_bad"] = short.value, short.bad
        if checkin.log_truncated:
            fields["log_truncated"] = True
        reply = await self._batch.call(
            self._record,
            [
                k(m, "state"), k(m, "runs"), k(m, "tmo"), k(m, "closed"), k(m, "counters"),
                k(m, "history"), k(m, "logs"), k(m, "logids"), k(m, "meta"), self._due_key,
                k(m, "ratelimit"), k(m, "uptime"), self._feed_key, self._feed_seq_key, k(m, "abandoned"),
                k(m, "idem"),
            ],
            # allow_nan=False: a NaN must never reach the script (Python
            # refuses it here, before anything is written).
            [json.dumps(fields, allow_nan=False), self._settings_json(monitor), self._limits_json, checkin.log or ""],
        )
        status = reply[0]
        if status == "ok":
            return RecordResult("ok", int(reply[1]), reply[2] or None, float(reply[3]) if reply[3] else None)
        if status == "duplicate":
            return RecordResult("duplicate", run_id=reply[1])
        if status == "slot":
            return RecordResult("slot", slot=float(reply[1]))
        if status == "limited":
            return RecordResult("limited", retry_after=max(1, math.ceil(int(reply[1]) / 1000)))
        return RecordResult("sweep")

    async def facts(self, monitor_id: str) -> Facts:
        """One monitor's facts, read atomically (MULTI/EXEC)."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                self._queue_facts(pipe, monitor_id)
                replies = await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc
        return _parse_facts(*replies)

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
                async with self.client.pipeline(transaction=False) as pipe:
                    for monitor_id in part:
                        queue(pipe, monitor_id)
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
            reply = await self._sweep(
                keys=[
                    k(m, "state"), k(m, "runs"), k(m, "tmo"), k(m, "counters"), k(m, "history"), self._due_key,
                    k(m, "uptime"), self._feed_key, self._feed_seq_key,
                ],
                args=[
                    m,
                    repr(now),
                    plan.expected_version,
                    plan.missed,
                    "" if plan.accounted_through is None else repr(plan.accounted_through),
                    "" if plan.next_slot is None else repr(plan.next_slot),
                    json.dumps(list(plan.timed_out_runs)),
                    repr(monitor.miss_after),  # the deadline index and the sweep-first rule
                    monitor.failure_threshold,
                    monitor.recovery_threshold,
                    self.limits.history,
                    plan.forgiven,
                    json.dumps(list(plan.lost_runs)),
                    _SWEEP_BAD,
                ],
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
            reply = await self._resync(
                keys=[k(m, "state"), k(m, "runs"), k(m, "tmo"), self._due_key, self._feed_key, self._feed_seq_key],
                args=[
                    m,
                    expected_version,
                    "clear" if clear else ("" if accounted_through is None else repr(accounted_through)),
                    "" if next_slot is None else repr(next_slot),
                    repr(monitor.miss_after),  # the deadline index and the sweep-first rule
                    _max_runtime_arg(monitor),
                    monitor.schedule_fingerprint(),
                ],
            )
        except Exception as exc:
            raise _translate(exc) from exc
        return reply[0] == "ok"

    async def changes_since(self, cursor: int | None) -> tuple[int, list[str] | None]:
        """The change feed: (the feed's position now, the monitors changed
        after `cursor`), read atomically in one round trip. The list is
        None when the caller must re-read everything: it has no cursor yet,
        or the feed went backwards (Redis lost its data or was flushed)."""
        return await self._read_feed(self._feed_seq_key, self._feed_key, cursor)

    async def _read_feed(self, counter_key: str, feed_key: str, since: int | None) -> tuple[int, list[str] | None]:
        """A feed is a counter and a zset of id -> counter value at the id's
        latest change: (the counter now, ids changed after `since`, or None
        when everything must be read: no `since` yet, or the counter went
        backwards)."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(counter_key)
                pipe.zrangebyscore(feed_key, f"({since}" if since is not None else "+inf", "+inf")
                raw_position, changed = await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc
        position = int(raw_position or 0)
        if since is None or position < since:
            return position, None
        return position, changed

    async def fingerprints(self, monitor_ids: list[str]) -> dict[str, str | None]:
        """Each monitor's stored schedule fingerprint (None: none yet)."""
        replies = await self._pipelined(monitor_ids, lambda pipe, m: pipe.hget(self.key(m, "state"), "fp"))
        return dict(zip(monitor_ids, replies))

    async def due(self, now: float, limit: int) -> list[str]:
        """Monitors whose next deadline or run timeout is at or before `now`."""
        try:
            # decode_responses=True (connect): redis-py's bytes | str is str here.
            due = await self.client.zrangebyscore(self._due_key, "-inf", repr(now), start=0, num=limit)
            return cast(list[str], due)
        except Exception as exc:
            raise _translate(exc) from exc

    async def forget_due(self, monitor_id: str) -> None:
        """Drop a monitor that is no longer configured from the index. Its
        data stays, so counters continue if it comes back, but its
        fingerprint is marked REMOVED_FINGERPRINT: slots that passed while
        it was not configured were never expected of it, so its return
        re-bases its accounting (Core.resync) instead of counting them."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._due_key, monitor_id)
                pipe.hset(self.key(monitor_id, "state"), "fp", REMOVED_FINGERPRINT)
                await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc

    # -- API-created monitors ------------------------------------------------

    async def monitors_revision(self) -> int:
        """Bumped by every change to an API monitor's definition."""
        try:
            return int(await self.client.get(self._revision_key) or 0)
        except Exception as exc:
            raise _translate(exc) from exc

    async def monitor_definitions(self) -> tuple[int, dict[str, dict]]:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self._revision_key)
                pipe.hgetall(self._definitions_key)
                revision, raw = await pipe.execute()
        except Exception as exc:
            raise _translate(exc) from exc
        return int(revision or 0), {key: json.loads(value) for key, value in raw.items()}

    async def definition_changes(self, since: int) -> tuple[int, list[str] | None]:
        """(the definitions' revision now, the API monitors whose definition
        changed after revision `since`), in one atomic round trip; None
        instead of a list when the caller must load them all (`since` < 0:
        nothing loaded yet; or Redis lost its data)."""
        return await self._read_feed(self._revision_key, self._definitions_feed_key, since if since >= 0 else None)

    async def definitions(self, monitor_ids: list[str]) -> dict[str, dict | None]:
        """Several API monitors' definitions in one round trip (None: deleted)."""
        if not monitor_ids:
            return {}
        try:
            raw = await self.client.hmget(self._definitions_key, monitor_ids)
        except Exception as exc:
            raise _translate(exc) from exc
        return {m: json.loads(value) if value is not None else None for m, value in zip(monitor_ids, raw)}

    async def monitor_definition(self, monitor_id: str) -> dict | None:
        """One API monitor's definition (None: no such API monitor)."""
        try:
            raw = await self.client.hget(self._definitions_key, monitor_id)
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
        quota_keys = [f"{self.prefix}:quota:{quota.name}:{quota.owner}" for quota in quotas]
        try:
            reply = await self._define(
                keys=[self._definitions_key, self._revision_key, self._due_key, self._feed_key,
                      self._feed_seq_key, self._definitions_feed_key, self.key(monitor_id, "audit"),
                      *quota_keys, *data_keys],
                args=[monitor_id, mode, json.dumps(definition) if definition is not None else "",
                      json.dumps(audit) if audit is not None else "", self.limits.audit,
                      len(quotas), *(quota.limit for quota in quotas)],
            )
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
            pipe.lrange(self.key(monitor_id, "audit"), 0, audit - 1) if audit else pipe.echo("")
            pipe.lrange(self.key(monitor_id, "history"), 0, history - 1) if history else pipe.echo("")

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

    async def sync_probes(self, probes: list[tuple[str, str, float]]) -> int:
        """Make the shared probe schedule hold exactly these active monitors:
        (monitor id, fingerprint json with the interval as "i", first due)."""
        try:
            return int(await self._probe_sync(
                keys=[self._probes_key, self._probe_schedule_key],
                args=[json.dumps([[m, fp, repr(first)] for m, fp, first in probes])],
            ))
        except Exception as exc:
            raise _translate(exc) from exc

    async def claim_probes(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Checks due at `now` (at most `limit`), each given to one caller
        only: (monitor id, when it was due)."""
        try:
            reply = await self._probe_claim(
                keys=[self._probes_key, self._probe_schedule_key], args=[repr(now), limit]
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
            reply = await self._heartbeat(
                keys=[self._heartbeat_key, self._outages_key],
                args=[repr(now), repr(gap), repr(now - OUTAGES_KEPT_SECONDS), OUTAGES_KEPT],
            )
        except Exception as exc:
            raise _translate(exc) from exc
        return tuple(Outage(float(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2))

    # -- small documents of the APIs (CrossCheck's flight groups, ...) ------

    async def documents(self, collection: str) -> dict[str, dict]:
        try:
            raw = await self.client.hgetall(f"{self.prefix}:documents:{collection}")
        except Exception as exc:
            raise _translate(exc) from exc
        return {cast(str, key): json.loads(value) for key, value in raw.items()}

    async def put_document(self, collection: str, document_id: str, document: dict) -> None:
        try:
            await self.client.hset(f"{self.prefix}:documents:{collection}", document_id, json.dumps(document))
        except Exception as exc:
            raise _translate(exc) from exc

    async def delete_document(self, collection: str, document_id: str) -> bool:
        try:
            return bool(await self.client.hdel(f"{self.prefix}:documents:{collection}", document_id))
        except Exception as exc:
            raise _translate(exc) from exc

    async def next_sequence(self, name: str) -> int:
        """1, 2, 3, ... per name, shared by all replicas (integer ids of APIs
        that have them)."""
        try:
            return int(await self.client.incr(f"{self.prefix}:sequence:{name}"))
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

    async def history(self, monitor_id: str, offset: int = 0, count: int = 50) -> list[dict]:
        try:
            raw = await self.client.lrange(self.key(monitor_id, "history"), offset, offset + count - 1)
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
        wanted: dict[str, Any] = {"limit": limit, "offset": offset}
        for name, value in (("kinds", sorted(kinds) if kinds is not None else None), ("run", run),
                            ("seq", seq), ("before", before)):
            if value is not None:
                wanted[name] = value
        try:
            reply = await self._history(keys=[self.key(monitor_id, "history")], args=[json.dumps(wanted)])
        except Exception as exc:
            raise _translate(exc) from exc
        return [json.loads(item) for item in reply[1:]], reply[0] == 1

    async def log(self, monitor_id: str, seq: int) -> str | None:
        try:
            return cast(str | None, await self.client.hget(self.key(monitor_id, "logs"), str(seq)))
        except Exception as exc:
            raise _translate(exc) from exc


# sweep.lua's outcomes and whether each is bad (the rules: model.BAD_OUTCOMES).
_SWEEP_BAD = json.dumps({o.value: o.bad for o in (Outcome.MISSED, Outcome.TIMEOUT)})

# Every per-monitor key (see the layout at the top).
_MONITOR_PARTS = (
    "state", "runs", "tmo", "closed", "counters", "history", "logs", "logids", "meta", "ratelimit", "uptime",
    "abandoned", "idem",
)


def _monitor_settings(monitor: Monitor) -> str:
    """What record.lua needs of a monitor's config, as its json table."""
    settings: dict[str, Any] = {
        "grace": monitor.grace,
        "miss_after": monitor.miss_after,
        "failure_threshold": monitor.failure_threshold,
        "recovery_threshold": monitor.recovery_threshold,
        "rate_count": monitor.rate_limit[0] if monitor.rate_limit else 0,
        "rate_window": monitor.rate_limit[1] if monitor.rate_limit else 0,
    }
    if _max_runtime_arg(monitor):
        settings["max_runtime"] = monitor.max_runtime
    if monitor.min_runtime:
        settings["min_runtime"] = monitor.min_runtime
    return json.dumps(settings)


def _max_runtime_arg(monitor: Monitor) -> str:
    # Nothing times out while paused, so paused runs get no timeout entry.
    if monitor.max_runtime is None or monitor.paused:
        return ""
    return repr(monitor.max_runtime)


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
        if prefix == "c":
            checkins[rest] = int(value)
        elif prefix == "o":
            outcomes[rest] = int(value)
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
    URL; ``?wait_replicas=N&wait_timeout=MS`` (defaults 1 and 1000)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    wait_replicas: int = 1
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelURL:
    """ValueError naming what is wrong with `url`."""
    form = "redis+sentinel://[:password@]host:port[,host:port...]/<service>[/db]"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != SENTINEL_SCHEME:
        raise ValueError(f"not a Sentinel URL (scheme {scheme!r}, expected {SENTINEL_SCHEME}://): the form is {form}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        host, colon, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
        if not colon:
            host, port = item, "26379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad Sentinel address {item!r} in the Redis URL: expected host:port")
        sentinels.append((host, int(port)))
    if not sentinels:
        raise ValueError(f"no Sentinel hosts in the Redis URL: the form is {form}")
    parts = [unquote(part) for part in path.split("/")]
    if not parts or not parts[0]:
        raise ValueError(f"no Sentinel service (master name) in the Redis URL: the form is {form}")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"bad database {'/'.join(parts[1:])!r} in the Redis URL: expected a number after the service")
    db = int(parts[1]) if len(parts) == 2 else 0
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(options) - {"wait_replicas", "wait_timeout"})
    if unknown:
        raise ValueError(
            f"unknown option(s) in the Sentinel URL: {', '.join(unknown)} (known: wait_replicas, wait_timeout)"
        )

    def number(name: str, default: int, low: int, high: int) -> int:
        values = options.get(name)
        if not values:
            return default
        if len(values) > 1 or not values[0].isdigit() or not low <= int(values[0]) <= high:
            raise ValueError(f"bad {name} {values[-1]!r} in the Sentinel URL: expected a whole number {low}..{high}")
        return int(values[0])

    return SentinelURL(
        tuple(sentinels), parts[0], db, username, password,
        wait_replicas=number("wait_replicas", 1, 0, 16),
        # Below the 5 s socket timeout, so WAIT never times the connection out.
        wait_timeout_ms=number("wait_timeout", DEFAULT_WAIT_TIMEOUT_MS, 1, 4000),
    )


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
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=3,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    pool = cast(_SentinelPool, client.connection_pool)
    pool.wait_replicas, pool.wait_timeout_ms = parsed.wait_replicas, parsed.wait_timeout_ms
    pool.connection_class = _packing(pool.connection_class)
    return client


def check_url(url: str) -> None:
    """ValueError, saying what is wrong, for a --redis-url connect() cannot
    use (checked before anything starts: a sentence, not a traceback)."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
    else:
        redis.connection.parse_url(url)


def connect(url: str, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> redis.Redis:
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
    """
    if is_sentinel_url(url):
        return _connect_sentinel(url, max_connections)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_SECONDS,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=3,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    # After from_url, which picks the class for the URL's scheme (and would
    # override one passed in for unix://).
    pool.connection_class = _packing(pool.connection_class)
    # from_pool: closing the client also closes its pool.
    return redis.Redis.from_pool(pool)
