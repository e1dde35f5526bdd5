"""Capture: a venue's raw frames into a recording (``k2 capture``), through the same runner.

:class:`RawFeed` opens the sessions a venue's parser asks for but parses nothing; :class:`RecordingSink`
writes every frame verbatim, control replies included, with its receive time, to a gzip JSON-lines
recording (:mod:`k2.emulator.recording`) that the emulator replays, and says it is done after
``max_frames``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from k2.emulator.recording import RecordingWriter
from k2.feed.sink import Checkpoint, Sink
from k2.schema.kinds import RecordKind
from k2.sources.base import RawFrame
from k2.sources.session import WebSocketSession
from k2.sources.venue import Venue, VenueParser


class RawFeed:
    """A venue's sessions for one subscription, frames left unparsed (implements the runner's Feed)."""

    def __init__(self, venue: Venue, parser: VenueParser, sessions: Sequence[WebSocketSession]) -> None:
        self.name = venue.name
        self.parser = parser
        self.sessions = list(sessions)

    async def parse(self, frames: list[RawFrame]) -> list[tuple[RecordKind, pa.RecordBatch]]:
        return []  # never called: the recording sink takes frames, not records

    def parsing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def backfilled(self) -> list[tuple[RecordKind, pa.RecordBatch]]:
        return []

    def tick(self, now_us: int) -> None:
        pass

    def take_events(self) -> pa.RecordBatch | None:
        return None

    def checkpoint(self) -> Checkpoint:
        return Checkpoint()

    def backfill_task(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        return None

    def get_stats(self) -> dict[str, Any]:
        return {"venue": self.name, "sessions": [s.get_stats() for s in self.sessions]}


class RecordingSink(Sink):
    """Writes raw frames to a recording; ``done`` once ``max_frames`` are written."""

    name = "recording"
    wants_records = False

    def __init__(self, path: Path, max_frames: int | None = None) -> None:
        self.writer = RecordingWriter(path)
        self.max_frames = max_frames

    @property
    def frames(self) -> int:
        return self.writer.frames

    @property
    def done(self) -> bool:
        return self.max_frames is not None and self.writer.frames >= self.max_frames

    async def add_frames(self, frames: Sequence[RawFrame]) -> None:
        for frame in frames:
            if self.done:
                return  # frames still in flight after the limit: not asked for
            self.writer.write(frame.payload.decode("utf-8", errors="replace"), frame.received_at_us)

    async def close(self) -> None:
        self.writer.close()
