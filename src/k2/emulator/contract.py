"""What a venue's emulator protocol provides (the ``emulator`` of a :class:`k2.sources.venue.Venue`).

The server (:mod:`k2.emulator.server`) owns everything venue-neutral: the replay cursor and pace,
clients and their subscriptions, fault injection, disconnects, backpressure, periodic messages. A
protocol says what is the venue's own: how a handshake target subscribes, how control messages are
answered, which stream each recorded frame belongs to and how it is framed for a client, and the
REST side. Binance's is :class:`k2.emulator.binance.BinanceProtocol`, Coinbase's
:class:`k2.emulator.coinbase.CoinbaseProtocol`.

Optional parts, used when a protocol has them (checked with ``isinstance``):

* :class:`Heartbeats`: messages the venue sends on its own every ``heartbeat_interval_s`` to each
  client, per subscribed stream (Coinbase's ``heartbeat`` channel);
* :class:`k2.emulator.faults.FrameFaults`: which frames are trades or quotes and how a bad frame is
  built from a real one (Binance's when absent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from k2.emulator.faults import Faults, OutFrame
from k2.emulator.recording import RecordedFrame
from k2.emulator.rest import RestRequest, RestResponse


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    """What the server does with one client message: reply, and change the client's subscription."""

    reply: bytes | None
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()


class RestSide(Protocol):
    """A venue's REST endpoints, served on the emulator's port (plain HTTP requests)."""

    requests: list[RestRequest]  # every request answered, in order (tests check a client's pacing)

    def handle(self, target: str) -> RestResponse | None:
        """The response to ``GET target``, or None when ``target`` is not one of its paths."""
        ...


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

    def rest(self, recording: Path, faults: Faults) -> RestSide | None:
        """The REST endpoints served on the same port (None: the venue's emulator has none)."""
        ...


@runtime_checkable
class Heartbeats(Protocol):
    """Messages a venue sends by itself, without a recorded frame: every ``heartbeat_interval_s``
    seconds the server asks, for each stream a client is subscribed to, what to send it now."""

    heartbeat_interval_s: float

    def heartbeat(self, stream: str, now_us: int) -> bytes | None:
        """The message for a client subscribed to ``stream`` at ``now_us`` (UTC µs); None: nothing."""
        ...
