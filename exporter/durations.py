"""Durations as cronmon's files and flags write them (`30s`, `5m`,
`1h30m`, `2d`, or seconds), with no dependency beyond the standard
library: `cronmon exec` parses its flags with it and starts without the
server's imports."""

from __future__ import annotations

import math
import re
from typing import Any

# Longer than any schedule a monitor can have; larger values (1e300,
# "99999999999999999d") overflow the slot arithmetic.
MAX_DURATION = 10 * 366 * 86400.0

_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


def _shown(value: Any) -> str:
    """A value for an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def parse_duration(value: Any) -> float:
    """`30s`, `5m`, `1h30m`, `2d`, or plain seconds (int, float or digits)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m or 1h30m, not a boolean")
    if isinstance(value, int) and not -MAX_DURATION <= value <= MAX_DURATION:
        # Before float(): an integer beyond float range is an OverflowError.
        raise ValueError(f"{_shown(value)} is longer than the longest duration cronmon takes (10 years)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise ValueError(f"{_shown(value)} is not a duration; write it like 30s, 5m, 1h30m or 2d")
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION_RE.match(text)
            if not text or not match:
                raise ValueError(
                    f"{value!r} is not a duration; write it like 30s, 5m, 1h30m or 2d"
                ) from None
            days, hours, minutes, secs = match.groups()
            seconds = (
                int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60
                + float(secs or 0)
            )
    else:
        raise ValueError("must be a duration such as 30s, 5m or 1h30m")
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration: it must be a finite number of seconds")
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than the longest duration cronmon takes (10 years)")
    return seconds
