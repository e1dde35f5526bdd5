"""`supervise`: the shutdown order both streaming services rely on (pure asyncio, no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from k2.services.lifecycle import supervise


class _Session:
    """Stands in for a WebSocketSession: runs until stopped, then takes ``close_s`` to close."""

    def __init__(self, close_s: float) -> None:
        self.close_s = close_s
        self._stopped = asyncio.Event()

    async def run(self, sink: Any) -> None:
        await self._stopped.wait()
        await asyncio.sleep(self.close_s)

    def stop(self) -> None:
        self._stopped.set()


class _Service:
    """A processor that drains ``delivered`` and returns once stopping and idle, like the services."""

    def __init__(self, session: _Session) -> None:
        self.session = session
        self.stopping = asyncio.Event()
        self.delivered: list[str] = []
        self.produced: list[str] = []

    def stop(self) -> None:
        self.stopping.set()
        self.session.stop()

    async def process(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.produced += self.delivered
            self.delivered = []
            if self.stopping.is_set() and not self.delivered:
                return


@pytest.mark.parametrize("deliver_after_s", [0.0, 0.005, 0.015, 0.15])
def test_nothing_the_backfill_delivers_is_left_behind_after_a_signal_stop(deliver_after_s: float) -> None:
    """A signal handler calls ``stop()`` directly and the session takes 0.3 s to close. Whenever the
    backfill task delivers rows (before or after the processor's first drain), they are produced
    or the backfill was cancelled before delivering them: never left in the buffer."""

    async def scenario() -> _Service:
        session = _Session(close_s=0.3)
        service = _Service(session)

        async def backfill() -> None:
            await service.stopping.wait()
            await asyncio.sleep(deliver_after_s)
            service.delivered.append("late rows")
            await asyncio.sleep(10)  # a long REST wait: cancelled

        asyncio.get_running_loop().call_later(0.05, service.stop)  # what run_until_stopped does on SIGTERM
        await supervise([session], lambda frame: asyncio.sleep(0), service.process, service.stop, backfill)  # type: ignore[list-item]
        return service

    service = asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert service.delivered == []
    assert service.produced in ([], ["late rows"])


def test_a_failing_processor_is_raised_and_the_backfill_cancelled() -> None:
    cancelled = []

    async def scenario() -> None:
        session = _Session(close_s=0.0)

        async def process() -> None:
            await asyncio.sleep(0.02)
            raise RuntimeError("parser bug")

        async def backfill() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        await supervise([session], lambda frame: asyncio.sleep(0), process, session.stop, backfill)  # type: ignore[list-item]

    with pytest.raises(RuntimeError, match="parser bug"):
        asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert cancelled == [True]
