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
from k2.errors import SourceError
from k2.quality.sequence import Gap
from k2.sources.coinbase.rest import RATE_LIMIT_STATUSES, page_params, parse_trades_page, trades_path
from k2.sources.coinbase.wire import MAX_TRADES_LIMIT
from k2.sources.rest import Page, RestClient, TokenBucket
from k2.sources.venue import FetchedTrades, SymbolRules

K2_REQUESTS_PER_S = 5.0
K2_BURST = 5.0


class CoinbaseTradeFetcher:
    """:class:`k2.sources.venue.TradeFetcher` over Coinbase Exchange's ``/products/{id}/trades``."""

    def __init__(
        self, settings: K2Settings, rules: SymbolRules, rest_url: str, *, limiter: TokenBucket | None = None
    ) -> None:
        q = settings.quality
        self._rules = rules
        self._validation = settings.source.validation
        self.client = RestClient(
            rest_url, limiter or TokenBucket(K2_REQUESTS_PER_S, K2_BURST), venue="coinbase",
            rate_limit_statuses=RATE_LIMIT_STATUSES, attempts=q.backfill_attempts, timeout_s=q.rest_timeout_s,
        )  # fmt: skip

    def clock_us(self) -> int:
        return self.client.clock_us()

    async def page(self, gap: Gap, from_id: int, limit: int) -> FetchedTrades:
        product = gap.key.symbol
        instrument = self._rules.instrument(product)

        def accept(page: Page) -> FetchedTrades:
            parsed = parse_trades_page(
                page.body, product, received_at_us=page.received_at_us, instrument=instrument,
                validation=self._validation,
            )  # fmt: skip
            if not any(from_id <= i <= gap.last_id for i in parsed.ids):  # the ids say these trades exist
                raise SourceError(f"no trade of ids {from_id}..{gap.last_id} in a page of {len(parsed.ids)}")
            return parsed

        params = page_params(from_id, gap.last_id, min(limit, MAX_TRADES_LIMIT))
        return await self.client.get(trades_path(product), params, accept)

    async def aclose(self) -> None:
        await self.client.aclose()
