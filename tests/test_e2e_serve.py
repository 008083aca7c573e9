"""`cronmon serve` as a real process on the embedded Redis: start-up output,
pings, real-time sweeping, SIGHUP reload, persistence across a restart, the
data-dir lock and a clean shutdown of the embedded redis-server."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.model import CLOCK_SKEW_ALLOWANCE

from .conftest import free_port, write_config

pytestmark = pytest.mark.e2e

CONFIG = """
monitors:
  - id: heartbeat
    schedule: {interval: 1s}
    grace: 0
    labels: {team: sre}
    metrics: [checkins]
  - id: backup
    schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
    metrics: [checkins]
"""


class Server:
    def __init__(
        self, config: Path, data_dir: Path, extra_env: dict | None = None, flags: list | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRONMON_")}
        env.update(extra_env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
             "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir), *(flags or [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if httpx.get(self.base + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("cronmon did not become ready")

    def metric(self, name: str, **labels) -> float:
        text = httpx.get(self.base + "/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        raise AssertionError(f"no {name} {labels}")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # What its workers wait for goes into the output (cli.log_tasks).
            self.process.send_signal(signal.SIGUSR1)
            try:
                out, _ = self.process.communicate(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, _ = self.process.communicate()
            raise AssertionError(f"cronmon did not stop within 30 s of SIGTERM; its output:\n{out}") from None
        assert self.process.returncode == 0, out
        return out


def wait_until(predicate, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def redis_server_running(data_dir: Path) -> bool:
    """The embedded redis-server writes its pid file at start and removes it
    on a clean shutdown."""
    try:
        pid = int((data_dir / "redis.pid").read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_on_embedded_redis_end_to_end(tmp_path):
    config = write_config(tmp_path, CONFIG)
    data_dir = tmp_path / "data"
    server = Server(config, data_dir)
    try:
        server.wait_ready()
        key = (data_dir / "ping_key").read_text().strip()
        assert len(key) == 22 and (data_dir / "ping_key").stat().st_mode & 0o777 == 0o600
        assert redis_server_running(data_dir)

        # Pings of every basic kind land; the job then stops pinging and the
        # sweeper records its 1-second slots as missed in real time.
        for suffix in ("/start", "", "/log", "/0"):
            assert httpx.get(f"{server.base}/ping/{key}/heartbeat{suffix}").text == "OK"
        wait_until(lambda: server.metric("cronmon_runs_total", monitor="heartbeat", outcome="missed") >= 2)
        assert server.metric("cronmon_monitor_status", monitor="heartbeat", status="down") == 1
        assert server.metric("cronmon_up", monitor="heartbeat", team="sre") == 0
        httpx.get(f"{server.base}/ping/{key}/heartbeat")
        # SIGHUP with a broken config keeps the old one; a fixed one is swapped in.
        config.write_text("monitors: [{id: x, schedule: {cron: 'nope'}}]")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: server.metric("cronmon_config_last_reload_successful") == 0)
        assert server.metric("cronmon_monitors", source="yaml") == 2
        config.write_text(CONFIG.replace("interval: 1s", "interval: 1h"))
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: server.metric("cronmon_config_last_reload_successful") == 1)
        checkins = server.metric("cronmon_checkins_total", monitor="heartbeat", kind="success")
        missed = server.metric("cronmon_runs_total", monitor="heartbeat", outcome="missed")
        assert checkins == 3

        # A second process on the same data dir is refused with a clear message.
        second = Server(config, data_dir)
        out, _ = second.process.communicate(timeout=30)
        assert second.process.returncode == 1
        assert "is in use by another cronmon process" in out
    finally:
        out = server.stop()
    assert "ping URLs" in out and f"/ping/{key}/heartbeat" in out
    wait_until(lambda: not redis_server_running(data_dir))

    # Restart: the same data comes back, counters continue, same ping key.
    again = Server(config, data_dir)
    try:
        again.wait_ready()
        assert (data_dir / "ping_key").read_text().strip() == key
        assert again.metric("cronmon_checkins_total", monitor="heartbeat", kind="success") == checkins
        assert again.metric("cronmon_runs_total", monitor="heartbeat", outcome="missed") == missed
        assert again.metric("cronmon_checkins_total", monitor="heartbeat", kind="log") == 1
    finally:
        again.stop()


def test_bad_config_refuses_to_start(tmp_path):
    config = write_config(tmp_path, "monitors: [{id: a, schedule: {interval: 1h}, labels: {job: x}}]")
    server = Server(config, tmp_path / "data")
    out, _ = server.process.communicate(timeout=30)
    assert server.process.returncode == 1
    assert f"{config}: monitor \"a\": field \"labels\": label 'job' is reserved" in out
    assert "not starting: the config is invalid" in out
    assert not (tmp_path / "data" / "redis.conf").exists()


def test_configured_key_is_not_printed(tmp_path):
    config = write_config(tmp_path, CONFIG)
    server = Server(config, tmp_path / "data", {"CRONMON_PING_KEY": "my-secret-ping-key"})
    try:
        server.wait_ready()
        assert httpx.get(f"{server.base}/ping/my-secret-ping-key/backup").status_code == 200
    finally:
        out = server.stop()
    assert "my-secret-ping-key" not in out
    assert "/ping/<ping key default>/backup" in out
    assert not (tmp_path / "data" / "ping_key").exists()


def test_killed_cronmon_does_not_leave_its_redis_behind(tmp_path):
    config = write_config(tmp_path, CONFIG)
    data_dir = tmp_path / "data"
    server = Server(config, data_dir)
    server.wait_ready()
    key = (data_dir / "ping_key").read_text().strip()
    httpx.get(f"{server.base}/ping/{key}/backup")
    server.process.kill()
    server.process.wait(10)
    # The embedded server goes down with its parent (and writes its data).
    wait_until(lambda: not redis_server_running(data_dir))
    again = Server(config, data_dir)
    try:
        again.wait_ready()
        assert again.metric("cronmon_checkins_total", monitor="backup", kind="success") == 1
    finally:
        again.stop()


def test_two_processes_on_one_redis_record_each_missed_slot_once(tmp_path, redis_server, prefix):
    """Two `cronmon serve` processes share one Redis and both sweep a
    1-second heartbeat: every missed slot is counted once, not twice."""
    config = write_config(tmp_path, "monitors: [{id: beat, schedule: {interval: 1s}, grace: 0}]")
    shared = {"CRONMON_PING_KEY": "shared-ping-key-0123456"}
    flags = ["--redis-url", redis_server.url, "--key-prefix", prefix]
    servers = [Server(config, tmp_path / name, shared, flags) for name in ("a", "b")]
    try:
        for server in servers:
            server.wait_ready()
        assert httpx.get(f"{servers[0].base}/ping/shared-ping-key-0123456/beat").status_code == 200
        pinged = time.time()
        time.sleep(4.5 + CLOCK_SKEW_ALLOWANCE)
        for server in servers:
            server.stop()
        stopped = time.time()
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.kill()
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    missed = int(client.hget(f"{prefix}:{{beat}}:counters", "o:missed") or 0)
    client.close()
    # Slots fall every second after the ping and are recorded
    # CLOCK_SKEW_ALLOWANCE later; double counting would show as nearly
    # twice as many.
    counted = int(stopped - pinged - CLOCK_SKEW_ALLOWANCE)
    assert counted - 2 <= missed <= counted


def test_a_cronmon_outage_longer_than_grace_pages_only_the_job_that_stays_dead(tmp_path):
    """Issue 10, case 5, with a real `cronmon serve` stopped for longer than
    grace: the healthy job's check-ins were refused while it was down, and
    it must not page for that; the job that stays dead afterwards must."""
    config = write_config(tmp_path, """
monitors:
  - {id: healthy, schedule: {interval: 3s}, grace: 1s}
  - {id: dead, schedule: {interval: 3s}, grace: 1s}
""")
    data_dir = tmp_path / "data"
    server = Server(config, data_dir)
    try:
        server.wait_ready()
        key = (data_dir / "ping_key").read_text().strip()
        for monitor in ("healthy", "dead"):
            assert httpx.get(f"{server.base}/ping/{key}/{monitor}").status_code == 200
    finally:
        server.stop()
    # Down for 12 s: four of the healthy job's 3-second check-ins are refused.
    down_until = time.monotonic() + 12
    refused = 0
    while time.monotonic() < down_until:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.base}/ping/{key}/healthy", timeout=1)
        refused += 1
        time.sleep(3)
    assert refused >= 4

    again = Server(config, data_dir, port=server.port)  # the jobs' URL stays the same
    try:
        again.wait_ready()
        # The healthy job goes on every 2.5 s; the dead one never reports.
        statuses = []
        until = time.monotonic() + 24
        while time.monotonic() < until:
            assert httpx.get(f"{again.base}/ping/{key}/healthy").status_code == 200
            statuses.append(_status(again, "healthy"))
            time.sleep(2.5)
        assert "down" not in statuses, statuses
        assert again.metric("cronmon_runs_total", monitor="healthy", outcome="missed") == 0
        assert again.metric("cronmon_runs_total", monitor="dead", outcome="missed") >= 1
        assert again.metric("cronmon_monitor_status", monitor="dead", status="down") == 1
    finally:
        again.stop()


def _status(server: Server, monitor: str) -> str:
    for status in ("up", "late", "down", "new", "running", "failed", "stuck", "paused"):
        if server.metric("cronmon_monitor_status", monitor=monitor, status=status) == 1:
            return status
    raise AssertionError(f"{monitor} has no status")


def test_banner_prints_real_uuid_urls_and_hides_configured_secrets(tmp_path):
    """With the ping key from CRONMON_PING_KEY the banner still prints each
    monitor's derived UUID URL (never a literal "<uuid>"), and it works;
    the configured key and a configured UUID show as placeholders naming
    their source. Without api_tokens it says how to get the APIs past 401."""
    config = write_config(tmp_path, """
monitors:
  - {id: derived, schedule: {interval: 1h}}
  - {id: kept, schedule: {interval: 1h}, ping: {uuid_env: KEPT_UUID}}
""")
    kept_uuid = "5b0c6f3e-2d1a-4c9b-8e7f-6a5b4c3d2e1f"
    server = Server(config, tmp_path / "data", {"CRONMON_PING_KEY": "my-secret-ping-key", "KEPT_UUID": kept_uuid})
    try:
        server.wait_ready()
        out = server.stop()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "<uuid>" not in out and "my-secret-ping-key" not in out and kept_uuid not in out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    assert "/ping/<ping key default>/derived" in lines["derived"]
    [uuid_url] = [word for word in lines["derived"].split() if word.startswith("http") and "<" not in word]
    assert "/ping/<uuid from env KEPT_UUID>" in lines["kept"]
    assert "management APIs: no API token configured, so they answer 401; declare one under api_tokens:" in out

    again = Server(config, tmp_path / "data", {"CRONMON_PING_KEY": "my-secret-ping-key", "KEPT_UUID": kept_uuid},
                   port=server.port)
    try:
        again.wait_ready()
        assert httpx.get(uuid_url).status_code == 200
        assert httpx.get(f"{again.base}/ping/{kept_uuid}").status_code == 200
    finally:
        again.stop()


def test_a_restart_says_the_ping_key_was_reused(tmp_path):
    config = write_config(tmp_path, CONFIG)
    data_dir = tmp_path / "data"
    first = Server(config, data_dir)
    first.wait_ready()
    out = first.stop()
    key_file = data_dir / "ping_key"
    assert f"ping key generated and kept in {key_file}" in out and "reused" not in out
    key = key_file.read_text().strip()

    second = Server(config, data_dir)
    second.wait_ready()
    out = second.stop()
    assert f"ping key reused: kept in {key_file} since an earlier start" in out
    assert "generated" not in out and f"/ping/{key}/heartbeat" in out
    assert key_file.read_text().strip() == key


def test_a_second_serve_on_a_data_dir_in_use_fails_before_its_banner(tmp_path):
    config = write_config(tmp_path, CONFIG)
    data_dir = tmp_path / "data"
    server = Server(config, data_dir)
    try:
        server.wait_ready()
        for flags in ([], ["--workers", "2"]):
            second = Server(config, data_dir, flags=flags)
            out, _ = second.process.communicate(timeout=30)
            assert second.process.returncode == 1, out
            assert out.strip().splitlines() == [
                f"cronmon: not starting: data dir {data_dir.resolve()} is in use by another cronmon process "
                f"(pid {server.process.pid}); stop it, or give this one its own --data-dir (env CRONMON_DATA_DIR)"
            ], out
        assert httpx.get(f"{server.base}/-/ready").status_code == 200  # the first one is unaffected
    finally:
        out = server.stop()
    assert "ping URLs" in out


@pytest.mark.parametrize("flags", [[], ["--workers", "2"]], ids=["one-process", "two-workers"])
def test_sigterm_at_any_moment_of_start_up_stops_it(tmp_path, flags):
    """A SIGTERM while cronmon starts (its workers' first Redis round
    trips) stops it cleanly. aiohttp's run_app lost it about one start in
    25: it stops by cancelling a task, and Python 3.11's wait_for can
    swallow that cancellation, after which the worker served on, deaf to
    the signal (cli.run_until_stopped). Bounded: 6 starts, each stopped at
    another moment of its start-up."""
    config = write_config(tmp_path, CONFIG)
    for attempt, delay in enumerate((0.05, 0.1, 0.2, 0.4, 0.7, 1.0)):
        data_dir = tmp_path / f"data{attempt}"
        server = Server(config, data_dir, {"CRONMON_PING_KEY": "k" * 22}, flags)
        # The banner's first line: the config is loaded and start-up begins
        # (a SIGTERM before it ends the process as any process, by default).
        assert server.process.stdout.readline().startswith("cronmon ")
        time.sleep(delay)
        server.stop()  # exits 0 within 30 s, or the test fails with what it waited for
        assert not redis_server_running(data_dir)
