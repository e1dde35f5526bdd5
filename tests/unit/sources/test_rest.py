"""Request-weight limiter and the REST client (with Binance's weights) against the emulator's REST side."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from k2.emulator.faults import Faults
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.errors import BackfillError, SourceError
from k2.sources.binance.rest import HISTORICAL_TRADES_PATH, RATE_LIMIT_STATUSES, REQUEST_WEIGHT
from k2.sources.rest import Page, RestClient, TokenBucket
from tests.conftest import rest_trades
from tests.pacing import assert_paced

FIRST_BTC_ID = 3735683259


def _client(url: str, limiter: TokenBucket, **kwargs: Any) -> RestClient:
    """The client as Binance's backfill builds it (request weights, 429/418 as rate limits)."""
    return RestClient(
        url, limiter, venue="binance", weights=REQUEST_WEIGHT, rate_limit_statuses=RATE_LIMIT_STATUSES, **kwargs
    )


def _params(symbol: str, from_id: int, limit: int) -> dict[str, str]:
    return {"symbol": symbol, "fromId": str(from_id), "limit": str(limit)}


def _page(page: Page) -> Page:
    return page


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_spends_burst_then_paces_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=50.0, burst=100.0, clock=clock)
    assert [bucket.reserve(25) for _ in range(4)] == [0.0, 0.0, 0.0, 0.0]
    assert bucket.reserve(25) == pytest.approx(0.5)  # 25 tokens short at 50/s
    assert bucket.reserve(25) == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.reserve(25) == pytest.approx(0.5)
    bucket.pause(3.0)  # Retry-After: nobody goes before it has passed
    assert bucket.reserve(1) == pytest.approx(3.0)
    clock.now += 10.0
    assert bucket.reserve(25) == 0.0


async def _fetch(
    faults: Faults, limiter: TokenBucket, pages: int, attempts: int = 8
) -> tuple[list[int], list[tuple[float, int]]]:
    async with BinanceEmulator(ReplayConfig(faults=faults)) as emu:
        async with _client(emu.http_url, limiter, attempts=attempts) as client:
            ids: list[int] = []
            from_id = FIRST_BTC_ID
            for _ in range(pages):
                page = await client.get(HISTORICAL_TRADES_PATH, _params("BTCUSDT", from_id, 100), _page)
                got = [t["id"] for t in json.loads(page.body)]
                ids += got
                from_id = got[-1] + 1
        return ids, [(r.at, r.status) for r in emu.rest.requests]


def test_client_respects_the_weight_rate() -> None:
    """8 pages of weight 25 with a 50-weight burst and 250 weight/s."""
    ids, log = asyncio.run(_fetch(Faults(), TokenBucket(rate_per_s=250.0, burst=50.0), pages=8))
    assert len(ids) == len(set(ids)) == 800 and ids == sorted(ids) and ids[0] == FIRST_BTC_ID
    assert [s for _, s in log] == [200] * 8
    assert_paced([t for t, _ in log], 25, 50, 250)


def test_client_honours_retry_after_on_429_418_and_5xx() -> None:
    faults = Faults(rest_errors=((429, 0.3), (418, 0.2), (503, 0.1), (500, 0.0)))
    ids, log = asyncio.run(_fetch(faults, TokenBucket(rate_per_s=10_000.0, burst=10_000.0), pages=2))
    assert len(ids) == 200
    assert [s for _, s in log] == [429, 418, 503, 500, 200, 200]
    gaps = [log[i + 1][0] - log[i][0] for i in range(len(log) - 1)]
    assert gaps[0] >= 0.3 - 1e-3 and gaps[1] >= 0.2 - 1e-3 and gaps[2] >= 0.1 - 1e-3


def test_client_gives_up_after_its_attempts_and_on_client_errors() -> None:
    faults = Faults(rest_errors=((503, 0.0), (503, 0.0), (503, 0.0)))
    with pytest.raises(BackfillError, match="failed after 2 attempts: HTTP 503"):
        asyncio.run(_fetch(faults, TokenBucket(1000.0, 1000.0), pages=1, attempts=2))

    async def bad_symbol() -> None:
        async with (
            BinanceEmulator(ReplayConfig()) as emu,
            _client(emu.http_url, TokenBucket(1000.0, 1000.0)) as client,
        ):
            await client.get(HISTORICAL_TRADES_PATH, _params("NOPE", 1, 10), _page)

    with pytest.raises(BackfillError, match=r"HTTP 400 .*Invalid symbol"):
        asyncio.run(bad_symbol())


def test_emulator_enforces_the_ip_weight_limit() -> None:
    async def run() -> list[tuple[int, str | None]]:
        config = ReplayConfig()
        async with BinanceEmulator(config) as emu:
            emu.rest.weight_limit_per_minute = 60
            async with httpx.AsyncClient(base_url=emu.http_url) as http:
                out = []
                for _ in range(3):
                    r = await http.get("/api/v3/historicalTrades", params={"symbol": "ETHUSDT", "limit": "1"})
                    out.append((r.status_code, r.headers.get("Retry-After")))
                return out

    got = asyncio.run(run())
    assert got[0] == (200, None) and got[1] == (200, None)
    assert got[2][0] == 429 and got[2][1] is not None and 59 <= int(got[2][1]) <= 61


def _trades(page: Page) -> list[int]:
    """An ``accept`` like backfill's: the body must parse and hold trades."""
    ids = rest_trades(page.body, "BTCUSDT", received_at_us=page.received_at_us, first=0, sample=True).ids
    if not ids:
        raise SourceError("empty page")
    return ids


def test_client_retries_a_broken_body_an_empty_page_and_a_slow_answer() -> None:
    """Each is a 200 (or no answer in time) that a venue can give once: retried with backoff, the
    fourth request gets the trades."""
    faults = Faults(rest_errors=(("bad_body", 0), ("empty_page", 0), ("slow", 2.0)))

    async def run() -> tuple[list[int], list[int], int]:
        async with BinanceEmulator(ReplayConfig(faults=faults)) as emu:
            limiter = TokenBucket(10_000.0, 10_000.0)
            async with _client(emu.http_url, limiter, attempts=4, timeout_s=0.3) as client:
                ids = await client.get(HISTORICAL_TRADES_PATH, _params("BTCUSDT", FIRST_BTC_ID, 5), _trades)
                return ids, [r.status for r in emu.rest.requests], client.retries

    ids, statuses, retries = asyncio.run(run())
    assert ids == list(range(FIRST_BTC_ID, FIRST_BTC_ID + 5))
    assert statuses == [200, 200, 200, 200] and retries == 3


def test_client_gives_up_on_bad_answers_after_its_attempts() -> None:
    faults = Faults(rest_errors=(("bad_body", 0), ("empty_page", 0)))

    async def run() -> None:
        async with (
            BinanceEmulator(ReplayConfig(faults=faults)) as emu,
            _client(emu.http_url, TokenBucket(1000.0, 1000.0), attempts=2) as client,
        ):
            await client.get(HISTORICAL_TRADES_PATH, _params("BTCUSDT", FIRST_BTC_ID, 5), _trades)

    with pytest.raises(BackfillError, match=r"failed after 2 attempts: bad answer .*empty page"):
        asyncio.run(run())
