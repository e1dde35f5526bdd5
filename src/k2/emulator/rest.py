"""The emulator's Binance spot REST side: the market-data endpoints backfill needs, from the recording.

Served on the WebSocket port (the server's ``process_request`` hook answers plain HTTP requests, so
tests and the demo keep one port and one URL, ``http://host:port``):

* ``GET /api/v3/ping`` -> ``{}``
* ``GET /api/v3/exchangeInfo`` -> the recording's symbols with base/quote assets
* ``GET /api/v3/historicalTrades?symbol=&fromId=&limit=`` -> trades with ``id >= fromId``
  (limit default 500, at most 1000), in Binance's JSON form, including trades withheld from the
  WebSocket by :attr:`Faults.withhold <k2.emulator.faults.Faults.withhold>`

Binance's IP request-weight limit is enforced over a sliding minute (HTTP 429 with ``Retry-After``
beyond it, the used weight in ``X-MBX-USED-WEIGHT-1M``), and ``Faults.rest_errors`` spoils the
answers to the first ``historicalTrades`` requests: an HTTP status with ``Retry-After``, a 200 with
a broken body or an empty page, or the right answer late (:attr:`RestResponse.delay_s`, which the
server waits before answering). Every request is
logged in :attr:`RestEndpoints.requests` so tests can check a client's pacing.
"""

from __future__ import annotations

import bisect
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import msgspec

from k2.emulator.faults import REST_BAD_BODY, REST_EMPTY_PAGE, Faults, routable_frames
from k2.emulator.recording import read_recording
from k2.sources.binance.rest import (
    EXCHANGE_INFO_PATH,
    HISTORICAL_TRADES_PATH,
    MAX_TRADES_LIMIT,
    PING_PATH,
    REQUEST_WEIGHT,
    REQUEST_WEIGHT_PER_MINUTE,
    USED_WEIGHT_HEADER,
)
from k2.sources.symbols import split_symbol_offline

_QUOTE_QTY = Decimal("0.00000001")
_encode = msgspec.json.Encoder().encode


class _Data(msgspec.Struct):
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool | None = None


class _Env(msgspec.Struct):
    data: _Data


_env_decoder = msgspec.json.Decoder(_Env)


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One request as the emulator saw it (monotonic time, path, query, status, weight counted, and the
    venue's error text when it answered one inside a 200 body, as Kraken does)."""

    at: float
    path: str
    query: dict[str, str]
    status: int
    weight: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class RestResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    delay_s: float = 0.0  # the server answers this late (an injected slow answer)


def _rest_trade(d: _Data) -> bytes:
    quote = (Decimal(d.p) * Decimal(d.q)).quantize(_QUOTE_QTY)
    return _encode(
        {"id": d.t, "price": d.p, "qty": d.q, "quoteQty": f"{quote:f}", "time": d.T, "isBuyerMaker": d.m,
         "isBestMatch": True if d.M is None else d.M}
    )  # fmt: skip


def _error(status: int, code: int, msg: str, headers: tuple[tuple[str, str], ...] = ()) -> RestResponse:
    return RestResponse(status, (("Content-Type", "application/json"), *headers), _encode({"code": code, "msg": msg}))


@dataclass
class RestEndpoints:
    """Answers REST requests from a recording. Pure apart from the injectable ``clock``."""

    recording: Path
    faults: Faults = field(default_factory=Faults)
    weight_limit_per_minute: int = REQUEST_WEIGHT_PER_MINUTE
    clock: Callable[[], float] = time.monotonic
    requests: list[RestRequest] = field(default_factory=list)
    _trades: dict[str, tuple[list[int], list[bytes]]] | None = None
    _errors_left: list[tuple[int | str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._errors_left = list(self.faults.rest_errors)

    def _index(self) -> dict[str, tuple[list[int], list[bytes]]]:
        if self._trades is None:
            by_symbol: dict[str, dict[int, bytes]] = {}
            for frame in routable_frames(read_recording(self.recording)):
                try:
                    d = _env_decoder.decode(frame.combined).data
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                by_symbol.setdefault(d.s, {})[d.t] = _rest_trade(d)
            self._trades = {s: (sorted(t), [t[i] for i in sorted(t)]) for s, t in by_symbol.items()}
        return self._trades

    def used_weight(self, now: float) -> int:
        return sum(r.weight for r in self.requests if now - r.at < 60.0)

    def handle(self, target: str) -> RestResponse | None:
        """The response to ``GET target``, or None when ``target`` is not a REST path."""
        parts = urllib.parse.urlsplit(target)
        if not parts.path.startswith("/api/"):
            return None
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        now = self.clock()
        weight = REQUEST_WEIGHT.get(parts.path, 1)
        used = self.used_weight(now)
        if used + weight > self.weight_limit_per_minute:
            oldest = min(r.at for r in self.requests if now - r.at < 60.0)
            retry = max(1, int(60.0 - (now - oldest)) + 1)
            response = _error(429, -1003, "Too much request weight used; current limit is "
                              f"{self.weight_limit_per_minute} request weight per 1 MINUTE.",
                              (("Retry-After", str(retry)),))  # fmt: skip
            self.requests.append(RestRequest(now, parts.path, query, 429, 0))
            return response
        response = self._answer(parts.path, query)
        self.requests.append(RestRequest(now, parts.path, query, response.status, weight))
        used_header = (USED_WEIGHT_HEADER, str(used + weight))
        return RestResponse(response.status, (*response.headers, used_header), response.body, response.delay_s)

    def _answer(self, path: str, query: dict[str, str]) -> RestResponse:
        json_type = (("Content-Type", "application/json"),)
        if path == PING_PATH:
            return RestResponse(200, json_type, b"{}")
        if path == EXCHANGE_INFO_PATH:
            symbols = [
                {"symbol": s, "status": "TRADING", "baseAsset": info.base, "quoteAsset": info.quote}
                for s in sorted(self._index())
                for info in [split_symbol_offline(s)]
            ]
            return RestResponse(200, json_type, _encode({"timezone": "UTC", "symbols": symbols}))
        if path == HISTORICAL_TRADES_PATH:
            if not self._errors_left:
                return self._historical_trades(query)
            fault, value = self._errors_left.pop(0)
            if isinstance(fault, int):
                return _error(fault, -1003 if fault == 429 else -1001, "injected error",
                              (("Retry-After", f"{value:g}"),))  # fmt: skip
            right = self._historical_trades(query)
            if fault == REST_BAD_BODY:
                return RestResponse(200, right.headers, right.body[: len(right.body) // 2])
            if fault == REST_EMPTY_PAGE:
                return RestResponse(200, right.headers, b"[]")
            return RestResponse(right.status, right.headers, right.body, delay_s=value)  # REST_SLOW
        return _error(404, -1000, f"unknown endpoint {path}")

    def _historical_trades(self, query: dict[str, str]) -> RestResponse:
        symbol = query.get("symbol", "").upper()
        if not symbol:
            return _error(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        entry = self._index().get(symbol)
        if entry is None:
            return _error(400, -1121, "Invalid symbol.")
        try:
            limit = int(query.get("limit", "500"))
            from_id = int(query["fromId"]) if "fromId" in query else None
        except ValueError:
            return _error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= MAX_TRADES_LIMIT:
            return _error(400, -1130, f"Invalid data sent for a parameter: limit must be 1..{MAX_TRADES_LIMIT}.")
        ids, bodies = entry
        start = max(0, len(ids) - limit) if from_id is None else bisect.bisect_left(ids, from_id)
        body = b"[" + b",".join(bodies[start : start + limit]) + b"]"
        return RestResponse(200, (("Content-Type", "application/json"),), body)
