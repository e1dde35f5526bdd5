"""Aggregate results kept per table snapshot, so the same bars are not computed twice.

A 1-minute OHLCV of a symbol-day reads millions of rows for 1,440 bars, and a dashboard (or ten
researchers) asks for the same bars again and again. An Iceberg snapshot never changes, so the
aggregate of a filter over one snapshot's files is the same every time it is computed: the cache key
is (snapshot id, planned files, filter, what is computed), and a new snapshot simply makes new keys
(the old entries age out, least recently used first). Nothing is ever stale: a query always plans
against the current snapshot first, then looks its result up.

One cache is shared by the threads of a process (the REST API's workers); its size is bounded by the
Arrow bytes of what it holds (``api.result_cache_mb``; 0 turns it off). Only aggregates go in (their
results are small: one row per bar); row pages are never cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import pyarrow as pa

from k2.metrics import QUERY_RESULT_CACHE


class ResultCache:
    """A thread-safe LRU of Arrow tables, bounded by their total ``nbytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, pa.Table] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: Hashable) -> pa.Table | None:
        if not self.enabled:
            return None
        with self._lock:
            table = self._entries.get(key)
            if table is not None:
                self._entries.move_to_end(key)
        QUERY_RESULT_CACHE.labels(outcome="miss" if table is None else "hit").inc()
        return table

    def put(self, key: Hashable, table: pa.Table) -> None:
        size = table.nbytes
        if not self.enabled or size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = table
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes
