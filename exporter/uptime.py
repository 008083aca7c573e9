"""Uptime statistics from the store's hourly and daily outcome buckets.

The store counts every run outcome and missed slot per UTC hour (48 hours
kept) and per UTC day (31 days kept), see `count_uptime` in lua/common.lua.
This module turns those counters into figures; it is pure, with `now`
passed in.

Windows: "24h" is the current hour and the 23 before it (hourly buckets);
"7d" and "30d" are today and the 6 / 29 UTC days before it (daily buckets).
A check is a run outcome or a missed slot; it is successful if the run
ended ok or with a warning (a slow but working job or endpoint is up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .rules import UPTIME_COLUMNS

HOUR, DAY = 3600, 86400

# Outcome names as the store writes them -> the bucket they are counted in.
_COLUMNS = {outcome.value: column for outcome, column in UPTIME_COLUMNS.items()}


@dataclass(frozen=True)
class UptimeCounts:
    success: int = 0
    warning: int = 0
    error: int = 0
    missed: int = 0

    @property
    def total(self) -> int:
        return self.success + self.warning + self.error + self.missed

    @property
    def successful(self) -> int:
        return self.success + self.warning

    @property
    def percentage(self) -> float | None:
        """None while there is nothing to measure (not 100: unknown is not up)."""
        if not self.total:
            return None
        return round(100.0 * self.successful / self.total, 2)

    def __add__(self, other: UptimeCounts) -> UptimeCounts:
        return UptimeCounts(
            self.success + other.success, self.warning + other.warning,
            self.error + other.error, self.missed + other.missed,
        )


def _bucket(buckets: Mapping[str, int], unit: str, index: int) -> UptimeCounts:
    counts = {"success": 0, "warning": 0, "error": 0, "missed": 0}
    for outcome, column in _COLUMNS.items():
        counts[column] += buckets.get(f"{unit}{index}:{outcome}", 0)
    return UptimeCounts(**counts)


def by_hour(buckets: Mapping[str, int], now: float, hours: int = 24) -> list[tuple[int, UptimeCounts]]:
    """(hour start, counts) for the last `hours` UTC hours, oldest first,
    the current one included; hours without checks are zero, not absent."""
    current = int(now // HOUR)
    return [(index * HOUR, _bucket(buckets, "h", index)) for index in range(current - hours + 1, current + 1)]


def by_day(buckets: Mapping[str, int], now: float, days: int = 30) -> list[tuple[int, UptimeCounts]]:
    """(day start, counts) for the last `days` UTC days, oldest first, today included."""
    today = int(now // DAY)
    return [(index * DAY, _bucket(buckets, "d", index)) for index in range(today - days + 1, today + 1)]


def _sum(rows: list[tuple[int, UptimeCounts]]) -> UptimeCounts:
    total = UptimeCounts()
    for _, counts in rows:
        total = total + counts
    return total


def summary(buckets: Mapping[str, int], now: float) -> dict[str, UptimeCounts]:
    return {
        "24h": _sum(by_hour(buckets, now, 24)),
        "7d": _sum(by_day(buckets, now, 7)),
        "30d": _sum(by_day(buckets, now, 30)),
    }
