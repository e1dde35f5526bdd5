"""Binance spot's stream protocol as the emulator speaks it (:class:`BinanceProtocol`), the venue
entry's ``emulator`` (``k2.sources.binance.VENUE``).

* Handshake: ``/stream?streams=a@trade/b@bookTicker`` (combined envelopes, sent byte for byte as
  recorded) or ``/ws[/<stream>...]`` (only their ``data`` objects); other paths get HTTP 404.
* Control messages on the socket: ``SUBSCRIBE`` / ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS``, answered
  ``{"result": ..., "id": ...}`` or Binance's ``{"code": ..., "msg": ...}`` errors; at most 1,024
  streams per connection; more than 5 incoming messages a second closes the connection (the server
  enforces the rate with :attr:`BinanceProtocol.max_client_messages_per_s`).
* REST on the same port: ``/api/v3/historicalTrades``, ``/exchangeInfo``, ``/ping``
  (:class:`k2.emulator.rest.RestEndpoints`).
"""

from __future__ import annotations

from pathlib import Path

from k2.emulator.contract import ControlAnswer
from k2.emulator.faults import Faults, OutFrame, decode_frame
from k2.emulator.protocol import (
    MAX_STREAMS_PER_CONNECTION,
    decode_control,
    error_reply,
    parse_target,
    result_reply,
)
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, RecordedFrame
from k2.emulator.rest import RestEndpoints


class BinanceProtocol:
    """Binance spot's WebSocket (and backfill REST) protocol (:class:`k2.emulator.contract.EmulatorProtocol`)."""

    name = "binance"
    default_recording: Path = BUNDLED_BINANCE_TRADES
    max_client_messages_per_s = 5
    example_target = "/stream?streams=btcusdt@trade/ethusdt@trade"

    def open(self, target: str) -> tuple[str, list[str]]:
        """(framing, streams to start with) of a handshake target; :class:`PathError` to refuse it.
        Framing ``combined`` sends the recorded envelopes, ``raw`` their ``data`` objects."""
        combined, streams = parse_target(target)
        return ("combined" if combined else "raw"), streams

    def control(self, subscribed: list[str], message: str | bytes) -> ControlAnswer:
        """Answer one SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS request, as Binance does."""
        req = decode_control(message)
        if isinstance(req, bytes):
            return ControlAnswer(req)
        if req.method == "SUBSCRIBE":
            if len(subscribed) + len(req.params) > MAX_STREAMS_PER_CONNECTION:
                return ControlAnswer(error_reply(2, "Invalid request: too many streams", req.id))
            return ControlAnswer(result_reply(req.id), subscribe=tuple(req.params))
        if req.method == "UNSUBSCRIBE":
            return ControlAnswer(result_reply(req.id), unsubscribe=tuple(req.params))
        if req.method == "LIST_SUBSCRIPTIONS":
            return ControlAnswer(result_reply(req.id, subscribed))
        return ControlAnswer(error_reply(2, f"Invalid request: unknown method {req.method!r}", req.id))

    def route(self, recorded: RecordedFrame) -> OutFrame:
        """The stream a recorded frame belongs to, in both framings (``stream=None``: not routable)."""
        return decode_frame(recorded)

    def payload(self, out: OutFrame, framing: str) -> bytes:
        return out.combined if framing == "combined" else out.raw

    def rest(self, recording: Path, faults: Faults) -> RestEndpoints:
        return RestEndpoints(recording, faults)
