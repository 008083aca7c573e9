#!/usr/bin/env python3
"""Time from a missed deadline to the webhook receiving the alert, for the
Prometheus-rules path and for the direct bridge, with real servers.

    .venv/bin/python bench/alert_latency.py [--fast]

Default: the shipped timings (Prometheus scrape and evaluation every 15s as
in alertmanager/prometheus.yml; Alertmanager group_wait 30s as in
alertmanager/alertmanager.yml; bridge resend 30s). --fast: the end-to-end
tests' timings (1s scrapes, group_wait 0s). Each path runs separately:
cronmon (embedded Redis) with one monitor (interval 10s, grace 5s), one
ping, then wait for the CronJobMissed notification.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.servers import WebhookReceiver, alertmanager_config_for_tests, start_alertmanager, start_prometheus  # noqa: E402

KEY = "latency-bench-ping-key"
CONFIG = "monitors: [{id: nightly, schedule: {interval: 10s}, grace: 5s, labels: {team: data}}]\n"


async def one_path(path: str, fast: bool) -> float:
    tmp = Path(tempfile.mkdtemp(prefix=f"cronmon-latency-{path}-"))
    (tmp / "monitors.yaml").write_text(CONFIG)
    receiver = WebhookReceiver()
    runner = web.AppRunner(receiver.app())
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    am, am_url = await start_alertmanager(tmp, alertmanager_config_for_tests(f"http://127.0.0.1:{hook_port}", fast))
    port = free_port()
    args = [sys.executable, "-m", "exporter.cli", "serve", "--config", str(tmp / "monitors.yaml"),
            "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "data"), "--log-level", "warning"]
    if path == "bridge":
        args += ["--alertmanager-url", am_url, "--alert-resend-interval", "1" if fast else "30"]
    cronmon = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "CRONMON_PING_KEY": KEY}, stdout=subprocess.DEVNULL)
    prom = None
    try:
        import httpx

        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/-/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
            if path == "rules":
                prom, _ = await start_prometheus(tmp, f"127.0.0.1:{port}", am_url, "1s" if fast else "15s")
            await client.get(f"http://127.0.0.1:{port}/ping/{KEY}/nightly")
            deadline = time.time() + 15
        alert = await receiver.wait_for("CronJobMissed", monitor="nightly", timeout=180)
        return alert.received_at - deadline
    finally:
        if prom:
            prom.stop()
        cronmon.send_signal(signal.SIGTERM)
        cronmon.wait(30)
        am.stop()
        await runner.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fast", action="store_true", help="the e2e tests' timings instead of the shipped ones")
    fast = parser.parse_args().fast
    timings = "1s scrape/eval, group_wait 0s" if fast else "shipped: 15s scrape/eval, group_wait 30s, resend 30s"
    print(f"timings: {timings}")
    for path in ("rules", "bridge"):
        print(f"{path:>6}: missed deadline -> webhook in {await one_path(path, fast):.1f}s", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
