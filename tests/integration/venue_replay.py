"""Replaying a venue's recording into a K2 service until it has settled (Coinbase and Kraken end to end).

One helper for the embedded pipeline and `k2 ingest`'s service, whichever venue the emulator speaks:
the tests of each venue give the replay (protocol, recording, faults) and read the tables afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from k2.config import K2Settings
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.feed.trades import TradeCompleteness
from tests.conftest import eventually_async


class Service(Protocol):
    """What the embedded pipeline and `k2 ingest`'s service share for these tests."""

    @property
    def completeness(self) -> TradeCompleteness: ...
    @property
    def stats(self) -> Any: ...

    async def run(self) -> Any: ...
    def stop(self) -> None: ...
    def get_stats(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=Service)


async def run_settled(
    make: Callable[[K2Settings, str], S],
    settings: K2Settings,
    config: ReplayConfig,
    *,
    subscribed_when_control_sent: int | None = None,
    timeout_s: float = 180,
) -> tuple[S, BinanceEmulator]:
    """Replay ``config`` into ``make(settings with the emulator's REST URL, ws url)`` until everything
    sent (data and the protocol's own frames: greetings, acks, heartbeats) is handled, nothing is left
    to backfill and no id is missing; then stop the service.

    With ``config.hold_at`` set, the replay is released once the emulator has sent
    ``subscribed_when_control_sent`` frames of its own (e.g. Kraken's status and one ack per symbol), so
    that no recorded frame passes before K2's subscriptions are acknowledged."""
    async with BinanceEmulator(config) as emu:
        source = settings.source.model_copy(update={"rest_url": emu.http_url})
        service = make(settings.model_copy(update={"source": source}), emu.url)
        run = asyncio.create_task(service.run())
        if subscribed_when_control_sent is not None:

            async def subscribed() -> bool:
                assert not run.done(), "stopped early"
                return emu.control_sent >= subscribed_when_control_sent

            await eventually_async(subscribed, timeout=30)
            emu.release()
        tracker = service.completeness.tracker

        async def settled() -> bool:
            assert not run.done(), "stopped early"
            return (
                emu.finished.is_set()
                and service.stats.frames >= emu.frames_sent + emu.control_sent
                and service.get_stats()["backlog_frames"] == 0
                and service.completeness.backfilling == 0
                and all(not tracker.holes(k) for k in tracker.streams())
            )

        await eventually_async(settled, timeout=timeout_s)
        service.stop()
        await run
    return service, emu
