"""Streamed responses: a worker's record-batch reader, encoded batch by batch in the worker's thread.

:func:`stream_reader` reads and encodes the first batch *before* answering, so a query that fails to
bind or start still gets a proper JSON error and status; after that the body is produced one batch
at a time (DuckDB computes the next batch only when the client has taken the previous one). The
worker is held until the body ends and is returned by the response itself, whatever happens: end,
client gone (its query interrupted) or deadline (interrupted, and the connection aborted so the
client sees an incomplete body rather than a silently short one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from k2.api.formats import Encoder
from k2.api.workers import Worker, WorkerPool


@dataclass
class Source:
    """What a route hands to :func:`stream_reader`: rows, their output schema, and limits."""

    reader: pa.RecordBatchReader | None  # None: no rows
    schema: pa.Schema
    row_cap: int | None = None  # stop after this many rows and report truncated
    cast: bool = False  # cast each batch to ``schema`` (canonical types and nullability)
    headers: dict[str, str] = field(default_factory=dict)


Trailer = Callable[[int, bool], Mapping[str, Any]]


class _Body:
    """The encoding state of one response; every method runs in the worker's thread."""

    def __init__(self, source: Source, encoder: Encoder, trailer: Trailer) -> None:
        self.source = source
        self.encoder = encoder
        self.trailer = trailer
        self.rows = 0
        self.truncated = False
        self.done = False

    def _next_batch(self) -> pa.RecordBatch | None:
        reader = self.source.reader
        if reader is None or self.truncated:
            return None
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return None
        cap = self.source.row_cap
        if cap is not None and self.rows + batch.num_rows > cap:
            batch = batch.slice(0, cap - self.rows)
            self.truncated = True
        self.rows += batch.num_rows
        return batch.cast(self.source.schema) if self.source.cast else batch

    def first(self) -> bytes:
        head = self.encoder.start(self.source.schema)
        return head + self.next()

    def next(self) -> bytes:
        """The next chunk of the body; after the last one, :attr:`done` is set."""
        if self.done:
            return b""
        batch = self._next_batch()
        if batch is None:
            self.done = True
            self.close()
            return self.encoder.finish(self.trailer(self.rows, self.truncated))
        return self.encoder.write(batch)

    def close(self) -> None:
        if self.source.reader is not None:
            self.source.reader.close()


class _WorkerResponse(StreamingResponse):
    """A streaming response that gives its worker back once sent (or abandoned)."""

    def __init__(
        self, content: AsyncGenerator[bytes, None], release: Callable[[], Awaitable[None]], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._chunks = content
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._chunks.aclose()  # runs its cleanup if the body was abandoned mid-way
            finally:
                await self._release()


async def stream_reader(
    pool: WorkerPool,
    worker: Worker,
    release: Callable[[], Awaitable[None]],
    deadline: float,
    open_source: Callable[[], Source],
    encoder: Encoder,
    trailer: Trailer = lambda rows, truncated: {},
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """Open ``open_source`` on ``worker`` and answer with its rows, streamed (see the module docstring).

    ``release`` returns the worker to the pool; it is called exactly once, here on failure or by the
    response when the body ends.
    """
    try:
        source = await pool.call(worker, deadline, open_source)
        body = _Body(source, encoder, trailer)
        try:
            first = await pool.call(worker, deadline, body.first)
        except BaseException:
            await pool.call(worker, deadline + 5.0, body.close)
            raise
    except BaseException:
        await release()
        raise

    async def chunks() -> AsyncGenerator[bytes, None]:
        try:
            yield first
            while not body.done:
                chunk = await pool.call(worker, deadline, body.next)
                if chunk:
                    yield chunk
        finally:
            if not body.done:
                await asyncio.shield(pool.call(worker, asyncio.get_running_loop().time() + 5.0, body.close))

    all_headers = {**(headers or {}), **source.headers}
    return _WorkerResponse(chunks(), release, media_type=encoder.media_type, headers=all_headers)
