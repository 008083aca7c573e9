"""Who may see and change which monitor, for every management API.

A token sees the YAML-declared monitors (read-only for everyone: the YAML
in git is their source of truth), the API monitors its owner created, and
those of its team. Writing needs a token with the write scope.
"""

from __future__ import annotations

from .credentials import ApiToken
from .model import Monitor


def can_see(token: ApiToken, monitor: Monitor) -> bool:
    if monitor.from_yaml:
        return True
    return monitor.owner == token.owner or (token.team is not None and monitor.team == token.team)


def can_change(token: ApiToken, monitor: Monitor) -> bool:
    return token.can_write and not monitor.from_yaml and can_see(token, monitor)
