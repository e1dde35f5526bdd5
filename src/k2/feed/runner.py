"""FeedRunner: the one run loop. Feeds (one per venue; several venues run in one loop) in, a sink out.

``k2 run`` (Iceberg sink), ``k2 ingest`` (Kafka sink) and ``k2 capture`` (recording sink) are this
loop with a different :class:`~k2.feed.sink.Sink`::

    sessions --batches of frames--> backlog --(parse interval or a full batch)--> feed.parse (parser, quarantine,
      completeness: dedup, gaps, checks; pipeline columns stamped)  --rows per kind--> sink.add
    backfill task --rows--> feed.backfilled() --> sink.add          feed.tick(now) --> quality events
    flush rule: sink.pending_rows >= flush_rows, or the oldest pending row older than flush_seconds,
      or stopping  -->  sink.flush(checkpoint of every feed)

Backpressure: a session's frame sink suspends while the frames waiting plus the sink's pending rows
reach ``max_pending``, which stops that socket being read; :meth:`Sink.add` may also suspend (a full
Kafka producer queue). Nothing is dropped. Stop (:meth:`FeedRunner.stop`, from a signal handler or
the ``duration`` timer, or a sink that is done): sessions stop reading, everything received is
parsed and flushed, backfill is cancelled (its gaps stay OPEN and are found again on restart), and
:meth:`run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from k2.feed.sink import Checkpoint, Sink
from k2.logging import get_logger
from k2.schema.kinds import RecordKind
from k2.sources.base import RawFrame
from k2.sources.session import WebSocketSession, wall_clock_us
from k2.stats import Counters

log = get_logger(__name__)


class Feed(Protocol):
    """One venue's part of a run (see :class:`k2.feed.feed.VenueFeed`)."""

    name: str

    @property
    def sessions(self) -> Sequence[WebSocketSession]: ...

    async def parse(self, frames: list[RawFrame]) -> list[tuple[RecordKind, pa.RecordBatch]]:
        """Rows to store, per kind: parsed, rejects quarantined, duplicates dropped, columns stamped."""
        ...

    def parsing(self) -> bool:
        """Frames handed to :meth:`parse` whose rows it has not returned yet (a parse process): the
        runner calls :meth:`parse` again, with or without new frames, until it returns them."""
        ...

    def close(self) -> None:
        """Release what the feed started (a parse process); called once the run is over."""
        ...

    def backfilled(self) -> list[tuple[RecordKind, pa.RecordBatch]]:
        """Rows the backfill task fetched since the last call (deduplicated and stamped)."""
        ...

    def tick(self, now_us: int) -> None:
        """Time-driven checks: gaps past their grace period, stale streams."""
        ...

    def take_events(self) -> pa.RecordBatch | None:
        """Quality events recorded since the last call (after the rows they describe were added)."""
        ...

    def checkpoint(self) -> Checkpoint:
        """What must be committed with the rows added so far (platform sequences, completeness state)."""
        ...

    def backfill_task(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """The backfill coroutine to run beside the loop, or None (no backfill for this feed)."""
        ...

    def get_stats(self) -> dict[str, Any]: ...


@dataclass
class RunStats(Counters):
    frames: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # kind -> rows handed to the sink (backfill included)
    flushes: int = 0
    started_at: float = field(default_factory=time.monotonic)


class FrameBacklog:
    """Frames received but not parsed yet, per feed: the sessions' sink, with backpressure.

    ``sink`` takes a session's batch of frames (one hand-off per socket read, not one per frame) and
    wakes the runner once ``batch_frames`` are waiting; when frames waiting plus ``held()`` (the
    sink's pending rows) reach ``limit`` it suspends, which stops the session reading its socket,
    until :meth:`release`.
    """

    def __init__(self, ready: asyncio.Event, batch_frames: int, limit: int, held: Callable[[], int]) -> None:
        self.frames: list[RawFrame] = []
        self._ready = ready
        self._batch_frames = batch_frames
        self._limit = limit
        self._held = held
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self.frames)

    async def sink(self, frames: list[RawFrame]) -> None:
        """A session's batch of frames (every frame it read since it last handed some over)."""
        if self.frames:
            self.frames.extend(frames)
        else:
            self.frames = frames
        if len(self.frames) >= self._batch_frames:
            self._ready.set()
            if len(self.frames) + self._held() >= self._limit:
                self._space.clear()
                await self._space.wait()

    def take(self) -> list[RawFrame]:
        """Everything waiting, oldest first; the backlog is empty afterwards."""
        frames, self.frames = self.frames, []
        return frames

    def release(self) -> None:
        """Let a suspended session go on once below the limit again."""
        if len(self.frames) + self._held() < self._limit:
            self._space.set()


class FeedRunner:
    """Runs ``feeds`` into ``sink`` until :meth:`stop`. See the module docstring."""

    def __init__(
        self,
        feeds: Sequence[Feed],
        sink: Sink,
        *,
        flush_rows: int,
        flush_seconds: float,
        parse_batch_frames: int = 5_000,
        parse_interval_s: float = 0.05,
        max_pending: int | None = None,
    ) -> None:
        if not feeds:
            raise ValueError("a runner needs at least one feed")
        self.feeds = list(feeds)
        self.sink = sink
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.parse_interval_s = parse_interval_s
        self.stats = RunStats()
        self._ready = asyncio.Event()
        limit = max_pending if max_pending is not None else 4 * flush_rows + parse_batch_frames
        self._backlogs = [
            FrameBacklog(self._ready, parse_batch_frames, limit, lambda: self.sink.pending_rows) for _ in self.feeds
        ]
        self._stopping = False
        self._pending_since: float | None = None  # monotonic time the oldest unflushed row was added

    # --- public ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish: stop reading, then parse and flush everything received. Safe from signal handlers."""
        self._stopping = True
        self._ready.set()
        for feed in self.feeds:
            for session in feed.sessions:
                session.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def backlog_frames(self) -> int:
        return sum(len(b) for b in self._backlogs)

    async def run(self) -> RunStats:
        """Run until stopped (or a session fails fatally: its error is raised after the drain)."""
        log.info("runner.start", feeds=[f.name for f in self.feeds], sink=self.sink.name)
        sessions = [(s, b.sink) for f, b in zip(self.feeds, self._backlogs, strict=True) for s in f.sessions]
        session_tasks = [asyncio.create_task(s.run(sink)) for s, sink in sessions]
        jobs = [job for f in self.feeds if (job := f.backfill_task()) is not None]
        helpers = [asyncio.create_task(job()) for job in jobs]
        processor = asyncio.create_task(self._drain(helpers))
        try:
            done, _ = await asyncio.wait([*session_tasks, processor], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if (exc := task.exception()) is not None:
                    raise exc
        finally:
            self.stop()
            for task in session_tasks:
                task.cancel()
            await asyncio.gather(*session_tasks, return_exceptions=True)
            try:
                await processor
            finally:
                for helper in helpers:  # the processor failed before cancelling them
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                try:
                    await self.sink.close()
                finally:
                    for feed in self.feeds:
                        feed.close()
        log.info("runner.stopped", **self.stats.as_dict())
        return self.stats

    # --- the loop -------------------------------------------------------------------------------
    async def _drain(self, helpers: list[asyncio.Task[None]]) -> None:
        """The loop until stopped and idle; then the backfill tasks are cancelled and the loop runs
        once more to flush what they delivered (a signal handler stops the runner while they run)."""
        await self._loop()
        if helpers:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._loop()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout=self.parse_interval_s)
            self._ready.clear()
            for feed, backlog in zip(self.feeds, self._backlogs, strict=True):
                await self._step(feed, backlog.take())
            await self.sink.tick()
            await self._maybe_flush()
            for backlog in self._backlogs:
                backlog.release()
            if self._stopping and self._idle():
                return

    async def _step(self, feed: Feed, frames: list[RawFrame]) -> None:
        self.stats.frames += len(frames)
        if self.sink.wants_records:
            if frames or feed.parsing():
                await self._add(feed.name, await feed.parse(frames))
        elif frames:
            await self.sink.add_frames(frames)
            if getattr(self.sink, "done", False):
                self.stop()
        await self._add(feed.name, feed.backfilled())
        feed.tick(wall_clock_us())
        events = feed.take_events()
        if events is not None and events.num_rows:
            await self._add(feed.name, [(RecordKind.QUALITY_EVENTS, events)])

    async def _add(self, venue: str, rows: list[tuple[RecordKind, pa.RecordBatch]]) -> None:
        for kind, batch in rows:
            if batch.num_rows == 0:
                continue
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            self.stats.rows[kind.value] = self.stats.rows.get(kind.value, 0) + batch.num_rows
            await self.sink.add(kind, batch, venue)

    async def _maybe_flush(self) -> None:
        """The one flush rule: enough rows, old enough rows, or stopping."""
        pending = self.sink.pending_rows
        due = self._stopping or pending >= self.flush_rows
        if not due and self._pending_since is not None:
            due = time.monotonic() - self._pending_since >= self.flush_seconds
        if not due:
            return
        if pending or self.sink.busy:
            await self.sink.flush(self._checkpoint(), wait=self._stopping)
            self.stats.flushes += 1
        self._pending_since = None if self.sink.pending_rows == 0 else time.monotonic()

    def _checkpoint(self) -> Checkpoint:
        merged: dict[RecordKind, dict[str, str]] = {}
        for feed in self.feeds:
            for kind, props in feed.checkpoint().properties.items():
                merged.setdefault(kind, {}).update(props)
        return Checkpoint(merged)

    def _idle(self) -> bool:
        parsing = any(feed.parsing() for feed in self.feeds)
        return not self.backlog_frames() and not parsing and self.sink.pending_rows == 0 and not self.sink.busy
