"""Real Prometheus and Alertmanager processes, a webhook receiver, and
real client processes (curl, wget, sentry-cli, ...), for the end-to-end
tests. The binaries come from Debian's `prometheus` and
`prometheus-alertmanager` packages (dev.py installs them); a missing one is
a test failure, never a skip."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from aiohttp import web

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_RULES = ROOT / "alertmanager" / "cronmon-rules.yml"
SHIPPED_ALERTMANAGER = ROOT / "alertmanager" / "alertmanager.yml"


async def run_client(
    *argv: str, env: dict[str, str] | None = None, stdin: bytes = b"", timeout: float = 60
) -> tuple[int, bytes, bytes]:
    """Run a client process to its end without blocking the loop the test
    server runs on: (exit code, stdout, stderr). Its environment is `env`,
    by default PATH alone: no proxy variables (traffic stays on loopback)
    and no user config. Killed, and the test failed, after `timeout`."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env if env is not None else {"PATH": os.environ["PATH"]}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out, err


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(
        f"{' or '.join(names)} is required (Debian packages prometheus, prometheus-alertmanager; "
        "`python3 dev.py test` installs them)"
    )


class Process:
    def __init__(self, args: list[str], ready_url: str, log: Path):
        self.log = log
        self.ready_url = ready_url
        self.handle = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.handle.poll() is None, self.log.read_text()[-3000:]
                try:
                    if (await client.get(self.ready_url, timeout=1)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"not ready: {self.ready_url}\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.handle.poll() is None:
            self.handle.terminate()
            try:
                self.handle.wait(15)
            except subprocess.TimeoutExpired:
                self.handle.kill()
                self.handle.wait()


def alertmanager_config_for_tests(receiver_url: str, shorten_waits: bool = True) -> dict:
    """The shipped Alertmanager config with its routing and inhibitions
    unchanged, webhooks pointed at the test receiver (path = receiver name)
    and its waits shortened so a test takes seconds, not minutes."""
    config = copy.deepcopy(yaml.safe_load(SHIPPED_ALERTMANAGER.read_text()))
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{receiver_url}/{receiver['name']}"

    def shorten(route: dict) -> None:
        for key, value in (("group_wait", "0s"), ("group_interval", "1s"), ("repeat_interval", "1h")):
            if key in route or route is config["route"]:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    if shorten_waits:
        shorten(config["route"])
    return config


async def start_alertmanager(tmp: Path, config: dict, port: int | None = None) -> tuple[Process, str]:
    port = port or free_port()
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    process = Process(
        [
            binary("alertmanager", "prometheus-alertmanager"),
            f"--config.file={path}",
            f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip port
        ],
        f"http://127.0.0.1:{port}/-/ready",
        tmp / "alertmanager.log",
    )
    await process.wait_ready()
    return process, f"http://127.0.0.1:{port}"


async def start_prometheus(
    tmp: Path, cronmon_target: str, alertmanager_url: str | None, interval: str = "1s"
) -> tuple[Process, str]:
    port = free_port()
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(SHIPPED_RULES)],
        "scrape_configs": [{"job_name": "cronmon", "static_configs": [{"targets": [cronmon_target]}]}],
    }
    if alertmanager_url:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]
        }
    return await _run_prometheus(tmp, config, port, "prometheus", "prom-data")


async def _run_prometheus(tmp: Path, config: dict, port: int, name: str, data: str) -> tuple[Process, str]:
    """Prometheus on `config`, written to tmp/<name>.yml (its log:
    tmp/<name>.log, its TSDB: tmp/<data>), once it answers /-/ready."""
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    process = Process(
        [
            binary("prometheus"),
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp / data}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        f"http://127.0.0.1:{port}/-/ready",
        tmp / f"{name}.log",
    )
    await process.wait_ready()
    return process, f"http://127.0.0.1:{port}"


@dataclass
class Notification:
    receiver_path: str
    status: str
    labels: dict
    annotations: dict
    received_at: float


@dataclass
class WebhookReceiver:
    """Collects Alertmanager webhook notifications, one entry per alert."""

    notifications: list[Notification] = field(default_factory=list)

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            payload = await request.json()
            for alert in payload["alerts"]:
                self.notifications.append(
                    Notification(
                        request.match_info["name"], alert["status"], alert["labels"],
                        alert.get("annotations", {}), time.time(),
                    )
                )
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/{name}", receive)
        return app

    def find(self, alertname: str, status: str = "firing", **labels) -> Notification | None:
        for n in self.notifications:
            if n.labels.get("alertname") == alertname and n.status == status and labels.items() <= n.labels.items():
                return n
        return None

    async def wait_for(self, alertname: str, status: str = "firing", timeout: float = 60, **labels) -> Notification:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(alertname, status, **labels)
            if found:
                return found
            await asyncio.sleep(0.1)
        seen = [(n.labels.get("alertname"), n.status, n.labels.get("monitor")) for n in self.notifications]
        raise AssertionError(f"no {status} {alertname} {labels} within {timeout}s; got {seen}")


async def start_prometheus_scraping(
    tmp: Path, scrape_configs: list[dict], interval: str = "1s"
) -> tuple[Process, str]:
    """A Prometheus with these scrape_configs as they are (scheme: https,
    tls_config, basic_auth, ...), no rules and no Alertmanager: for the
    tests of how cronmon is scraped rather than what it alerts on."""
    port = free_port()
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": scrape_configs,
    }
    return await _run_prometheus(tmp, config, port, "prometheus-scrape", "prom-scrape-data")
