"""What a venue's emulator protocol provides (the ``emulator`` of a :class:`k2.sources.venue.Venue`).

The server (:mod:`k2.emulator.server`) owns everything venue-neutral: the replay cursor and pace,
clients and their subscriptions, fault injection, disconnects, backpressure, the incoming-message
limit, and *when* greetings, replies and heartbeats are sent (and counting them in
``control_sent``). A protocol says what is the venue's own, and every member is required (a venue
without one of them says so with an empty value: Binance greets with nothing and sends no heartbeat):

* the handshake: which targets open a connection, with which framing and streams (:meth:`open`),
  and what a new connection receives first (:meth:`greeting`);
* control messages: each is answered with a :class:`ControlAnswer` (one reply or several, and the
  streams it subscribes or unsubscribes); ``max_client_messages_per_s`` is the rate beyond which
  the venue closes the connection;
* heartbeats: every ``heartbeat_interval_s`` (None: never) the server asks :meth:`heartbeat` what
  one client gets now, given its streams and how long it was sent no stream frame (Coinbase: one
  message per ``heartbeat:<product>`` stream, always; Kraken: one ``heartbeat`` when idle);
* recorded frames: which stream each belongs to (:meth:`route`) and its bytes for a client
  (:meth:`payload`);
* bad frames (:class:`k2.emulator.faults.BadFrames`): which frames carry trades or quotes, how a bad
  frame of each kind is made from a real one, the venue's adversarial kinds;
* the REST side on the same port (:meth:`rest`, a :class:`RestSide`).

Binance's is :class:`k2.emulator.binance.BinanceProtocol`, Coinbase's
:class:`k2.emulator.coinbase.CoinbaseProtocol`, Kraken's :class:`k2.emulator.kraken.KrakenProtocol`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from k2.emulator.faults import BadFrames, Faults, OutFrame
from k2.emulator.recording import RecordedFrame
from k2.emulator.rest import RestRequest, RestResponse


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    """What the server does with one client message: change the client's subscription, then send
    ``reply`` and each of ``more`` (Kraken acknowledges a subscribe once per symbol)."""

    reply: bytes | None
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    more: tuple[bytes, ...] = ()


class RestSide(Protocol):
    """A venue's REST endpoints, served on the emulator's port (plain HTTP requests)."""

    requests: list[RestRequest]  # every request answered, in order (tests check a client's pacing)

    def handle(self, target: str) -> RestResponse | None:
        """The response to ``GET target``, or None when ``target`` is not one of its paths."""
        ...


class EmulatorProtocol(BadFrames, Protocol):
    name: str
    default_recording: Path
    example_target: str  # a handshake target the ``k2 emulator`` log shows (Binance: /stream?streams=...)
    max_client_messages_per_s: int  # more client messages within one second: the connection is closed
    heartbeat_interval_s: float | None  # how often heartbeat() is asked, per connection; None: never

    def open(self, target: str) -> tuple[str, list[str]]:
        """(framing, streams subscribed from the start) of a handshake target; raise
        :class:`k2.emulator.protocol.PathError` to refuse it with an HTTP status."""
        ...

    def greeting(self) -> list[bytes]:
        """Frames a new connection receives before anything else (Kraken: its ``status``)."""
        ...

    def control(self, subscribed: list[str], message: str | bytes) -> ControlAnswer: ...

    def heartbeat(self, streams: Sequence[str], idle_s: float, now_us: int) -> list[bytes]:
        """What a connection subscribed to ``streams``, sent no stream frame for ``idle_s`` seconds,
        receives at ``now_us`` (UTC µs) without a recorded frame; ``[]``: nothing."""
        ...

    def route(self, recorded: RecordedFrame) -> OutFrame:
        """The recorded frame with the stream it belongs to (``stream=None``: never sent)."""
        ...

    def payload(self, out: OutFrame, framing: str) -> bytes:
        """The bytes a client with ``framing`` receives for ``out``."""
        ...

    def rest(self, recording: Path, faults: Faults) -> RestSide | None:
        """The REST endpoints served on the same port (None: the venue's emulator has none)."""
        ...
