"""The process heap and the cyclic garbage collector.

cronmon's long-lived data (the registry, the scrape cache: hundreds of
thousands of objects at 10,000 monitors) holds no reference cycles, so the
collector's full passes over it find nothing, yet each one walked it all:
measured 45-250 ms pauses of the event loop several times a minute under
load, and during reloads. Whoever creates a large long-lived structure
(start-up, a reload, a full scrape-cache rebuild) freezes it out of those
passes here.
"""

from __future__ import annotations

import gc


def freeze_long_lived(collect_young: bool = True) -> None:
    """Keep the cyclic garbage collector off the long-lived heap. After a
    young-generation collection (which frees the short-lived cycles),
    everything alive moves to the permanent generation; refcounting still
    frees frozen objects that are dropped later. What this gives up: a
    reference cycle that was already old at this moment is never freed.
    `collect_young=False` skips the young collection when everything young
    is known to be kept (a freshly loaded config)."""
    if collect_young:
        gc.collect(1)
    gc.freeze()
