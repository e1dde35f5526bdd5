"""Query workers: DuckDB work in threads, bounded in number, time and memory, and interruptible.

The service opens one locked-down in-memory DuckDB (:func:`k2.query.sql.open_connection`, with the
``api.duckdb_memory_limit`` and ``api.duckdb_threads`` of the whole service) and gives each of its
``api.workers`` workers a cursor of it, wrapped in a :class:`~k2.query.engine.QueryEngine`. A request
borrows one worker for its whole life, streaming included, so a worker's connection is never used by
two requests at once; requests beyond the pool wait (up to the query timeout, then 503).

Every call into DuckDB runs in the pool's threads, never on the event loop (inside `k2 run` the
service has its own loop in its own thread too). Each request has a deadline (``api.query_timeout_s``
from its start): when it passes, or the client goes away, the worker's query is interrupted
(``connection.interrupt()``), the thread returns, and the worker goes back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog

from k2.config import K2Settings
from k2.errors import K2Error, QueryError
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.logging import get_logger
from k2.metrics import API_QUERIES, API_QUERIES_STOPPED
from k2.query import files, sql
from k2.query.engine import QueryEngine
from k2.query.planner import ScanPlan
from k2.schema.kinds import RecordKind

log = get_logger(__name__)

T = TypeVar("T")


class QueryTimeout(K2Error):
    """A request's query ran past its deadline and was interrupted."""


class PoolBusy(K2Error):
    """Every worker stayed busy until the request's deadline."""


class Stopped(K2Error):
    """The request's query was interrupted because the client went away."""


def _translated(fn: Callable[[], T]) -> T:
    """``fn()`` with DuckDB and Arrow errors raised as QueryError (ReadOnlyViolation when refused,
    SnapshotExpired when a data file vanished: :func:`k2.query.files.translate`)."""
    try:
        return fn()
    except duckdb.Error as exc:
        raise files.translate(exc, "the table") from exc
    except (pa.ArrowException, OSError) as exc:
        raise QueryError(f"query failed: {exc}") from exc


@dataclass
class Worker:
    """One engine and its DuckDB cursor, borrowed by one request at a time."""

    engine: QueryEngine
    con: duckdb.DuckDBPyConnection
    catalog: Catalog

    def interrupt(self) -> None:
        self.engine.interrupt()  # the engine's connection is this worker's cursor

    def plan_all(self) -> ScanPlan:
        return self.engine.plan()

    def ensure_views(self) -> None:
        """This cursor's TEMP views (``trades``, ``quotes``, ``quality_events``) over the current
        snapshots' files (SQL endpoint)."""
        self.engine.ensure_views()


class WorkerPool:
    """``size`` workers over one DuckDB database, and the threads that run their calls."""

    def __init__(self, settings: K2Settings, catalog: Catalog | None = None) -> None:
        api, lake = settings.api, settings.lake
        self._owns_catalog = catalog is None
        self.catalog = catalog or open_catalog(lake)
        try:
            store = files.data_store(load_or_create_table(self.catalog, lake, RecordKind.TRADES))
            self._base = sql.open_connection(
                store.root,
                filesystem=store.filesystem,
                memory_limit=api.duckdb_memory_limit,
                threads=api.duckdb_threads,
            )
        except BaseException as exc:
            self._close_catalog()
            if isinstance(exc, K2Error) or not isinstance(exc, Exception):
                raise
            raise QueryError(f"cannot load the trades table: {exc}") from exc
        self.workers: list[Worker] = []
        for _ in range(api.workers):
            cursor = self._base.cursor()
            self.workers.append(Worker(QueryEngine(self.catalog, lake, connection=cursor), cursor, self.catalog))
        self._executor = ThreadPoolExecutor(max_workers=api.workers, thread_name_prefix="k2-api-query")
        self._idle: asyncio.Queue[Worker] | None = None
        self._lock = threading.Lock()

    def _queue(self) -> asyncio.Queue[Worker]:
        """Created on first use, inside the service's event loop."""
        if self._idle is None:
            self._idle = asyncio.Queue()
            for worker in self.workers:
                self._idle.put_nowait(worker)
        return self._idle

    @contextlib.asynccontextmanager
    async def borrow(self, deadline: float) -> AsyncIterator[Worker]:
        """A worker until the block ends; PoolBusy if none frees up before ``deadline`` (loop time)."""
        queue = self._queue()
        loop = asyncio.get_running_loop()
        try:
            worker = await asyncio.wait_for(queue.get(), timeout=max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise PoolBusy("every query worker is busy; try again shortly") from None
        API_QUERIES.labels(phase="started").inc()
        try:
            yield worker
        finally:
            API_QUERIES.labels(phase="finished").inc()
            queue.put_nowait(worker)

    async def call(self, worker: Worker, deadline: float, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which uses ``worker``) in a pool thread; interrupt it at ``deadline``.

        Raises QueryTimeout at the deadline and re-raises CancelledError (client gone) after
        interrupting; either way it returns only once the thread is done with the worker.
        """
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, _translated, fn)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - loop.time()))
        except TimeoutError:
            await self._stop(worker, future, "timeout")
            raise QueryTimeout("the query ran past the service's time limit and was stopped") from None
        except asyncio.CancelledError:
            await self._stop(worker, future, "disconnect")
            raise

    @staticmethod
    async def _stop(worker: Worker, future: asyncio.Future[T], reason: str) -> None:
        API_QUERIES_STOPPED.labels(reason=reason).inc()
        # Interrupt until the thread returns: an interrupt lands only while a statement runs, and the
        # call may have been between two statements (planning, say) the first time.
        while not future.done():
            worker.interrupt()
            await asyncio.wait([future], timeout=0.05)
        with contextlib.suppress(BaseException):
            future.result()  # retrieved, so asyncio does not log it as never retrieved
        log.info("api.query_stopped", reason=reason)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for worker in self.workers:
            worker.engine.close()
        self._base.close()
        self._close_catalog()

    def _close_catalog(self) -> None:
        """Close the catalog's database connections (a SQL catalog's pool: PostgreSQL, SQLite) if this
        pool opened the catalog."""
        engine = getattr(self.catalog, "engine", None) if self._owns_catalog else None
        if engine is not None:
            engine.dispose()
