"""What a venue's emulator protocol provides (the ``emulator`` of a :class:`k2.sources.venue.Venue`).

The server (:mod:`k2.emulator.server`) owns everything venue-neutral: the replay cursor and pace,
clients and their subscriptions, fault injection, disconnects, backpressure, and the timing of
greetings and heartbeats. A protocol says what is the venue's own: how a handshake target
subscribes, what a new connection is greeted with, how control messages are answered (one or more
replies), the heartbeat an idle subscribed connection gets, which stream each recorded frame
belongs to and how it is framed for a client, how bad frames are made from real ones
(:class:`k2.emulator.faults.BadFrames`), and the REST side. Binance's is
:class:`k2.emulator.binance.BinanceProtocol`, Kraken's :class:`k2.emulator.kraken.KrakenProtocol`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from k2.emulator.faults import BadFrames, Faults, OutFrame
from k2.emulator.recording import RecordedFrame
from k2.emulator.rest import RestRequest, RestResponse


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    """What the server does with one client message: reply (``reply``, then each of ``more``), and
    change the client's subscription."""

    reply: bytes | None
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    more: tuple[bytes, ...] = ()  # further replies (Kraken acknowledges a subscribe once per symbol)


class RestSide(Protocol):
    """A venue's REST endpoints, served on the WebSocket's port."""

    requests: list[RestRequest]  # every request, for tests to check a client's pacing

    def handle(self, target: str) -> RestResponse | None:
        """The answer to ``GET target``; None when ``target`` is not one of its paths."""
        ...


class EmulatorProtocol(BadFrames, Protocol):
    name: str
    default_recording: Path
    heartbeat: bytes | None  # sent to a subscribed connection idle for heartbeat_interval_s; None: never
    heartbeat_interval_s: float

    def open(self, target: str) -> tuple[str, list[str]]:
        """(framing, streams subscribed from the start) of a handshake target; raise
        :class:`k2.emulator.protocol.PathError` to refuse it with an HTTP status."""
        ...

    def greeting(self) -> list[bytes]:
        """Frames a new connection receives first (Kraken: its ``status``); Binance: none."""
        ...

    def control(self, subscribed: list[str], message: str | bytes) -> ControlAnswer: ...

    def route(self, recorded: RecordedFrame) -> OutFrame:
        """The recorded frame with the stream it belongs to (``stream=None``: never sent)."""
        ...

    def payload(self, out: OutFrame, framing: str) -> bytes:
        """The bytes a client with ``framing`` receives for ``out``."""
        ...

    def rest(self, recording: Path, faults: Faults) -> RestSide | None:
        """The REST endpoints served on the same port (None: the venue's emulator has none)."""
        ...
