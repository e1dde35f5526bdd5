"""Kraken's REST trade backfill: ``Trades`` pages found by time, checked by trade id, one request a second.

I/O: built by the venue entry's ``backfill`` factory. Kraken's ``Trades`` pages by *time* (``since``,
nanoseconds; each answer's ``last`` is the next page's ``since``), while a gap is a range of trade
*ids*. A gap knows the time of the trade right after it (``Gap.trade_time_us``), so its missing trades
are no later than that. :meth:`KrakenTradeFetcher.page` asks from a minute before that time; a page
that starts after the first missing id means "look further back" (4 times further each time); a
page that ends before it means "follow ``last``". The page that holds the first missing id is
answered, and its ``last`` remembered so the next page of the gap follows on without searching. Rows
are deduplicated by trade id by the caller (``since`` may or may not include the trade at ``last``).

Every request goes through the shared :class:`~k2.sources.rest.RestClient` at one request per second
(Kraken's public guidance, per pair; K2 asks one pair at a time), with transient faults retried.
Kraken reports errors in the answer's ``error`` array: a rate-limit error pauses every request (2 s,
doubling while they persist, up to 60 s; ``EService: Throttled: <time>`` until that time), a service
error is retried with backoff, any other error (an unknown pair) fails the page at once.
"""

from __future__ import annotations

from k2.config import K2Settings
from k2.errors import BackfillError, K2Error, RateLimited, SourceError
from k2.quality.sequence import Gap
from k2.sources.kraken.rest import (
    MAX_COUNT,
    RATE_LIMIT_PAUSE_MAX_S,
    RATE_LIMIT_PAUSE_S,
    REQUESTS_PER_S,
    TRADES_PATH,
    ErrorClass,
    TradesPage,
    error_class,
    parse_trades_page,
    throttled_until_s,
)
from k2.sources.kraken.symbols import KrakenSymbols
from k2.sources.rest import Page, RestClient, TokenBucket
from k2.sources.venue import FetchedTrades, SymbolRules

FIRST_LOOKBACK_S = 60.0
LOOKBACK_GROWTH = 4
MAX_REQUESTS_PER_PAGE = 20  # a search that needs more is given up (BackfillError): the gap stays open


class KrakenTradeFetcher:
    """:class:`k2.sources.venue.TradeFetcher` over Kraken's public ``Trades``."""

    def __init__(self, settings: K2Settings, rules: SymbolRules, rest_url: str) -> None:
        q = settings.quality
        self._rules = rules
        self._pairs = rules if isinstance(rules, KrakenSymbols) else None
        self._validation = settings.source.validation
        self.client = RestClient(
            rest_url, TokenBucket(REQUESTS_PER_S, 1.0), venue="kraken", attempts=q.backfill_attempts,
            timeout_s=q.rest_timeout_s,
        )  # fmt: skip
        self._cursor: dict[str, tuple[int, int]] = {}  # symbol -> (the id the next page starts at, its since)
        self._throttled = 0  # rate-limit answers in a row

    def clock_us(self) -> int:
        return self.client.clock_us()

    def rest_pair(self, symbol: str) -> str:
        """The REST ``pair`` of a v2 symbol (AssetPairs' name when the rules know it)."""
        if self._pairs is not None:
            return self._pairs.rest_pair(symbol)
        return symbol.replace("/", "")

    async def page(self, gap: Gap, from_id: int, limit: int) -> FetchedTrades:
        """A page holding trade ``from_id`` of ``gap``'s symbol (or the first trade after it, when Kraken has
        none between), found as the module docstring says. ``limit`` is not needed: pages are 1000."""
        symbol = gap.key.symbol
        known = self._cursor.pop(symbol, None)
        following = known is not None and known[0] == from_id  # the previous page of this gap ended just before
        anchor_ns = gap.trade_time_us * 1000
        lookback_s = FIRST_LOOKBACK_S
        since = known[1] if following and known is not None else max(0, anchor_ns - int(lookback_s * 1e9))
        for _ in range(MAX_REQUESTS_PER_PAGE):
            page = await self._get(symbol, since)
            fetched = page.fetched
            assert fetched is not None
            if not fetched.ids:  # every row refused (quarantined by the caller): nothing to place
                return fetched
            lo, hi = min(fetched.ids), max(fetched.ids)
            if hi < from_id:  # the page ends before the gap: follow the cursor
                if page.last_ns is None or page.last_ns <= since:
                    raise BackfillError(f"{symbol}: Kraken has no trade after id {hi} (wanted {from_id})")
                since, following = page.last_ns, True
                continue
            if lo > from_id and not following and since > 0:  # it starts after the gap: look further back
                lookback_s *= LOOKBACK_GROWTH
                since = max(0, anchor_ns - int(lookback_s * 1e9))
                continue
            if page.last_ns is not None:
                self._cursor[symbol] = (hi + 1, page.last_ns)
            return fetched
        raise BackfillError(f"{symbol}: no Trades page with id {from_id} within {MAX_REQUESTS_PER_PAGE} requests")

    async def _get(self, symbol: str, since_ns: int) -> TradesPage:
        instrument = self._rules.instrument(symbol)

        def accept(answer: Page) -> TradesPage:
            page = parse_trades_page(
                answer.body, symbol, received_at_us=answer.received_at_us, instrument=instrument,
                validation=self._validation,
            )  # fmt: skip
            if page.errors:
                raise self._refused(page.errors, answer.received_at_us)
            self._throttled = 0
            fetched = page.fetched
            if fetched is None or (not fetched.ids and not fetched.parsed.rejected):
                # never right: every page asked for starts before a trade K2 has seen
                raise SourceError(f"an empty Trades page since {since_ns} ns, where trades exist")
            return page

        params = {"pair": self.rest_pair(symbol), "since": str(since_ns), "count": str(MAX_COUNT)}
        return await self.client.get(TRADES_PATH, params, accept)

    def _refused(self, errors: tuple[str, ...], now_us: int) -> K2Error:
        """The error to raise for an answer's ``error`` entries (see the module docstring)."""
        text = "; ".join(errors)
        classes = {error_class(e) for e in errors}
        if ErrorClass.RATE_LIMITED in classes:
            self._throttled += 1
            until = next((t for t in map(throttled_until_s, errors) if t is not None), None)
            if until is not None:
                delay = max(0.0, until - now_us / 1e6)
            else:
                delay = min(RATE_LIMIT_PAUSE_MAX_S, RATE_LIMIT_PAUSE_S * 2 ** (self._throttled - 1))
            return RateLimited(f"Kraken: {text}", delay)
        if ErrorClass.PERMANENT in classes:
            return BackfillError(f"Kraken refused Trades: {text}")
        return SourceError(f"Kraken: {text}")

    async def aclose(self) -> None:
        await self.client.aclose()
