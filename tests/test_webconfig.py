"""--web.config.file (exporter-toolkit's format): TLS with client
certificates, basic auth, security headers, and refusals of bad files.

Real parts: certificates made by the openssl command line, `cronmon serve`
as a process, a real Prometheus (Debian's) scraping it over TLS with a
client certificate and basic auth, curl and httpx as TLS clients."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import bcrypt
import httpx
import pytest
import yaml
from aiohttp import web

from exporter.settings import Settings
from exporter.web.app import create_app
from exporter.web.keys import SWEEPER
from exporter.webconfig import WebConfigError, load_web_config

from .conftest import free_port, wait_for, write_config
from .servers import run_client, start_prometheus_scraping

PASSWORD = "scrape-secret"
# Cost 4: the tests check many requests; the cost is in the hash itself.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
# What htpasswd -nBC makes ($2y$, the same algorithm as Python's $2b$).
HTPASSWD_HASH = HASH.replace("$2b$", "$2y$", 1)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "deny",
    "Strict-Transport-Security": "max-age=31536000",
    "Content-Security-Policy": "default-src 'self'",
}

CONFIG = """
api_tokens:
  - {name: viewer, env: T_VIEWER, owner: ops, scope: read}
monitors:
  - id: backup
    schedule: {interval: 1h}
"""


# --- certificates -----------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> None:
    (directory / f"{name}.cnf").write_text(
        "[req]\ndistinguished_name=dn\n[dn]\n[v3]\nbasicConstraints=critical,CA:TRUE\n"
        "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
    )
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key",
             cwd=directory)
    _openssl("req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={name}", "-config", f"{name}.cnf", "-extensions", "v3", cwd=directory)


def _make_leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"authorityKeyIdentifier=keyid\n{extensions}\n"
    )
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key",
             cwd=directory)
    _openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-set_serial", str(int(time.time() * 1000)), "-days", "2", "-out", f"{name}.crt",
             "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    _make_leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    _make_leaf(d, "client", "ca", "subjectAltName=DNS:scraper.example\nextendedKeyUsage=clientAuth")
    _make_leaf(d, "rogue", "rogue-ca", "subjectAltName=DNS:scraper.example\nextendedKeyUsage=clientAuth")
    return PKI(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
               d / "rogue.crt", d / "rogue.key")


def tls_config(pki: PKI, **extra) -> dict:
    return {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca), **extra,
    }


def write_web_config(directory: Path, content: dict | str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def client_context(pki: PKI, cert: bool = True, rogue: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if rogue:
        context.load_cert_chain(str(pki.rogue_cert), str(pki.rogue_key))
    elif cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


# --- `cronmon serve` as a process ------------------------------------------


class Serve:
    def __init__(self, tmp: Path, flags: list[str], env: dict | None = None):
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        config = write_config(tmp, CONFIG)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CRONMON_")}
        environment.update({"T_VIEWER": "viewer-token", "CRONMON_PING_KEY": "p" * 22, **(env or {})})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config), "--listen",
             f"127.0.0.1:{self.port}", "--data-dir", str(tmp / "data"), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
        )

    def wait_ready(self, pki: PKI, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=client_context(pki)) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.process.stdout.read()  # type: ignore[union-attr]
                try:
                    if client.get(self.base + "/-/healthy", timeout=1).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise AssertionError("cronmon did not start serving TLS")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return out


@pytest.fixture(scope="module")
def tls_server(pki, tmp_path_factory):
    """`cronmon serve` with TLS, a required client certificate, basic auth
    and headers; relative paths in the file (resolved against its folder),
    two worker processes (each reads the file)."""
    tmp = tmp_path_factory.mktemp("tls-serve")
    web_config = write_web_config(pki.ca.parent, {
        "tls_server_config": {
            "cert_file": "server.crt", "key_file": "server.key",
            "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "ca.crt",
        },
        "http_server_config": {"headers": HEADERS},
        "basic_auth_users": {"prometheus": HASH},
    }, "serve-web.yml")
    server = Serve(tmp, ["--workers", "2", "--web.config.file", str(web_config)])
    try:
        server.wait_ready(pki)
        yield server
    finally:
        output = server.stop()
        assert server.process.returncode == 0, output


async def test_prometheus_scrapes_over_tls_with_client_cert_and_basic_auth(tls_server, pki, tmp_path):
    target = f"127.0.0.1:{tls_server.port}"
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    jobs = [
        {"job_name": "cronmon", "scheme": "https", "tls_config": tls,
         "basic_auth": {"username": "prometheus", "password": PASSWORD}, "static_configs": [{"targets": [target]}]},
        {"job_name": "wrong-password", "scheme": "https", "tls_config": tls,
         "basic_auth": {"username": "prometheus", "password": "not-it"}, "static_configs": [{"targets": [target]}]},
    ]
    prometheus, url = await start_prometheus_scraping(tmp_path, jobs)
    try:
        async with httpx.AsyncClient(base_url=url) as api:

            async def up() -> dict[str, str]:
                result = (await api.get("/api/v1/query", params={"query": "up"})).json()["data"]["result"]
                return {r["metric"]["job"]: r["value"][1] for r in result}

            await wait_for(lambda: _has_both(up()), timeout=30)
            assert await up() == {"cronmon": "1", "wrong-password": "0"}
            # What was scraped is cronmon's: its own request counter saw the 401s.
            query = 'cronmon_http_requests_total{job="cronmon",handler="/metrics",code="401"}'

            async def counted() -> bool:
                return bool((await api.get("/api/v1/query", params={"query": query})).json()["data"]["result"])

            await wait_for(counted, timeout=20)
            targets = (await api.get("/api/v1/targets")).json()["data"]["activeTargets"]
            errors = {t["labels"]["job"]: t["lastError"] for t in targets}
            assert errors["cronmon"] == ""
            assert "401" in errors["wrong-password"], errors
    finally:
        prometheus.stop()


async def _has_both(result) -> bool:
    found = await result
    return set(found) == {"cronmon", "wrong-password"}


async def test_a_client_without_a_certificate_fails_the_handshake(tls_server, pki):
    auth = ("prometheus", PASSWORD)
    for context in (client_context(pki, cert=False), client_context(pki, rogue=True)):
        with pytest.raises(httpx.TransportError):
            async with httpx.AsyncClient(verify=context) as client:
                await client.get(tls_server.base + "/-/healthy", auth=auth)
    # curl, with and without its certificate.
    url = tls_server.base + "/metrics"
    code, _, err = await run_client("curl", "-sS", "--cacert", str(pki.ca), "-u", f"prometheus:{PASSWORD}", url)
    assert code != 0, err
    code, out, err = await run_client(
        "curl", "-sS", "--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
        "-u", f"prometheus:{PASSWORD}", url,
    )
    assert code == 0, err
    assert b"cronmon_build_info" in out
    # Plain HTTP on the TLS port is not served.
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{tls_server.port}/metrics")


async def test_basic_auth_and_security_headers_over_tls(tls_server, pki):
    async with httpx.AsyncClient(verify=client_context(pki), base_url=tls_server.base) as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Basic"
        wrong = await client.get("/metrics", auth=("prometheus", "nope"))
        assert wrong.status_code == 401
        ok = await client.get("/metrics", auth=("prometheus", PASSWORD))
        assert ok.status_code == 200
        for response in (refused, wrong, ok, await client.get("/ping/" + "p" * 22 + "/backup")):
            for name, value in HEADERS.items():
                assert response.headers[name] == value, (response.url, name)


# --- refusals ----------------------------------------------------------------


def bad_files(pki: PKI) -> list[tuple[object, str]]:
    """(file content, what the error names) for files that must be refused."""
    good = tls_config(pki)
    return [
        ({"tls_server_config": good, "surprise": 1}, "surprise: unknown key"),
        ({"tls_server_config": {**good, "certfile": "x"}}, "tls_server_config.certfile: unknown key"),
        ({"tls_server_config": {**good, "prefer_server_cipher_suites": "yes"}},
         "tls_server_config.prefer_server_cipher_suites"),
        ({"tls_server_config": {**good, "min_version": "TLS14"}}, "tls_server_config.min_version"),
        ({"tls_server_config": {**good, "min_version": "TLS13", "max_version": "TLS12"}},
         "tls_server_config.min_version: TLS13 is above max_version TLS12"),
        ({"tls_server_config": {**good, "client_auth_type": "Sometimes"}}, "tls_server_config.client_auth_type"),
        ({"tls_server_config": {**good, "client_auth_type": "RequireAnyClientCert"}},
         "RequireAnyClientCert (a client certificate that is not verified) is not supported"),
        ({"tls_server_config": {**good, "client_auth_type": "NoClientCert"}},
         "client CAs are configured without a client auth policy"),
        ({"tls_server_config": {k: v for k, v in good.items() if k != "client_ca_file"}},
         "tls_server_config.client_ca_file: client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
        ({"tls_server_config": {"key_file": str(pki.server_key)}}, "tls_server_config.cert_file: missing one of"),
        ({"tls_server_config": {**good, "cert_file": "/nonexistent/server.crt"}},
         "tls_server_config.cert_file: no such file: /nonexistent/server.crt"),
        ({"tls_server_config": {**good, "key_file": str(pki.client_key)}},
         "tls_server_config.cert_file: cannot load the certificate and key"),
        ({"tls_server_config": {**good, "client_ca_file": str(pki.server_key)}},
         "tls_server_config.client_ca_file: cannot load"),
        ({"tls_server_config": {**good, "cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"]}},
         "tls_server_config.cipher_suites: unknown cipher: TLS_RSA_WITH_RC4_128_SHA"),
        ({"tls_server_config": {**good, "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
         "TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
        ({"tls_server_config": {**good, "curve_preferences": ["CurveP256", "X25519"]}},
         "tls_server_config.curve_preferences: Python's ssl module can set one curve only"),
        ({"tls_server_config": {**good, "curve_preferences": ["Curve25519"]}}, "unknown curve: Curve25519"),
        ({"tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                                "client_allowed_sans": ["scraper.example"]}},
         "tls_server_config.client_allowed_sans: needs a verified client certificate"),
        ({"http_server_config": {"headers": {"Server": "cronmon"}}},
         "http_server_config.headers: HTTP header 'Server' can not be configured"),
        ({"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
         "invalid value for X-Frame-Options: expected one of ['deny', 'sameorigin'], got 'allow'"),
        ({"http_server_config": {"http3": True}}, "http_server_config.http3: unknown key"),
        ({"basic_auth_users": {"prometheus": "plaintext"}},
         "basic_auth_users: the password of user 'prometheus' is not a bcrypt hash"),
        ({"basic_auth_users": {"prometheus": 5}}, "basic_auth_users.prometheus"),
        ({"rate_limit": {"interval": "1s", "burst": 5}}, "rate_limit: rate_limit is not supported"),
        ("tls_server_config: [unclosed", "not valid YAML"),
        ("- a list", "a web config file is a mapping"),
    ]


def test_bad_web_config_files_are_refused_naming_the_file_and_key(pki, tmp_path):
    for index, (content, expected) in enumerate(bad_files(pki)):
        path = write_web_config(tmp_path, content, f"bad-{index}.yml")  # type: ignore[arg-type]
        with pytest.raises(WebConfigError) as caught:
            load_web_config(path)
        text = str(caught.value)
        assert text.startswith(f"{path}: "), text
        assert expected in text, (content, text)
    missing = tmp_path / "missing.yml"
    with pytest.raises(WebConfigError, match=f"{missing}: cannot read the web config file"):
        load_web_config(missing)


def test_serve_refuses_to_start_with_a_bad_web_config_file(pki, tmp_path):
    path = write_web_config(tmp_path, {"tls_server_config": {**tls_config(pki), "min_vesion": "TLS12"}})
    for flags, env in (([f"--web.config.file={path}"], {}), ([], {"CRONMON_WEB_CONFIG_FILE": str(path)})):
        server = Serve(tmp_path, ["--workers", "1", *flags], env)
        out, _ = server.process.communicate(timeout=30)
        assert server.process.returncode == 1, out
        assert f"{path}: tls_server_config.min_vesion: unknown key" in out
        assert "cronmon: not starting: the web config file is invalid" in out
        assert "metrics:" not in out  # refused before the banner


def test_a_full_file_builds_the_ssl_context(pki, tmp_path):
    path = write_web_config(tmp_path, {
        "tls_server_config": tls_config(
            pki, client_auth_type="VerifyClientCertIfGiven", min_version="TLS13", max_version="TLS13",
            cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"], prefer_server_cipher_suites=False,
            curve_preferences=["CurveP384"], client_allowed_sans=["scraper.example"],
        ),
        "http_server_config": {"http2": False, "headers": {**HEADERS, "X-XSS-Protection": ""}},
        "basic_auth_users": {"prometheus": HASH, "htpasswd": HTPASSWD_HASH},
    })
    config = load_web_config(path)
    context = config.ssl_context
    assert context is not None and config.scheme == "https"
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES128-GCM-SHA256"]
    assert config.headers == HEADERS  # an empty value: header unset
    assert set(config.users) == {"prometheus", "htpasswd"}
    assert config.client_allowed_sans == ("scraper.example",)
    # The URLs cronmon prints and puts in alerts say https, unless --public-url says otherwise.
    settings = Settings(config_path=path, listen_host="0.0.0.0", listen_port=9879, web_config=config)
    assert settings.base_url == "https://localhost:9879"
    assert replace(settings, web_config=None).base_url == "http://localhost:9879"


def test_an_empty_file_means_no_tls_and_no_auth(tmp_path):
    for text in ("", "basic_auth_users:\n  # prometheus: ...\ntls_server_config: {}\nhttp_server_config:\n"):
        config = load_web_config(write_web_config(tmp_path, text))
        assert config.ssl_context is None and not config.users and not config.headers and config.scheme == "http"


# --- which routes basic auth protects (in process) --------------------------


@pytest.fixture
async def auth_client(aiohttp_client, app_settings, tmp_path, monkeypatch, clock):
    calls = [0]
    checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls[0] += 1
        return checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting_checkpw)
    monkeypatch.setenv("CRONMON_PING_KEY", "p" * 22)
    monkeypatch.setenv("T_VIEWER", "viewer-token")
    config = load_web_config(write_web_config(tmp_path, {
        "basic_auth_users": {"prometheus": HASH, "htpasswd": HTPASSWD_HASH},
        "http_server_config": {"headers": HEADERS},
    }))
    settings = app_settings(write_config(tmp_path, CONFIG), web_config=config, enable_lifecycle=True)
    client = await aiohttp_client(create_app(settings, clock=clock))
    await wait_for(lambda: client.app[SWEEPER].passes > 0)
    client.bcrypt_calls = calls
    return client


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


BASIC = basic("prometheus", PASSWORD)


async def test_basic_auth_guards_metrics_status_pages_and_lifecycle_not_pings(auth_client):
    protected = [("GET", "/metrics"), ("GET", "/"), ("GET", "/monitors/backup"), ("GET", "/-/ready"),
                 ("POST", "/-/reload")]
    for method, path in protected:
        refused = await auth_client.request(method, path)
        assert refused.status == 401, path
        assert refused.headers["WWW-Authenticate"] == "Basic"
        for name, value in HEADERS.items():
            assert refused.headers[name] == value
        assert (await auth_client.request(method, path, headers=BASIC)).status == 200, path
    assert (await auth_client.get("/metrics", headers=basic("htpasswd", PASSWORD))).status == 200
    # Open: liveness, pings (their key is in the URL), the APIs (bearer tokens).
    assert (await auth_client.get("/-/healthy")).status == 200
    ping = await auth_client.get("/ping/" + "p" * 22 + "/backup")
    assert ping.status == 200
    assert ping.headers["X-Frame-Options"] == "deny"
    api = await auth_client.get("/api/v1/monitors", headers={"Authorization": "Bearer viewer-token"})
    assert api.status == 200
    # Without one, the API's own 401 (its Bearer challenge), not basic auth's.
    assert (await auth_client.get("/api/v1/monitors")).headers["WWW-Authenticate"].startswith("Bearer")
    unknown = await auth_client.get("/no/such/page/at/all")
    assert unknown.status == 404 and unknown.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_status_page_takes_a_known_bearer_token_instead(auth_client):
    viewer = {"Authorization": "Bearer viewer-token"}
    assert (await auth_client.get("/monitors/backup", headers=viewer)).status == 200
    assert (await auth_client.get("/monitors/backup", headers={"Authorization": "Bearer nope"})).status == 401
    # Not for /metrics or /-/: those take basic auth only.
    assert (await auth_client.get("/metrics", headers=viewer)).status == 401
    assert (await auth_client.get("/-/ready", headers=viewer)).status == 401


async def test_a_successful_bcrypt_check_is_cached_and_failures_are_not(auth_client):
    calls = auth_client.bcrypt_calls
    before = calls[0]
    for _ in range(5):
        assert (await auth_client.get("/metrics", headers=BASIC)).status == 200
    assert calls[0] - before == 1  # the first one; the other four were remembered
    before = calls[0]
    for auth in (("prometheus", "wrong"), ("prometheus", "wrong"), ("nobody", PASSWORD), ("prometheus", "x" * 100)):
        response = await auth_client.get("/metrics", headers=basic(*auth))
        assert response.status == 401
    # Every failure pays a bcrypt (an unknown user too: no user enumeration by timing).
    assert calls[0] - before == 4
    for header in ("Basic !!!", "Basic " + "bm9jb2xvbg==", "Digest x", "Basic"):  # "nocolon"
        assert (await auth_client.get("/metrics", headers={"Authorization": header})).status == 401


# --- TLS variants in process -------------------------------------------------


async def serve_tls(app: web.Application, context: ssl.SSLContext) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner, f"https://127.0.0.1:{port}"


async def test_verify_client_cert_if_given_and_allowed_sans(pki, tmp_path, app_settings, monkeypatch, clock):
    monkeypatch.setenv("CRONMON_PING_KEY", "p" * 22)
    monkeypatch.setenv("T_VIEWER", "viewer-token")
    optional = load_web_config(write_web_config(tmp_path, {
        "tls_server_config": tls_config(pki, client_auth_type="VerifyClientCertIfGiven")}, "optional.yml"))
    sans = load_web_config(write_web_config(tmp_path, {
        "tls_server_config": tls_config(pki, client_allowed_sans=["scraper.example"])}, "sans.yml"))
    other_sans = load_web_config(write_web_config(tmp_path, {
        "tls_server_config": tls_config(pki, client_allowed_sans=["someone.else", "127.0.0.2"])}, "others.yml"))
    config_path = write_config(tmp_path, CONFIG)
    results = {}
    for name, config in (("optional", optional), ("sans", sans), ("other_sans", other_sans)):
        app = create_app(app_settings(config_path, web_config=config), clock=clock)
        assert config.ssl_context is not None
        runner, base = await serve_tls(app, config.ssl_context)
        try:
            for with_cert in (False, True):
                try:
                    async with httpx.AsyncClient(verify=client_context(pki, cert=with_cert)) as client:
                        results[name, with_cert] = (await client.get(base + "/-/healthy")).status_code
                except httpx.TransportError:
                    results[name, with_cert] = "handshake failed"
            async with httpx.AsyncClient(verify=client_context(pki, rogue=True)) as client:
                with pytest.raises(httpx.TransportError):
                    await client.get(base + "/-/healthy")
        finally:
            await runner.cleanup()
    assert results == {
        ("optional", False): 200, ("optional", True): 200,
        ("sans", False): "handshake failed", ("sans", True): 200,
        ("other_sans", False): "handshake failed", ("other_sans", True): 403,
    }



async def served_certificate(base: str, pki: PKI) -> bytes:
    host, port = base.removeprefix("https://").split(":")
    _, writer = await asyncio.open_connection(host, int(port), ssl=client_context(pki))
    served = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return served


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


async def test_a_renewed_certificate_is_served_without_a_restart(
    pki, tmp_path, app_settings, monkeypatch, clock, caplog
):
    monkeypatch.setenv("CRONMON_PING_KEY", "p" * 22)
    monkeypatch.setenv("T_VIEWER", "viewer-token")
    monkeypatch.setattr("exporter.webconfig.CERT_CHECK_INTERVAL", 0.0)
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        (tmp_path / name).write_bytes((pki.ca.parent / name).read_bytes())
    config = load_web_config(write_web_config(tmp_path, {
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}))
    assert config.ssl_context is not None
    app = create_app(app_settings(write_config(tmp_path, CONFIG), web_config=config), clock=clock)
    runner, base = await serve_tls(app, config.ssl_context)
    try:
        assert await served_certificate(base, pki) == der(pki.server_cert)
        # A key that does not match (written before its certificate): the
        # previous pair is still served, and the problem is logged.
        _make_leaf(tmp_path, "renewed", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
        (tmp_path / "server.key").write_bytes((tmp_path / "renewed.key").read_bytes())
        assert await served_certificate(base, pki) == der(pki.server_cert)
        assert "TLS certificates changed but do not load" in caplog.text
        (tmp_path / "server.crt").write_bytes((tmp_path / "renewed.crt").read_bytes())
        assert await served_certificate(base, pki) == der(tmp_path / "renewed.crt")
        async with httpx.AsyncClient(verify=client_context(pki, cert=False)) as client:
            assert (await client.get(base + "/-/healthy")).status_code == 200
    finally:
        await runner.cleanup()


async def test_inline_pem_and_http2(pki, tmp_path, app_settings, monkeypatch, clock, caplog):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("CRONMON_PING_KEY", "p" * 22)
    monkeypatch.setenv("T_VIEWER", "viewer-token")
    config = load_web_config(write_web_config(tmp_path, {
        "tls_server_config": {
            "cert": pki.server_cert.read_text(), "key": pki.server_key.read_text(),
            "client_ca": pki.ca.read_text(), "client_auth_type": "RequireAndVerifyClientCert",
        },
        "http_server_config": {"http2": True},
    }))
    assert "http_server_config.http2 is ignored: cronmon serves HTTP/1.1 only" in caplog.text
    assert config.ssl_context is not None and config.ssl_context.verify_mode == ssl.CERT_REQUIRED
    app = create_app(app_settings(write_config(tmp_path, CONFIG), web_config=config), clock=clock)
    runner, base = await serve_tls(app, config.ssl_context)
    try:
        async with httpx.AsyncClient(verify=client_context(pki)) as client:
            response = await client.get(base + "/metrics")
            assert response.status_code == 200 and response.http_version == "HTTP/1.1"
        with pytest.raises(httpx.TransportError):
            async with httpx.AsyncClient(verify=client_context(pki, cert=False)) as client:
                await client.get(base + "/metrics")
    finally:
        await runner.cleanup()
    assert not list(scratch.iterdir())  # the inline PEM went through a directory since removed
