"""Every refusal the core makes, and the store's outage: one hierarchy
that each API renders in its own dialect (a 404, a DRF detail, Crontify's
envelope...). Nothing was written when one of these is raised, except
where a docstring says otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Monitor


class Refusal(Exception):
    """The core refused a request; nothing was written."""


class UnknownMonitor(Refusal, LookupError):
    """No such monitor (or a soft-deleted one, which takes no check-ins)."""


class MonitorExists(Refusal, ValueError):
    """A monitor with that id exists already."""


class QuotaExceeded(Refusal):
    """Creating the monitor would put its owner over a quota; nothing was
    written."""

    def __init__(self, owner: str, quota: str, limit: int):
        super().__init__(
            f'owner "{owner}" already has {limit} monitors, its limit'
            + ("" if quota == OWNER_QUOTA else f" for {quota}")
            + "; delete one first, or raise the limit"
        )
        self.owner, self.quota, self.limit = owner, quota, limit


# Every API monitor counts against its owner's limit (Core.monitors_per_owner).
OWNER_QUOTA = "monitors"


class RateLimited(Refusal):
    """The monitor's rate limit refused a check-in; nothing was recorded."""

    def __init__(self, monitor_id: str, retry_after: int):
        super().__init__(f"monitor {monitor_id}: rate limit exceeded, retry in {retry_after} seconds")
        self.retry_after = retry_after


class SourceNotAllowed(Refusal, PermissionError):
    """The check-in came from outside the monitor's allowed networks."""

    def __init__(self, monitor_id: str, source_ip: str | None):
        super().__init__(f"monitor {monitor_id}: check-ins from {source_ip or 'an unknown address'} are not allowed")
        self.source_ip = source_ip


class ReadOnlyMonitor(Refusal, ValueError):
    """The monitor is declared in YAML; API writes to it are refused."""

    def __init__(self, monitor: Monitor):
        super().__init__(
            f'monitor "{monitor.id}" is declared in {monitor.source}; change it there '
            "(YAML-declared monitors are read-only through the APIs)"
        )
        self.monitor = monitor


class StoreUnavailable(Exception):
    """Redis cannot be reached or refuses writes; nothing was changed."""


class ChecksNotRunning(Exception):
    """This process runs no active checks (yet, or any more): a check on
    demand cannot be made here now; retry later."""
