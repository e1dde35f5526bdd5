"""Binance's REST trade backfill: ``historicalTrades`` pages by trade id, within the request-weight limit.

I/O: built by the venue entry's ``backfill`` factory. Each page is ``GET
/api/v3/historicalTrades?symbol=&fromId=&limit=`` (weight 25) through the shared
:class:`~k2.sources.rest.RestClient` (token bucket on request weight, ``Retry-After``, retries of
429/418, 5xx, timeouts and bad bodies). A 200 page that holds none of the asked ids, though the ids
say they exist, is refused and retried like a transient fault.
"""

from __future__ import annotations

from k2.config import K2Settings
from k2.errors import SourceError
from k2.quality.sequence import Gap
from k2.sources.binance.rest import (
    HISTORICAL_TRADES_PATH,
    MAX_TRADES_LIMIT,
    RATE_LIMIT_STATUSES,
    REQUEST_WEIGHT,
    parse_historical_trades,
)
from k2.sources.rest import Page, RestClient, TokenBucket
from k2.sources.venue import FetchedTrades, SymbolRules


class BinanceTradeFetcher:
    """:class:`k2.sources.venue.TradeFetcher` over Binance's ``historicalTrades``."""

    def __init__(self, settings: K2Settings, rules: SymbolRules, rest_url: str) -> None:
        q = settings.quality
        self._rules = rules
        self._validation = settings.source.validation
        limiter = TokenBucket(q.rest_weight_per_minute / 60.0, q.rest_weight_burst)
        self.client = RestClient(
            rest_url, limiter, venue="binance", weights=REQUEST_WEIGHT, rate_limit_statuses=RATE_LIMIT_STATUSES,
            attempts=q.backfill_attempts, timeout_s=q.rest_timeout_s,
        )  # fmt: skip

    def clock_us(self) -> int:
        return self.client.clock_us()

    async def page(self, gap: Gap, from_id: int, limit: int) -> FetchedTrades:
        symbol = gap.key.symbol
        instrument = self._rules.instrument(symbol)

        def accept(page: Page) -> FetchedTrades:
            parsed = parse_historical_trades(
                page.body, symbol, received_at_us=page.received_at_us, instrument=instrument,
                validation=self._validation,
            )  # fmt: skip
            if not any(from_id <= i <= gap.last_id for i in parsed.ids):  # the ids say these trades exist
                raise SourceError(f"no trade of ids {from_id}..{gap.last_id} in a page of {len(parsed.ids)}")
            return parsed

        params = {"symbol": symbol, "fromId": str(from_id), "limit": str(min(limit, MAX_TRADES_LIMIT))}
        return await self.client.get(HISTORICAL_TRADES_PATH, params, accept)

    async def aclose(self) -> None:
        await self.client.aclose()
