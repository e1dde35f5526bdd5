"""The rate-limited REST client every venue's backfill uses: a request-weight token bucket and retries.

:class:`TokenBucket` spends a venue's *request weight* (Binance's ``historicalTrades`` costs 25 of
the 6000 per minute an IP may use; a venue that counts requests gives each weight 1): a request
waits until the bucket holds its weight, and a ``Retry-After`` from the venue pauses every request
until it has passed. Over any interval ``T`` the weight spent is at most ``burst + rate * T``.
:meth:`RestClient.get` answers ``accept(page)`` of the first good answer: HTTP 429 (and the venue's
other rate-limit statuses, e.g. Binance's 418) and 5xx are retried after ``Retry-After`` (or a
capped backoff), and so are network errors, timeouts and a 200 answer that ``accept`` refuses with a
:class:`~k2.errors.SourceError` (a broken body, an empty page where trades must exist); other
statuses fail with :class:`~k2.errors.BackfillError`. A venue that reports errors inside a 200 body
(Kraken's ``error`` array) has ``accept`` raise :class:`~k2.errors.RateLimited` (every request pauses
for its ``retry_after_s``, like a 429) or :class:`~k2.errors.BackfillError` (the request itself is
wrong: not retried). TLS is verified against certifi's CA bundle. :class:`IdPagedFetcher` is the
backfill of a venue whose trades endpoint pages by trade id (Binance, Coinbase) on top of it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import certifi
import httpx

from k2.errors import BackfillError, RateLimited, SourceError
from k2.logging import get_logger
from k2.metrics import REST_REQUESTS, REST_WAIT_SECONDS

if TYPE_CHECKING:
    from k2.config import K2Settings, ValidationSettings
    from k2.quality.sequence import Gap
    from k2.sources.symbols import Instrument
    from k2.sources.venue import FetchedTrades, SymbolRules

log = get_logger(__name__)

_BACKOFF_BASE_S = 0.25
_BACKOFF_MAX_S = 30.0
_DEFAULT_RETRY_AFTER_S = 1.0

T = TypeVar("T")


class TokenBucket:
    """Request-weight limiter: ``rate_per_s`` refill, ``burst`` capacity; ``clock`` injectable."""

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()
        self._paused_until = 0.0

    def reserve(self, cost: float) -> float:
        """Take ``cost`` tokens now (the balance may go negative); the seconds to wait before using them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - cost
        self._last = now
        return max(0.0, -self._tokens / self.rate, self._paused_until - now)

    def pause(self, seconds: float) -> None:
        """No request may start within ``seconds`` from now (the venue said Retry-After)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def acquire(self, cost: float) -> float:
        """Wait until ``cost`` may be spent; returns the time waited."""
        wait = self.reserve(cost)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


def tls_context() -> ssl.SSLContext:
    """Certificate verification on, against certifi's CA bundle."""
    return ssl.create_default_context(cafile=certifi.where())


def _retry_after(response: httpx.Response, attempt: int) -> float:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else _DEFAULT_RETRY_AFTER_S * attempt
    except ValueError:
        return _DEFAULT_RETRY_AFTER_S * attempt


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    received_at_us: int


class RestClient:
    """Async REST client of one venue for backfill. Use ``async with``."""

    def __init__(
        self,
        base_url: str,
        limiter: TokenBucket,
        *,
        venue: str,
        weights: Mapping[str, int] | None = None,
        rate_limit_statuses: Collection[int] = (429,),
        attempts: int = 8,
        timeout_s: float = 10.0,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.venue = venue
        self.weights = dict(weights or {})
        self.rate_limit_statuses = frozenset(rate_limit_statuses)
        self.attempts = attempts
        self.clock_us = clock_us
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, verify=tls_context())
        self.requests = 0
        self.retries = 0

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str, params: Mapping[str, str], accept: Callable[[Page], T]) -> T:
        """``accept(page)`` of the first answer it takes: a :class:`~k2.errors.SourceError` from it
        (the body does not parse, or lacks trades the caller knows exist) counts as a failed attempt
        and is retried with backoff, like a 5xx."""
        return await self._get(path, dict(params), accept)

    async def _get(self, path: str, params: dict[str, str], accept: Callable[[Page], T]) -> T:
        weight = self.weights.get(path, 1)
        last_problem = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            waited = await self.limiter.acquire(weight)
            if waited:
                REST_WAIT_SECONDS.labels(venue=self.venue).inc(waited)
            self.requests += 1
            try:
                response = await self._client.get(path, params=params)
            except httpx.HTTPError as exc:
                REST_REQUESTS.labels(venue=self.venue, status="error").inc()
                last_problem = f"{type(exc).__name__}: {exc}"
                await self._backoff(attempt, last_problem)
                continue
            status = response.status_code
            if status == 200:
                try:
                    result = accept(Page(response.content, self.clock_us()))
                except RateLimited as exc:  # a venue that says "too many requests" in a 200 body (Kraken)
                    REST_REQUESTS.labels(venue=self.venue, status="429").inc()
                    self.limiter.pause(exc.retry_after_s)
                    last_problem = str(exc)
                    self.retries += 1
                    log.warning("backfill.rate_limited", status=status, retry_after_s=exc.retry_after_s, path=path)
                    continue
                except BackfillError:  # the venue refused the request itself: asking again cannot help
                    REST_REQUESTS.labels(venue=self.venue, status="4xx").inc()
                    raise
                except SourceError as exc:  # a 200 whose body is broken or short: transient on a venue
                    REST_REQUESTS.labels(venue=self.venue, status="2xx").inc()
                    last_problem = f"bad answer from {path}: {exc}"
                    await self._backoff(attempt, last_problem)
                    continue
                REST_REQUESTS.labels(venue=self.venue, status="2xx").inc()
                return result
            if status in self.rate_limit_statuses:
                REST_REQUESTS.labels(venue=self.venue, status="429").inc()
                delay = _retry_after(response, attempt)
                self.limiter.pause(delay)  # every request waits, not only this one
                last_problem = str(RateLimited(f"HTTP {status} from {path}", delay))
                self.retries += 1
                log.warning("backfill.rate_limited", status=status, retry_after_s=delay, path=path)
                continue
            if status >= 500:
                REST_REQUESTS.labels(venue=self.venue, status="5xx").inc()
                last_problem = f"HTTP {status} from {path}"
                retry = _retry_after(response, attempt) if "Retry-After" in response.headers else None
                await self._backoff(attempt, last_problem, retry)
                continue
            REST_REQUESTS.labels(venue=self.venue, status="4xx").inc()
            raise BackfillError(f"HTTP {status} from {path}: {response.text[:200]}")
        raise BackfillError(f"{path} failed after {self.attempts} attempts: {last_problem}")

    async def _backoff(self, attempt: int, problem: str, delay: float | None = None) -> None:
        self.retries += 1
        wait = delay if delay is not None else min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** (attempt - 1))
        log.warning("backfill.retry", attempt=attempt, retry_in_s=wait, problem=problem)
        REST_WAIT_SECONDS.labels(venue=self.venue).inc(wait)
        await asyncio.sleep(wait)


class PageParser(Protocol):
    """A venue's pure parser of one REST trades page: ``parse(body, symbol, *, received_at_us,
    instrument, validation)`` (e.g. :func:`k2.sources.binance.rest.parse_historical_trades`)."""

    def __call__(
        self, payload: bytes, symbol: str, /, *, received_at_us: int, instrument: Instrument,
        validation: ValidationSettings | None = None,
    ) -> FetchedTrades: ...  # fmt: skip


class IdPagedFetcher(ABC):
    """A :class:`~k2.sources.venue.TradeFetcher` over an endpoint that pages by trade id (Binance's
    ``historicalTrades``, Coinbase's ``/products/{id}/trades``): a venue gives its client, its page
    parser and :meth:`request` (the path and query of the page from ``from_id``). A 200 page that
    holds none of the asked ids, though the ids say they exist, is refused (a ``SourceError``), so the
    client retries it like a transient fault."""

    def __init__(self, settings: K2Settings, rules: SymbolRules, client: RestClient, parse: PageParser) -> None:
        self._rules = rules
        self._validation = settings.source.validation
        self._parse = parse
        self.client = client

    @abstractmethod
    def request(self, symbol: str, from_id: int, last_id: int, limit: int) -> tuple[str, dict[str, str]]:
        """The path and query of the page of ``symbol`` from ``from_id`` (at most ``limit`` trades)."""

    def clock_us(self) -> int:
        return self.client.clock_us()

    async def page(self, gap: Gap, from_id: int, limit: int) -> FetchedTrades:
        symbol = gap.key.symbol
        instrument = self._rules.instrument(symbol)

        def accept(page: Page) -> FetchedTrades:
            parsed = self._parse(
                page.body, symbol, received_at_us=page.received_at_us, instrument=instrument,
                validation=self._validation,
            )  # fmt: skip
            if not any(from_id <= i <= gap.last_id for i in parsed.ids):  # the ids say these trades exist
                raise SourceError(f"no trade of ids {from_id}..{gap.last_id} in a page of {len(parsed.ids)}")
            return parsed

        path, params = self.request(symbol, from_id, gap.last_id, limit)
        return await self.client.get(path, params, accept)

    async def aclose(self) -> None:
        await self.client.aclose()
