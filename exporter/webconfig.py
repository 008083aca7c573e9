"""`--web.config.file`: TLS, basic auth and security headers, in the format
of Prometheus' exporter-toolkit (docs/web-configuration.md there).

`load_web_config(path)` reads and validates the whole file at start-up
(a bad file refuses to start, every problem named by file and key), builds
the `ssl.SSLContext` the listening socket uses and checks every bcrypt
hash. Unlike exporter-toolkit, which re-reads the file per request and per
connection, the file is read once: a change to it (a new user, header or
setting) takes a restart.

What Python's ssl module cannot do is refused with a sentence saying so,
never silently weakened: client_auth_type RequestClientCert and
RequireAnyClientCert (an unverified client certificate), TLS 1.3 cipher
suite names, more than one curve, and rate_limit (not implemented).
`http2: true` is accepted and ignored with a warning: aiohttp serves
HTTP/1.1 only.

Certificates are the exception to "read once": CertificateWatch reloads
cert_file, key_file and client_ca_file when they change.

`install(app, config)` adds basic auth (on /metrics, the status pages and
/-/ endpoints but /-/healthy; see `is_protected`), the client SAN check and
the configured response headers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)


class WebConfigError(Exception):
    """The web config file cannot be used; `problems` is one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# exporter-toolkit's names (Go's crypto/tls) -> ssl.TLSVersion.
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's tls.CipherSuites() (TLS 1.0-1.2) -> OpenSSL's names.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")

# Go's tls.CurveID names -> OpenSSL's.
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}

# The headers exporter-toolkit lets a file set, with the values it allows
# (None: any value).
SECURITY_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

_BCRYPT_HASH = re.compile(r"\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# Compared against for an unknown user, so that the answer takes as long as
# for a known one (bcrypt of "fakepassword", as in exporter-toolkit).
_FAKE_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"

ClientAuthType = Literal[
    "NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert",
    "VerifyClientCertIfGiven", "RequireAndVerifyClientCert",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TLSServerConfig(_Strict):
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: str | None = None
    client_allowed_sans: list[str] | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS13"
    cipher_suites: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = Field(default_factory=list)

    @field_validator("cipher_suites")
    @classmethod
    def _known_ciphers(cls, value: list[str]) -> list[str]:
        for name in value:
            if name in TLS13_SUITES:
                raise ValueError(
                    f"{name} is a TLS 1.3 suite: those cannot be chosen (Python's ssl module, like Go, always "
                    "offers all three); list TLS 1.2 suites only"
                )
            if name not in CIPHER_SUITES:
                raise ValueError(f"unknown cipher: {name} (known: {', '.join(CIPHER_SUITES)})")
        return value

    @field_validator("curve_preferences")
    @classmethod
    def _known_curves(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in CURVES:
                raise ValueError(f"unknown curve: {name} (known: {', '.join(CURVES)})")
        if len(value) > 1:
            raise ValueError(
                "Python's ssl module can set one curve only (SSLContext.set_ecdh_curve): list a single curve"
            )
        return value

    @field_validator("client_auth_type")
    @classmethod
    def _verifiable(cls, value: str) -> str:
        if value in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
            raise ValueError(
                f"{value} (a client certificate that is not verified) is not supported: Python's ssl module "
                "verifies every client certificate it accepts; use RequireAndVerifyClientCert (or "
                "VerifyClientCertIfGiven) with client_ca_file"
            )
        return value

    def enabled(self) -> bool:
        """exporter-toolkit's TLSConfig.IsEnabled: any TLS key set."""
        return any(
            (self.cert, self.key, self.cert_file, self.key_file, self.client_ca, self.client_ca_file)
        ) or "client_auth_type" in self.model_fields_set


class HTTPServerConfig(_Strict):
    http2: bool = True
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name not in SECURITY_HEADERS:
                raise ValueError(f"HTTP header {name!r} can not be configured (only {', '.join(SECURITY_HEADERS)})")
            allowed = SECURITY_HEADERS[name]
            if allowed and text not in allowed and text != "":
                raise ValueError(f"invalid value for {name}: expected one of {list(allowed)}, got {text!r}")
        return value


class WebConfigFile(_Strict):
    tls_server_config: TLSServerConfig = Field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    rate_limit: Any = None

    @field_validator("rate_limit")
    @classmethod
    def _no_rate_limit(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("rate_limit is not supported by cronmon (remove it; cronmon rate-limits pings itself)")
        return value

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for user, hashed in value.items():
            if not _BCRYPT_HASH.fullmatch(hashed):
                raise ValueError(
                    f"the password of user {user!r} is not a bcrypt hash ($2y$10$ and 53 characters; "
                    "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
                )
        return value


@dataclass(frozen=True, eq=False)
class WebConfig:
    """A validated web config file, ready to serve with."""

    path: Path
    ssl_context: ssl.SSLContext | None
    headers: dict[str, str]
    users: dict[str, bytes]
    client_allowed_sans: tuple[str, ...] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"


def load_web_config(path: Path) -> WebConfig:
    """Read, validate and build everything the file asks for; WebConfigError
    with every problem (file and key) if it cannot be used as it is."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise WebConfigError([f"{path}: cannot read the web config file: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if raw is None:
        raw = {}  # an empty file: no TLS, no auth (as exporter-toolkit)
    if not isinstance(raw, dict):
        raise WebConfigError([f"{path}: a web config file is a mapping (tls_server_config:, basic_auth_users:, ...)"])
    # A section left empty (its entries commented out) is an absent one, as in Go.
    raw = {key: value for key, value in raw.items() if value is not None}
    try:
        parsed = WebConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise WebConfigError([_describe(path, error) for error in exc.errors()]) from None
    tls = parsed.tls_server_config
    if parsed.http_server_config.http2 and "http2" in parsed.http_server_config.model_fields_set:
        log.warning("%s: http_server_config.http2 is ignored: cronmon serves HTTP/1.1 only", path)
    context = None
    if tls.enabled():
        context = _ssl_context(path, tls)
        context.sni_callback = CertificateWatch(path, tls, context)
    if tls.client_allowed_sans is not None and (context is None or context.verify_mode == ssl.CERT_NONE):
        raise WebConfigError(
            [f"{path}: tls_server_config.client_allowed_sans: needs a verified client certificate "
             "(client_auth_type RequireAndVerifyClientCert or VerifyClientCertIfGiven)"]
        )
    return WebConfig(
        path=path,
        ssl_context=context,
        headers={k: v for k, v in parsed.http_server_config.headers.items() if v},
        users={user: hashed.encode() for user, hashed in parsed.basic_auth_users.items()},
        client_allowed_sans=tuple(tls.client_allowed_sans) if tls.client_allowed_sans is not None else None,
    )


def _describe(path: Path, error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (not in the exporter-toolkit web config format)"
    message = message.removeprefix("Value error, ")
    return f"{path}: {where}: {message}"


def _ssl_context(path: Path, tls: TLSServerConfig) -> ssl.SSLContext:
    def problem(key: str, message: str) -> WebConfigError:
        return WebConfigError([f"{path}: tls_server_config.{key}: {message}"])

    def resolve(name: str) -> str:
        # Relative paths are relative to the web config file (as exporter-toolkit).
        return str(path.parent / name) if not os.path.isabs(name) else name

    if tls.cert and tls.cert_file:
        raise problem("cert", "give cert or cert_file, not both")
    if tls.key and tls.key_file:
        raise problem("key", "give key or key_file, not both")
    if tls.client_ca and tls.client_ca_file:
        raise problem("client_ca", "give client_ca or client_ca_file, not both")
    if not (tls.cert or tls.cert_file):
        raise problem("cert_file", "missing one of cert or cert_file")
    if not (tls.key or tls.key_file):
        raise problem("key_file", "missing one of key or key_file")
    if TLS_VERSIONS[tls.min_version] > TLS_VERSIONS[tls.max_version]:
        raise problem("min_version", f"{tls.min_version} is above max_version {tls.max_version}")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    with tempfile.TemporaryDirectory(prefix="cronmon-tls-") as scratch:
        # load_cert_chain takes files only: inline PEM goes through a
        # private (0700) directory removed right after.
        cert_file = resolve(tls.cert_file) if tls.cert_file else _scratch_file(scratch, "cert.pem", tls.cert or "")
        key_file = resolve(tls.key_file) if tls.key_file else _scratch_file(scratch, "key.pem", tls.key or "")
        for key, name in (("cert_file", cert_file), ("key_file", key_file)):
            if not os.path.isfile(name):
                raise problem(key if getattr(tls, key) else key.removesuffix("_file"), f"no such file: {name}")
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise problem(
                "cert_file" if tls.cert_file else "cert",
                f"cannot load the certificate and key ({cert_file}, {key_file}): {exc}",
            ) from None

    has_ca = bool(tls.client_ca or tls.client_ca_file)
    if tls.client_ca_file:
        ca_file = resolve(tls.client_ca_file)
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise problem("client_ca_file", f"cannot load {ca_file}: {exc}") from None
    elif tls.client_ca:
        try:
            context.load_verify_locations(cadata=tls.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise problem("client_ca", f"not PEM certificates: {exc}") from None
    if tls.client_auth_type == "NoClientCert":
        if has_ca:
            raise problem(
                "client_auth_type",
                "client CAs are configured without a client auth policy: set RequireAndVerifyClientCert",
            )
        context.verify_mode = ssl.CERT_NONE
    else:
        if not has_ca:
            raise problem(
                "client_ca_file", f"client_auth_type {tls.client_auth_type} needs client_ca_file (or client_ca)"
            )
        required = tls.client_auth_type == "RequireAndVerifyClientCert"
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL

    if tls.cipher_suites:
        try:
            context.set_ciphers(":".join(CIPHER_SUITES[name] for name in tls.cipher_suites))
        except ssl.SSLError as exc:
            raise problem("cipher_suites", f"OpenSSL here offers none of them: {exc}") from None
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    for name in tls.curve_preferences:
        try:
            context.set_ecdh_curve(CURVES[name])
        except (ssl.SSLError, ValueError) as exc:
            raise problem("curve_preferences", f"OpenSSL here cannot use {name}: {exc}") from None
    return context


# How often, at most, a new connection looks at the certificate files.
CERT_CHECK_INTERVAL = 1.0


class CertificateWatch:
    """cert_file, key_file and client_ca_file are read again when one of
    them changes (looked at, at most once a CERT_CHECK_INTERVAL, as a TLS
    connection opens): a renewed certificate is served without a restart,
    as exporter-toolkit does. A set that does not load (a key written
    before its certificate, say) is logged and the previous one kept.

    It is the context's sni_callback, which OpenSSL calls for every
    ClientHello (with or without SNI); it switches the connection to the
    newest context."""

    def __init__(self, path: Path, tls: TLSServerConfig, context: ssl.SSLContext):
        self.path = path
        self.tls = tls
        names = (tls.cert_file, tls.key_file, tls.client_ca_file)
        self.files = [n if os.path.isabs(n) else str(path.parent / n) for n in names if n]
        self.stamps = self._stamps()
        self.current = context
        self.checked = time.monotonic()
        self.reloads = 0

    def _stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for name in self.files:
            try:
                found = os.stat(name)
            except OSError:
                stamps.append(None)
                continue
            stamps.append((found.st_mtime_ns, found.st_size, found.st_ino))
        return tuple(stamps)

    def __call__(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, initial: ssl.SSLContext):
        now = time.monotonic()
        if self.files and now - self.checked >= CERT_CHECK_INTERVAL:
            self.checked = now
            stamps = self._stamps()
            if stamps != self.stamps:
                self.stamps = stamps
                try:
                    self.current = _ssl_context(self.path, self.tls)
                except WebConfigError as exc:
                    log.error("TLS certificates changed but do not load; serving the previous ones: %s", exc)
                else:
                    self.reloads += 1
                    log.info("TLS certificates reloaded from %s", ", ".join(self.files))
        if self.current is not initial:
            connection.context = self.current
        return None


def _scratch_file(directory: str, name: str, text: str) -> str:
    target = os.path.join(directory, name)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return target


# The status pages: HTML for browsers, JSON for curl, with their own
# per-token view (Authorization: Bearer, or the cookie POST /login sets).
STATUS_PAGES = ("/", "/login", "/logout")


def is_protected(canonical: str | None) -> bool:
    """Whether basic auth guards a route (by its route pattern): /metrics,
    the status pages (/, /monitors/<id>, /login, /logout) and the /-/
    endpoints but /-/healthy. Routes that authenticate themselves stay
    open: pings and check-ins (their URL holds a key or UUID; jobs cannot
    all send basic auth) and the management APIs (their bearer token uses
    the Authorization header that basic auth would)."""
    if canonical is None:
        return False  # 404 / 405: nothing is served
    if canonical == "/metrics" or is_status_page(canonical):
        return True
    return canonical.startswith("/-/") and canonical != "/-/healthy"


def is_status_page(canonical: str) -> bool:
    return canonical in STATUS_PAGES or canonical.startswith("/monitors/")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BasicAuth:
    """Checks `Authorization: Basic` against the file's bcrypt hashes.

    A bcrypt comparison costs tens of milliseconds (cost 10), so one that
    succeeded is remembered: the user's password's HMAC (under a key made
    at start-up, so the plain password is never kept) is compared, in
    constant time, with the presented password's. Failures are not
    remembered (each costs a full bcrypt, which slows guessing).
    Comparisons run in a thread, one at a time (exporter-toolkit's mutex),
    so the event loop keeps serving pings meanwhile."""

    def __init__(self, config: WebConfig):
        self.config = config
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    def _digest(self, password: bytes) -> bytes:
        return hmac.new(self._key, password, hashlib.sha256).digest()

    async def check(self, header: str | None) -> bool:
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        digest = self._digest(password)
        known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        hashed = self.config.users.get(user)
        async with self._lock:
            ok = await asyncio.to_thread(self._bcrypt, password, hashed or _FAKE_HASH)
        if ok and hashed is not None:
            self._verified[user] = digest
            return True
        return False

    def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError:  # over 72 bytes (bcrypt 5 refuses to truncate)
            return False


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _peer_sans(request: web.Request) -> list[str]:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    values = []
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                pass
        values.append(value)
    return values


def _unauthorized() -> web.Response:
    return web.Response(
        status=401, text="Unauthorized\n", content_type="text/plain", headers={"WWW-Authenticate": "Basic"}
    )


def middleware(
    config: WebConfig, known_bearer: Callable[[web.Request], bool] | None = None
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The client SAN check (every route) and basic auth (protected routes).

    One Authorization header cannot carry both Basic and Bearer: a status
    page request with `Authorization: Bearer` passes when `known_bearer`
    says the token is a configured API token (the page then shows that
    token's view; an unknown one is a 401 here). /metrics and /-/ take
    basic auth only."""
    auth = BasicAuth(config) if config.users else None
    allowed = None
    if config.client_allowed_sans is not None:
        allowed = {_normal_san(s) for s in config.client_allowed_sans}

    @web.middleware
    async def web_config_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if allowed is not None and not allowed.intersection(_peer_sans(request)):
            refusal = web.Response(
                status=403, text="client certificate has no allowed SAN\n", content_type="text/plain"
            )
            refusal.force_close()
            return refusal
        canonical = _canonical(request)
        if auth is not None and is_protected(canonical):
            header = request.headers.get("Authorization")
            bearer = (
                header is not None and header[:7].lower() == "bearer " and canonical is not None
                and is_status_page(canonical) and known_bearer is not None and known_bearer(request)
            )
            if not bearer and not await auth.check(header):
                return _unauthorized()
        return await handler(request)

    return web_config_auth


def _normal_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _canonical(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def install(app: web.Application, config: WebConfig) -> None:
    """The configured headers on every response (401s, 404s and pings too,
    as exporter-toolkit does)."""
    if not config.headers:
        return

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in config.headers.items():
            response.headers[name] = value

    app.on_response_prepare.append(add_headers)
