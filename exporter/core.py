"""The core: the only entry points to monitor state.

`Core.record` takes canonical check-ins from every adapter; `Core.sweep`
records missed slots and over-long runs; `Core.resync` re-bases a monitor
whose schedule changed. The registry of monitors is swapped whole on
reload, so a request sees either the old or the new config, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field, replace

from .config import Config, ConfigError, MonitorSpec, monitor_from_definition
from .credentials import (
    ResolvedSecrets,
    derive_secret,
    derive_uuid,
    derived_ping_uuid,
    derived_secret_digest,
    derived_uuid_digest,
    digest,
)
from .errors import (
    OWNER_QUOTA,
    MonitorExists,
    QuotaExceeded,
    RateLimited,
    ReadOnlyMonitor,
    SourceNotAllowed,
    UnknownMonitor,
)
from .evaluate import SWEEP_BATCH, Outages, SweepPlan, evaluate, plan_arrival, plan_sweep
from .keyspace import Cursor
from .model import (
    HEARTBEAT_INTERVAL,
    OUTAGE_GAP,
    CheckIn,
    Details,
    Evaluation,
    Facts,
    Kind,
    Monitor,
    iso_utc,
)
from .rules import completion_outcome
from .schedule import next_slot
from .storage import Quota, RecordResult, StateStore, StoreLimits

log = logging.getLogger(__name__)

# Compare-and-set retries before giving up for this round (another replica
# keeps changing the monitor; the next sweeper tick tries again).
_CAS_ATTEMPTS = 5


@dataclass(frozen=True)
class ApiChanges:
    """What Core.sync_api_monitors found: the API monitors created, changed
    or deleted (ids, in the order applied), or `everything` (all were
    loaded: the first time, or after Redis lost its data). Falsy when
    nothing changed."""

    ids: tuple[str, ...] = ()
    everything: bool = False

    def __bool__(self) -> bool:
        return self.everything or bool(self.ids)


@dataclass(frozen=True)
class MonitorUpdate:
    """A new definition for an API monitor: spec, extras (None: keep them),
    the audit entry that explains it (None: none) and whether it is
    soft-deleted (Monitor.retired; None: keep)."""

    monitor: Monitor
    spec: MonitorSpec
    extras: dict | None = None
    audit: dict | None = None
    retired: bool | None = None


@dataclass(frozen=True)
class Registry:
    """Every monitor cronmon knows, and the secrets that address them.

    YAML monitors come from the config (swapped whole on reload); API
    monitors from Redis (swapped whole when their revision changes). A YAML
    monitor wins over an API one with the same id: the YAML files are the
    source of truth for what they declare.
    """

    yaml: Mapping[str, Monitor] = field(default_factory=dict)
    secrets: ResolvedSecrets | None = None
    # YAML `groups:`: group name -> optional series its monitors opt into.
    group_metrics: Mapping[str, frozenset[str]] = field(default_factory=dict)
    api: Mapping[str, Monitor] = field(default_factory=dict)
    # The definitions' revision `api` is at (store.definition_changes); None: not loaded yet.
    api_revision: Cursor | None = None
    monitors: Mapping[str, Monitor] = field(init=False)
    _uuid_index: Mapping[bytes, str] = field(init=False, repr=False)
    # API and YAML monitors as served (group metrics applied; API ones in
    # `api`'s order), and the digest of each API monitor's derived UUID:
    # what with_api carries over to the next registry.
    _api_served: Mapping[str, Monitor] = field(init=False, repr=False)
    _yaml_served: Mapping[str, Monitor] = field(init=False, repr=False)
    _api_digests: Mapping[str, bytes] = field(init=False, repr=False)
    # kind -> {sha256(derived secret): monitor id}, built on first use.
    _derived_index: dict[str, dict[bytes, str]] = field(init=False, repr=False, default_factory=dict)
    # Built from another registry by with_api(changed=...): that registry
    # (weakly: a chain of registries must not stay alive) and the ids.
    _derived_from: weakref.ref[Registry] | None = field(init=False, repr=False, default=None, compare=False)
    _derived_ids: tuple[str, ...] = field(init=False, repr=False, default=(), compare=False)
    # name -> (how keys are found, the lookup table an adapter derived from `monitors`): see index.
    _indexes: dict[str, tuple[Callable[[Monitor], Iterable[str]], dict[str, str]]] = field(
        init=False, repr=False, default_factory=dict
    )
    # with_api's hint: the registry this one follows and the API monitor ids
    # that changed since (in the order `api` re-inserted them); None: build all.
    previous: InitVar[Registry | None] = None
    changed: InitVar[Sequence[str] | None] = None

    def __post_init__(self, previous: Registry | None, changed: Sequence[str] | None) -> None:
        key_digest = self.secrets.uuid_key_digest if self.secrets else None
        same_yaml = (
            previous is not None and previous.yaml is self.yaml and previous.secrets is self.secrets
            and previous.group_metrics is self.group_metrics
        )
        if same_yaml:
            assert previous is not None
            yaml_served = previous._yaml_served
        else:
            yaml_served = {k: self._served(m) for k, m in self.yaml.items()} if self.group_metrics else self.yaml
        # with_api with the changed ids, over the same YAML monitors: only
        # those ids are redone (previous is held here; see _derived_from).
        incremental = same_yaml and changed is not None
        if incremental:
            assert previous is not None and changed is not None
            # One API monitor created, changed or deleted costs the same at
            # 10 or 10,000 API monitors: the previous registry's tables are
            # copied (C-level dict copies) and only the changed ids redone.
            api_served, api_digests = dict(previous._api_served), dict(previous._api_digests)
            index = dict(previous._uuid_index)
            for monitor_id in changed:
                api_served.pop(monitor_id, None)
                old = api_digests.pop(monitor_id, None)
                # (A YAML monitor with this id keeps its own UUID entry.)
                if old is not None and monitor_id not in yaml_served and index.get(old) == monitor_id:
                    del index[old]
            redo: Iterable[str] = changed
            object.__setattr__(self, "_derived_from", weakref.ref(previous))
            object.__setattr__(self, "_derived_ids", tuple(changed))
        else:
            api_served, api_digests = {}, {}
            index = dict(self.secrets.uuid_digests) if self.secrets else {}
            redo = self.api
        for monitor_id in redo:
            monitor = self.api.get(monitor_id)
            if monitor is None:
                continue  # deleted
            api_served[monitor_id] = self._served(monitor)
            if key_digest is not None:
                api_digests[monitor_id] = monitor_digest = derived_uuid_digest(key_digest, monitor_id)
                if monitor_id not in yaml_served:  # a YAML monitor wins over an API one
                    index[monitor_digest] = monitor_id
        shadowed = api_served.keys() & yaml_served.keys()
        api_part = {k: m for k, m in api_served.items() if k not in shadowed} if shadowed else api_served
        if incremental and key_digest is not None:
            assert previous is not None and changed is not None
            # The secret indexes previous built (CrossCheck's API keys and
            # shortcodes), carried over the same way.
            for kind, previous_index in previous._derived_index.items():
                derived = dict(previous_index)
                for monitor_id in changed:
                    secret_digest = derived_secret_digest(key_digest, kind, monitor_id)
                    if monitor_id in api_part:
                        derived[secret_digest] = monitor_id
                    elif derived.get(secret_digest) == monitor_id:
                        del derived[secret_digest]
                self._derived_index[kind] = derived
        object.__setattr__(self, "monitors", {**api_part, **yaml_served})
        object.__setattr__(self, "_uuid_index", index)
        object.__setattr__(self, "_api_served", api_served)
        object.__setattr__(self, "_yaml_served", yaml_served)
        object.__setattr__(self, "_api_digests", api_digests)
        if incremental:
            assert previous is not None and changed is not None
            self._carry_indexes(previous, changed)

    def _served(self, monitor: Monitor) -> Monitor:
        """`monitor` with the optional series its YAML group opts into."""
        extra = self.group_metrics.get(monitor.group) if self.group_metrics else None
        if extra and not extra <= monitor.metrics:
            return replace(monitor, metrics=monitor.metrics | extra)
        return monitor

    @classmethod
    def build(cls, config: Config, secrets: ResolvedSecrets) -> Registry:
        return cls({m.id: m for m in config.monitors}, secrets, config.group_metrics)

    def with_api(
        self, api: Mapping[str, Monitor], revision: Cursor | None, changed: Sequence[str] | None = None
    ) -> Registry:
        """This registry with other API monitors. `changed`: the ids that
        differ from this registry's `api` (re-inserted at the end of `api`
        in this order, deleted ones absent), so only they are redone; None
        rebuilds every table."""
        return replace(self, api=api, api_revision=revision, previous=self, changed=changed)

    def api_changes_since(self, other: Registry | None) -> tuple[str, ...] | None:
        """The monitor ids whose API definitions differ between `other` and
        this registry, when this one was made from `other` by with_api
        with the changed ids (the YAML monitors and secrets the same);
        None when that is not known (then anything may differ)."""
        if other is None or self._derived_from is None or self._derived_from() is not other:
            return None
        return self._derived_ids

    def index(self, name: str, keys_of: Callable[[Monitor], Iterable[str]]) -> Mapping[str, str]:
        """A lookup table (key -> monitor id) an adapter derives from the
        monitors, such as CrossCheck's flight id -> monitor: `keys_of(m)`
        gives a monitor's keys (none for most). Built on first use and kept
        with this registry, so a lookup costs a dict access, not a scan of
        every monitor; a registry made by an API change carries it over,
        redoing only the changed monitors' keys (see __post_init__)."""
        built = self._indexes.get(name)
        if built is None:
            built = self._indexes[name] = (keys_of, {key: m.id for m in self.monitors.values() for key in keys_of(m)})
        return built[1]

    def _carry_indexes(self, previous: Registry, changed: Sequence[str]) -> None:
        """previous's adapter indexes, with the keys of the `changed`
        monitors redone: what index() would build from scratch."""
        for name, (keys_of, earlier) in previous._indexes.items():
            table = dict(earlier)
            for monitor_id in changed:
                gone = previous.monitors.get(monitor_id)
                for key in keys_of(gone) if gone is not None else ():
                    if table.get(key) == monitor_id:
                        del table[key]
            for monitor_id in changed:
                monitor = self.monitors.get(monitor_id)
                for key in keys_of(monitor) if monitor is not None else ():
                    table[key] = monitor_id
            self._indexes[name] = (keys_of, table)

    def by_uuid_digest(self, uuid_digest: bytes) -> Monitor | None:
        monitor_id = self._uuid_index.get(uuid_digest)
        monitor = self.monitors.get(monitor_id) if monitor_id else None
        return None if monitor is None or monitor.retired else monitor

    def secret(self, monitor: Monitor, kind: str) -> str | None:
        """An API monitor's derived API key or shortcode (see
        credentials.derive_secret); None for YAML monitors, whose secrets
        come from env or files and are never shown."""
        if monitor.from_yaml or self.secrets is None or self.secrets.uuid_key_digest is None:
            return None
        return derive_secret(self.secrets.uuid_key_digest, kind, monitor.id)

    def by_secret(self, kind: str, presented: str) -> Monitor | None:
        """The monitor whose API key / shortcode `presented` is. Looked up by
        digest in a dict: the lookup itself reveals nothing about how close
        a wrong guess was."""
        if not presented or self.secrets is None:
            return None
        index = self._derived_index.get(kind)
        if index is None:
            index = {}
            if self.secrets.uuid_key_digest is not None:
                for monitor in self.monitors.values():
                    if not monitor.from_yaml:
                        index[derived_secret_digest(self.secrets.uuid_key_digest, kind, monitor.id)] = monitor.id
            for (secret_kind, secret_digest), monitor_id in self.secrets.imported.items():
                if secret_kind == kind:
                    index[secret_digest] = monitor_id
            self._derived_index[kind] = index
        found_id = index.get(digest(presented))
        found = self.monitors.get(found_id) if found_id else None
        return None if found is None or found.retired else found

    def ping_uuid(self, monitor: Monitor) -> str | None:
        """The ping UUID of an API monitor (YAML ones may come from env or
        files and are not shown)."""
        if monitor.from_yaml or self.secrets is None or self.secrets.uuid_key_digest is None:
            return None
        return derive_uuid(self.secrets.uuid_key_digest, monitor.id)

    def served_ping_uuid(self, monitor: Monitor) -> str | None:
        """The ping UUID the APIs and the status page may show (to those
        allowed to check in): one cronmon made, an API monitor's or a YAML
        monitor's derived one. A UUID from ping.uuid_env/uuid_file is the
        operator's secret, and a ping key addresses every monitor that
        accepts it: neither is served (`cronmon urls` prints them)."""
        if not monitor.from_yaml:
            return self.ping_uuid(monitor)
        return derived_ping_uuid(monitor, self.secrets) if self.secrets is not None else None


class Core:
    def __init__(
        self, store: StateStore, registry: Registry, clock: Callable[[], float] = time.time,
        monitors_per_owner: int = 0, track_outages: bool = False,
    ):
        self.store = store
        self.registry = registry
        self.clock = clock
        # Outage-aware accounting (see heartbeat()): on in `cronmon serve`;
        # off for a Core driven by a simulated clock, whose jumps would
        # read as outages.
        self.track_outages = track_outages
        self.outages: Outages = ()
        self._heartbeat_at = -math.inf
        # At most this many API monitors per owner (0: no limit).
        self.monitors_per_owner = monitors_per_owner
        # Told the id of every monitor whose state changed. They must not
        # block or raise: they run on the ingestion path (the alert bridge
        # only adds the id to a set).
        self.listeners: list[Callable[[str], None]] = []

    def _changed(self, monitor_id: str) -> None:
        for listener in self.listeners:
            listener(monitor_id)

    # -- outages ----------------------------------------------------------

    async def heartbeat(self) -> None:
        """Tell Redis this process takes check-ins, and learn the outages
        (stretches in which no process did). Run every HEARTBEAT_INTERVAL
        by `cronmon serve`, and on demand by current_outages."""
        now = self.clock()
        outages = await self.store.heartbeat(now, OUTAGE_GAP)
        if outages != self.outages:
            if outages and (not self.outages or outages[-1] != self.outages[-1]):  # a new one
                log.warning(
                    "no cronmon took check-ins from %s to %s (an outage): slots and runs it overlapped "
                    "are not counted against jobs", iso_utc(outages[-1].start), iso_utc(outages[-1].end),
                )
            self.outages = outages
        self._heartbeat_at = now

    async def current_outages(self) -> Outages:
        """The outages, known as of a heartbeat of this process at most
        2 x HEARTBEAT_INTERVAL ago (one is made first if needed).

        Why that bound makes miss decisions safe: an outage is a gap of more
        than OUTAGE_GAP between heartbeats, recorded by the heartbeat that
        ends it. A heartbeat of ours at h, less than OUTAGE_GAP before the
        decision, came after the end of every outage that ended before the
        decision (none fits between h and it), so its reply holds them all;
        after Redis comes back the first decision waits for that heartbeat."""
        if not self.track_outages:
            return ()
        if self.clock() - self._heartbeat_at > 2 * HEARTBEAT_INTERVAL:
            await self.heartbeat()
        return self.outages

    def evaluate(self, monitor: Monitor, facts: Facts) -> Evaluation:
        """`monitor`'s status now, for the APIs (with the outages learnt at
        the latest heartbeat; /metrics, the bridge and the sweeper ask
        current_outages first)."""
        return evaluate(monitor, facts, self.clock(), self.outages)

    # -- reads, for the APIs ----------------------------------------------
    # Adapters read through the core, never the store (test_layering.py):
    # one seam where what a monitor looks like is decided (its status with
    # the outages known, its events filtered in Redis).

    @property
    def limits(self) -> StoreLimits:
        return self.store.limits

    async def check_store(self) -> None:
        """StoreUnavailable unless Redis answers (/-/ready)."""
        await self.store.ping()

    async def facts(self, monitor_id: str) -> Facts:
        return await self.store.facts(monitor_id)

    async def snapshot(self, monitor_ids: Iterable[str]) -> dict[str, Facts]:
        """Facts of many monitors in one round trip."""
        return await self.store.snapshot(monitor_ids)

    async def details(
        self, monitor_ids: Iterable[str], *, audit: int = 0, history: int = 0
    ) -> dict[str, Details]:
        """Facts, uptime buckets, the newest `audit` audit entries and
        `history` events of each monitor, in one round trip."""
        return await self.store.details(monitor_ids, audit=audit, history=history)

    async def events(
        self, monitor_id: str, *, limit: int, offset: int = 0, kinds: Iterable[str] | None = None,
        run: str | None = None, seq: int | None = None, before: int | None = None,
    ) -> tuple[list[dict], bool]:
        """A page of a monitor's events, newest first, filtered in Redis (see
        StateStore.history_page): (the page, whether more match)."""
        return await self.store.history_page(
            monitor_id, limit=limit, offset=offset, kinds=kinds, run=run, seq=seq, before=before
        )

    async def recent_events(self, monitor_id: str, count: int) -> list[dict]:
        """The newest `count` events of a monitor."""
        return await self.store.history(monitor_id, 0, count)

    async def log(self, monitor_id: str, seq: int) -> str | None:
        return await self.store.log(monitor_id, seq)

    # Active checks: the schedule every replica shares (see probes.py).

    def store_servers(self) -> tuple[tuple[str, int], ...]:
        """Redis servers the store found beyond its URL (a cluster's nodes)."""
        return self.store.servers()

    async def publish_probes(self, probes: list[tuple[str, str, float]], removed: list[str] | None = None) -> int:
        """Make the shared schedule hold exactly these active monitors:
        (monitor id, check fingerprint json with the interval as "i", first
        due); with `removed`, put these in, take those out and leave every
        other entry."""
        return await self.store.sync_probes(probes, removed)

    async def claim_probes(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Checks due at `now` (at most `limit`), each given to one replica
        only: (monitor id, when it was due)."""
        return await self.store.claim_probes(now, limit)

    async def logs(self, monitor_id: str, seqs: list[int]) -> dict[int, str]:
        """Several events' logs in one round trip (missing ones left out)."""
        return await self.store.logs(monitor_id, seqs)

    async def audit(self, monitor_id: str) -> list[dict]:
        return await self.store.audit(monitor_id)

    async def monitor_definition(self, monitor_id: str) -> dict | None:
        """An API monitor's stored definition (None for YAML monitors)."""
        return await self.store.monitor_definition(monitor_id)

    # Small documents an API keeps of its own (CrossCheck's flight groups),
    # and the shared integer sequences of APIs that number things.

    async def documents(self, collection: str) -> dict[str, dict]:
        return await self.store.documents(collection)

    async def put_document(self, collection: str, document_id: str, document: dict) -> None:
        await self.store.put_document(collection, document_id, document)

    async def delete_document(self, collection: str, document_id: str) -> bool:
        return await self.store.delete_document(collection, document_id)

    async def next_sequence(self, name: str) -> int:
        return await self.store.next_sequence(name)

    def swap(self, registry: Registry) -> None:
        """Swap in a reloaded config; the API monitors stay as they are."""
        self.registry = registry.with_api(self.registry.api, self.registry.api_revision)

    async def sync_api_monitors(self) -> ApiChanges:
        """Load the API monitors whose definitions changed in Redis since
        the registry's revision (another replica wrote, or this one): one
        round trip to ask, one to read what changed; all of them only the
        first time or after Redis lost its data. Returns what changed
        (falsy: nothing). Creating one API monitor so costs the same at 10
        or 10,000: only its definition is read, and the new registry redoes
        only its entries (Registry.with_api)."""
        revision, changed = await self.store.definition_changes(self.registry.api_revision)
        definitions: Mapping[str, dict | None]
        if changed is None:
            _, definitions = await self.store.monitor_definitions()
            api: dict[str, Monitor] = {}
        elif not changed:
            if revision != self.registry.api_revision:
                self.registry = self.registry.with_api(self.registry.api, revision, changed=())
            return ApiChanges()
        else:
            definitions, api = await self.store.definitions(changed), dict(self.registry.api)
        for monitor_id, definition in definitions.items():
            api.pop(monitor_id, None)
            if definition is None:
                continue  # deleted
            try:
                api[monitor_id] = monitor_from_definition(monitor_id, definition, self.clock())
            except ConfigError as exc:  # written by an older version, say
                log.error("API monitor %s cannot be loaded, skipping it: %s", monitor_id, exc)
        if changed is None:
            self.registry = self.registry.with_api(api, revision)
            return ApiChanges(everything=True)
        ids = tuple(definitions)
        self.registry = self.registry.with_api(api, revision, changed=ids)
        return ApiChanges(ids)

    # -- API-created monitors ----------------------------------------------

    async def create_monitor(
        self, spec: MonitorSpec, owner: str, team: str | None, extras: dict | None = None,
        audit: dict | None = None, quotas: Mapping[str, int] | None = None,
    ) -> Monitor:
        """Create an API monitor. `audit` (who did what, in the API's words)
        is stamped with the time and kept in the monitor's audit log.
        `quotas` (name -> limit) are limits of the API's own besides the
        owner's monitors_per_owner (Boxwatch's plan limit): QuotaExceeded,
        checked atomically with the write."""
        yaml_monitor = self.registry.yaml.get(spec.id)
        if yaml_monitor is not None:
            raise ReadOnlyMonitor(yaml_monitor)
        limits = {OWNER_QUOTA: self.monitors_per_owner, **(quotas or {})}
        definition = {
            "spec": _spec_dict(spec), "owner": owner, "team": team, "created_at": self.clock(),
            "extras": extras or {}, "quotas": sorted(limits),
        }
        names = sorted(limits)
        reply = await self.store.define_monitor(
            spec.id, "create", definition, self._stamped(audit), [Quota(n, owner, limits[n]) for n in names]
        )
        if reply == "exists":
            raise MonitorExists(spec.id)
        if isinstance(reply, tuple):
            raise QuotaExceeded(owner, names[reply[1]], limits[names[reply[1]]])
        return await self._after_write(spec.id)

    async def update_monitor(
        self, monitor: Monitor, spec: MonitorSpec, extras: dict | None = None, audit: dict | None = None
    ) -> Monitor:
        """Replace an API monitor's definition (ownership stays; so do its
        extras unless new ones are given). An update that changes nothing
        writes nothing: clients such as the Sentry SDK send their monitor
        config with every check-in, and a write would make every replica
        reload every definition."""
        return (await self.update_monitors([MonitorUpdate(monitor, spec, extras, audit)]))[0]

    async def update_monitors(self, updates: Sequence[MonitorUpdate]) -> list[Monitor]:
        """Several updates (a reorder, a group's flights), then one reload of
        the definitions, not one per monitor. Not atomic across monitors:
        each write is; one that fails (UnknownMonitor, ReadOnlyMonitor)
        stops the rest, and those written before it stay written."""
        written: list[str] = []
        try:
            for update in updates:
                if await self._write_update(update):
                    written.append(update.monitor.id)
        finally:
            if written:
                await self.sync_api_monitors()
                now = self.clock()
                for monitor_id in written:
                    if monitor_id in self.registry.monitors:
                        await self.resync(self.registry.monitors[monitor_id], now)
        return [self.registry.monitors.get(u.monitor.id, u.monitor) for u in updates]

    async def _write_update(self, update: MonitorUpdate) -> bool:
        """Write one update; False if it would change nothing."""
        monitor = update.monitor
        if monitor.from_yaml:
            raise ReadOnlyMonitor(monitor)
        current = await self.store.monitor_definition(monitor.id)
        if current is None:
            raise UnknownMonitor(monitor.id)
        new_spec = _spec_dict(update.spec)
        old_extras = current.get("extras") or {}
        new_extras = old_extras if update.extras is None else update.extras
        old_retired = bool(current.get("retired"))
        new_retired = old_retired if update.retired is None else update.retired
        if current.get("spec") == new_spec and old_extras == new_extras and old_retired == new_retired:
            return False
        definition = {
            **current, "spec": new_spec, "extras": new_extras, "retired": new_retired, "updated_at": self.clock(),
        }
        if await self.store.define_monitor(monitor.id, "update", definition, self._stamped(update.audit)) == "missing":
            raise UnknownMonitor(monitor.id)
        return True

    async def delete_monitor(self, monitor: Monitor) -> None:
        """Delete an API monitor with its state, counters and history."""
        if monitor.from_yaml:
            raise ReadOnlyMonitor(monitor)
        current = await self.store.monitor_definition(monitor.id)
        if current is None:
            raise UnknownMonitor(monitor.id)
        owner = current.get("owner") or ""
        quotas = [Quota(name, owner, 0) for name in current.get("quotas") or ()]
        if await self.store.define_monitor(monitor.id, "delete", quotas=quotas) == "missing":
            raise UnknownMonitor(monitor.id)
        await self.sync_api_monitors()

    def _stamped(self, audit: dict | None) -> dict | None:
        return None if audit is None else {"at": self.clock(), **audit}

    async def _after_write(self, monitor_id: str) -> Monitor:
        # Serve the change from this process at once (other replicas see the
        # revision change on their next sweeper tick), and re-base its slot
        # accounting if the schedule changed.
        await self.sync_api_monitors()
        monitor = self.registry.monitors[monitor_id]
        await self.resync(monitor, self.clock())
        return monitor

    async def record(self, checkin: CheckIn) -> RecordResult:
        """Record one check-in: one store round trip; one more when a
        deadline passed that no sweeper has recorded yet (sweep first) or
        when the arrival's slot is not among the planned candidates."""
        monitor = self.registry.monitors.get(checkin.monitor_id)
        if monitor is None or monitor.retired:
            raise UnknownMonitor(checkin.monitor_id)
        # An active check's result comes from cronmon itself, not the network.
        if checkin.probe_status_code is None and not monitor.allows_source(checkin.source_ip):
            raise SourceNotAllowed(monitor.id, checkin.source_ip)
        plan = plan_arrival(monitor, checkin.received_at)
        generated_run_id = _random_run_id()
        # A reported success whose numbers break a meta rule did not do its job.
        silent = bool(monitor.meta_rules) and checkin.kind is Kind.SUCCESS and any(
            rule.broken_by(checkin.meta) for rule in monitor.meta_rules
        )
        outcome = completion_outcome(checkin.kind, silent) if checkin.kind.completes else None
        for _ in range(_CAS_ATTEMPTS):
            result = await self.store.record(monitor, checkin, plan, generated_run_id, outcome)
            if result.status == "sweep":
                await self.sweep(monitor, checkin.received_at)
            elif result.status == "slot":
                # The first unaccounted slot is further back than the plan
                # guessed (grace longer than the cron interval).
                assert result.slot is not None  # the script names the slot
                plan = plan.with_slot(monitor.schedule, result.slot)
            elif result.status == "limited":
                raise RateLimited(monitor.id, result.retry_after or 1)
            else:
                if result.status == "ok":
                    self._changed(monitor.id)
                return result
        raise RuntimeError(f"monitor {monitor.id}: could not record a check-in: state kept changing")

    async def sweep(self, monitor: Monitor, now: float) -> int:
        """Record every missed slot and newly over-long run as of `now`.

        Safe to run from any number of processes at once: each plan is
        applied only if the monitor is unchanged since it was read, so a
        slot is recorded missed exactly once. Returns how many slots were
        recorded missed by this call.
        """
        recorded = 0
        outages = await self.current_outages()
        for _ in range(_CAS_ATTEMPTS):
            facts = await self.store.facts(monitor.id)
            if facts.fingerprint not in (None, monitor.schedule_fingerprint()):
                # Changed (or came back after being removed) and not
                # re-based yet: slots of the old accounting were never
                # expected of it as it is now. Re-base first.
                await self.resync(monitor, now)
                continue
            plan: SweepPlan = plan_sweep(monitor, facts, now, outages)
            if plan.empty:
                return recorded
            if not await self.store.apply_sweep(monitor, plan, now):
                continue  # someone else changed it: re-read and re-plan
            self._changed(monitor.id)
            recorded += plan.missed
            if plan.missed + plan.forgiven < SWEEP_BATCH:
                return recorded
            # A full batch: more slots may have passed (a long outage);
            # loop to record the next batch.
        return recorded

    async def resync(self, monitor: Monitor, now: float) -> bool:
        """Bring stored accounting in line after the monitor's schedule,
        grace, max_runtime or pause changed (or the first time we see it).

        A changed schedule (or a monitor back after being removed) counts
        from `now`: slots that the new schedule would have had in the past
        were never expected, so they are not recorded as missed. With the
        same schedule the slots stay what they were: editing grace,
        max_runtime or pause while a slot is late must not forgive it (the
        first page then came one full period later). Run timeouts and the
        deadline index are redone either way.
        """
        fingerprint = monitor.schedule_fingerprint()
        for _ in range(_CAS_ATTEMPTS):
            facts = await self.store.facts(monitor.id)
            if facts.fingerprint == fingerprint:
                return False
            accounted: float | None = None
            upcoming: float | None = None
            clear = False
            if monitor.quiet_until_first_checkin and facts.first_checkin is None:
                # Opted out: nothing is expected before the first check-in.
                clear = facts.accounted_through is not None
            elif facts.accounted_through is None and not monitor.paused:
                # First sight (a new monitor, or Redis lost its data): the
                # job is expected from now on, so one that never reports is
                # missed at its first deadline instead of staying `new`
                # (which never pages) forever.
                accounted, upcoming = now, next_slot(monitor.schedule, now)
            elif facts.accounted_through is not None:
                same_slots = facts.fingerprint is None or (
                    facts.fingerprint.partition("|")[0] == fingerprint.partition("|")[0]
                )
                accounted = facts.accounted_through if same_slots else now
                upcoming = next_slot(monitor.schedule, accounted)
            if await self.store.resync(monitor, facts.version, accounted, upcoming, clear):
                return True
        return False

    async def resync_all(self, now: float) -> None:
        """Resync every monitor whose stored fingerprint differs from its
        config (see resync_monitors)."""
        await self.resync_monitors(list(self.registry.monitors.values()), now)

    async def resync_monitors(self, monitors: Sequence[Monitor], now: float) -> None:
        """Resync those of `monitors` whose stored fingerprint differs from
        their config: one pipelined read of their fingerprints (a reload of
        10,000 unchanged monitors costs a few round trips, not 10,000), then
        the compare-and-set resync of just those."""
        stored = await self.store.fingerprints([m.id for m in monitors])
        stale = []
        for i, monitor in enumerate(monitors):
            if stored.get(monitor.id) != monitor.schedule_fingerprint():
                stale.append(monitor)
            if i % 1000 == 999:
                await asyncio.sleep(0)  # 10,000 monitors: let pings in between
        # Bounded concurrency: a few round trips in flight, not thousands.
        semaphore = asyncio.Semaphore(16)

        async def one(monitor: Monitor) -> None:
            async with semaphore:
                await self.resync(monitor, now)

        await asyncio.gather(*(one(m) for m in stale))


# Random bytes for run ids, read from the OS 4 KiB at a time (one
# getrandom() call per ping was a fifth of _random_run_id's cost) and kept
# as hex (one hex() a read, not one a ping), used from _random_at on.
# Emptied in a forked child, which must not hand out its parent's ids.
_RANDOM_READ = 4096
_random_hex = ""
_random_at = 0
# A UUID's variant digit (RFC 4122: 8, 9, a or b) for a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _forget_random_bytes() -> None:
    global _random_hex, _random_at
    _random_hex, _random_at = "", 0


os.register_at_fork(after_in_child=_forget_random_bytes)


def _random_run_id() -> str:
    """A random (version 4) UUID in its text form: what str(uuid.uuid4())
    gives, at a fifth of its cost (every check-in gets one, used or not)."""
    global _random_hex, _random_at
    at = _random_at
    if at + 32 > len(_random_hex):
        _random_hex, at = os.urandom(_RANDOM_READ).hex(), 0
    _random_at = at + 32
    h = _random_hex[at : at + 32]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def _spec_dict(spec: MonitorSpec) -> dict:
    """A spec as stored: JSON types, durations in seconds."""
    return spec.model_dump(mode="json", exclude={"ping"})
