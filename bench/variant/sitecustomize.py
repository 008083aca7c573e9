"""cronmon with one layer of the ping path cut out, for the decomposition
in bench/ingest_floor.py. Never for use.

Put this directory first on PYTHONPATH and set CRONMON_BENCH_VARIANT;
Python imports this module at start-up in every process, so `cronmon
serve --workers N` and each worker it starts get the same variant:

- http-only: Core.record returns at once. A ping still goes through
  cronmon's HTTP front (the ping fast path), request metrics,
  authentication and check-in parsing; no Redis is touched.
- no-record-script: the store sends a one-line script instead of
  record.lua. Everything in Python runs as for a real ping (the core's
  rules, the store's arguments, the batched pipeline); only Redis's work
  for the check-in is gone.

Unset or anything else: nothing is changed.
"""

import os

_VARIANT = os.environ.get("CRONMON_BENCH_VARIANT", "")

if _VARIANT == "http-only":
    from exporter.core import Core

    async def _record(self, checkin):
        return None

    Core.record = _record
elif _VARIANT == "no-record-script":
    from exporter.store import Store

    _init = Store.__init__

    def _cheap_init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self._record = self.client.register_script("return {'ok', 1, '', ''}")

    Store.__init__ = _cheap_init
