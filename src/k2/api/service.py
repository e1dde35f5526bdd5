"""What every route shares: settings, the worker pool, the guard, caches, and two ways to run a query."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import Response

from k2.api.formats import Encoder
from k2.api.problems import Redactor
from k2.api.security import Guard
from k2.api.streaming import Source, Trailer, stream_reader
from k2.api.workers import Worker, WorkerPool
from k2.config import K2Settings

T = TypeVar("T")


class TtlCache:
    """Values kept for ``ttl_s`` under a key (e.g. the snapshot id); thread-safe, tiny."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any | None:
        with self._lock:
            found = self._items.get(key)
        if found is None or time.monotonic() - found[0] > self._ttl_s:
            return None
        return found[1]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items = {key: (time.monotonic(), value)}  # only the newest entry is ever useful


@dataclass
class Service:
    settings: K2Settings
    pool: WorkerPool
    guard: Guard
    redact: Redactor
    process_metrics: bool = False  # True inside `k2 run --serve`: report the pipeline's own counters
    instruments: TtlCache = field(default_factory=lambda: TtlCache(5.0))
    feeds: TtlCache = field(default_factory=lambda: TtlCache(2.0))
    extras: dict[str, Any] = field(default_factory=dict)

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.settings.api.query_timeout_s

    async def run(self, fn: Callable[[Worker], T]) -> T:
        """``fn(worker)`` in a worker thread, within the query deadline."""
        deadline = self.deadline()
        async with self.pool.borrow(deadline) as worker:
            return await self.pool.call(worker, deadline, lambda: fn(worker))

    async def stream(
        self,
        open_source: Callable[[Worker], Source],
        encoder: Encoder,
        trailer: Trailer = lambda rows, truncated: {},
    ) -> Response:
        """A streamed response of the rows ``open_source(worker)`` opens (see :mod:`k2.api.streaming`)."""
        deadline = self.deadline()
        borrowed = self.pool.borrow(deadline)
        worker = await borrowed.__aenter__()

        async def release() -> None:
            await borrowed.__aexit__(None, None, None)

        return await stream_reader(self.pool, worker, release, deadline, lambda: open_source(worker), encoder, trailer)


def service(request: Request) -> Service:
    found: Service = request.app.state.k2
    return found
