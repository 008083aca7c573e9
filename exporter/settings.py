"""Process settings: everything that is not a monitor (flags and environment)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .storage import StoreLimits

if TYPE_CHECKING:
    from .webconfig import WebConfig

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not in the Prometheus default port allocations we know of (node 9100,
# pushgateway 9091, blackbox 9115, ...); see README.
DEFAULT_PORT = 9879


@dataclass(frozen=True)
class Settings:
    config_path: Path
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    # None: start the embedded redis-server under data_dir.
    redis_url: str | None = None
    data_dir: Path = Path("cronmon-data")
    redis_server_binary: str | None = None
    # The embedded redis-server's allocator (embedded.ALLOCATORS).
    redis_allocator: str = "auto"
    key_prefix: str = "cronmon"
    # Base of the URLs printed at start-up; defaults to the listen address.
    public_url: str | None = None
    # Hard limit on request bodies (413 above it) and how much of a ping
    # body is kept as the run's log (the rest is cut and flagged).
    max_body_bytes: int = 100_000
    log_limit_bytes: int = 10_000
    sweep_interval: float = 1.0
    # The direct bridge: Alertmanager base URLs (none: off) and how often
    # firing alerts are re-posted.
    alertmanager_urls: tuple[str, ...] = ()
    alert_resend_interval: float = 30.0
    # Boxwatch's plan limit: at most this many checks per token owner.
    boxwatch_plan_limit: int = 100
    # At most this many API-created monitors per token owner (0: no limit).
    monitors_per_owner: int = 10_000
    # Healthchecks' ?create=1: a ping to an unknown slug creates the monitor.
    auto_provision: bool = False
    # POST /-/reload (--web.enable-lifecycle); SIGHUP works regardless.
    enable_lifecycle: bool = False
    # Seconds a connection may stay without a complete request (idle
    # keep-alive, or headers still arriving) before it is closed.
    idle_timeout: float = 30.0
    boxwatch_plan: str = "self-hosted"
    # Reverse proxies whose X-Forwarded-For is believed (networks); the
    # client address of other requests is the peer address.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Active checks: how many run at once per process, which target
    # networks they may reach (empty: any), how much of a body is read.
    probe_concurrency: int = 64
    probe_allowed_networks: tuple[IPNetwork, ...] = ()
    probe_max_bytes: int = 65536
    limits: StoreLimits = field(default_factory=StoreLimits)
    # Of several worker processes only one posts to Alertmanager.
    bridge_enabled: bool = True
    # Outage-aware accounting (Core.heartbeat): slots and runs that an
    # outage of every cronmon overlapped are not counted against jobs.
    track_outages: bool = True
    # --web.config.file, validated (exporter.webconfig): TLS, basic auth
    # and response headers; None: plain HTTP, no auth.
    web_config: WebConfig | None = None

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "localhost" if self.listen_host in ("", "0.0.0.0", "::") else self.listen_host
        scheme = self.web_config.scheme if self.web_config is not None else "http"
        return f"{scheme}://{host}:{self.listen_port}"
