"""YAML configuration: parse, validate and report errors people can act on.

A config is one YAML file or a directory of them (``*.yaml``/``*.yml``, read
in name order, merged). Each file may hold:

    ping_keys:            # where the ping keys come from (never the keys)
      - name: ops
        env: CRONMON_OPS_PING_KEY
    monitors:
      - id: nightly-backup
        schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
        ...

Every error names the file, the monitor and the field, for example::

    config/jobs.yaml: monitor "nightly-backup": field "schedule.timezone": unknown time zone "Europe/Berln"

`load_config` collects all errors of all files before raising, so one run
of ``cronmon check-config`` shows everything that is wrong.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import ipaddress
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .durations import parse_duration
from .model import MUTABLE_ALERTS, CronSchedule, HttpProbe, IntervalSchedule, MetaRule, Monitor
from .schedule import ScheduleError, validate_cron

MONITOR_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
LABEL_NAME_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

# Label names cronmon itself puts on its series or that Prometheus attaches
# at scrape time or in alerts; a monitor label with one of these names would
# clash with them (or be renamed exported_* by Prometheus).
RESERVED_LABELS = frozenset(
    {
        "monitor", "status", "kind", "outcome", "key", "le", "quantile",
        "name", "schedule", "timezone", "source", "group", "version",
        "handler", "code", "method", "job", "instance", "alertname",
    }
)

_META_RULE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


def parse_meta_rule(text: str) -> MetaRule:
    match = _META_RULE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a meta rule")
    return MetaRule(match.group(1), match.group(2), float(match.group(3)))


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address (10.0.0.7) or a network in CIDR form (10.0.0.0/8)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address or a network; write it like 203.0.113.7 or 10.0.0.0/8"
        ) from None


def parse_rate_limit(text: str) -> tuple[int, float]:
    """`10/1m`: at most 10 check-ins a minute."""
    count, sep, window = text.partition("/")
    try:
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise ValueError
        seconds = parse_duration(window.strip())
        if seconds < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"{text!r} is not a rate limit; write it like 10/1m (check-ins per period)") from None
    return int(count), seconds


class ConfigError(Exception):
    """One or more problems in the configuration; `problems` lists them all."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ScheduleSpec(_Strict):
    interval: Duration | None = None
    cron: str | None = None
    timezone: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleSpec:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of interval (e.g. 15m) or cron (e.g. \"0 3 * * *\")")
        if self.interval is not None:
            if self.timezone is not None:
                raise ValueError("timezone only applies to cron schedules")
            if self.interval < 1:
                raise ValueError("interval must be at least 1s")
        return self

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                # Checked for length first: ZoneInfo opens a file by that
                # name, and a name over 255 bytes is an OSError (ENAMETOOLONG).
                if len(value) > 64:
                    raise ValueError
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise ValueError(
                    f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin or UTC"
                ) from None
        return value

    def to_schedule(self) -> IntervalSchedule | CronSchedule:
        if self.interval is not None:
            return IntervalSchedule(self.interval)
        assert self.cron is not None
        return CronSchedule(self.cron.strip(), self.timezone or "UTC")


class HttpProbeSpec(_Strict):
    """`http:` on a monitor: cronmon checks the URL itself (an active monitor)."""

    url: Annotated[str, Field(max_length=2000)]
    interval: Duration = 60.0
    slow: Duration = 5.0
    timeout: Duration = 10.0

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _sane_times(self) -> HttpProbeSpec:
        if self.interval < 1:
            raise ValueError("interval must be at least 1s")
        if not 0 < self.slow <= self.timeout:
            raise ValueError("slow must be greater than 0 and not greater than timeout")
        if self.timeout > self.interval:
            raise ValueError("timeout must not be greater than interval (checks would overlap)")
        return self


# Series a monitor can opt into beyond its default set (README, "Metric
# reference"); each costs Prometheus that many series per monitor.
OptionalSeries = Literal["checkins", "duration_histogram", "last_outcome"]


class PingSpec(_Strict):
    """How pings authenticate. Secrets are referenced, never written here."""

    keys: list[str] | None = Field(
        default=None, description="names of the ping keys that may ping this monitor by slug"
    )
    # API tokens (by name) that may record check-ins on this YAML monitor
    # through the token-authenticated routes (Crontify, Sentry). None may
    # unless named here: a token of another team must not be able to mark
    # this job successful or use up its rate limit.
    tokens: list[Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]] = Field(
        default=[], description="names of the write-scope api_tokens that may record check-ins on this monitor"
    )
    uuid_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    uuid_file: str | None = None
    # A migrated CrossCheck flight's X-API-Key and short-URL code.
    api_key_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    api_key_file: str | None = None
    shortcode_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    shortcode_file: str | None = None

    @model_validator(mode="after")
    def _one_uuid_source(self) -> PingSpec:
        for kind in ("uuid", "api_key", "shortcode"):
            if getattr(self, f"{kind}_env") is not None and getattr(self, f"{kind}_file") is not None:
                raise ValueError(f"give at most one of {kind}_env and {kind}_file")
        return self

    def secret_refs(self) -> tuple[tuple[str, str | None, str | None], ...]:
        return tuple(
            (kind, getattr(self, f"{kind}_env"), getattr(self, f"{kind}_file"))
            for kind in ("api_key", "shortcode")
            if getattr(self, f"{kind}_env") is not None or getattr(self, f"{kind}_file") is not None
        )


AlertName = Literal["missed", "failed", "stuck", "too_long", "silent_failure", "probe_down"]


class AlertSwitches(_Strict):
    """`alerts:` (DESIGN.md's per-monitor switches): each of the monitor's
    alerts on (the default) or off. Off mutes it exactly as `mute:` does:
    cronmon_alert_muted, which the shipped rules and the bridge honour; the
    status and series stay as they are."""

    missed: bool = True
    failed: bool = True
    stuck: bool = True
    too_long: bool = True
    silent_failure: bool = True
    probe_down: bool = True

    def off(self) -> list[str]:
        return [name for name, on in self.model_dump().items() if not on]


class MonitorSpec(_Strict):
    id: Annotated[str, Field(pattern=MONITOR_ID_PATTERN)]
    name: str = ""
    description: str = ""
    # Optional for an active monitor (`http:`): it expects a landing per check.
    schedule: ScheduleSpec | None = None
    http: HttpProbeSpec | None = None
    grace: Duration = 300.0
    max_runtime: Duration | None = None
    # A success that ran shorter is a silent failure (the job that "ran" but
    # did nothing); only runs whose duration is known (paired with a start,
    # or reported) are judged.
    min_runtime: Duration | None = None
    failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 1
    recovery_threshold: Annotated[int, Field(ge=1, le=1000)] = 1
    labels: dict[str, Annotated[str, Field(max_length=256)]] = {}
    group: str = ""
    paused: bool = False
    # Opt-out of "a job that never reports pages": stay `new` (never
    # paging) until the first check-in, as Healthchecks does.
    quiet_until_first_checkin: bool = False
    ping: PingSpec = PingSpec()
    meta_rules: list[str] = []
    rate_limit: str | None = None
    allowed_ips: list[str] = []
    metrics: list[OptionalSeries] = []
    # Alerts switched off for this monitor: a list (`mute:`), or the
    # on/off switches of `alerts:` (Boxwatch's alert_on_* map to them).
    mute: list[AlertName] = []
    alerts: AlertSwitches | None = None

    @model_validator(mode="after")
    def _schedule_or_probe(self) -> MonitorSpec:
        if self.schedule is None and self.http is None:
            raise ValueError("give a schedule (interval or cron), or an http probe")
        if self.schedule is not None and self.http is not None:
            raise ValueError("an http monitor's schedule is its probe interval: give schedule or http, not both")
        return self

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_network(value)
        return values

    @field_validator("meta_rules")
    @classmethod
    def _meta_rules(cls, rules: list[str]) -> list[str]:
        for rule in rules:
            if not _META_RULE_RE.match(rule):
                raise ValueError(
                    f"{rule!r} is not a meta rule; write it like 'rows_processed < 1' "
                    "(a key, one of < <= > >= == !=, a number)"
                )
        return rules

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate_limit(value)
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for label in labels:
            if not LABEL_NAME_PATTERN.match(label) or label.startswith("__"):
                raise ValueError(
                    f"{label!r} is not a valid Prometheus label name "
                    "(letters, digits and _, not starting with a digit or __)"
                )
            if label in RESERVED_LABELS:
                raise ValueError(
                    f"label {label!r} is reserved: cronmon or Prometheus sets it itself; rename it"
                )
        return labels

    @field_validator("max_runtime", "min_runtime")
    @classmethod
    def _positive_runtime(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @model_validator(mode="after")
    def _runtime_bounds(self) -> MonitorSpec:
        if self.min_runtime is not None and self.max_runtime is not None and self.min_runtime >= self.max_runtime:
            raise ValueError(
                f"min_runtime ({self.min_runtime:g}s) must be shorter than max_runtime ({self.max_runtime:g}s)"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_mute(self) -> MonitorSpec:
        if self.alerts is not None and self.mute:
            raise ValueError("give alerts: (on/off switches) or mute: (a list), not both; alerts: is the newer form")
        return self

    def muted_alerts(self) -> list[str]:
        """The alerts switched off, by `mute:` or `alerts:` name."""
        return self.alerts.off() if self.alerts is not None else list(self.mute)


class PingKeySpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]
    env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PingKeySpec:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (an environment variable) or file (a path)")
        return self


class ApiTokenSpec(_Strict):
    """A management API bearer token: who it is, what it may do. The token
    itself comes from `env` or `file`, never from here."""

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]
    env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    file: str | None = None
    owner: Annotated[str, Field(min_length=1, max_length=64)]
    team: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    scope: Literal["read", "write"] = "read"

    @model_validator(mode="after")
    def _one_source(self) -> ApiTokenSpec:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (an environment variable) or file (a path)")
        return self


class GroupSpec(_Strict):
    """Settings every monitor of a group (its `group:` field) shares, API
    monitors included."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    metrics: list[OptionalSeries] = []


class ConfigFile(_Strict):
    ping_keys: list[PingKeySpec] = []
    api_tokens: list[ApiTokenSpec] = []
    groups: list[GroupSpec] = []
    monitors: list[MonitorSpec] = []


@dataclass(frozen=True)
class PingKeyRef:
    name: str
    env: str | None
    file: str | None
    source: str


@dataclass(frozen=True)
class ApiTokenRef:
    name: str
    env: str | None
    file: str | None
    owner: str
    team: str | None
    scope: str
    source: str


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration: what reload swaps in at once."""

    monitors: tuple[Monitor, ...]
    ping_keys: tuple[PingKeyRef, ...]
    files: tuple[str, ...]
    api_tokens: tuple[ApiTokenRef, ...] = ()
    # group name -> optional series its monitors opt into
    group_metrics: Mapping[str, frozenset[str]] = dataclass_field(default_factory=dict)


def config_files(path: str | Path) -> list[Path]:
    """The YAML files a config path stands for, in the order they merge."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise ConfigError([f"{root}: no *.yaml or *.yml files in this directory"])
        return files
    if root.is_file():
        return [root]
    raise ConfigError([f"{root}: no such file or directory"])


def config_digest(path: str | Path) -> bytes:
    """SHA-256 over the names and contents of the config's files: equal
    digests, equal configs (a reload of unchanged files need not parse)."""
    sha = hashlib.sha256()
    for file in config_files(path):
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise ConfigError([f"{file}: cannot read: {exc}"]) from None
        sha.update(f"{file}\0{len(content)}\0".encode())
        sha.update(content)
    return sha.digest()


def load_config(path: str | Path, *, now: float | None = None) -> Config:
    """Read and validate a YAML file or a directory of YAML files.

    Raises ConfigError listing every problem found. `now` is only used to
    check that each cron expression has a next tick.
    """
    now = time.time() if now is None else now
    files = config_files(path)
    problems: list[str] = []
    monitors: list[Monitor] = []
    ping_keys: list[PingKeyRef] = []
    seen_ids: dict[str, str] = {}
    seen_keys: dict[str, str] = {}
    seen_tokens: dict[str, str] = {}
    seen_groups: dict[str, str] = {}
    api_tokens: list[ApiTokenRef] = []
    group_metrics: dict[str, frozenset[str]] = {}
    for file in files:
        parsed = _parse_file(file, problems, now)
        if parsed is None:
            continue
        for key in parsed.ping_keys:
            if _first_declaration(seen_keys, key.name, file, 'ping key "{}": field "name"', problems):
                ping_keys.append(PingKeyRef(key.name, key.env, key.file, str(file)))
        for token in parsed.api_tokens:
            if _first_declaration(seen_tokens, token.name, file, 'api token "{}": field "name"', problems):
                api_tokens.append(
                    ApiTokenRef(token.name, token.env, token.file, token.owner, token.team, token.scope, str(file))
                )
        for group in parsed.groups:
            if _first_declaration(seen_groups, group.name, file, 'group "{}": field "name"', problems):
                group_metrics[group.name] = frozenset(group.metrics)
        for spec in parsed.monitors:
            if _first_declaration(seen_ids, spec.id, file, 'monitor "{}": field "id"', problems):
                monitors.append(_to_monitor(spec, str(file)))
    scopes = {token.name: token.scope for token in api_tokens}
    for monitor in monitors:
        for key_name in monitor.ping_key_names or ():
            if key_name not in seen_keys:
                problems.append(
                    f'{monitor.source}: monitor "{monitor.id}": field "ping.keys": '
                    f'no ping key named "{key_name}" is declared under ping_keys'
                )
        for token_name in monitor.ping_token_names:
            if token_name not in scopes:
                problems.append(
                    f'{monitor.source}: monitor "{monitor.id}": field "ping.tokens": '
                    f'no api token named "{token_name}" is declared under api_tokens'
                )
            elif scopes[token_name] != "write":
                problems.append(
                    f'{monitor.source}: monitor "{monitor.id}": field "ping.tokens": api token "{token_name}" '
                    'has the read scope; recording check-ins needs scope: write'
                )
    if problems:
        raise ConfigError(problems)
    return Config(
        tuple(monitors), tuple(ping_keys), tuple(str(f) for f in files), tuple(api_tokens), group_metrics
    )


def _first_declaration(seen: dict[str, str], name: str, file: Path, subject: str, problems: list[str]) -> bool:
    """Record where `name` is declared; a second declaration is a problem."""
    if name in seen:
        problems.append(f"{file}: {subject.format(name)}: duplicate, already declared in {seen[name]}")
        return False
    seen[name] = str(file)
    return True


def _parse_file(file: Path, problems: list[str], now: float) -> ConfigFile | None:
    try:
        raw = yaml.load(file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problems.append(f"{file}: {where}{exc.problem or exc}")
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(f"{file}: cannot read: {exc}")
        return None
    if raw is None:
        return ConfigFile()
    if not isinstance(raw, dict):
        problems.append(f"{file}: the top level must be a mapping with monitors:, ping_keys: and/or api_tokens:")
        return None
    parsed, errors = _validate_file(raw)
    if parsed is None:
        problems.extend(_describe(file, raw, errors))
        return None
    before = len(problems)
    for spec in parsed.monitors:
        if spec.schedule is not None and spec.schedule.cron is not None:
            try:
                validate_cron(spec.schedule.cron, spec.schedule.timezone or "UTC", now)
            except ScheduleError as err:
                problems.append(f'{file}: monitor "{spec.id}": field "schedule.cron": {err}')
    return parsed if len(problems) == before else None


def _validate_file(raw: dict) -> tuple[ConfigFile | None, list[Any]]:
    """Validate one file's mapping: (the file, pydantic's error dicts).

    Monitors are validated one at a time rather than in one call over the
    whole file: pydantic holds the GIL for the length of a call, and one
    call over 10,000 monitors kept a reloading cronmon from answering pings
    for half a second. Locations are those a whole-file validation gives."""
    errors: list[Any] = []  # pydantic's ErrorDetails
    monitors = raw.get("monitors")
    per_item = isinstance(monitors, list)
    try:
        head = ConfigFile.model_validate({k: v for k, v in raw.items() if k != "monitors"} if per_item else raw)
    except ValidationError as exc:
        errors.extend(exc.errors(include_url=False))
        head = None
    specs: list[MonitorSpec] = []
    if per_item:
        for index, item in enumerate(monitors or ()):
            try:
                specs.append(MonitorSpec.model_validate(item))
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    errors.append({**error, "loc": ("monitors", index, *error["loc"])})
    if errors or head is None:
        return None, errors
    return (head.model_copy(update={"monitors": specs}) if per_item else head), []


# Top-level list sections: how their items are named in messages.
_SECTIONS = {
    "monitors": ("monitor", "id"), "ping_keys": ("ping key", "name"), "api_tokens": ("api token", "name"),
    "groups": ("group", "name"),
}


def _describe(file: Path, raw: dict, errors: list[dict]) -> list[str]:
    """Turn pydantic's error locations into file / monitor / field messages."""
    out = []
    for loc, field, message in _issues(errors):
        subject = ""
        if len(loc) >= 2 and loc[0] in _SECTIONS and isinstance(loc[1], int):
            section, index = loc[0], loc[1]
            items = raw.get(section) or []
            item = items[index] if index < len(items) else None
            what, ident_field = _SECTIONS[section]
            ident = item.get(ident_field) if isinstance(item, dict) else None
            subject = f'{what} "{ident}": ' if isinstance(ident, str) else f"{what} #{index + 1}: "
        where = f'field "{field}": ' if field else ""
        out.append(f"{file}: {subject}{where}{message}")
    return out


@functools.cache
def _known_keys() -> tuple[str, ...]:
    """Every key of every config model: what an unknown key is compared
    with for a "did you mean" (alerts: {long: ...} -> too_long)."""
    names: set[str] = set()
    pending: list[type[BaseModel]] = [_Strict]
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        names.update(model.model_fields)
    return tuple(sorted(names))


def _issues(errors: list[Any]) -> list[tuple[list, str, str]]:
    """(location, dotted field within its item, message) of each error."""
    out = []
    for error in errors:
        loc = list(error["loc"])
        inner = loc[2:] if len(loc) >= 2 and loc[0] in _SECTIONS and isinstance(loc[1], int) else loc
        # Drop pydantic's internal tags for union branches and validators.
        field = ".".join(
            str(p) for p in inner if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
        )
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(str(loc[-1]), _known_keys(), n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else "check the spelling; "
            message = f"unknown key ({hint}see README for the fields)"
        elif error["type"] == "string_pattern_mismatch" and field == "id":
            message = (
                f"{error['input']!r} is not a valid id: lower-case letters, digits, _ . - "
                "(1 to 63 characters, starting with a letter or digit)"
            )
        out.append((loc, field, message))
    return out


class SpecError(ValueError):
    """A monitor definition sent to an API is invalid: (field, reason) pairs."""

    def __init__(self, issues: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {r}" if f else r for f, r in issues))
        self.issues = issues


def parse_monitor_spec(data: Any, now: float) -> MonitorSpec:
    """Validate a monitor definition from an API (the YAML fields, as JSON)."""
    if not isinstance(data, dict):
        raise SpecError([("", "the body must be a JSON object with the monitor's fields")])
    if "ping" in data:
        raise SpecError([("ping", "ping settings can only be set in YAML; API monitors are pinged "
                                  "by their ping UUID or by a ping key and their id")])
    try:
        spec = MonitorSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([(field, message) for _, field, message in _issues(exc.errors(include_url=False))]) from None
    if spec.schedule is not None and spec.schedule.cron is not None:
        try:
            validate_cron(spec.schedule.cron, spec.schedule.timezone or "UTC", now)
        except ScheduleError as err:
            raise SpecError([("schedule.cron", str(err))]) from None
    return spec


def monitor_from_definition(monitor_id: str, definition: dict, now: float) -> Monitor:
    """An API monitor as stored in Redis: {"spec": {...}, "owner": ..., "team": ...}."""
    try:
        spec = parse_monitor_spec(definition["spec"], now)
    except (SpecError, KeyError, TypeError) as exc:
        raise ConfigError([f'API monitor "{monitor_id}": {exc}']) from None
    return replace(
        _to_monitor(spec, "api"),
        owner=definition.get("owner"),
        team=definition.get("team"),
        extras=definition.get("extras") or {},
        retired=bool(definition.get("retired")),
    )


def _to_monitor(spec: MonitorSpec, source: str) -> Monitor:
    return Monitor(
        id=spec.id,
        name=spec.name,
        description=spec.description,
        # An active monitor without a schedule lands once per check (the
        # spec's validator guarantees one of the two).
        schedule=spec.schedule.to_schedule() if spec.schedule else IntervalSchedule(spec.http.interval),  # type: ignore[union-attr]
        probe=HttpProbe(spec.http.url, spec.http.interval, spec.http.slow, spec.http.timeout) if spec.http else None,
        grace=spec.grace,
        max_runtime=spec.max_runtime,
        min_runtime=spec.min_runtime,
        failure_threshold=spec.failure_threshold,
        recovery_threshold=spec.recovery_threshold,
        labels=tuple(sorted(spec.labels.items())),
        group=spec.group,
        paused=spec.paused,
        quiet_until_first_checkin=spec.quiet_until_first_checkin,
        source=source,
        ping_key_names=tuple(spec.ping.keys) if spec.ping.keys is not None else None,
        ping_token_names=tuple(spec.ping.tokens),
        uuid_env=spec.ping.uuid_env,
        uuid_file=spec.ping.uuid_file,
        secret_refs=spec.ping.secret_refs(),
        meta_rules=tuple(parse_meta_rule(rule) for rule in spec.meta_rules),
        rate_limit=parse_rate_limit(spec.rate_limit) if spec.rate_limit else None,
        allowed_networks=tuple(parse_network(value) for value in spec.allowed_ips),
        metrics=frozenset(spec.metrics),
        muted=frozenset(MUTABLE_ALERTS[name] for name in spec.muted_alerts()),
    )


# libyaml's parser when PyYAML was built with it (the wheels are): 10x faster
# on large configs. The safe constructor is the same either way.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]  # a base chosen at import time
    """SafeLoader that rejects a key given twice in one mapping (PyYAML
    silently keeps the last one, which hides copy-paste mistakes)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        # Python refuses to convert integers over 4,300 digits (a ValueError
        # with no line number); no field takes more than a few digits.
        digits = len(str(node.value).lstrip("+-").replace("_", ""))
        if digits > 64:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {digits} digits is not a value any field takes", node.start_mark
            )
        return super().construct_yaml_int(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)
