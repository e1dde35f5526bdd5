"""What a venue's emulator protocol provides (the ``emulator`` of a :class:`k2.sources.venue.Venue`).

The server (:mod:`k2.emulator.server`) owns everything venue-neutral: the replay cursor and pace,
clients and their subscriptions, fault injection, disconnects, backpressure. A protocol says what
is the venue's own: how a handshake target subscribes, how control messages are answered, which
stream each recorded frame belongs to and how it is framed for a client, and the REST side.
Binance's is :class:`k2.emulator.binance.BinanceProtocol`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from k2.emulator.faults import Faults, OutFrame
from k2.emulator.recording import RecordedFrame
from k2.emulator.rest import RestEndpoints


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    """What the server does with one client message: reply, and change the client's subscription."""

    reply: bytes | None
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()


class EmulatorProtocol(Protocol):
    name: str
    default_recording: Path

    def open(self, target: str) -> tuple[str, list[str]]:
        """(framing, streams subscribed from the start) of a handshake target; raise
        :class:`k2.emulator.protocol.PathError` to refuse it with an HTTP status."""
        ...

    def control(self, subscribed: list[str], message: str | bytes) -> ControlAnswer: ...

    def route(self, recorded: RecordedFrame) -> OutFrame:
        """The recorded frame with the stream it belongs to (``stream=None``: never sent)."""
        ...

    def payload(self, out: OutFrame, framing: str) -> bytes:
        """The bytes a client with ``framing`` receives for ``out``."""
        ...

    def rest(self, recording: Path, faults: Faults) -> RestEndpoints | None:
        """The REST endpoints served on the same port (None: the venue's emulator has none)."""
        ...
