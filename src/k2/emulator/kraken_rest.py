"""The emulator's Kraken REST side: the public endpoints backfill and symbol rules need, from the recording.

Served on the WebSocket's port (:class:`k2.emulator.contract.RestSide`):

* ``GET /0/public/AssetPairs`` -> the real AssetPairs answer K2 bundles (``k2/sources/kraken/data``)
* ``GET /0/public/Trades?pair=&since=&count=`` -> the recording's trades of that pair (withheld ones
  included), oldest first, at most ``count`` (default and maximum 1000), in Kraken's row form
  ``[price, volume, time, side, ordertype, misc, trade_id]``, with ``last``. Every trade has a cursor:
  its time in nanoseconds (the recorded µs x 1000) plus its rank among trades of the same µs, so
  cursors are unique and ``since`` is exclusive: a page holds the trades whose cursor is above it.
  ``since`` below 10^12 is read as seconds (Kraken's documentation example uses seconds); without it
  the newest ``count`` trades are answered.
* any other ``/0/public/`` path -> ``{"error": ["EGeneral:Unknown method"]}``

Errors come as Kraken gives them, in the ``error`` array of a 200 answer: an unknown pair
``EQuery:Unknown asset pair``, bad arguments ``EGeneral:Invalid arguments``. Kraken's public limit
is enforced per pair (a token bucket of 1 request a second, burst 2): beyond it,
``EGeneral:Too many requests``. ``Faults.rest_errors`` spoils the first ``Trades`` answers in order:
``(429, _)`` is Kraken's rate-limit error ``EAPI:Rate limit exceeded`` (in a 200 body), another
status is that HTTP status with ``Retry-After`` (and ``EService:Unavailable`` in the body for a 5xx),
``bad_body`` cuts the JSON in half, ``empty_page`` answers no trades, ``slow`` answers late. Every
request is logged in :attr:`KrakenRestEndpoints.requests` (a 200 carrying an error names it in
``error``).
"""

from __future__ import annotations

import bisect
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from k2.emulator.faults import REST_BAD_BODY, REST_EMPTY_PAGE, Faults, routable_frames
from k2.emulator.recording import read_recording
from k2.emulator.rest import RestRequest, RestResponse
from k2.sources.kraken.asset_pairs import BUNDLED_ASSET_PAIRS
from k2.sources.kraken.rest import ASSET_PAIRS_PATH, MAX_COUNT, TRADES_PATH
from k2.sources.kraken.symbols import KrakenSymbols, asset_pairs
from k2.sources.kraken.values import json_scalar_text
from k2.sources.kraken.wire import TRADE_CHANNEL, Trade
from k2.sources.timestamps import parse_us

PUBLIC_PREFIX = "/0/public/"
RATE_LIMIT_ERROR = "EAPI:Rate limit exceeded"
TOO_MANY_REQUESTS = "EGeneral:Too many requests"
_JSON = (("Content-Type", "application/json; charset=utf-8"),)
_encode = msgspec.json.Encoder().encode
_SECONDS_BELOW = 10**12


class _TradeMessage(msgspec.Struct):
    channel: str
    data: list[Trade]


_message_decoder = msgspec.json.Decoder(_TradeMessage)


@dataclass
class _Book:
    """One pair's trades for the REST answers: cursors (ascending) and each row's JSON text."""

    key: str  # the pair's AssetPairs key, the result's key in a Trades answer (XXBTZUSD, XBTUSDT)
    cursors: list[int] = field(default_factory=list)
    rows: list[bytes] = field(default_factory=list)


def _row(trade: Trade, time_us: int) -> bytes:
    """A trade in the REST row form; price and volume as strings of the recorded number text."""
    seconds, micros = divmod(time_us, 1_000_000)
    price = json_scalar_text(bytes(trade.price)) or ""
    qty = json_scalar_text(bytes(trade.qty)) or ""
    side = "b" if trade.side == "buy" else "s"
    order = "m" if trade.ord_type == "market" else "l"
    return b'["%s","%s",%d.%06d,"%s","%s","",%d]' % (
        price.encode(), qty.encode(), seconds, micros, side.encode(), order.encode(), trade.trade_id
    )  # fmt: skip


def _error(status: int, *errors: str, headers: tuple[tuple[str, str], ...] = ()) -> RestResponse:
    return RestResponse(status, (*_JSON, *headers), _encode({"error": list(errors)}))


@dataclass
class KrakenRestEndpoints:
    """Answers Kraken REST requests from a v2 recording. Pure apart from the injectable ``clock``."""

    recording: Path
    faults: Faults = field(default_factory=Faults)
    clock: Callable[[], float] = time.monotonic
    requests_per_s: float = 1.0
    burst: float = 2.0
    max_count: int = MAX_COUNT  # Kraken's page size; tests lower it to page a short recording
    requests: list[RestRequest] = field(default_factory=list)
    _books: dict[str, _Book] | None = None
    _spellings: dict[str, str] = field(default_factory=dict)  # any pair spelling -> v2 symbol
    _keys: dict[str, str] = field(default_factory=dict)  # v2 symbol -> AssetPairs key
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # v2 symbol -> (tokens, at)
    _errors_left: list[tuple[int | str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._errors_left = list(self.faults.rest_errors)
        for pair in asset_pairs(BUNDLED_ASSET_PAIRS.read_bytes()):
            self._keys[pair.symbol] = pair.key
            self._spellings.update(dict.fromkeys(pair.spellings, pair.symbol))

    def _index(self) -> dict[str, _Book]:
        if self._books is None:
            from k2.emulator.kraken import route  # the protocol module imports this one

            trades: dict[str, dict[int, tuple[int, Trade]]] = {}
            for frame in routable_frames(read_recording(self.recording), route):
                try:
                    message = _message_decoder.decode(frame.raw)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if message.channel != TRADE_CHANNEL:
                    continue
                for t in message.data:
                    time_us = parse_us(t.timestamp)
                    if time_us is not None:
                        trades.setdefault(t.symbol, {})[t.trade_id] = (time_us, t)
            self._books = {}
            for symbol, by_id in trades.items():
                book = self._books[symbol] = _Book(self._keys.get(symbol, symbol.replace("/", "")))
                previous, rank = -1, 0
                for trade_id in sorted(by_id):
                    time_us, t = by_id[trade_id]
                    rank = rank + 1 if time_us == previous else 0
                    previous = time_us
                    book.cursors.append(time_us * 1000 + rank)
                    book.rows.append(_row(t, time_us))
        return self._books

    def handle(self, target: str) -> RestResponse | None:
        """The response to ``GET target``, or None when ``target`` is not a Kraken REST path."""
        parts = urllib.parse.urlsplit(target)
        if not parts.path.startswith(PUBLIC_PREFIX):
            return None
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        response, error = self._answer(parts.path, query, self.clock())
        self.requests.append(RestRequest(self.clock(), parts.path, query, response.status, 1, error))
        return response

    def _answer(self, path: str, query: dict[str, str], now: float) -> tuple[RestResponse, str]:
        if path == ASSET_PAIRS_PATH:
            return RestResponse(200, _JSON, BUNDLED_ASSET_PAIRS.read_bytes()), ""
        if path != TRADES_PATH:
            return _error(200, "EGeneral:Unknown method"), "EGeneral:Unknown method"
        symbol = self._symbol(query.get("pair", "").upper())
        if symbol is None:
            error = "EQuery:Unknown asset pair" if query.get("pair") else "EGeneral:Invalid arguments"
            return _error(200, error), error
        if not self._take_token(symbol, now):
            return _error(200, TOO_MANY_REQUESTS), TOO_MANY_REQUESTS
        if self._errors_left:
            fault, value = self._errors_left.pop(0)
            if fault == 429:
                return _error(200, RATE_LIMIT_ERROR), RATE_LIMIT_ERROR
            if isinstance(fault, int):
                body = "EService:Unavailable" if fault >= 500 else "EGeneral:Invalid arguments"
                return _error(fault, body, headers=(("Retry-After", f"{value:g}"),)), body
            right, _ = self._trades(symbol, query)
            if fault == REST_BAD_BODY:
                return RestResponse(200, right.headers, right.body[: len(right.body) // 2]), ""
            if fault == REST_EMPTY_PAGE:
                since = query.get("since", "0")
                empty = b'{"error":[],"result":{"%s":[],"last":"%s"}}' % (self._keys[symbol].encode(), since.encode())
                return RestResponse(200, right.headers, empty), ""
            return RestResponse(right.status, right.headers, right.body, delay_s=value), ""  # REST_SLOW
        return self._trades(symbol, query)

    def _symbol(self, pair: str) -> str | None:
        """The v2 symbol of a REST ``pair``: an AssetPairs spelling, or a pair only the recording has
        (its v2 symbol, or its assets run together in Kraken's legacy codes, as K2 asks for it)."""
        if pair in self._spellings:
            return self._spellings[pair]
        for symbol in self._index():
            if pair in (symbol, KrakenSymbols({}).rest_pair(symbol)):
                return symbol
        return None

    def _take_token(self, symbol: str, now: float) -> bool:
        """Kraken's public limit, per pair: a token bucket (``requests_per_s``, ``burst``)."""
        tokens, at = self._buckets.get(symbol, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.requests_per_s)
        if tokens < 1.0:
            self._buckets[symbol] = (tokens, now)
            return False
        self._buckets[symbol] = (tokens - 1.0, now)
        return True

    def _trades(self, symbol: str, query: dict[str, str]) -> tuple[RestResponse, str]:
        invalid = "EGeneral:Invalid arguments"
        try:
            count = int(query.get("count", str(MAX_COUNT)))
            since = int(query["since"]) if "since" in query else None
        except ValueError:
            return _error(200, invalid), invalid
        if not 1 <= count <= MAX_COUNT:
            return _error(200, invalid), invalid
        count = min(count, self.max_count)
        book = self._index().get(symbol) or _Book(self._keys.get(symbol, symbol.replace("/", "")))
        if since is None:
            start = max(0, len(book.cursors) - count)
        else:
            if 0 <= since < _SECONDS_BELOW:
                since *= 1_000_000_000
            start = bisect.bisect_right(book.cursors, since)
        end = min(len(book.rows), start + count)
        last = book.cursors[end - 1] if end > start else (since or 0)
        rows = b",".join(book.rows[start:end])
        body = b'{"error":[],"result":{"%s":[%s],"last":"%d"}}' % (book.key.encode(), rows, last)
        return RestResponse(200, _JSON, body), ""
