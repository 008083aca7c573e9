"""Where each of cronmon's Redis keys lives: the key names, and on Redis
Cluster which hash slot holds them. Pure naming; the store alone uses it.

A Lua script may touch only keys of one hash slot on a cluster, and a
check-in's script updates the monitor's keys *and* the indexes that span
monitors (the deadline index the sweeper reads, the change feed the
scrapes read, the API definitions replicas reload from). Those updates
stay inside the script, atomic with the check-in, by splitting every such
index into shards that live in the slot of the monitors they index:

* One Redis server (embedded, redis://, Sentinel): one shard, and the key
  names cronmon has always used (``cronmon:{<id>}:state``, ``cronmon:due``),
  so existing data needs no migration.
* Redis Cluster: CLUSTER_SHARDS shards. A monitor belongs to shard
  ``crc32(id) % CLUSTER_SHARDS``; its keys and its shard's indexes carry the
  shard's hash tag (``cronmon:{s17}:<id>:state``, ``cronmon:{s17}:due``), so
  they hash to one slot, move together when that slot is resharded, and a
  script never sees CROSSSLOT. Readers of an index read every shard's part
  (one pipelined round trip per cluster node).

Keys no script combines with a monitor's (active-check scheduling,
heartbeats and outages, quota sets, API documents and sequences) share one
tag on a cluster, ``{shared}``, so the scripts over them stay single-slot.

The number of shards is part of the layout: every replica must use the
same, and changing it would strand data, so it is a constant, not a setting.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

# 256 tags spread over the 16384 slots, so resharding moves a fraction of
# the monitors at a time and each master of a 3..16-node cluster holds
# many shards; a reader touches 256 small keys per index read (one
# pipeline per node), which costs ~1 ms.
CLUSTER_SHARDS = 256


@dataclass(frozen=True)
class Keyspace:
    prefix: str = "cronmon"
    cluster: bool = False

    @property
    def shards(self) -> range:
        return range(CLUSTER_SHARDS if self.cluster else 1)

    def shard_of(self, monitor_id: str) -> int:
        if not self.cluster:
            return 0
        return _cluster_shard(monitor_id)

    def monitor(self, monitor_id: str, part: str) -> str:
        """One of a monitor's keys (its state, runs, history, ...)."""
        if not self.cluster:
            return f"{self.prefix}:{{{monitor_id}}}:{part}"
        return f"{self.prefix}:{{s{self.shard_of(monitor_id)}}}:{monitor_id}:{part}"

    def index(self, shard: int, name: str) -> str:
        """A shard of a cross-monitor index (due, changes, monitors, ...),
        in the slot of the monitors of that shard."""
        if not self.cluster:
            return f"{self.prefix}:{name}"
        return f"{self.prefix}:{{s{shard}}}:{name}"

    def index_of(self, monitor_id: str, name: str) -> str:
        """The shard of index `name` that holds `monitor_id`."""
        return self.index(self.shard_of(monitor_id), name)

    def shared(self, name: str) -> str:
        """A key no script combines with a monitor's."""
        if not self.cluster:
            return f"{self.prefix}:{name}"
        return f"{self.prefix}:{{shared}}:{name}"

    def by_shard(self, monitor_ids: Iterable[str]) -> dict[int, list[str]]:
        """`monitor_ids` grouped by shard, each group in the order given."""
        groups: dict[int, list[str]] = {}
        for monitor_id in monitor_ids:
            groups.setdefault(self.shard_of(monitor_id), []).append(monitor_id)
        return groups


@functools.lru_cache(maxsize=1 << 16)
def _cluster_shard(monitor_id: str) -> int:
    # Memoised: a check-in names its monitor's shard for each of ~20 keys.
    return zlib.crc32(monitor_id.encode()) % CLUSTER_SHARDS


# A position in a sharded feed: each shard's counter, in shard order.
Cursor = tuple[int, ...]
