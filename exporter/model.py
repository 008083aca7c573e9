"""The internal model: immutable values passed between modules.

Adapters build `CheckIn`s, config builds `Monitor`s, the store returns
`Facts`, and `evaluate` turns (monitor, facts, now) into an `Evaluation`.
Nothing here does I/O. All timestamps are float seconds since the Unix epoch
(UTC); all durations are float seconds.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

_Frozen = TypeVar("_Frozen", bound=type)


class _Factory:
    """quick_init's default for a field with a default factory."""

    def __repr__(self) -> str:
        return "<factory>"  # as dataclasses shows it


_FACTORY = _Factory()


def quick_init(cls: _Frozen) -> _Frozen:
    """Give the frozen dataclass `cls` (without slots) an __init__ that
    fills the new instance's __dict__ in one step.

    Why: the __init__ dataclasses writes for a frozen class sets each
    field through object.__setattr__ (its own __setattr__ refuses), a call
    per field: ~0.2 µs each, ~4 µs for a CheckIn, made on every ping.
    Filling __dict__ is what those calls do, without the calls. The
    parameters, defaults and default factories are the dataclass's own,
    and the instance stays frozen (only its __init__ writes). A class with
    __post_init__, InitVars, keyword-only or init=False fields is refused:
    its __init__ does more than set its fields."""
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__}: quick_init is for frozen dataclasses")
    if "__slots__" in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: quick_init cannot fill slots or run __post_init__")
    namespace: dict[str, Any] = {"_MISSING": _FACTORY}
    params: list[str] = []
    items: list[str] = []
    for spec in dataclasses.fields(cls):
        name = spec.name
        if not spec.init or spec.kw_only:
            raise TypeError(f"{cls.__name__}.{name}: quick_init takes positional init fields only")
        if spec.default is not dataclasses.MISSING:
            namespace[f"_default_{name}"] = spec.default
            params.append(f"{name}=_default_{name}")
            items.append(f"{name!r}: {name}")
        elif spec.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{name}"] = spec.default_factory
            params.append(f"{name}=_MISSING")
            items.append(f"{name!r}: _factory_{name}() if {name} is _MISSING else {name}")
        else:
            params.append(name)
            items.append(f"{name!r}: {name}")
    source = f"def __init__(self, {', '.join(params)}):\n    self.__dict__.update({{{', '.join(items)}}})\n"
    exec(source, namespace)  # noqa: S102  (built from the field names alone)
    init = namespace["__init__"]
    # The same parameters as the dataclass's __init__ (an InitVar would be
    # one more there).
    if list(inspect.signature(init).parameters) != list(inspect.signature(cls.__init__).parameters):
        raise TypeError(f"{cls.__name__}: its __init__ takes more than its fields")
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class Kind(enum.StrEnum):
    """What a check-in says about a run."""

    START = "start"
    SUCCESS = "success"
    FAIL = "fail"
    WARNING = "warning"
    LOG = "log"

    @property
    def completes(self) -> bool:
        # By value: Kind.X goes through EnumType.__getattr__ on Python 3.11
        # (~0.1 µs each), and this is asked on every ping.
        return self._value_ in _COMPLETING


_COMPLETING = frozenset({"success", "fail", "warning"})


class Outcome(enum.StrEnum):
    """How a run (or an expected slot) ended. What each means for the
    thresholds, the uptime figures and a completion is in rules.py."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    MISSED = "missed"
    TIMEOUT = "timeout"
    # Reported success, but the run's numeric meta broke one of the
    # monitor's meta rules (rows_processed < 1, ...), or it ran shorter than
    # its min_runtime. Not bad for the failure threshold: it has an alert
    # of its own (CronJobSilentFailure).
    SILENT_FAILURE = "silent_failure"


class Status(enum.StrEnum):
    """Monitor status, in priority order (see DESIGN.md, Runs and status)."""

    PAUSED = "paused"
    NEW = "new"
    STUCK = "stuck"
    FAILED = "failed"
    DOWN = "down"
    LATE = "late"
    RUNNING = "running"
    UP = "up"


@dataclass(frozen=True)
class IntervalSchedule:
    """Expect an arrival every `seconds` after the previous one."""

    seconds: float

    def describe(self) -> str:
        return f"every {format_duration(self.seconds)}"


@dataclass(frozen=True)
class CronSchedule:
    """Expect an arrival at each tick of a 5-field cron expression, evaluated
    on the wall clock of `timezone`."""

    expression: str
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        return f"cron {self.expression}"


Schedule = IntervalSchedule | CronSchedule


@dataclass(frozen=True)
class HttpProbe:
    """An active check: cronmon requests `url` every `interval` seconds.
    Slower than `slow` is a warning; no answer within `timeout`, a
    connection error or an HTTP error status (>= 400) is an error."""

    url: str
    interval: float = 60.0
    slow: float = 5.0
    timeout: float = 10.0


_COMPARE = {
    "<": float.__lt__, "<=": float.__le__, ">": float.__gt__,
    ">=": float.__ge__, "==": float.__eq__, "!=": float.__ne__,
}


@dataclass(frozen=True)
class MetaRule:
    """`key op value`: a run whose meta makes it true is a silent failure.
    A run that does not report `key` does not break the rule."""

    key: str
    op: str
    value: float

    def broken_by(self, meta: Mapping[str, float]) -> bool:
        reported = meta.get(self.key)
        return reported is not None and _COMPARE[self.op](float(reported), self.value)

    def __str__(self) -> str:
        return f"{self.key} {self.op} {self.value:g}"


# `mute:` values -> the alerts they switch off (alertmanager/cronmon-rules.yml).
MUTABLE_ALERTS: Mapping[str, str] = {
    "missed": "CronJobMissed",
    "failed": "CronJobFailed",
    "stuck": "CronJobStuck",
    "too_long": "CronJobTooLong",
    "silent_failure": "CronJobSilentFailure",
    "probe_down": "CronProbeDown",
}


# Replicas' clocks differ a little (NTP keeps them within milliseconds; a
# badly synced host drifts by seconds). A slot is recorded missed only once
# its deadline (slot + grace) is this far behind the deciding process's
# clock, and a check-in that arrives up to this long after the deadline on
# its own clock still counts as on time. Without it a sweeper 2 s ahead
# recorded a miss for a check-in that landed 1 s before the deadline, and
# CronJobMissed (no `for:`) paged on a single scrape.
CLOCK_SKEW_ALLOWANCE = 5.0

# Outages (see Outage): every process that takes check-ins writes a
# heartbeat into Redis this often; a gap between two heartbeats longer than
# OUTAGE_GAP means no cronmon could take check-ins (all stopped, or Redis
# unreachable) and is recorded as an outage. 5 s: well above the interval
# and an event-loop hiccup, short enough that a restart of the only
# replica that takes longer is counted.
HEARTBEAT_INTERVAL = 1.0
OUTAGE_GAP = 5.0


@dataclass(frozen=True)
class Outage:
    """A stretch of time in which no cronmon could take check-ins: from the
    last heartbeat before it to the first one after it. A job's check-in in
    it was refused, so its absence is no evidence that the job failed."""

    start: float
    end: float


def during_outage(outages: tuple[Outage, ...], start: float, end: float) -> bool:
    """Whether [start, end] overlaps any of `outages` (a handful: linear)."""
    return any(o.start < end and o.end > start for o in outages)


@dataclass(frozen=True)
class Monitor:
    """A monitor as the core uses it, whatever declared it (YAML or API).

    `ping_key_names` restricts which ping keys may address this monitor by
    slug (None: any configured key). `uuid_sha256` is the SHA-256 of the
    monitor's ping UUID (lower-case text form); the UUID itself is a secret
    and is never kept on the model.
    """

    id: str
    schedule: Schedule
    name: str = ""
    description: str = ""
    grace: float = 300.0
    max_runtime: float | None = None
    # A success shorter than this is a silent failure (record.lua judges it:
    # only the script knows a paired run's duration).
    min_runtime: float | None = None
    failure_threshold: int = 1
    recovery_threshold: int = 1
    labels: tuple[tuple[str, str], ...] = ()
    group: str = ""
    paused: bool = False
    source: str = "api"
    ping_key_names: tuple[str, ...] | None = None
    # Alerts switched off for this monitor (alert names, see MUTABLE_ALERTS):
    # the rules and the bridge skip them; its status and series are unchanged.
    muted: frozenset[str] = frozenset()
    # Stay `new` until the first check-in instead of being missed at the
    # first deadline after cronmon first saw the monitor (Core.resync).
    quiet_until_first_checkin: bool = False
    # Soft-deleted (a CrossCheck flight in its trash): its history is kept,
    # and no route takes a check-in for it until it is restored.
    retired: bool = False
    # YAML monitors: the API tokens (by name) granted check-ins through the
    # token-authenticated routes (see access.can_check_in).
    ping_token_names: tuple[str, ...] = ()
    uuid_env: str | None = None
    uuid_file: str | None = None
    # Who may see and change an API-created monitor (management tokens of
    # this owner, or of this team). None for YAML monitors.
    owner: str | None = None
    team: str | None = None
    meta_rules: tuple[MetaRule, ...] = ()
    # At most `count` check-ins per `seconds` (429 beyond); None: unlimited.
    rate_limit: tuple[int, float] | None = None
    # Active monitors: cronmon itself checks this URL on its interval.
    probe: HttpProbe | None = None
    # Check-ins only from these networks (403 otherwise); empty: from anywhere.
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Secrets a job already uses with the service it migrates from (a
    # CrossCheck flight's API key and shortcode), as (kind, env, file)
    # references, kind "api_key" | "shortcode". Resolved by credentials.py.
    secret_refs: tuple[tuple[str, str | None, str | None], ...] = ()
    # Opt-in series sets beyond the default budget (see collector.OPTIONAL_SERIES):
    # the monitor's own and its YAML group's.
    metrics: frozenset[str] = frozenset()
    # Fields one API keeps for its own shape (Boxwatch's integer id and
    # alert switches, ...), stored with the definition; the core ignores them.
    extras: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def miss_after(self) -> float:
        """Seconds after a slot at which it is recorded missed: grace plus
        CLOCK_SKEW_ALLOWANCE. Every miss decision uses it (sweeper, status,
        record.lua's sweep-first rule, the deadline index); what the APIs
        and /metrics show as the deadline is slot + grace."""
        return self.grace + CLOCK_SKEW_ALLOWANCE

    @property
    def from_yaml(self) -> bool:
        return self.source != "api"

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def allows_source(self, source_ip: str | None) -> bool:
        """Whether a check-in from `source_ip` may be recorded. With an allow
        list, an unknown or unparsable source is refused (fail closed)."""
        if not self.allowed_networks:
            return True
        return in_networks(source_ip, self.allowed_networks)

    def schedule_fingerprint(self) -> str:
        """What, when changed, invalidates the stored slot accounting.
        Computed once per Monitor (it is frozen): a reload compares it for
        every monitor."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            # "<schedule>|<the rest>": Core.resync re-bases only when the
            # part before the bar changed.
            cached = f"{self.schedule!r}|{(self.grace, self.max_runtime, self.paused)!r}"
            if self.quiet_until_first_checkin:
                cached += "|quiet"  # absent otherwise: older fingerprints stay valid
            object.__setattr__(self, "_fingerprint", cached)
        return cached


@quick_init
@dataclass(frozen=True)
class CheckIn:
    """The one canonical event every ingest API produces.

    `received_at` always comes from this server's clock, never the client's.
    `log` is already cut to the store's limit by the adapter that read it,
    with `log_truncated` set when it was.
    """

    monitor_id: str
    kind: Kind
    received_at: float
    run_id: str | None = None
    exit_code: int | None = None
    duration: float | None = None
    message: str | None = None
    log: str | None = None
    log_truncated: bool = False
    meta: Mapping[str, float] = field(default_factory=dict)
    # Free-form JSON values a job sent with the check-in (CrossCheck metadata,
    # an active check's status code and timing), kept with the event.
    metadata: Mapping[str, Any] = field(default_factory=dict)
    release: str | None = None
    environment: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    # A client's key for this one check-in (the native Idempotency-Key
    # header): a retry with the same key within a day is a duplicate that
    # changes nothing (record.lua). Run ids dedupe retried starts and
    # completions the same way (Sentry's check_in_id, CrossCheck's pair_key).
    idempotency_key: str | None = None
    # Set for the result of an active check (probes.py): the check-in also
    # becomes the monitor's latest probe result (cronmon_probe_*), with this
    # HTTP status code (0: no response).
    probe_status_code: int | None = None
    # Facts one API keeps with the event for its own answers (CrossCheck's
    # landing status, phase and pair_key, ...); the core does not read them.
    annotations: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenRun:
    run_id: str
    started: float
    anonymous: bool = False
    timed_out: bool = False


@dataclass(frozen=True)
class Facts:
    """Everything the store knows about one monitor, read atomically.

    `accounted_through` is the latest expected slot already accounted for
    (by an arrival or by recording it missed); `next_slot` is the first slot
    after it, cached because cron iteration is too slow to redo for every
    monitor on every scrape. Both are None until the first arrival.
    """

    version: int = 0
    first_checkin: float | None = None
    last_checkin: float | None = None
    last_start: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_duration: float | None = None
    last_exit_code: int | None = None
    last_outcome: Outcome | None = None
    # The latest active check (see probes.py), None before the first one.
    probe_last: float | None = None
    probe_success: bool = False
    probe_duration: float | None = None
    probe_status_code: int | None = None
    last_bad_outcome: Outcome | None = None
    accounted_through: float | None = None
    next_slot: float | None = None
    consecutive_bad: int = 0
    consecutive_good: int = 0
    alerting: bool = False
    fingerprint: str | None = None
    open_runs: tuple[OpenRun, ...] = ()
    checkins: Mapping[str, int] = field(default_factory=dict)
    outcomes: Mapping[str, int] = field(default_factory=dict)
    duration_buckets: tuple[int, ...] = ()
    duration_sum: float = 0.0
    duration_count: int = 0
    meta: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """The derived state of a monitor at one instant."""

    status: Status
    next_expected: float | None
    deadline: float | None
    consecutive_failures: int
    running_runs: int
    pending_missed: int


def in_networks(address: str | None, networks) -> bool:
    """Whether the text address is in one of `networks` (False if it is not
    an address). An IPv4-mapped IPv6 address (::ffff:10.0.0.1, as seen on a
    dual-stack socket) is treated as the IPv4 address it carries."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def format_duration(seconds: float) -> str:
    """1h30m style, the inverse of durations.parse_duration for whole seconds."""
    total = int(seconds)
    if total != seconds or total == 0:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def iso_utc(ts: float) -> str:
    """RFC 3339 in UTC with milliseconds, as every JSON API here writes time."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_utc_or_none(ts: float | None) -> str | None:
    """iso_utc, None (JSON null) for a time that never was."""
    return iso_utc(ts) if ts is not None else None


@dataclass(frozen=True)
class Details:
    """What the management APIs show of a monitor beyond its facts."""

    facts: Facts
    uptime: dict[str, int]  # "h<hour>:<outcome>" / "d<day>:<outcome>" -> count
    audit: list[dict]  # newest first
    history: list[dict]  # newest first
