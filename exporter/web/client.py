"""The adapter kit: what every API reads off a request the same way — who
sent it (the client address every adapter records and every IP allow list
is checked against), which management token it carries, its body
and its idempotency key — raising neutral errors (BodyError) that each
API renders in its dialect."""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import brotli
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import MultiMapping

from ..credentials import ApiToken, match_api_token
from ..model import in_networks
from ..settings import IPNetwork
from .keys import CORE, SETTINGS


def client_ip(request: web.Request) -> str | None:
    """The address a request came from (see `source_address`)."""
    return source_address(request.remote, request.headers, request.app[SETTINGS].trusted_proxies)


def source_address(peer: str | None, headers: MultiMapping[str], trusted: tuple[IPNetwork, ...]) -> str | None:
    """The peer address; behind a trusted reverse proxy, the right-most
    X-Forwarded-For address that is not itself a trusted proxy. `headers`
    is a multidict (every X-Forwarded-For header counts).

    Right-most, not left-most: every proxy appends the address it saw, so
    only the entries added by our own proxies can be believed; anything
    left of them was written by the client and may be forged.
    """
    if not trusted or not in_networks(peer, trusted):
        return peer
    hops = [hop.strip() for header in headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
    for hop in reversed([h for h in hops if h]):
        if not in_networks(hop, trusted):
            return hop if _parses(hop) else None
    return peer


def header_text(value: str | None) -> str | None:
    """A header's value as text that can be stored and shown: bytes that
    are not UTF-8 (aiohttp surrogate-escapes them) become U+FFFD. (A lone
    surrogate cannot be encoded for Redis: it made a 500.)"""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _parses(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class BodyError(Exception):
    """A request body that cannot be read; each adapter answers `status`
    with `reason` in its own error shape."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, inflated as its Content-Encoding says (gzip, deflate, br;
    several, comma-separated, are undone in reverse order), at most `limit`
    bytes before and after inflating: a compression bomb is a 413 after
    inflating `limit` + 1 bytes, not after filling memory. BodyError for a
    body over the limit (413), an encoding cronmon does not know (415), or
    one that does not decode as its Content-Encoding says (400); never a
    500.

    cronmon inflates bodies here, not in aiohttp's parser (the app sets
    auto_decompress=False): with aiohttp's parser inflating, the fuzz suite
    saw (timing-dependent) a corrupt compressed body answered by the parser
    while the handler still waited for that body, so the request hung until
    the client gave up. Here a body is read whole, then inflated."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, f"request body too large: the limit is {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(413, f"request body too large: the limit is {limit} bytes") from None
    except RequestPayloadError:
        raise BodyError(400, "the request body was cut short or its chunked framing is broken") from None
    header = request.headers.get("Content-Encoding", "")
    codings = [c.strip().lower() for c in header.split(",") if c.strip() and c.strip().lower() != "identity"]
    unknown = [c for c in codings if c not in _DECODERS]
    if unknown:
        raise BodyError(415, f"unsupported Content-Encoding {unknown[0]!r}: send gzip, deflate, br or none")
    body = raw
    for coding in reversed(codings):
        try:
            body = _DECODERS[coding](body, limit)
        except _TooLarge:
            raise BodyError(413, f"request body too large: the limit is {limit} bytes, inflated") from None
        except (zlib.error, brotli.error, EOFError):
            raise BodyError(
                400, f"the request body does not decode as its Content-Encoding ({header.strip()}) says; "
                "send it uncompressed, or compressed as the header says"
            ) from None
    return body


class _TooLarge(Exception):
    pass


def _inflate(data: bytes, limit: int, wbits: int) -> bytes:
    decompressor = zlib.decompressobj(wbits)
    out = decompressor.decompress(data, limit + 1)
    if len(out) > limit or decompressor.unconsumed_tail:
        raise _TooLarge
    out += decompressor.flush()
    if len(out) > limit:
        raise _TooLarge
    if not decompressor.eof:
        raise EOFError("the compressed stream is cut short")
    return out


def _gunzip(data: bytes, limit: int) -> bytes:
    return _inflate(data, limit, 16 + zlib.MAX_WBITS)


def _deflate(data: bytes, limit: int) -> bytes:
    # HTTP's "deflate" is zlib-wrapped; some clients send it raw.
    try:
        return _inflate(data, limit, zlib.MAX_WBITS)
    except zlib.error:
        return _inflate(data, limit, -zlib.MAX_WBITS)


def _unbrotli(data: bytes, limit: int) -> bytes:
    decompressor = brotli.Decompressor()
    out = decompressor.process(data, output_buffer_limit=limit + 1)
    if len(out) > limit or not decompressor.can_accept_more_data():
        raise _TooLarge
    if not decompressor.is_finished():
        raise EOFError("the compressed stream is cut short")
    return out


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gunzip, "x-gzip": _gunzip, "deflate": _deflate, "br": _unbrotli,
}


def parse_json(raw: bytes, non_finite: bool = False) -> Any:
    """A JSON body; BodyError(400) for anything json.loads refuses,
    including invalid UTF-8, integers over 4,300 digits and nesting too deep
    for the parser (RecursionError), none of which may become a 500. Also
    refused: integers beyond float range, and, naming where they are: NaN and Infinity (Python reads them,
    JSON has no such values) and lone UTF-16 surrogates ("\\ud800", which
    decode but cannot be stored, shown or encoded again). `non_finite`
    lets NaN, Infinity and 1e400 through, for a caller that drops such
    values itself (Sentry SDK envelopes: the duration only)."""
    try:
        if non_finite:
            value = json.loads(raw, parse_int=_bounded_int)
        else:
            value = json.loads(raw, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BodyError(400, f"the body is not valid JSON: {reason}") from None
    problem = _unstorable(value)
    if problem:
        raise BodyError(400, f"the body is not valid JSON: {problem}")
    return value


def _bounded_int(digits: str) -> int:
    # Every number cronmon keeps is a float (Lua's too): an integer beyond
    # float range could not be stored, and one over 4,300 digits not parsed.
    if len(digits.lstrip("-")) > 300:
        raise ValueError(f"an integer of {len(digits.lstrip('-'))} digits is beyond the range of any field")
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError(f"{text[:40]} is beyond the range of any field")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value; send a finite number")


def _unstorable(value: Any) -> str | None:
    """Where `value` holds a string that is not valid Unicode, if anywhere."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not _is_unicode(key):
                    return f"the key {key!r} at {path or 'the top level'} holds a lone surrogate; send valid Unicode"
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str) and not _is_unicode(item):
            return f"the string at {path or 'the top level'} holds a lone surrogate; send valid Unicode"
    return None


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def read_json(request: web.Request, limit: int, empty: Any = None) -> Any:
    """read_body, then parse_json; `empty` for a blank body."""
    raw = await read_body(request, limit)
    return parse_json(raw) if raw.strip() else empty


class ParamError(Exception):
    """A query parameter that is not a whole number within its bounds;
    each API words it in its own dialect."""

    def __init__(self, name: str, low: int, high: int | None, not_a_number: bool):
        super().__init__(f"{name} must be a whole number")
        self.name, self.low, self.high, self.not_a_number = name, low, high, not_a_number

    @property
    def bounds(self) -> str:
        return f"between {self.low} and {self.high}" if self.high is not None else f"at least {self.low}"


def int_param(params: Mapping[str, str], name: str, default: int | None, low: int, high: int | None) -> int | None:
    """`params[name]` as a whole number in [low, high] (high None: no upper
    bound); `default` when absent; ParamError otherwise."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParamError(name, low, high, not_a_number=True) from None
    if value < low or (high is not None and value > high):
        raise ParamError(name, low, high, not_a_number=False)
    return value


def slugify(name: str, fallback: str) -> str:
    """A URL slug made of `name` (lower-case letters, digits and dashes, at
    most 40), `fallback` when nothing is left."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or fallback


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answering(render: Callable[[Exception], web.StreamResponse | None]) -> Callable[[Handler], Handler]:
    """The per-route error hook of an API: `render` turns what a handler
    raises (the core's refusals, StoreUnavailable, the API's own errors)
    into the API's error shape; what it returns None for propagates (an
    aiohttp HTTPException, a bug). Per route, not a middleware: the ping
    routes do not pay for the APIs' error handling."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except Exception as exc:
                response = render(exc)
                if response is None:
                    raise
                return response

        return guarded

    return wrap


# draft-ietf-httpapi-idempotency-key-header: a Structured Field string
# ("...") or, as most clients send it, the bare value.
IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    """A request's Idempotency-Key (None without one); BodyError(400)
    for one cronmon cannot keep: over 255 characters, or anything but
    visible ASCII (a UUID is what clients usually send)."""
    raw = headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise BodyError(
            400, f"invalid {IDEMPOTENCY_HEADER}: send 1-255 visible ASCII characters, e.g. a UUID"
        )
    return value


def bearer_token(request: web.Request, schemes: tuple[str, ...] = ("bearer",)) -> tuple[bool, ApiToken | None]:
    """(was a token sent, the API token it is) — for every API that
    authenticates with `Authorization: Bearer` (or another of `schemes`,
    lower-case, such as Django REST framework's "token")."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() not in schemes or not presented.strip():
        return False, None
    secrets = request.app[CORE].registry.secrets
    return True, match_api_token(presented.strip(), secrets.api_tokens if secrets else ())
