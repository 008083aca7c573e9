"""Active monitors: checks against local aiohttp servers, thresholds and
flips, probe metrics, the shared schedule, and two processes on one Redis."""

import asyncio
import ipaddress
import socket
import subprocess
import threading
import time

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.model import HttpProbe, Kind
from exporter.probes import NetworkPolicy, classify, first_due, make_client, redis_endpoints, run_check
from exporter.web.app import create_app
from exporter.web.keys import PROBER

from .conftest import free_port, write_config


class Target:
    """A local HTTP server with one route per behaviour a target can have."""

    def __init__(self):
        self.hits: list[tuple[str, float]] = []
        self.mode = "ok"  # for /switch
        app = web.Application()
        app.router.add_get("/fast", self.fast)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/hang", self.hang)
        app.router.add_get("/error", self.error)
        app.router.add_get("/missing", self.missing)
        app.router.add_get("/loop", self.loop)
        app.router.add_get("/to-https", self.to_https)
        app.router.add_get("/hop", self.hop)
        app.router.add_get("/big", self.big)
        app.router.add_get("/switch", self.switch)
        self.app = app

    async def fast(self, request):
        self.hits.append((request.path, time.monotonic()))
        return web.Response(text="ok")

    async def slow(self, request):
        await asyncio.sleep(0.3)
        return web.Response(text="slow")

    async def hang(self, request):
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def error(self, request):
        return web.Response(status=500, text="boom")

    async def missing(self, request):
        return web.Response(status=404)

    async def loop(self, request):
        raise web.HTTPFound("/loop")

    async def to_https(self, request):
        raise web.HTTPFound(f"https://{request.host}/fast")

    async def hop(self, request):
        raise web.HTTPMovedPermanently("/fast")

    async def big(self, request):
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(10_000):  # 640 MB if anyone read it all
            await response.write(b"x" * 65536)
        return response

    async def switch(self, request):
        self.hits.append((request.path, time.monotonic()))
        return web.Response(status=200 if self.mode == "ok" else 503)


@pytest.fixture
async def target(aiohttp_server):
    target = Target()
    server = await aiohttp_server(target.app)
    target.base = f"http://127.0.0.1:{server.port}"
    return target


async def check(url, slow=0.2, timeout=1.0, **kwargs):
    async with make_client(4) as client:
        return await run_check(client, HttpProbe(url, 10, slow, timeout), **kwargs)


async def test_fast_200_is_a_success(target):
    result = await check(f"{target.base}/fast")
    assert (result.kind, result.status_code, result.error) == (Kind.SUCCESS, 200, None)
    assert 0 < result.duration < 0.2


async def test_slow_answer_is_a_warning(target):
    result = await check(f"{target.base}/slow", slow=0.1)
    assert result.kind is Kind.WARNING and result.status_code == 200 and result.duration >= 0.3


async def test_no_answer_within_the_timeout_is_an_error(target):
    result = await check(f"{target.base}/hang", timeout=0.5)
    assert result.kind is Kind.FAIL and result.status_code == 0
    assert result.error == "no answer within 0.5s" and 0.5 <= result.duration < 1.5


@pytest.mark.parametrize("path, code", [("/error", 500), ("/missing", 404)])
async def test_http_errors_are_errors(target, path, code):
    result = await check(f"{target.base}{path}")
    assert (result.kind, result.status_code, result.error) == (Kind.FAIL, code, f"HTTP {code}")


async def test_refused_connection_is_an_error():
    result = await check(f"http://127.0.0.1:{free_port()}/")
    assert result.kind is Kind.FAIL and result.status_code == 0 and "ConnectError" in result.error


async def test_redirects_followed_within_a_limit_and_never_across_schemes(target):
    assert (await check(f"{target.base}/hop")).kind is Kind.SUCCESS
    looped = await check(f"{target.base}/loop")
    assert looped.kind is Kind.FAIL and looped.error == "more than 5 redirects"
    crossed = await check(f"{target.base}/to-https")
    assert crossed.kind is Kind.FAIL and crossed.error == "redirect from http to https refused"


async def test_body_read_is_capped(target):
    result = await check(f"{target.base}/big", slow=5, timeout=5, max_bytes=100_000)
    assert result.kind is Kind.SUCCESS and result.duration < 2


async def test_target_network_allow_list(target):
    allowed = (ipaddress.ip_network("10.0.0.0/8"),)
    refused = await check(f"{target.base}/fast", policy=NetworkPolicy(allowed=allowed))
    assert refused.kind is Kind.FAIL and "outside the allowed probe networks" in refused.error
    public_only = await check(f"{target.base}/fast", policy=NetworkPolicy(public_only=True))
    assert public_only.kind is Kind.FAIL and "127.0.0.1 is not a public address" in public_only.error
    assert target.hits == []  # not even connected
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    ok = await check(f"{target.base}/fast", policy=NetworkPolicy(public_only=True, allowed=loopback))
    assert ok.kind is Kind.SUCCESS


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.251", "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "fe80::1%eth0",
])
def test_api_checks_refuse_every_non_public_address(address):
    """Decided on the address alone, before anything connects."""
    assert "not a public address" in NetworkPolicy(public_only=True).refusal(address, 80)
    assert NetworkPolicy().refusal(address, 80) is None  # YAML monitors: anywhere


def test_public_addresses_pass_and_the_operator_can_widen_but_never_reach_redis():
    policy = NetworkPolicy(public_only=True)
    assert policy.refusal("93.184.216.34", 443) is None and policy.refusal("2606:2800:220:1::", 443) is None
    wider = NetworkPolicy(public_only=True, allowed=(ipaddress.ip_network("10.0.0.0/8"),),
                          forbidden=(("10.0.0.5", 6379),))
    assert wider.refusal("10.1.2.3", 80) is None
    assert "cronmon's own Redis" in wider.refusal("10.0.0.5", 6379)
    assert wider.refusal("10.0.0.5", 80) is None
    assert "cronmon's own Redis" in NetworkPolicy(forbidden=(("127.0.0.1", 6379),)).refusal("::ffff:127.0.0.1", 6379)
    assert redis_endpoints("redis://127.0.0.1:6380/0") == (("127.0.0.1", 6380),)
    assert redis_endpoints("unix:///tmp/redis.sock") == ()


def answer_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=httpx.ByteStream(b"ok"))


class FakeResolver:
    """A test-local resolver: names map to the addresses a test gives, one
    list per call (the last repeats), so a name can "rebind"."""

    def __init__(self, answers: dict[str, list[list[str]]]):
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.answers[host]
        return answers[min(self.calls.count(host) - 1, len(answers) - 1)]


PUBLIC_ONLY = NetworkPolicy(public_only=True)


async def mock_check(url, handler, resolver, policy=PUBLIC_ONLY):
    """run_check through an httpx MockTransport: nothing leaves the process,
    and `handler` sees exactly what would have been sent."""
    sent = []

    def record(request):
        sent.append(request)
        return handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
        result = await run_check(client, HttpProbe(url, 10, 1.0, 2.0), policy=policy, resolve=resolver)
    return result, sent


async def test_the_check_connects_to_the_address_it_checked():
    """DNS rebinding: the name resolves to a public address when checked and
    to 127.0.0.1 a moment later. The request goes to the checked address,
    with the name in Host and in TLS SNI (certificates are verified
    against the name)."""
    resolver = FakeResolver({"rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    result, sent = await mock_check("https://rebind.test:8443/health", answer_ok, resolver)
    assert result.kind is Kind.SUCCESS
    assert [r.url.host for r in sent] == ["93.184.216.34"] and resolver.calls == ["rebind.test"]
    assert sent[0].headers["Host"] == "rebind.test:8443" and sent[0].extensions["sni_hostname"] == "rebind.test"


@pytest.mark.parametrize("answers", [["10.0.0.7"], ["93.184.216.34", "10.0.0.7"], ["169.254.169.254"]])
async def test_every_resolved_address_must_be_public(answers):
    resolver = FakeResolver({"internal.test": [answers]})
    result, sent = await mock_check(
        "http://internal.test/", answer_ok, resolver
    )
    assert result.kind is Kind.FAIL and "not a public address" in result.error and sent == []


def redirect_to(location: str):
    return lambda request: httpx.Response(302, headers={"Location": location}, stream=httpx.ByteStream(b""))


async def test_a_redirect_into_the_internal_network_is_refused_before_it_is_followed():
    resolver = FakeResolver({"public.test": [["93.184.216.34"]], "metadata.test": [["169.254.169.254"]]})
    for location in ("http://169.254.169.254/latest/meta-data/", "http://metadata.test/", "http://[::1]:9879/"):
        result, sent = await mock_check("http://public.test/", redirect_to(location), resolver)
        assert result.kind is Kind.FAIL and "not a public address" in result.error
        assert [r.url.host for r in sent] == ["93.184.216.34"]  # the first hop only


def test_classify_is_pure():
    probe = HttpProbe("http://x", 60, slow=1, timeout=5)
    assert classify(probe, 200, 0.5, None).kind is Kind.SUCCESS
    assert classify(probe, 204, 1.5, None).kind is Kind.WARNING
    assert classify(probe, 302, 0.1, None).kind is Kind.SUCCESS  # a final 3xx without Location
    assert classify(probe, 503, 0.1, None).kind is Kind.FAIL
    assert classify(probe, 0, 5.0, "no answer").kind is Kind.FAIL


def test_first_checks_are_spread_over_the_interval():
    now = 1_000_000.5
    dues = [first_due(f"monitor-{i}", 60, now) for i in range(6000)]
    assert all(now <= d < now + 60 for d in dues)
    per_second = [0] * 60
    for d in dues:
        per_second[int(d - now)] += 1
    assert max(per_second) < 2 * 6000 / 60  # no second gets twice its share


# -- in the app ------------------------------------------------------------------


CONFIG = """
monitors:
  - id: site
    http: {{url: "{url}", interval: 10s, slow: 1s, timeout: 2s}}
    failure_threshold: 2
    grace: 5s
    labels: {{team: web}}
"""


async def metrics(client):
    text = await (await client.get("/metrics")).text()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("monitor") == "site":
                found[(sample.name, sample.labels.get("status") or sample.labels.get("outcome"))] = sample.value
    return found


async def test_checks_thresholds_flips_and_probe_metrics(aiohttp_client, app_settings, tmp_path, clock, target):
    settings = app_settings(write_config(tmp_path, CONFIG.format(url=f"{target.base}/switch")))
    client = await aiohttp_client(create_app(settings, clock=clock))
    prober = client.app[PROBER]

    async def next_check():
        done = prober.checks
        clock.advance(10)
        for _ in range(200):
            if prober.checks > done:
                return
            await asyncio.sleep(0.025)
        raise AssertionError("no check ran")

    before = await metrics(client)
    assert before[("cronmon_probe_success", None)] == 0 and before[("cronmon_probe_last_timestamp_seconds", None)] == 0
    await next_check()
    m = await metrics(client)
    assert m[("cronmon_probe_success", None)] == 1 and m[("cronmon_probe_status_code", None)] == 200
    assert m[("cronmon_probe_last_timestamp_seconds", None)] == clock()
    assert 0 < m[("cronmon_probe_duration_seconds", None)] < 1
    assert m[("cronmon_monitor_status", "up")] == 1

    target.mode = "down"
    await next_check()
    m = await metrics(client)
    assert m[("cronmon_probe_success", None)] == 0 and m[("cronmon_probe_status_code", None)] == 503
    assert m[("cronmon_monitor_status", "up")] == 1  # one failure, threshold 2
    await next_check()
    m = await metrics(client)
    assert m[("cronmon_monitor_status", "failed")] == 1 and m[("cronmon_runs_total", "error")] == 2
    target.mode = "ok"
    await next_check()
    m = await metrics(client)
    assert m[("cronmon_monitor_status", "up")] == 1 and m[("cronmon_runs_total", "ok")] == 2
    # One check per interval: four intervals, four requests.
    assert len(target.hits) == 4
    # The probe series (and the self metric of schedule lag) pass promtool.
    from .test_ops import promtool

    text = await (await client.get("/metrics")).text()
    assert "cronmon_probe_schedule_lag_seconds_count 4.0" in text
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


async def test_active_flight_test_now_runs_a_real_check(
    aiohttp_client, app_settings, tmp_path, monkeypatch, clock, target
):
    monkeypatch.setenv("T_OPS", "ops-token")
    settings = app_settings(
        write_config(tmp_path, "api_tokens: [{name: o, env: T_OPS, owner: a, scope: write}]\n"),
        probe_allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    client = await aiohttp_client(create_app(settings, clock=clock))
    auth = {"Authorization": "Bearer ops-token"}
    created = await client.post(
        "/api/flights/",
        headers=auth,
        json={
            "name": "Orders API",
            "monitoring_type": "ACTIVE",
            "monitor_url": f"{target.base}/switch",
            "monitor_interval": 60,
            "timeout_threshold": 2,
            "slow_response_threshold": 1,
        },
    )
    flight = await created.json()
    target.mode = "down"
    response = await client.post(f"/api/flights/{flight['id']}/test_now/", headers=auth)
    assert response.status == 200
    body = await response.json()
    landing = body["landing"]
    assert body["override_seconds"] == 300 and len(target.hits) == 1
    assert landing["status"] == "ERROR" and landing["metadata"]["status_code"] == 503
    # A real check that counts (below), so not a test landing (README: "it counts like any check").
    assert landing["is_test"] is False
    stats = await (await client.get(f"/api/flights/{flight['id']}/metrics/", headers=auth)).json()
    assert stats["summary"]["24h"]["error"] == 1 and stats["summary"]["24h"]["uptime_percentage"] == 0.0
    listed = await (await client.get(f"/api/flights/{flight['id']}/landings/", headers=auth)).json()
    assert [(x["status"], x["is_test"]) for x in listed] == [("ERROR", False)]


async def test_schedule_gives_each_check_to_one_claimer(store, clock):
    """Claims are atomic: however many processes ask, a due check is handed
    out once, and comes due again one interval later (keeping its phase)."""
    await store.sync_probes([("a", '{"i": 10}', clock()), ("b", '{"i": 10}', clock() + 5)])
    assert await store.claim_probes(clock(), 10) == [("a", clock())]
    assert await store.claim_probes(clock(), 10) == []
    assert [m for m, _ in await store.claim_probes(clock() + 5, 10)] == ["b"]
    # After an outage, one check (not a burst) and the phase is kept.
    claimed = await store.claim_probes(clock() + 95, 10)
    assert sorted(claimed) == [("a", clock() + 10), ("b", clock() + 15)]
    assert await store.claim_probes(clock() + 99.9, 10) == []
    assert [m for m, _ in await store.claim_probes(clock() + 100, 10)] == ["a"]
    # A changed check restarts at its new first due time; a removed one is gone.
    await store.sync_probes([("a", '{"i": 30}', clock() + 200)])
    assert await store.claim_probes(clock() + 199, 10) == []
    assert await store.claim_probes(clock() + 200, 10) == [("a", clock() + 200)]
    # An unchanged sync changes nothing.
    assert await store.sync_probes([("a", '{"i": 30}', clock() + 999)]) == 0


def test_two_processes_probe_each_check_once_and_hand_over(tmp_path, redis_server, prefix):
    """Two `cronmon serve` processes share one Redis: a 1-second check runs
    once a second (not twice), and keeps running when one process dies."""
    from .test_e2e_serve import Server

    hits: list[float] = []

    class Handler(threading.Thread):
        def __init__(self):
            super().__init__(daemon=True)
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(16)
            self.port = self.sock.getsockname()[1]

        def run(self):
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(4096)
                    hits.append(time.monotonic())
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    handler = Handler()
    handler.start()
    config = write_config(
        tmp_path,
        f'monitors: [{{id: site, http: {{url: "http://127.0.0.1:{handler.port}/", '
        f"interval: 1s, slow: 0.5s, timeout: 0.9s}}, grace: 2s}}]",
    )
    flags = ["--redis-url", redis_server.url, "--key-prefix", prefix]
    servers = [Server(config, tmp_path / name, {"CRONMON_PING_KEY": "k" * 20}, flags) for name in ("a", "b")]
    try:
        for server in servers:
            server.wait_ready()
        time.sleep(1.5)
        hits.clear()
        started = time.monotonic()
        time.sleep(5)
        both = [h for h in hits if h >= started]
        servers[0].process.kill()
        servers[0].process.wait(10)
        handed = time.monotonic()
        time.sleep(4)
        after = [h for h in hits if h >= handed + 1.0]  # within one interval, the survivor has it
        servers[1].stop()
    finally:
        handler.sock.close()
        for server in servers:
            if server.process.poll() is None:
                server.process.kill()
    assert 4 <= len(both) <= 6, both  # twice as many if both processes checked
    gaps = [b - a for a, b in zip(both, both[1:])]
    assert min(gaps) > 0.5, gaps
    assert len(after) >= 2, after


async def test_an_api_token_cannot_make_cronmon_probe_loopback(
    aiohttp_client, app_settings, tmp_path, monkeypatch, clock, target
):
    """Without --probe-allow-network, an API-created check of a loopback URL
    (cronmon's own port, a local admin page) is refused before connecting,
    and test_now reports the refusal, not the target's status or timing."""
    monkeypatch.setenv("T_OPS", "ops-token")
    settings = app_settings(write_config(tmp_path, "api_tokens: [{name: o, env: T_OPS, owner: a, scope: write}]\n"))
    client = await aiohttp_client(create_app(settings, clock=clock))
    auth = {"Authorization": "Bearer ops-token"}
    created = await client.post(
        "/api/flights/",
        headers=auth,
        json={
            "name": "Scanner",
            "monitoring_type": "ACTIVE",
            "monitor_url": f"{target.base}/fast",
            "monitor_interval": 60,
            "timeout_threshold": 2,
            "slow_response_threshold": 1,
        },
    )
    flight = await created.json()
    body = await (await client.post(f"/api/flights/{flight['id']}/test_now/", headers=auth)).json()
    landing = body["landing"]
    assert landing["status"] == "ERROR" and landing["metadata"]["status_code"] == 0
    assert "127.0.0.1 is not a public address" in landing["metadata"]["error"]
    assert target.hits == []


async def test_an_api_change_publishes_only_what_changed_and_ends_where_a_full_sync_would(
    make_core, store, clock, raw_redis, prefix
):
    """10,000 active monitors must not cost a 10,000-entry schedule update
    per API create: the prober publishes only the API monitors that changed
    (Registry.api_changes_since), and the shared schedule ends up exactly as
    a full sync of the same registry leaves it."""
    from exporter.config import parse_monitor_spec
    from exporter.probes import Prober

    core = make_core(
        "monitors:\n"
        + "".join(f"  - {{id: y{i}, http: {{url: 'https://example.com/{i}', interval: 1m}}}}\n" for i in range(30))
        + "  - {id: beat, schedule: {interval: 5m}}\n"
    )
    sent: list[tuple[int, list[str] | None]] = []
    original = store.sync_probes

    async def spied(probes, removed=None):
        sent.append((len(probes), removed))
        return await original(probes, removed)

    store.sync_probes = spied
    await core.sync_api_monitors()  # as at start-up: the API monitors loaded once
    prober = Prober(core, clock=clock)
    await prober.sync()
    assert sent == [(30, None)]  # the first sync: all of them

    async def create(monitor_id: str, active: bool) -> None:
        body = {"id": monitor_id, **({"http": {"url": f"https://example.com/{monitor_id}"}} if active
                                    else {"schedule": {"interval": "1h"}})}
        await core.create_monitor(parse_monitor_spec(body, clock()), "team-a", None)

    async def schedule() -> tuple[dict, set]:
        probes = await raw_redis.hgetall(f"{prefix}:probes")
        return probes, {m for m, _ in await raw_redis.zrange(f"{prefix}:probes:schedule", 0, -1, withscores=True)}

    for step, (monitor_id, active) in enumerate([("a1", True), ("a2", True), ("p1", False), ("a3", True)]):
        await create(monitor_id, active)
        await prober.sync()
        assert sent[-1] == (1 if active else 0, [] if active else ["p1"]), step
    api_only = core.registry.monitors["a2"]
    await core.delete_monitor(api_only)
    await prober.sync()
    assert sent[-1] == (0, ["a2"])
    incremental = await schedule()
    assert set(incremental[0]) == {f"y{i}" for i in range(30)} | {"a1", "a3"}
    assert incremental[1] == set(incremental[0])

    # What a full sync of the same registry leaves: the same entries.
    await raw_redis.delete(f"{prefix}:probes", f"{prefix}:probes:schedule")
    fresh = Prober(core, clock=clock)
    await fresh.sync()
    assert sent[-1][1] is None
    full = await schedule()
    assert full[0] == incremental[0] and full[1] == incremental[1]

    # A registry not made from the synced one by an API change: all again.
    prober._synced = None
    await prober.sync()
    assert sent[-1] == (32, None)
