"""The optional direct bridge to Alertmanager (off unless URLs are given).

It posts the same alert names as the Prometheus rules to Alertmanager's v2
API, with richer annotations than a rule can have (the failure message,
exit code, log tail), resolves them on recovery, and re-posts firing
alerts every `resend_interval` as Alertmanager expects (an alert whose
endsAt passes without a re-post resolves by itself).

Ingestion never waits for it: the core calls `notify(monitor_id)`, which
only adds to a set; this module's own task reads the monitor's state,
decides, and talks HTTP with timeouts and backoff. Several replicas may all
run it: Alertmanager deduplicates identical alerts.

Nothing is persisted: after a restart the first pass re-posts what fires,
and an alert that resolved meanwhile resolves in Alertmanager when its
endsAt passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from .core import Core
from .errors import StoreUnavailable
from .evaluate import evaluate
from .model import Evaluation, Facts, Monitor, Outcome, Status, iso_utc

log = logging.getLogger(__name__)

# Default severity per alert when the monitor has no `severity` label; the
# same defaults as alertmanager/cronmon-rules.yml.
DEFAULT_SEVERITY = {
    "CronJobMissed": "critical",
    "CronJobFailed": "critical",
    "CronJobStuck": "critical",
    "CronJobTooLong": "warning",
    "CronJobSilentFailure": "warning",
    "CronProbeDown": "critical",
}
_BY_STATUS = {Status.DOWN: "CronJobMissed", Status.FAILED: "CronJobFailed", Status.STUCK: "CronJobStuck"}
_SUMMARY = {
    "CronJobMissed": "Cron job {m} did not run on schedule",
    "CronJobFailed": "Cron job {m} is failing",
    "CronJobStuck": "Cron job {m} is stuck",
    "CronJobTooLong": "Cron job {m} took longer than its max_runtime",
    "CronJobSilentFailure": "Cron job {m} reported success but did not do its job",
    "CronProbeDown": "HTTP check {m} is failing",
}
# How long resolved alerts keep being sent (Prometheus does the same), so an
# Alertmanager that was down when the job recovered still hears of it.
RESOLVED_RESEND_SECONDS = 15 * 60
LOG_TAIL_CHARS = 1000


def firing_alerts(monitor: Monitor, facts: Facts, ev: Evaluation) -> list[str]:
    """Names of the alerts that fire for a monitor in this state (pure)."""
    names = []
    if ev.status is Status.FAILED and monitor.probe is not None:
        names.append("CronProbeDown")  # as in the rules: an active monitor's failures
    elif ev.status in _BY_STATUS:
        names.append(_BY_STATUS[ev.status])
    if (
        monitor.max_runtime
        and facts.last_duration is not None
        and facts.last_duration > monitor.max_runtime
        and ev.status is not Status.PAUSED
    ):
        names.append("CronJobTooLong")
    if facts.last_outcome is not None and facts.last_outcome.value == "silent_failure":
        names.append("CronJobSilentFailure")
    return [name for name in names if name not in monitor.muted]


def alert_labels(monitor: Monitor, name: str) -> dict[str, str]:
    labels = {"alertname": name, "monitor": monitor.id, **dict(monitor.labels)}
    labels.setdefault("severity", DEFAULT_SEVERITY[name])
    if not labels["severity"]:
        labels["severity"] = DEFAULT_SEVERITY[name]
    return labels


@dataclass
class _Alert:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None = None  # set when resolved


@dataclass
class _Target:
    url: str
    next_attempt: float = 0.0
    failures: int = 0


@dataclass
class AlertBridge:
    core: Core
    alertmanager_urls: tuple[str, ...]
    base_url: str
    resend_interval: float = 30.0
    clock: Callable[[], float] = time.time
    timeout: float = 5.0
    _alerts: dict[tuple, _Alert] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._targets = [_Target(url.rstrip("/")) for url in self.alertmanager_urls]

    def stop(self) -> None:
        """Ask run() to return after the pass in progress."""
        self._stopping.set()
        self._wake.set()

    def notify(self, monitor_id: str) -> None:
        """Called by the core after a state change; never blocks."""
        self._dirty.add(monitor_id)
        self._wake.set()

    async def run(self, client: httpx.AsyncClient) -> None:
        last_full = 0.0
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass
            self._wake.clear()
            now = self.clock()
            try:
                full = now - last_full >= self.resend_interval
                if full:
                    last_full = now
                changed = await self.refresh(now, full)
                await self.deliver(client, now, resend_all=full or changed)
            except StoreUnavailable as exc:
                log.warning("alert bridge: %s", exc)
            except Exception:  # keep the bridge alive whatever happens
                log.exception("alert bridge: unexpected error")

    async def refresh(self, now: float, everything: bool) -> bool:
        """Re-evaluate dirty monitors (or all); True if any alert changed."""
        registry = self.core.registry
        if everything:
            ids = set(registry.monitors) | {key[0] for key in self._alerts}
        else:
            ids, self._dirty = self._dirty, set()
        changed = False
        known = [i for i in ids if i in registry.monitors]
        all_facts = await self.core.snapshot(known)  # one round trip for the lot
        outages = await self.core.current_outages()
        for monitor_id in ids:
            monitor = registry.monitors.get(monitor_id)
            wanted: dict[tuple, Monitor] = {}
            facts = None
            if monitor is not None:
                facts = all_facts[monitor_id]
                ev = evaluate(monitor, facts, now, outages)
                for name in firing_alerts(monitor, facts, ev):
                    wanted[(monitor_id, name)] = monitor
            for key, alert in list(self._alerts.items()):
                if key[0] != monitor_id:
                    continue
                if key not in wanted and alert.ends_at is None:
                    alert.ends_at = now
                    changed = True
                elif alert.ends_at is not None and now - alert.ends_at > RESOLVED_RESEND_SECONDS:
                    del self._alerts[key]
            for key, monitor in wanted.items():
                current = self._alerts.get(key)
                if current is None or current.ends_at is not None:
                    assert facts is not None
                    self._alerts[key] = _Alert(
                        alert_labels(monitor, key[1]), await self._annotations(monitor, key[1], facts), now
                    )
                    changed = True
        return changed

    async def _annotations(self, monitor: Monitor, name: str, facts: Facts) -> dict[str, str]:
        link = f"{self.base_url}/monitors/{monitor.id}"
        notes = {
            "summary": _SUMMARY[name].format(m=monitor.id),
            "description": f"{monitor.display_name}: {monitor.description}".rstrip(": "),
            "link": link,
        }
        if facts.last_exit_code is not None:
            notes["exit_code"] = str(facts.last_exit_code)
        if facts.last_duration is not None:
            notes["last_duration_seconds"] = f"{facts.last_duration:.1f}"
        # The newest failure's message and the newest log, from the history.
        events = await self.core.recent_events(monitor.id, 20)
        for event in events:
            if event.get("outcome") == Outcome.ERROR and event.get("message"):
                notes["error_message"] = event["message"]
                break
        for event in events:
            if "log" in event:
                body = await self.core.log(monitor.id, event["log"])
                if body:
                    notes["log_tail"] = body[-LOG_TAIL_CHARS:]
                break
        return notes

    async def deliver(self, client: httpx.AsyncClient, now: float, resend_all: bool) -> None:
        payload = [self._payload(alert, now) for alert in self._alerts.values()]
        if not payload:
            return
        for target in self._targets:
            if target.failures and now < target.next_attempt:
                continue  # backing off after a failure
            if not (resend_all or target.failures):
                continue
            try:
                response = await client.post(f"{target.url}/api/v2/alerts", json=payload, timeout=self.timeout)
                response.raise_for_status()
                target.failures = 0
            except httpx.HTTPError as exc:
                target.failures += 1
                delay = min(2 ** (target.failures - 1), self.resend_interval)
                target.next_attempt = now + delay
                log.warning("alert bridge: posting to %s failed (%s); retrying in %.0fs", target.url, exc, delay)

    def _payload(self, alert: _Alert, now: float) -> dict:
        ends = alert.ends_at if alert.ends_at is not None else now + 4 * self.resend_interval
        return {
            "labels": alert.labels,
            "annotations": alert.annotations,
            "startsAt": iso_utc(alert.starts_at),
            "endsAt": iso_utc(ends),
            "generatorURL": alert.annotations["link"],
        }
