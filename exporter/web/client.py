"""Who sent a request: the client address every adapter records and every
IP allow list is checked against."""

from __future__ import annotations

import ipaddress

from aiohttp import web

from ..model import in_networks
from .keys import SETTINGS


def client_ip(request: web.Request) -> str | None:
    """The peer address; behind a trusted reverse proxy, the right-most
    X-Forwarded-For address that is not itself a trusted proxy.

    Right-most, not left-most: every proxy appends the address it saw, so
    only the entries added by our own proxies can be believed; anything
    left of them was written by the client and may be forged.
    """
    peer = request.remote
    trusted = request.app[SETTINGS].trusted_proxies
    if not trusted or not in_networks(peer, trusted):
        return peer
    hops = [hop.strip() for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
    for hop in reversed([h for h in hops if h]):
        if not in_networks(hop, trusted):
            return hop if _parses(hop) else None
    return peer


def _parses(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
