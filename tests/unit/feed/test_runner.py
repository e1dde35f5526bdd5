"""FeedRunner: the one run loop's shutdown order, flush rule and backpressure (pure asyncio, no network)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pyarrow as pa
import pytest

from k2.feed.runner import FeedRunner
from k2.feed.sink import Checkpoint, Sink
from k2.schema.kinds import RecordKind
from k2.sources.base import RawFrame


class _Session:
    """Stands in for a WebSocketSession: sends ``frames`` into the sink, runs until stopped, then
    takes ``close_s`` to close."""

    def __init__(self, frames: int = 0, close_s: float = 0.0) -> None:
        self.frames = frames
        self.close_s = close_s
        self.sent = 0
        self.all_sent = asyncio.Event()
        self._stopped = asyncio.Event()

    async def run(self, sink: Any) -> None:
        for i in range(self.frames):
            if self._stopped.is_set():
                break
            await sink([RawFrame(b"%d" % i, i)])  # a batch of one: the smallest a session hands over
            self.sent += 1
        self.all_sent.set()
        await self._stopped.wait()
        await asyncio.sleep(self.close_s)

    def stop(self) -> None:
        self._stopped.set()

    def get_stats(self) -> dict[str, Any]:
        return {}


def _rows(n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"x": list(range(n))})


class _Feed:
    """One row per frame; ``backfill`` runs beside the loop and may deliver rows any time."""

    name = "test"

    def __init__(self, session: _Session, backfill: Callable[[_Feed], Coroutine[Any, Any, None]] | None = None) -> None:
        self.sessions = [session]
        self.delivered: list[pa.RecordBatch] = []
        self._backfill = backfill
        self.fail_parse = False
        self.closed = False

    async def parse(self, frames: list[RawFrame]) -> list[tuple[RecordKind, pa.RecordBatch]]:
        if self.fail_parse:
            raise RuntimeError("parser bug")
        return [(RecordKind.TRADES, _rows(len(frames)))]

    def parsing(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def backfilled(self) -> list[tuple[RecordKind, pa.RecordBatch]]:
        out, self.delivered = self.delivered, []
        return [(RecordKind.TRADES, b) for b in out]

    def tick(self, now_us: int) -> None:
        pass

    def take_events(self) -> pa.RecordBatch | None:
        return None

    def checkpoint(self) -> Checkpoint:
        return Checkpoint({RecordKind.TRADES: {"k2.test": "1"}})

    def backfill_task(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        backfill = self._backfill
        return None if backfill is None else lambda: backfill(self)

    def get_stats(self) -> dict[str, Any]:
        return {}


class _MemorySink(Sink):
    """Keeps what it is given; a flush moves pending rows to ``durable``."""

    name = "memory"

    def __init__(self) -> None:
        self.pending: list[pa.RecordBatch] = []
        self.durable: list[int] = []  # rows per flush
        self.checkpoints: list[Checkpoint] = []

    async def add(self, kind: RecordKind, batch: pa.RecordBatch, venue: str) -> None:
        self.pending.append(batch)

    @property
    def pending_rows(self) -> int:
        return sum(b.num_rows for b in self.pending)

    async def flush(self, checkpoint: Checkpoint, *, wait: bool) -> None:
        self.durable.append(self.pending_rows)
        self.checkpoints.append(checkpoint)
        self.pending = []


@pytest.mark.parametrize("deliver_after_s", [0.0, 0.005, 0.015, 0.15])
def test_nothing_the_backfill_delivers_is_left_behind_after_a_stop(deliver_after_s: float) -> None:
    """Stop (as a signal handler does) while the session takes 0.3 s to close. Whenever the backfill
    task delivers rows, before or after the loop's first drain, they are flushed, or the backfill was
    cancelled before delivering them: never left pending."""

    async def backfill(feed: _Feed) -> None:
        await stopping.wait()
        await asyncio.sleep(deliver_after_s)
        feed.delivered.append(_rows(7))
        await asyncio.sleep(10)  # a long REST wait: cancelled

    stopping = asyncio.Event()

    async def scenario() -> _MemorySink:
        sink = _MemorySink()
        runner = FeedRunner([_Feed(_Session(close_s=0.3), backfill)], sink, flush_rows=1_000, flush_seconds=60)

        def stop() -> None:
            stopping.set()
            runner.stop()

        asyncio.get_running_loop().call_later(0.05, stop)
        await runner.run()
        return sink

    sink = asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert sink.pending == []
    assert sum(sink.durable) in (0, 7)


def test_a_failing_parse_is_raised_after_the_drain_the_backfill_cancelled_and_the_feed_closed() -> None:
    cancelled = []
    feeds: list[_Feed] = []

    async def backfill(feed: _Feed) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario() -> None:
        feed = _Feed(_Session(frames=3), backfill)
        feed.fail_parse = True
        feeds.append(feed)
        await FeedRunner([feed], _MemorySink(), flush_rows=10, flush_seconds=60).run()

    with pytest.raises(RuntimeError, match="parser bug"):
        asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert cancelled == [True]
    assert feeds[0].closed  # a parse process it started does not outlive the run


def test_rows_are_flushed_by_count_and_on_stop_with_the_feeds_checkpoint() -> None:
    async def scenario() -> tuple[_MemorySink, FeedRunner]:
        sink = _MemorySink()
        session = _Session(frames=25)
        runner = FeedRunner([_Feed(session)], sink, flush_rows=10, flush_seconds=60, parse_batch_frames=5)

        async def stop_when_sent() -> None:
            await session.all_sent.wait()
            runner.stop()

        await asyncio.gather(runner.run(), stop_when_sent())
        return sink, runner

    sink, runner = asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert sum(sink.durable) == 25 and sink.pending == []
    assert all(rows >= 10 for rows in sink.durable[:-1])  # by count, then whatever is left on stop
    assert sink.checkpoints[-1].for_kind(RecordKind.TRADES) == {"k2.test": "1"}
    assert runner.stats.rows == {"trades": 25} and runner.stats.frames == 25


def test_a_full_backlog_suspends_the_session_until_the_loop_takes_it() -> None:
    """Backpressure: with the limit at 8 pending, the session's sink suspends; nothing is dropped."""

    async def scenario() -> tuple[_MemorySink, _Session]:
        sink = _MemorySink()
        session = _Session(frames=100)
        runner = FeedRunner([_Feed(session)], sink, flush_rows=4, flush_seconds=60, parse_batch_frames=4, max_pending=8)

        async def stop_when_sent() -> None:
            await session.all_sent.wait()
            runner.stop()

        await asyncio.gather(runner.run(), stop_when_sent())
        return sink, session

    sink, session = asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert session.sent == 100 and sum(sink.durable) == 100


def test_a_runner_needs_a_feed() -> None:
    with pytest.raises(ValueError, match="feed"):
        FeedRunner([], _MemorySink(), flush_rows=1, flush_seconds=1)
