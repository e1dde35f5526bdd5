"""Coinbase's REST trade backfill: ``/products/{id}/trades`` paged by trade id, within the public rate limit.

I/O: built by the venue entry's ``backfill`` factory. Each page is ``GET
/products/{product_id}/trades?after=<from_id + n>&limit=<n>`` (the ids ``from_id .. from_id + n - 1``,
see :mod:`k2.sources.coinbase.rest`) through the shared :class:`~k2.sources.rest.RestClient`: a token
bucket of :data:`K2_REQUESTS_PER_S` requests per second (burst :data:`K2_BURST`), half of Coinbase's
public limit (10 per second per IP, bursts of 15), so other clients on the same IP keep room; HTTP
429 pauses every request (``Retry-After`` when sent, else a growing wait), 5xx, timeouts and bad
bodies are retried. A 200 page that holds none of the asked ids, though the ids say they exist, is
refused and retried like a transient fault.
"""

from __future__ import annotations

from k2.config import K2Settings
from k2.sources.coinbase.rest import RATE_LIMIT_STATUSES, page_params, parse_trades_page, trades_path
from k2.sources.coinbase.wire import MAX_TRADES_LIMIT
from k2.sources.rest import IdPagedFetcher, RestClient, TokenBucket
from k2.sources.venue import SymbolRules

K2_REQUESTS_PER_S = 5.0
K2_BURST = 5.0


class CoinbaseTradeFetcher(IdPagedFetcher):
    """:class:`k2.sources.venue.TradeFetcher` over Coinbase Exchange's ``/products/{id}/trades``."""

    def __init__(
        self, settings: K2Settings, rules: SymbolRules, rest_url: str, *, limiter: TokenBucket | None = None
    ) -> None:
        q = settings.quality
        client = RestClient(
            rest_url, limiter or TokenBucket(K2_REQUESTS_PER_S, K2_BURST), venue="coinbase",
            rate_limit_statuses=RATE_LIMIT_STATUSES, attempts=q.backfill_attempts, timeout_s=q.rest_timeout_s,
        )  # fmt: skip
        super().__init__(settings, rules, client, parse_trades_page)

    def request(self, symbol: str, from_id: int, last_id: int, limit: int) -> tuple[str, dict[str, str]]:
        return trades_path(symbol), page_params(from_id, last_id, min(limit, MAX_TRADES_LIMIT))
