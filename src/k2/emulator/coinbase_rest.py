"""The emulator's Coinbase Exchange REST side: the trades endpoint backfill needs, from the recording.

Served on the WebSocket port, like Binance's (:mod:`k2.emulator.rest`):

* ``GET /products/{product_id}/trades?limit=&after=&before=``: the recording's trades of the product
  (every ``match`` and ``last_match``, including those :attr:`Faults.withhold
  <k2.emulator.faults.Faults.withhold>` keeps off the WebSocket) in Coinbase's REST form
  (``time, trade_id, price, size, side``), newest first, at most ``limit`` (default and maximum
  1000). ``after=X``: the trades with ids below X (an older page); ``before=X``: the ``limit`` trades
  just above X (a newer page); neither: the newest. Headers ``CB-BEFORE`` / ``CB-AFTER`` hold the
  newest and oldest id of a non-empty page. An unknown product is ``404 {"message":"NotFound"}``.

Coinbase's public limit (10 requests per second per IP, bursts of 15) is enforced with a token bucket
on the injectable ``clock``: beyond it, ``429 {"message":"Public rate limit exceeded"}`` (Coinbase's
wording; it sends no ``Retry-After``). ``Faults.rest_errors`` spoils the answers to the first trades
requests as for Binance: an HTTP status (with the fault's ``Retry-After``), a 200 with a broken body
or an empty page, or the right answer late. Every request is logged in :attr:`CoinbaseRest.requests`.
"""

from __future__ import annotations

import bisect
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from k2.emulator.faults import REST_BAD_BODY, REST_EMPTY_PAGE, Faults
from k2.emulator.recording import read_recording
from k2.emulator.rest import RestRequest, RestResponse
from k2.sources.coinbase.rest import AFTER_HEADER, BEFORE_HEADER
from k2.sources.coinbase.wire import MAX_TRADES_LIMIT, REST_BURST, REST_REQUESTS_PER_S

_TRADES = re.compile(r"/products/([^/]+)/trades")
_JSON = (("Content-Type", "application/json"),)
_encode = msgspec.json.Encoder().encode


class _Match(msgspec.Struct):
    type: str
    trade_id: int
    product_id: str
    time: str
    price: str
    size: str
    side: str


_match_decoder = msgspec.json.Decoder(_Match)


def _message(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> RestResponse:
    return RestResponse(status, (*_JSON, *headers), _encode({"message": text}))


@dataclass
class CoinbaseRest:
    """Answers Coinbase REST requests from a recording. Pure apart from the injectable ``clock``."""

    recording: Path
    faults: Faults = field(default_factory=Faults)
    requests_per_s: float = REST_REQUESTS_PER_S
    burst: float = REST_BURST
    clock: Callable[[], float] = time.monotonic
    requests: list[RestRequest] = field(default_factory=list)
    _trades: dict[str, tuple[list[int], list[bytes]]] | None = None
    _errors_left: list[tuple[int | str, float]] = field(default_factory=list)
    _tokens: float | None = None
    _last: float = 0.0

    def __post_init__(self) -> None:
        self._errors_left = list(self.faults.rest_errors)

    def _index(self) -> dict[str, tuple[list[int], list[bytes]]]:
        """Per product: trade ids ascending and their REST elements."""
        if self._trades is None:
            by_product: dict[str, dict[int, bytes]] = {}
            for recorded in read_recording(self.recording):
                try:
                    m = _match_decoder.decode(recorded.frame)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # not a match (ticker, level2, acks)
                if m.type not in ("match", "last_match"):
                    continue
                element = {"time": m.time, "trade_id": m.trade_id, "price": m.price, "size": m.size, "side": m.side}
                by_product.setdefault(m.product_id, {})[m.trade_id] = _encode(element)
            self._trades = {p: (sorted(t), [t[i] for i in sorted(t)]) for p, t in by_product.items()}
        return self._trades

    def _take_token(self, now: float) -> bool:
        """Coinbase's token bucket: ``requests_per_s`` refill, ``burst`` capacity."""
        tokens = self.burst if self._tokens is None else self._tokens
        tokens = min(self.burst, tokens + (now - self._last) * self.requests_per_s)
        self._last = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True

    def handle(self, target: str) -> RestResponse | None:
        """The response to ``GET target``, or None when ``target`` is not a REST path."""
        parts = urllib.parse.urlsplit(target)
        if not parts.path.startswith("/products/"):
            return None
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        now = self.clock()
        if not self._take_token(now):
            self.requests.append(RestRequest(now, parts.path, query, 429, 1))
            return _message(429, "Public rate limit exceeded")
        response = self._answer(parts.path, query)
        self.requests.append(RestRequest(now, parts.path, query, response.status, 1))
        return response

    def _answer(self, path: str, query: dict[str, str]) -> RestResponse:
        m = _TRADES.fullmatch(path)
        if m is None:
            return _message(404, "NotFound")
        if not self._errors_left:
            return self._page(m.group(1), query)
        fault, value = self._errors_left.pop(0)
        if isinstance(fault, int):
            return _message(fault, "injected error", (("Retry-After", f"{value:g}"),))
        right = self._page(m.group(1), query)
        if fault == REST_BAD_BODY:
            return RestResponse(200, right.headers, right.body[: len(right.body) // 2])
        if fault == REST_EMPTY_PAGE:
            return RestResponse(200, _JSON, b"[]")
        return RestResponse(right.status, right.headers, right.body, delay_s=value)  # REST_SLOW

    def _page(self, product: str, query: dict[str, str]) -> RestResponse:
        entry = self._index().get(product)
        if entry is None:
            return _message(404, "NotFound")
        try:
            limit = int(query.get("limit", str(MAX_TRADES_LIMIT)))
            after = int(query["after"]) if "after" in query else None
            before = int(query["before"]) if "before" in query else None
        except ValueError:
            return _message(400, "Invalid pagination parameters")
        if not 1 <= limit <= MAX_TRADES_LIMIT:
            return _message(400, f"limit must be between 1 and {MAX_TRADES_LIMIT}")
        ids, bodies = entry
        if after is not None:  # older than `after`: the `limit` ids just below it
            end = bisect.bisect_left(ids, after)
            start = max(0, end - limit)
        elif before is not None:  # newer than `before`: the `limit` ids just above it
            start = bisect.bisect_right(ids, before)
            end = min(len(ids), start + limit)
        else:
            end = len(ids)
            start = max(0, end - limit)
        page = list(range(end - 1, start - 1, -1))  # newest first
        headers: tuple[tuple[str, str], ...] = _JSON
        if page:
            headers = (*_JSON, (BEFORE_HEADER, str(ids[page[0]])), (AFTER_HEADER, str(ids[page[-1]])))
        return RestResponse(200, headers, b"[" + b",".join(bodies[i] for i in page) + b"]")
