"""`k2 capture`: record a venue's raw frames, with receive times, to a recording the emulator replays.

Connects to the adapter's stream URLs (Binance by default, or any compatible base URL such as the
emulator's) through :class:`~k2.sources.session.WebSocketSession` and writes every frame verbatim,
control replies included, to a gzip JSON-lines file (:mod:`k2.emulator.recording`). Stops after
``max_frames`` frames, after ``duration_s`` seconds, or when cancelled; the file is always closed
properly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from k2.config import K2Settings
from k2.emulator.recording import RecordingWriter
from k2.errors import ConfigError
from k2.logging import get_logger
from k2.services.lifecycle import stop_on_signals
from k2.sources import RawFrame, load_adapter
from k2.sources.session import WebSocketSession

log = get_logger(__name__)


async def capture(
    settings: K2Settings,
    out: Path,
    *,
    url: str | None = None,
    max_frames: int | None = None,
    duration_s: float | None = None,
) -> int:
    """Record raw frames to ``out`` (``.jsonl.gz``); returns the number of frames written."""
    if max_frames is not None and max_frames <= 0:
        raise ConfigError("max_frames must be positive")
    if duration_s is not None and duration_s <= 0:
        raise ConfigError("duration_s must be positive")
    source = settings.source
    adapter = load_adapter(source.venue, source.symbols)
    urls = adapter.stream_urls(url or source.ws_url)
    subscribe = adapter.subscribe_messages()
    sessions = [WebSocketSession(u, venue=adapter.venue, settings=source, subscribe_messages=subscribe) for u in urls]

    def stop_all() -> None:
        for session in sessions:
            session.stop()

    with RecordingWriter(out) as writer:

        async def sink(frame: RawFrame) -> None:
            if max_frames is not None and writer.frames >= max_frames:
                return  # frames still in flight after stop(): not asked for
            writer.write(frame.payload.decode("utf-8", errors="replace"), frame.received_at_us)
            if max_frames is not None and writer.frames >= max_frames:
                stop_all()

        log.info("capture.start", venue=adapter.venue, symbols=list(source.symbols), out=str(out))
        timer = asyncio.get_running_loop().call_later(duration_s, stop_all) if duration_s is not None else None
        tasks = [asyncio.create_task(s.run(sink)) for s in sessions]
        try:
            with stop_on_signals(stop_all, asyncio.get_running_loop()):  # a signal ends the recording cleanly
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
            await asyncio.gather(*tasks)
        finally:
            if timer is not None:
                timer.cancel()
            stop_all()
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.info("capture.done", frames=writer.frames, out=str(out))
        return writer.frames
