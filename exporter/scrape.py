"""The scrape cache: /metrics costs what changed, not what exists.

Each monitor's rendered block (collector.render_monitor) is kept with the
facts it came from. A scrape re-renders only the monitors that

* changed in Redis since the previous scrape, on any replica (the store's
  change feed: one round trip tells which),
* changed in the config (reload, API monitors), or
* reached the instant at which time alone changes what they show (late,
  missed, stuck: `MonitorBlock.valid_until`, known from the deadlines).

The text format wants each family's samples together, so the exposition is
laid out family by family; within a family, monitors are split into shards
(ranges of ids in sorted order) and each (family, shard) is one piece, kept both as
text and as raw-deflate data flushed to a byte boundary. A scrape joins
pieces: the gzip body is the deflate pieces back to back inside one gzip
member (a deflate stream may be cut at any flush point and continued by an
independent compressor), so a scrape compresses only the pieces that
changed plus cronmon's own few self metrics, which go last so the cached
part's CRC is reused.

`update` is plain CPU work on data already read; the web handler runs it in
a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import bisect
import struct
import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .collector import FAMILIES, MonitorBlock, render_monitor
from .core import Core
from .errors import StoreUnavailable
from .evaluate import Outages
from .heap import freeze_long_lived
from .keyspace import Cursor
from .model import Facts, Monitor

# Monitors per shard (when cut): small enough that one changed monitor
# recompresses little (a piece is 25-100 KB of text), large enough that
# pieces compress well (256 instead of 64: 17% fewer gzip'd bytes).
SHARD_SIZE = 256
# zlib level: 6 (the default) compresses /metrics ~10% better than 1 at
# about twice the cost; pieces are compressed once per change, not per
# scrape, so the better ratio wins.
COMPRESS_LEVEL = 6
# After an update that rendered this many monitors, the cache's new objects
# are taken out of the garbage collector's passes (see heap.freeze_long_lived).
FREEZE_AFTER_RENDERING = 1000
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, OS unknown


def _deflate(raw: bytes) -> bytes:
    """Raw deflate of `raw`, ended by a sync flush: byte-aligned, not final,
    with no back-reference before its own start, so pieces concatenate."""
    compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _deflate_final(raw: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush(zlib.Z_FINISH)


@dataclass(frozen=True)
class _Piece:
    text: bytes
    deflated: bytes


_EMPTY = _Piece(b"", b"")


@dataclass(frozen=True)
class _Assembled:
    """The per-monitor part of the exposition, ready to serve."""

    texts: tuple[bytes, ...]
    deflated: bytes
    crc: int
    length: int


_NOTHING = _Assembled((), b"", 0, 0)  # no monitor part (store down, or nothing cached yet)


class ScrapeCache:
    def __init__(self, base_url: str, shard_size: int = SHARD_SIZE):
        self.base_url = base_url
        self.shard_size = shard_size
        # Feed position the cached facts are at (None: read everything).
        self.cursor: Cursor | None = None
        self._monitors: dict[str, Monitor] = {}
        self._facts: dict[str, Facts] = {}
        self._blocks: dict[str, MonitorBlock] = {}
        self._boundaries: list[str] = []  # the first id of each shard
        self._shards: list[list[str]] = []
        self._pieces: list[list[_Piece]] = []  # [family][shard]
        self._headers = [(f.text_header().encode(), f.openmetrics_header().encode()) for f in FAMILIES]
        self._header_deflated = [_deflate(text) for text, _ in self._headers]
        self._assembled: _Assembled | None = None
        self._outages: Outages = ()  # the outages the cached blocks were rendered with
        self._lock = threading.Lock()
        self.rendered_last = 0  # monitors rendered by the last update (tests and benchmarks)

    # -- what to read -----------------------------------------------------

    def missing(self, monitors: Iterable[str]) -> list[str]:
        """Monitors the cache has no facts for (new, or never read)."""
        return [monitor_id for monitor_id in monitors if monitor_id not in self._facts]

    def forget_facts(self) -> None:
        """Drop every cached fact (the store was lost or flushed): the next
        update must be given facts for every monitor."""
        self._facts.clear()
        self.cursor = None

    # -- the update -------------------------------------------------------

    def update(
        self, monitors: Mapping[str, Monitor], fetched: Mapping[str, Facts], now: float, outages: Outages = ()
    ) -> None:
        """Bring the cache to `monitors` (the registry now), `fetched` (facts
        read since the last update), `now` and the outages known. Every
        monitor not in `fetched` must already be cached (see `missing`)."""
        with self._lock:
            self._update(monitors, fetched, now, outages)

    def _update(
        self, monitors: Mapping[str, Monitor], fetched: Mapping[str, Facts], now: float, outages: Outages
    ) -> None:
        # A newly known outage can change any monitor's status (slots it
        # forgives): render them all, once.
        rerender_all = outages != self._outages
        self._outages = outages
        dirty: set[tuple[int, str]] = set()  # (family index, monitor id) whose fragment changed
        removed = [m for m in self._monitors if m not in monitors]
        for monitor_id in removed:
            gone = self._blocks.pop(monitor_id)
            dirty.update((i, monitor_id) for i, text in enumerate(gone.fragments) if text)
            del self._monitors[monitor_id]
            self._facts.pop(monitor_id, None)
        self._facts.update({k: v for k, v in fetched.items() if k in monitors})

        added: list[str] = []
        rendered = 0
        for monitor_id, monitor in monitors.items():
            old_monitor = self._monitors.get(monitor_id)
            block = self._blocks.get(monitor_id)
            if (
                block is not None
                and not rerender_all
                and monitor_id not in fetched
                and block.valid_until > now
                # identity first: unchanged registries hand over the same objects
                and (old_monitor is monitor or old_monitor == monitor)
            ):
                self._monitors[monitor_id] = monitor
                continue
            new = render_monitor(monitor, self._facts[monitor_id], now, self.base_url, outages)
            rendered += 1
            if block is None:
                added.append(monitor_id)
            self._monitors[monitor_id] = monitor
            self._blocks[monitor_id] = new
            old = block.fragments if block is not None else ("",) * len(FAMILIES)
            dirty.update((i, monitor_id) for i, (a, b) in enumerate(zip(old, new.fragments)) if a != b)
        self.rendered_last = rendered

        if self._assembled is None or self._needs_reshard():
            self._reshard()
            return
        if not dirty:
            return
        for monitor_id in removed:
            self._shards[self._shard_of(monitor_id)].remove(monitor_id)
        for monitor_id in added:
            bisect.insort(self._shards[self._shard_of(monitor_id)], monitor_id)
        stale: set[tuple[int, int]] = {(family, self._shard_of(m)) for family, m in dirty}
        for family, shard in stale:
            self._pieces[family][shard] = self._piece(family, shard)
        self._assemble()

    def _shard_of(self, monitor_id: str) -> int:
        """Shards are ranges of ids in sorted order: neighbouring lines of a
        piece then share most of their labels, which compresses 14% better
        than shards by hash (measured on 10,000 monitors)."""
        return max(0, bisect.bisect_right(self._boundaries, monitor_id) - 1)

    def _needs_reshard(self) -> bool:
        # Re-cut when the fleet doubled or halved since the last cut, or
        # additions piled into one range.
        wanted = max(1, -(-len(self._monitors) // self.shard_size))
        shards = len(self._shards)
        return not wanted / 2 < shards < wanted * 2 or any(
            len(members) > 4 * self.shard_size for members in self._shards
        )

    def _reshard(self) -> None:
        ids = sorted(self._monitors)
        shards = [ids[i : i + self.shard_size] for i in range(0, len(ids), self.shard_size)] or [[]]
        self._boundaries = [members[0] if members else "" for members in shards]
        self._shards = shards
        self._pieces = [[self._piece(f, s) for s in range(len(shards))] for f in range(len(FAMILIES))]
        self._assemble()

    def _piece(self, family: int, shard: int) -> _Piece:
        text = "".join(self._blocks[m].fragments[family] for m in self._shards[shard]).encode()
        return _Piece(text, _deflate(text)) if text else _EMPTY

    def _assemble(self) -> None:
        texts: list[bytes] = []
        deflated: list[bytes] = []
        for family, pieces in enumerate(self._pieces):
            if not any(piece.text for piece in pieces):
                continue  # no monitor has this family: no header either
            texts.append(self._headers[family][0])
            deflated.append(self._header_deflated[family])
            for piece in pieces:
                if piece.text:
                    texts.append(piece.text)
                    deflated.append(piece.deflated)
        crc = 0
        for text in texts:
            crc = zlib.crc32(text, crc)
        self._assembled = _Assembled(tuple(texts), b"".join(deflated), crc, sum(map(len, texts)))

    # -- serving ----------------------------------------------------------

    def body(self, tail: bytes, gzip: bool, include_monitors: bool = True) -> bytes:
        """The text exposition: the cached monitor part, then `tail`
        (cronmon's self metrics). gzip'd as one gzip member if asked."""
        assembled = (self._assembled if include_monitors else None) or _NOTHING
        if not gzip:
            return b"".join((*assembled.texts, tail))
        return b"".join(
            (
                _GZIP_HEADER,
                assembled.deflated,
                _deflate_final(tail),
                struct.pack("<II", zlib.crc32(tail, assembled.crc), (assembled.length + len(tail)) & 0xFFFFFFFF),
            )
        )

    def openmetrics_body(self, tail: bytes) -> bytes:
        """The same samples in OpenMetrics (family headers differ; `tail`
        must end with `# EOF`). Uncached: only a client that accepts
        nothing else asks for it."""
        with self._lock:
            parts = []
            for family, pieces in enumerate(self._pieces):
                texts = [piece.text for piece in pieces if piece.text]
                if texts:
                    parts.append(self._headers[family][1])
                    parts.extend(texts)
        return b"".join(parts) + tail


class Scraper:
    """/metrics: brings the scrape cache up to date (one change-feed read,
    then the facts of what changed) and serves its body. One refresh at a
    time; concurrent scrapes (an HA pair of Prometheus servers) wait for it
    and share its result."""

    def __init__(self, core: Core, base_url: str, shard_size: int = SHARD_SIZE):
        self.core = core
        self.cache = ScrapeCache(base_url, shard_size)
        self._lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """Update the cache; False if Redis could not be read."""
        async with self._lock:
            core, cache = self.core, self.cache
            monitors = core.registry.monitors  # one registry for the whole scrape
            now = core.clock()
            try:
                position, changed = await core.store.changes_since(cache.cursor)
                if changed is None:
                    cache.forget_facts()
                    wanted = list(monitors)
                else:
                    wanted = [m for m in changed if m in monitors]
                    wanted.extend(cache.missing(monitors))
                fetched = await core.store.snapshot(dict.fromkeys(wanted))
                outages = await core.current_outages()
            except StoreUnavailable:
                return False
            # Rendering and compressing is CPU work: off the event loop.
            await asyncio.get_running_loop().run_in_executor(None, cache.update, monitors, fetched, now, outages)
            cache.cursor = position
            if cache.rendered_last >= FREEZE_AFTER_RENDERING:
                freeze_long_lived()  # a (near) full rebuild: all of it is long-lived
            return True


