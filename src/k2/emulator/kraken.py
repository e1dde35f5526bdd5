"""Kraken WebSocket v2 as the emulator speaks it (:class:`KrakenProtocol`), the venue entry's ``emulator``
(``k2.sources.kraken.VENUE``).

* Handshake: ``/v2`` only (Kraken's ``/`` is WebSocket v1: HTTP 404 here). A connection starts with no
  subscription and first receives Kraken's ``status`` message (a real one, recorded: see
  ``recordings/README.md``).
* Requests on the socket, answered as Kraken answers them (keys sorted, ``time_in``/``time_out`` from
  the clock): ``subscribe`` / ``unsubscribe`` with ``params.channel`` and ``params.symbol`` get one
  reply per symbol, ``{"method": "subscribe", "req_id": 1, "result": {"channel": "trade", "snapshot":
  true, "symbol": "BTC/USD"}, "success": true, ...}``, or ``success: false`` with an ``error``: a pair
  neither the bundled AssetPairs nor the recording has ``Currency pair not supported``, a second subscription ``Already
  subscribed``, an unsubscription of nothing ``Subscription Not Found``, a private channel Kraken's
  "Private data and trading are unavailable on this endpoint. Try ws-auth.kraken.com", anything
  else ``Unsupported event``. ``ping`` gets ``pong`` (``ping`` with ``params``: Kraken's
  ``Unsupported field: 'params' for the given msg type: ping``).
* Streams are ``<channel>:<symbol>`` (``trade:BTC/USDT``, ``ticker:BTC/USD``); each recorded frame is
  routed by its channel and its first element's symbol and sent byte for byte.
* A subscribed connection that was sent no channel update for a second gets ``{"channel":"heartbeat"}``
  (:meth:`KrakenProtocol.heartbeat`, asked every second).
* Not emulated: the trade snapshot a real subscribe answers with (the recording's first trade message
  per pair is a snapshot; it is not re-sent on a later subscribe), book channels, Kraken's "dynamic"
  message-rate limit (the emulator closes a connection beyond 5 client messages a second).
* REST on the same port: :class:`k2.emulator.kraken_rest.KrakenRestEndpoints`.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from k2.emulator.contract import ControlAnswer
from k2.emulator.faults import Faults, OutFrame, routable_frames
from k2.emulator.kraken_faults import ADVERSARIAL_KINDS, bad_frame
from k2.emulator.kraken_rest import KrakenRestEndpoints
from k2.emulator.protocol import PathError
from k2.emulator.recording import BUNDLED_DIR, RecordedFrame, read_recording
from k2.schema.kinds import RecordKind
from k2.sources.base import RejectReason
from k2.sources.kraken.asset_pairs import bundled_pairs
from k2.sources.kraken.wire import HEARTBEAT_CHANNEL, TICKER_CHANNEL, TRADE_CHANNEL, WS_PATH
from k2.sources.timestamps import format_us

BUNDLED_KRAKEN = BUNDLED_DIR / "kraken_v2_btcusdt_trades_2025-11-10_btcusd_ticker_2024-05.jsonl.gz"
"""1,000 real Kraken trades (BTC/USDT, rendered from a REST page) and 2 real v2 tickers (BTC/USD)."""

STATUS = (
    b'{"channel":"status","data":[{"api_version":"v2","connection_id":12393906104898154338,'
    b'"system":"online","version":"2.0.4"}],"type":"update"}'
)
"""A real v2 status message (kraken-async-rs, 2024-05; tests/fixtures/kraken/README.md)."""
HEARTBEAT = b'{"channel":"%s"}' % HEARTBEAT_CHANNEL.encode()
HEARTBEAT_AFTER_S = 1.0  # Kraken: a heartbeat "approximately once per second in the absence of other updates"
DATA_CHANNELS = frozenset({TRADE_CHANNEL, TICKER_CHANNEL})
PUBLIC_CHANNELS = frozenset({TRADE_CHANNEL, TICKER_CHANNEL, "book", "ohlc", "instrument"})
PRIVATE_CHANNELS = frozenset({"executions", "balances", "level3"})
PRIVATE_REFUSED = "Private data and trading are unavailable on this endpoint. Try ws-auth.kraken.com"

_encode = msgspec.json.Encoder(order="sorted").encode  # Kraken's replies list their keys sorted


class _Request(msgspec.Struct):
    method: str
    params: Any = None
    req_id: Any = None


class _Params(msgspec.Struct):
    channel: str
    symbol: list[str]
    snapshot: bool | None = None
    event_trigger: str | None = None


class _First(msgspec.Struct):
    symbol: Any = None


class _Head(msgspec.Struct):
    channel: Any = None
    data: list[_First] | None = None


_request_decoder = msgspec.json.Decoder(_Request)
_params_decoder = msgspec.json.Decoder(_Params)
_head_decoder = msgspec.json.Decoder(_Head)


def route(recorded: RecordedFrame) -> OutFrame:
    """A recorded v2 frame on its stream ``<channel>:<symbol of its first element>``; ``stream=None`` for
    anything else (status, heartbeats, replies: the emulator makes its own)."""
    raw = recorded.frame.encode()
    try:
        head = _head_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return OutFrame(None, raw, raw, recorded.recv_us)
    if head.channel not in DATA_CHANNELS or not head.data or not isinstance(head.data[0].symbol, str):
        return OutFrame(None, raw, raw, recorded.recv_us)
    return OutFrame(f"{head.channel}:{head.data[0].symbol}", raw, raw, recorded.recv_us)


@cache
def _listed() -> frozenset[str]:
    """The v2 symbols the bundled AssetPairs lists (what the emulator accepts to subscribe)."""
    return frozenset(info.symbol for info in bundled_pairs().values())


def _now_text() -> str:
    return format_us(time.time_ns() // 1000)


class KrakenProtocol:
    """Kraken WebSocket v2 (and its REST backfill) for the emulator (:class:`k2.emulator.contract.EmulatorProtocol`)."""

    name = "kraken"
    default_recording: Path = BUNDLED_KRAKEN
    example_target = WS_PATH
    # Kraken's message rate is "dynamic" (it answers "Exceeded msg rate"); the emulator closes beyond this,
    # above the 4 a second K2 sends at most (k2.sources.kraken.wire.MAX_CONTROL_MESSAGES_PER_SECOND).
    max_client_messages_per_s = 5
    heartbeat_interval_s: float | None = HEARTBEAT_AFTER_S
    adversarial_kinds: Mapping[str, RejectReason] = ADVERSARIAL_KINDS
    _recording: Path | None = None  # set by rest(): its symbols may be subscribed even if AssetPairs lacks them
    _recorded: frozenset[str] | None = None

    def open(self, target: str) -> tuple[str, list[str]]:
        if urllib.parse.urlsplit(target).path.rstrip("/") != WS_PATH:
            raise PathError(404, "Not Found\n")
        return "v2", []

    def greeting(self) -> list[bytes]:
        return [STATUS]

    def heartbeat(self, streams: Sequence[str], idle_s: float, now_us: int) -> list[bytes]:
        """``{"channel":"heartbeat"}`` to a subscribed connection sent nothing for a second ("in the absence
        of any other channel updates", Kraken's documentation)."""
        return [HEARTBEAT] if streams and idle_s >= HEARTBEAT_AFTER_S else []

    def control(self, subscribed: list[str], message: str | bytes) -> ControlAnswer:
        time_in = _now_text()
        try:
            req = _request_decoder.decode(message)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return ControlAnswer(_encode({"error": "Unsupported event", "success": False, **_times(time_in)}))
        echo = {"method": req.method, **({} if req.req_id is None else {"req_id": req.req_id})}
        if req.method == "ping":
            if req.params is not None:
                error = "Unsupported field: 'params' for the given msg type: ping"
                return ControlAnswer(_encode({**echo, "error": error, "success": False, **_times(time_in)}))
            return ControlAnswer(_encode({**echo, "method": "pong", **_times(time_in)}))
        if req.method not in ("subscribe", "unsubscribe"):
            return ControlAnswer(_encode({**echo, "error": "Unsupported event", "success": False, **_times(time_in)}))
        try:
            params = _params_decoder.decode(msgspec.json.encode(req.params))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return ControlAnswer(_encode({**echo, "error": "Unsupported event", "success": False, **_times(time_in)}))
        if params.channel in PRIVATE_CHANNELS:
            return ControlAnswer(_encode({**echo, "error": PRIVATE_REFUSED, "success": False, **_times(time_in)}))
        if params.channel not in PUBLIC_CHANNELS:
            return ControlAnswer(_encode({**echo, "error": "Unsupported event", "success": False, **_times(time_in)}))
        return self._subscription(req.method == "subscribe", params, set(subscribed), echo, time_in)

    def _subscription(
        self, subscribe: bool, params: _Params, subscribed: set[str], echo: dict[str, Any], time_in: str
    ) -> ControlAnswer:
        """One reply per symbol; the streams that change."""
        replies: list[bytes] = []
        changed: list[str] = []
        for symbol in dict.fromkeys(params.symbol):
            stream = f"{params.channel}:{symbol}"
            error = None
            if symbol not in _listed() and symbol not in self._recorded_symbols():
                error = "Currency pair not supported"
            elif subscribe and stream in subscribed:
                error = "Already subscribed"
            elif not subscribe and stream not in subscribed:
                error = "Subscription Not Found"
            if error is not None:
                replies.append(_encode({**echo, "error": error, "success": False, **_times(time_in)}))
                continue
            changed.append(stream)
            result: dict[str, Any] = {"channel": params.channel, "symbol": symbol}
            if subscribe:
                result["snapshot"] = params.snapshot if params.snapshot is not None else params.channel != "trade"
                if params.channel == TICKER_CHANNEL:
                    result["event_trigger"] = params.event_trigger or "trades"
            replies.append(_encode({**echo, "result": result, "success": True, **_times(time_in)}))
        if not replies:  # an empty symbol list
            replies.append(_encode({**echo, "error": "Unsupported event", "success": False, **_times(time_in)}))
        streams = tuple(changed)
        return ControlAnswer(
            replies[0], more=tuple(replies[1:]), subscribe=streams if subscribe else (),
            unsubscribe=() if subscribe else streams,
        )  # fmt: skip

    def _recorded_symbols(self) -> frozenset[str]:
        """The symbols of the recording being served (read once, when a pair AssetPairs lacks is asked for)."""
        if self._recorded is None:
            frames = [] if self._recording is None else routable_frames(read_recording(self._recording), route)
            self._recorded = frozenset(f.stream.partition(":")[2] for f in frames if f.stream is not None)
        return self._recorded

    def route(self, recorded: RecordedFrame) -> OutFrame:
        return route(recorded)

    def payload(self, out: OutFrame, framing: str) -> bytes:
        return out.raw

    def record_kind(self, out: OutFrame) -> RecordKind | None:
        channel = (out.stream or "").partition(":")[0]
        if channel == TRADE_CHANNEL:
            return RecordKind.TRADES
        return RecordKind.QUOTES if channel == TICKER_CHANNEL else None

    def bad_frame(self, source: OutFrame, kind: str) -> OutFrame:
        return bad_frame(source, kind)

    def rest(self, recording: Path, faults: Faults) -> KrakenRestEndpoints:
        self._recording, self._recorded = recording, None
        return KrakenRestEndpoints(recording, faults)


def _times(time_in: str) -> dict[str, str]:
    return {"time_in": time_in, "time_out": _now_text()}
