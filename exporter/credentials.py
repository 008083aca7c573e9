"""Ping secrets: where they come from, and how a presented one is checked.

Secrets never live in YAML. A ping key comes from, in order:

1. ``ping_keys:`` in the config, each naming an environment variable or a
   file that holds the key;
2. else the ``CRONMON_PING_KEY`` environment variable (key name "default");
3. else a key generated on first start and kept in ``<data dir>/ping_key``
   (mode 0600), so the URLs stay the same across restarts.

Each monitor also answers on ``/ping/<uuid>``. Its UUID comes from
``ping.uuid_env`` / ``ping.uuid_file`` when given (keep a job's existing
Healthchecks UUID that way), else it is derived from the first ping key the
monitor accepts: HMAC-SHA256 keyed with the key's SHA-256 digest over the
monitor id, shaped as a version-4 UUID.
That is unguessable without the key, stable across restarts and replicas
sharing the key, and rotates with the key.

Only SHA-256 digests of keys and UUIDs are kept after start-up, and a
presented key is compared in constant time.

Who is shown which ping URL (see `ping_urls`): secrets the operator
configured (keys and UUIDs from env or files) are never printed or served
by `cronmon serve`, only placeholders naming where they come from; what
cronmon made itself (the generated key, derived UUIDs) is printed in the
start-up banner, and the management API shows a monitor's own UUID URL to
tokens that may check in on it, never a ping key (a key addresses every
monitor that accepts it). `cronmon urls`, run by whoever holds the config
and its environment, prints every URL with the real secrets.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, ConfigError
from .model import Monitor

GENERATED_KEY_FILE = "ping_key"
DEFAULT_KEY_NAME = "default"


@dataclass(frozen=True)
class PingKey:
    name: str
    digest: bytes


@dataclass(frozen=True)
class ApiToken:
    """A management API token: its digest, and who holds it."""

    name: str
    digest: bytes
    owner: str
    team: str | None
    scope: str  # "read" | "write"

    @property
    def can_write(self) -> bool:
        return self.scope == "write"


@dataclass(frozen=True)
class ResolvedSecrets:
    ping_keys: tuple[PingKey, ...]
    uuid_digests: Mapping[bytes, str]  # sha256(uuid text) -> monitor id
    # Plain values: the key generated here (printed at start-up: the
    # operator has no other way to learn it), and each YAML monitor's UUID,
    # configured or derived (derived_ping_uuid says which may be shown).
    generated_key: str | None
    monitor_uuids: Mapping[str, str]
    api_tokens: tuple[ApiToken, ...] = ()
    # Digest of the key that API-created monitors derive their ping UUIDs
    # from (the first ping key).
    uuid_key_digest: bytes | None = None
    # (kind, sha256(secret)) -> monitor id, for secrets YAML monitors import
    # from env or files (ping.api_key_env, ping.shortcode_file, ...).
    imported: Mapping[tuple[str, bytes], str] = field(default_factory=dict)
    # True when generated_key was made by this resolve; False when it was
    # read back from the data dir (kept from an earlier start).
    generated_now: bool = False
    # Keys presented that matched (ping_key_name): at most one entry a key.
    _matched: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def ping_key_name(self, presented: str) -> str | None:
        """match_ping_key over these keys, remembering the keys that matched.

        Why: every slug ping presents a key, and its SHA-256 and constant-time
        comparisons were ~2% of a worker's CPU a ping. Why this leaks nothing
        the comparison protects: a dict lookup hashes the presented text
        whole (SipHash, seeded per process) and compares texts only when
        the hashes are equal, so its time does not depend on how much of a
        wrong key is right; and only a key that matched is remembered."""
        name = self._matched.get(presented)
        if name is None:
            name = match_ping_key(presented, self.ping_keys)
            if name is not None and len(self._matched) < len(self.ping_keys):
                self._matched[presented] = name
        return name


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def derive_secret(key_digest: bytes, kind: str, monitor_id: str) -> str:
    """An API monitor's API key ("api_key", 43 characters, 256 bits) or
    short-URL code ("shortcode", 12 base62 characters, 71 bits), derived
    like its ping UUID: unguessable without the ping key, the same on every
    replica, never stored."""
    mac = hmac.new(key_digest, f"cronmon-{kind}:{monitor_id}".encode(), hashlib.sha256).digest()
    if kind == "api_key":
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    number = int.from_bytes(mac[:9], "big")
    code = ""
    for _ in range(12):
        number, digit = divmod(number, 62)
        code += _BASE62[digit]
    return code


def derive_uuid(key_digest: bytes, monitor_id: str) -> str:
    """A monitor's ping UUID from the SHA-256 digest of a ping key (so only
    digests ever need to stay in memory)."""
    mac = hmac.new(key_digest, b"cronmon-monitor-uuid:" + monitor_id.encode(), hashlib.sha256)
    return str(uuid.UUID(bytes=mac.digest()[:16], version=4))


# Every registry (rebuilt whenever an API monitor changes) indexes the
# digests of its API monitors' derived secrets; they are pure functions of
# (key digest, monitor id), so they are computed once, not per registry.
@functools.lru_cache(maxsize=1 << 17)
def derived_uuid_digest(key_digest: bytes, monitor_id: str) -> bytes:
    return digest(derive_uuid(key_digest, monitor_id))


@functools.lru_cache(maxsize=1 << 17)
def derived_secret_digest(key_digest: bytes, kind: str, monitor_id: str) -> bytes:
    return digest(derive_secret(key_digest, kind, monitor_id))


class NoPingKey(Exception):
    """`resolve_with_keys` found no ping key and was not to generate one."""


def resolve(config: Config, data_dir: Path, env: Mapping[str, str] | None = None) -> ResolvedSecrets:
    """Read every secret the config refers to; ConfigError if one is missing."""
    return _resolve(config, data_dir, os.environ if env is None else env, generate=True)[0]


def resolve_with_keys(
    config: Config, data_dir: Path, env: Mapping[str, str] | None = None
) -> tuple[ResolvedSecrets, dict[str, str]]:
    """`resolve`, from the same places, plus the plain ping keys by name:
    for `cronmon urls`, which shows the operator every URL. It never
    generates a key (NoPingKey when `cronmon serve` would have to)."""
    return _resolve(config, data_dir, os.environ if env is None else env, generate=False)


def _resolve(
    config: Config, data_dir: Path, env: Mapping[str, str], generate: bool
) -> tuple[ResolvedSecrets, dict[str, str]]:
    problems: list[str] = []
    keys: dict[str, str] = {}
    generated = None
    generated_now = False
    for ref in config.ping_keys:
        value = _read_secret(ref.env, ref.file, env, f'{ref.source}: ping key "{ref.name}"', problems)
        if value is not None:
            keys[ref.name] = value
    if not config.ping_keys:
        if env.get("CRONMON_PING_KEY"):
            keys[DEFAULT_KEY_NAME] = env["CRONMON_PING_KEY"].strip()
        else:
            generated, generated_now = _generated_key(data_dir, create=generate)
            if generated is None:
                raise NoPingKey(
                    f"no ping key: CRONMON_PING_KEY is not set, the config declares no ping_keys:, and "
                    f"{data_dir / GENERATED_KEY_FILE} (the key `cronmon serve` generates on its first start) "
                    "does not exist; pass the --data-dir that `cronmon serve` uses, set CRONMON_PING_KEY, "
                    "or declare ping_keys: in the config"
                )
            keys[DEFAULT_KEY_NAME] = generated

    uuids: dict[str, str] = {}
    for monitor in config.monitors:
        where = f'{monitor.source}: monitor "{monitor.id}"'
        if monitor.uuid_env or monitor.uuid_file:
            value = _read_secret(monitor.uuid_env, monitor.uuid_file, env, where, problems, "ping.uuid_")
            if value is None:
                continue
            try:
                uuids[monitor.id] = str(uuid.UUID(value))
            except ValueError:
                source = f"environment variable {monitor.uuid_env}" if monitor.uuid_env else f"file {monitor.uuid_file}"
                problems.append(f"{where}: {source} does not hold a UUID")
            continue
        first = _uuid_key_name(monitor, tuple(keys))
        if first is not None:
            uuids[monitor.id] = derive_uuid(digest(keys[first]), monitor.id)

    imported: dict[tuple[str, bytes], str] = {}
    for monitor in config.monitors:
        for kind, env_name, file in monitor.secret_refs:
            where = f'{monitor.source}: monitor "{monitor.id}"'
            value = _read_secret(env_name, file, env, where, problems, f"ping.{kind}_")
            if value is None:
                continue
            if (kind, digest(value)) in imported:
                other = imported[(kind, digest(value))]
                problems.append(f'{where}: its ping.{kind} is also the {kind} of monitor "{other}"')
            imported[(kind, digest(value))] = monitor.id

    tokens = []
    for token_ref in config.api_tokens:
        value = _read_secret(token_ref.env, token_ref.file, env, f'{token_ref.source}: api token "{token_ref.name}"',
                             problems)
        if value is not None:
            tokens.append(ApiToken(token_ref.name, digest(value), token_ref.owner, token_ref.team, token_ref.scope))

    seen: dict[str, str] = {}
    for monitor_id, value in uuids.items():
        if value in seen:
            problems.append(f'monitor "{monitor_id}": its ping UUID is also the UUID of monitor "{seen[value]}"')
        seen[value] = monitor_id
    if problems:
        raise ConfigError(problems)
    resolved = ResolvedSecrets(
        ping_keys=tuple(PingKey(name, digest(value)) for name, value in keys.items()),
        uuid_digests={digest(value): monitor_id for monitor_id, value in uuids.items()},
        generated_key=generated,
        monitor_uuids=uuids,
        api_tokens=tuple(tokens),
        uuid_key_digest=digest(next(iter(keys.values()))) if keys else None,
        imported=imported,
        generated_now=generated_now,
    )
    return resolved, keys


def _uuid_key_name(monitor: Monitor, key_names: tuple[str, ...]) -> str | None:
    """The key a YAML monitor's UUID is derived from: the first of its
    `ping.keys` (default: of all keys) that exists."""
    names = monitor.ping_key_names if monitor.ping_key_names is not None else key_names
    return next((name for name in names if name in key_names), None)


def slug_key_names(monitor: Monitor, secrets: ResolvedSecrets) -> list[str]:
    """The names of the ping keys that address `monitor` by slug
    (/ping/<key>/<id>), in the order they are declared."""
    return [key.name for key in secrets.ping_keys if key_allows(monitor, key.name)]


def derived_ping_uuid(monitor: Monitor, secrets: ResolvedSecrets) -> str | None:
    """A YAML monitor's ping UUID when cronmon derived it (`resolve` did,
    from its first ping key); None when it comes from ping.uuid_env /
    uuid_file (the operator's secret) or the monitor accepts no key."""
    if monitor.uuid_env or monitor.uuid_file:
        return None
    return secrets.monitor_uuids.get(monitor.id)


def ping_urls(
    monitor: Monitor, secrets: ResolvedSecrets, base_url: str, keys: Mapping[str, str] | None = None
) -> tuple[str | None, list[str]]:
    """A YAML monitor's ping URLs: its UUID URL (None if it has no UUID),
    and one /ping/<key>/<id> URL per ping key that addresses it (none if
    its ping.keys is empty).

    With `keys` (the plain keys, from `resolve_with_keys`: `cronmon urls`)
    every secret is filled in. Without (the start-up banner) only what
    cronmon made itself is: the generated key and derived UUIDs; a key or
    UUID the operator configured shows as a placeholder naming its source."""
    uuid_url = None
    if keys is None and (monitor.uuid_env or monitor.uuid_file):
        source = f"env {monitor.uuid_env}" if monitor.uuid_env else f"file {monitor.uuid_file}"
        uuid_url = f"{base_url}/ping/<uuid from {source}>"
    elif secrets.monitor_uuids.get(monitor.id):
        uuid_url = f"{base_url}/ping/{secrets.monitor_uuids[monitor.id]}"
    slug_urls = []
    for name in slug_key_names(monitor, secrets):
        if keys is not None and name in keys:
            key = keys[name]
        elif secrets.generated_key is not None and name == DEFAULT_KEY_NAME:
            key = secrets.generated_key
        else:
            key = f"<ping key {name}>"
        slug_urls.append(f"{base_url}/ping/{key}/{monitor.id}")
    return uuid_url, slug_urls


def match_ping_key(presented: str, keys: tuple[PingKey, ...]) -> str | None:
    """The name of the key `presented` is, compared in constant time."""
    presented_digest = digest(presented)
    found = None
    for key in keys:  # no early exit: timing does not depend on which key matched
        if hmac.compare_digest(presented_digest, key.digest):
            found = key.name
    return found


def match_api_token(presented: str, tokens: tuple[ApiToken, ...]) -> ApiToken | None:
    """The token `presented` is, compared in constant time."""
    presented_digest = digest(presented)
    found = None
    for token in tokens:
        if hmac.compare_digest(presented_digest, token.digest):
            found = token
    return found


def key_allows(monitor: Monitor, key_name: str) -> bool:
    return monitor.ping_key_names is None or key_name in monitor.ping_key_names


def _read_secret(
    env_name: str | None,
    file: str | None,
    env: Mapping[str, str],
    where: str,
    problems: list[str],
    field_prefix: str = "",
) -> str | None:
    if env_name:
        value = env.get(env_name, "").strip()
        if not value:
            problems.append(f'{where}: field "{field_prefix}env": environment variable {env_name} is not set or empty')
            return None
        return value
    assert file is not None
    try:
        value = Path(file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(f'{where}: field "{field_prefix}file": cannot read {file}: {exc.strerror}')
        return None
    if not value:
        problems.append(f'{where}: field "{field_prefix}file": {file} is empty')
        return None
    return value


def _generated_key(data_dir: Path, create: bool = True) -> tuple[str | None, bool]:
    """The key kept in the data dir, and whether it was made just now
    (None if there is none and `create` is false)."""
    path = data_dir / GENERATED_KEY_FILE
    try:
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing, False
    except FileNotFoundError:
        pass
    if not create:
        return None, False
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(16)
    # Create with 0600 from the start; never world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value, True
