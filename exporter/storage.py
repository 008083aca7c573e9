"""The storage interface: everything cronmon keeps, as the core and the
background tasks see it (as Pushgateway's storage/interface.go is to its
disk store). store.Store implements it on Redis (one server, Sentinel or a
cluster); nothing outside store.py knows a key or a command.

Contracts that hold for every method:

* Outage: a method that cannot reach the store raises
  errors.StoreUnavailable (the adapters answer 503). Its write may or may
  not have happened; every write is safe to retry: check-ins dedupe by run
  id and idempotency key, sweeps and re-bases are compare-and-set, the
  rest are idempotent.
* Refusal: a write that is refused (a duplicate, a conflict, a full quota)
  changes nothing.
* Atomicity: each write is atomic with respect to one monitor: its state,
  counters, history and its entries in the indexes over monitors (due
  deadlines, the change feed, the API definitions) change together.
* Acknowledgement: with Sentinel or a cluster, check-ins, sweeps and
  re-bases return only once the configured number of replicas hold them.

Time is always passed in (`now`); the store reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .evaluate import ArrivalPlan, SweepPlan
from .keyspace import Cursor
from .model import CheckIn, Details, Facts, Monitor, Outage, Outcome, quick_init

# Run duration histogram buckets (seconds): cron jobs run from seconds to a
# day, so the buckets span 1s .. 24h roughly logarithmically.
DURATION_BUCKETS: tuple[float, ...] = (
    1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200, 86400,
)


@dataclass(frozen=True)
class StoreLimits:
    """How much of each monitor the store keeps (oldest dropped first)."""

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


@quick_init
@dataclass(frozen=True)
class RecordResult:
    status: str  # "ok" | "duplicate" | "sweep" | "slot" | "limited"
    seq: int | None = None
    run_id: str | None = None
    duration: float | None = None
    slot: float | None = None  # with "slot": the slot the plan must also offer
    retry_after: int | None = None  # with "limited": seconds until allowed again


@dataclass(frozen=True)
class Quota:
    """At most `limit` API monitors (0: no limit) in the set `name` of
    `owner`, enforced atomically when a monitor is created."""

    name: str
    owner: str
    limit: int


class StateStore(Protocol):
    limits: StoreLimits

    # -- lifecycle ---------------------------------------------------------

    async def ping(self) -> None:
        """StoreUnavailable unless the store answers (/-/ready)."""

    async def close(self) -> None: ...

    def servers(self) -> tuple[tuple[str, int], ...]:
        """The Redis servers found beyond those the URL names (a cluster's
        nodes), as (address, port): active checks must not reach them."""
        ...

    # -- check-ins ---------------------------------------------------------

    async def record(
        self, monitor: Monitor, checkin: CheckIn, plan: ArrivalPlan, generated_run_id: str,
        outcome: Outcome | None = None,
    ) -> RecordResult:
        """Record `checkin` (`outcome`: what a completion records, decided by
        rules.completion_outcome; None for a start or a log). "ok" with the
        event's seq; "duplicate" (its run id or idempotency key was
        recorded); "sweep" (a deadline passed unrecorded: sweep, then call
        again); "slot" (the arrival is for a slot the plan lacks); "limited"
        (over the monitor's rate limit). Nothing is written unless "ok"."""
        ...

    # -- reads -------------------------------------------------------------

    async def facts(self, monitor_id: str) -> Facts:
        """One monitor's facts, read atomically."""
        ...

    async def snapshot(self, monitor_ids: Iterable[str]) -> dict[str, Facts]:
        """Facts of many monitors, pipelined (each monitor's read atomic,
        not the whole)."""
        ...

    async def details(self, monitor_ids: Iterable[str], *, audit: int = 0, history: int = 0) -> dict[str, Details]:
        """Facts, uptime buckets, the newest `audit` audit entries and the
        newest `history` events of each monitor, in one round trip."""
        ...

    async def history(self, monitor_id: str, offset: int = 0, count: int = 50) -> list[dict]:
        """Events newest first."""
        ...

    async def history_page(
        self, monitor_id: str, *, limit: int, offset: int = 0, kinds: Iterable[str] | None = None,
        run: str | None = None, seq: int | None = None, before: int | None = None,
    ) -> tuple[list[dict], bool]:
        """Events newest first, filtered in the store: (the page, whether
        more match after it)."""
        ...

    async def log(self, monitor_id: str, seq: int) -> str | None: ...

    async def logs(self, monitor_id: str, seqs: list[int]) -> dict[int, str]:
        """Several events' logs in one round trip (missing ones left out)."""
        ...

    async def audit(self, monitor_id: str) -> list[dict]:
        """The monitor's audit log, newest first."""
        ...

    # -- the sweeper -------------------------------------------------------

    async def due(self, now: float, limit: int) -> list[str]:
        """Monitors whose next deadline or run timeout is at or before
        `now`, earliest first (at most `limit`)."""
        ...

    async def apply_sweep(self, monitor: Monitor, plan: SweepPlan, now: float) -> bool:
        """Apply `plan` if the monitor is still at plan.expected_version
        (compare-and-set: two sweepers never record a slot twice); False if
        it changed since it was read (nothing written)."""
        ...

    async def resync(
        self, monitor: Monitor, expected_version: int, accounted_through: float | None, next_slot: float | None,
        clear: bool = False,
    ) -> bool:
        """Compare-and-set re-base on a changed schedule: the accounting
        (None: keep it; `clear`: forget it), run timeouts and the deadline
        redone, the schedule fingerprint stored; False on a conflict."""
        ...

    async def fingerprints(self, monitor_ids: list[str]) -> dict[str, str | None]:
        """Each monitor's stored schedule fingerprint (None: none yet)."""
        ...

    async def forget_due(self, monitor_id: str) -> None:
        """Drop a monitor no longer configured from the deadline index,
        keeping its data (its return re-bases it)."""
        ...

    # -- scrapes -----------------------------------------------------------

    async def changes_since(self, cursor: Cursor | None) -> tuple[Cursor, list[str] | None]:
        """(the change feed's position now, monitors changed after
        `cursor`); None instead of the list: read everything (no cursor
        yet, or the store lost its data)."""
        ...

    # -- API monitors ------------------------------------------------------

    async def define_monitor(
        self, monitor_id: str, mode: str, definition: dict | None = None, audit: dict | None = None,
        quotas: Sequence[Quota] = (),
    ) -> str | tuple[str, int, int]:
        """mode create | update | delete: "ok", "exists", "missing", or
        ("quota", index into `quotas`, ids it holds). `audit` is kept with
        the change; a delete also deletes the monitor's data."""
        ...

    async def monitor_definition(self, monitor_id: str) -> dict | None: ...

    async def monitor_definitions(self) -> tuple[Cursor, dict[str, dict]]:
        """Every API monitor's definition, and the revision read before them."""
        ...

    async def definitions(self, monitor_ids: list[str]) -> dict[str, dict | None]:
        """Several definitions in one round trip (None: deleted)."""
        ...

    async def definition_changes(self, since: Cursor | None) -> tuple[Cursor, list[str] | None]:
        """(the definitions' revision, the ids changed after `since`); None
        instead of the list: load them all."""
        ...

    async def monitors_revision(self) -> Cursor: ...

    # -- active checks -----------------------------------------------------

    async def sync_probes(self, probes: list[tuple[str, str, float]], removed: list[str] | None = None) -> int:
        """Make the shared schedule hold exactly these active monitors
        (id, fingerprint json with the interval as "i", first due); an
        unchanged one keeps its place. With `removed` (a partial update):
        put these in and take the removed ids out, leaving every other
        entry. Returns the number of changes."""
        ...

    async def claim_probes(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Checks due at `now`, each given to one caller only: (id, due)."""
        ...

    # -- outages -----------------------------------------------------------

    async def heartbeat(self, now: float, gap: float) -> tuple[Outage, ...]:
        """This process can take check-ins at `now`; a gap of more than
        `gap` since the latest heartbeat of any process is recorded as an
        outage first. Returns the outages kept."""
        ...

    # -- small documents of the APIs ----------------------------------------

    async def documents(self, collection: str) -> dict[str, dict]: ...

    async def put_document(self, collection: str, document_id: str, document: dict) -> None: ...

    async def delete_document(self, collection: str, document_id: str) -> bool: ...

    async def next_sequence(self, name: str) -> int:
        """1, 2, 3, ... per name, shared by all replicas."""
        ...
