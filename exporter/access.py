"""Who may see, change and check in on which monitor, for every API that
authenticates with a management token.

A token sees the YAML-declared monitors (read-only for everyone: the YAML
in git is their source of truth), the API monitors its owner created, and
those of its team. Writing needs a token with the write scope.

Recording a check-in through a token-authenticated route (Crontify's
X-API-Key, Sentry's DSN key) needs the write scope too, and:

- on an API monitor, the token's owner or team owns it;
- on a YAML monitor, the monitor names the token in `ping.tokens`. Seeing
  a YAML monitor is not enough: a token of another team must not mark its
  job successful or use up its rate limit, and a monitor's `ping.keys`
  must not be side-stepped through a route that takes no ping key.
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


def can_check_in(token: ApiToken, monitor: Monitor) -> bool:
    if not token.can_write:
        return False
    if monitor.from_yaml:
        return token.name in monitor.ping_token_names
    return can_see(token, monitor)


def check_in_refusal(token: ApiToken, monitor: Monitor) -> str:
    """Why `token` may not check in on `monitor` (which it can see), in
    words that say how to fix it."""
    if not token.can_write:
        return f'api token "{token.name}" has the read scope; recording check-ins needs scope: write'
    return (
        f'api token "{token.name}" may not record check-ins on monitor "{monitor.id}": '
        f"name it in the monitor's ping.tokens in {monitor.source}"
    )
