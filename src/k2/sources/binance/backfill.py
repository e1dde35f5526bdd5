"""Binance's REST trade backfill: ``historicalTrades`` pages by trade id, within the request-weight limit.

I/O: built by the venue entry's ``backfill`` factory. Each page is ``GET
/api/v3/historicalTrades?symbol=&fromId=&limit=`` (weight 25) through the shared
:class:`~k2.sources.rest.RestClient` (token bucket on request weight, ``Retry-After``, retries of
429/418, 5xx, timeouts and bad bodies). A 200 page that holds none of the asked ids, though the ids
say they exist, is refused and retried like a transient fault.
"""

from __future__ import annotations

from k2.config import K2Settings
from k2.sources.binance.rest import (
    HISTORICAL_TRADES_PATH,
    MAX_TRADES_LIMIT,
    RATE_LIMIT_STATUSES,
    REQUEST_WEIGHT,
    parse_historical_trades,
)
from k2.sources.rest import IdPagedFetcher, RestClient, TokenBucket
from k2.sources.venue import SymbolRules


class BinanceTradeFetcher(IdPagedFetcher):
    """:class:`k2.sources.venue.TradeFetcher` over Binance's ``historicalTrades``."""

    def __init__(self, settings: K2Settings, rules: SymbolRules, rest_url: str) -> None:
        q = settings.quality
        limiter = TokenBucket(q.rest_weight_per_minute / 60.0, q.rest_weight_burst)
        client = RestClient(
            rest_url, limiter, venue="binance", weights=REQUEST_WEIGHT, rate_limit_statuses=RATE_LIMIT_STATUSES,
            attempts=q.backfill_attempts, timeout_s=q.rest_timeout_s,
        )  # fmt: skip
        super().__init__(settings, rules, client, parse_historical_trades)

    def request(self, symbol: str, from_id: int, last_id: int, limit: int) -> tuple[str, dict[str, str]]:
        return HISTORICAL_TRADES_PATH, {
            "symbol": symbol,
            "fromId": str(from_id),
            "limit": str(min(limit, MAX_TRADES_LIMIT)),
        }
