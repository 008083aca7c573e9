"""What cronmon's HTTP server logs about requests it could not read.

aiohttp logs a malformed request (a request line over 8,190 bytes, headers
over their limit, a body that does not decode as its Content-Encoding
says) at ERROR with a traceback, and for an over-long request line the
line itself, which holds a ping key. Any client can cause them and none is
cronmon's fault: they are rewritten to one INFO line naming the kind of
error, with no traceback and nothing the client sent.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

_CLIENT_ERRORS = (HttpProcessingError, RequestPayloadError)


def _client_error(exc: BaseException | None) -> BaseException | None:
    seen = 0
    while exc is not None and seen < 5:  # the error, or what caused it
        if isinstance(exc, _CLIENT_ERRORS):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class ClientErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = _client_error(record.exc_info[1] if record.exc_info else None)
        if exc is None:
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg = "refused a request that is not valid HTTP: %s (answered %s)"
        record.args = (type(exc).__name__, getattr(exc, "code", 400))
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def quiet_client_errors() -> None:
    """Install the filter on aiohttp's server logger (once per process)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())
