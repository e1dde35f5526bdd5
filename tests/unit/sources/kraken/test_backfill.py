"""Kraken's REST trade fetcher against the emulator's REST side over a real socket: a gap of ids found by
time, pages followed by their cursor, one request a second, Kraken's errors (rate limit, service, unknown
pair) and transient faults handled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from k2.config import K2Settings, QualitySettings
from k2.emulator.faults import Faults, routable_frames
from k2.emulator.kraken import BUNDLED_KRAKEN, KrakenProtocol, route
from k2.emulator.kraken_rest import KrakenRestEndpoints
from k2.emulator.recording import read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.errors import BackfillError
from k2.quality.sequence import Gap, StreamKey
from k2.sources.kraken.asset_pairs import kraken_rules
from k2.sources.kraken.backfill import FIRST_LOOKBACK_S, KrakenTradeFetcher
from k2.sources.timestamps import parse_us
from k2.sources.venue import FetchedTrades
from tests.pacing import assert_paced

T = TypeVar("T")
FIRST_ID, LAST_ID = 10_218_208, 10_219_207


def _trade_times() -> dict[int, int]:
    """Trade id -> time (µs) of the bundled recording's BTC/USDT trades."""
    out = {}
    for frame in routable_frames(read_recording(BUNDLED_KRAKEN), route):
        message = json.loads(frame.raw)
        if message["channel"] == "trade":
            for t in message["data"]:
                out[t["trade_id"]] = parse_us(t["timestamp"])
    return out


TIMES = _trade_times()


def _gap(first: int, last: int) -> Gap:
    """A gap as the tracker finds it: dated by the trade after it."""
    return Gap(StreamKey("KRAKEN", "BTC/USDT", "trade"), first, last, 0, TIMES[last + 1], "test")


class _SmallPages(KrakenProtocol):
    """Kraken's protocol with pages of at most ``max_count`` trades (the recording holds only 1,000)."""

    def __init__(self, max_count: int) -> None:
        self.max_count = max_count

    def rest(self, recording: Path, faults: Faults) -> KrakenRestEndpoints:
        return KrakenRestEndpoints(recording, faults, max_count=self.max_count)


def _run(
    work: Callable[[KrakenTradeFetcher, BinanceEmulator], Awaitable[T]],
    *,
    faults: Faults | None = None,
    max_count: int = 1000,
    **quality: Any,
) -> tuple[T, KrakenRestEndpoints]:
    async def main() -> tuple[T, KrakenRestEndpoints]:
        config = ReplayConfig(recording=BUNDLED_KRAKEN, protocol=_SmallPages(max_count), faults=faults or Faults())
        async with BinanceEmulator(config) as emu:
            settings = K2Settings(quality=QualitySettings(**quality))
            fetcher = KrakenTradeFetcher(settings, kraken_rules(), emu.http_url)
            try:
                result = await work(fetcher, emu)
            finally:
                await fetcher.aclose()
            assert isinstance(emu.rest, KrakenRestEndpoints)
            return result, emu.rest

    return asyncio.run(main())


async def _backfill(fetcher: KrakenTradeFetcher, gap: Gap) -> list[FetchedTrades]:
    """Pages as the trade completeness stage asks for them (k2.feed.trades: from_id moves past each page)."""
    pages, from_id = [], gap.first_id
    while from_id <= gap.last_id:
        page = await fetcher.page(gap, from_id, 1000)
        pages.append(page)
        from_id = max(from_id, max(page.ids) + 1)
    return pages


def test_a_gap_is_found_by_time_and_paged_by_its_cursor() -> None:
    gap = _gap(10_218_700, 10_218_949)  # 250 trades, pages of 100

    async def work(fetcher: KrakenTradeFetcher, _: BinanceEmulator) -> list[FetchedTrades]:
        return await _backfill(fetcher, gap)

    pages, rest = _run(work, max_count=100)
    got = sorted({i for p in pages for i in p.ids if gap.first_id <= i <= gap.last_id})
    assert got == list(range(gap.first_id, gap.last_id + 1))
    assert all(p.parsed.rejected == [] for p in pages)
    sinces = [int(r.query["since"]) for r in rest.requests]
    anchor_ns = TIMES[gap.last_id + 1] * 1000
    assert sinces[0] == anchor_ns - int(FIRST_LOOKBACK_S * 1e9)  # a minute before the trade after the gap
    # Once the page holding the first missing id is found, each next page starts at the previous page's last.
    lasts = [_last(rest, i) for i in range(len(rest.requests))]
    found = next(i for i, p in enumerate(rest.requests) if _ids(rest, i)[0] <= gap.first_id <= _ids(rest, i)[-1])
    assert sinces[found + 1 :] == lasts[found:-1]
    assert {r.query["pair"] for r in rest.requests} == {"XBTUSDT"} and {r.status for r in rest.requests} == {200}
    assert_paced([r.at for r in rest.requests], 1, 1, 1.0)  # one request a second (Kraken's public guidance)


def _page_of(rest: KrakenRestEndpoints, i: int) -> tuple[list[int], int]:
    """(ids, last) the emulator answered to request ``i``, recomputed from its cursor rules."""
    book = rest._index()["BTC/USDT"]
    since = int(rest.requests[i].query["since"])
    start = next((k for k, c in enumerate(book.cursors) if c > since), len(book.cursors))
    end = min(len(book.cursors), start + rest.max_count)
    ids = [json.loads(row)[6] for row in book.rows[start:end]]
    return ids, book.cursors[end - 1]


def _ids(rest: KrakenRestEndpoints, i: int) -> list[int]:
    return _page_of(rest, i)[0]


def _last(rest: KrakenRestEndpoints, i: int) -> int:
    return _page_of(rest, i)[1]


def test_a_page_that_ends_before_the_gap_is_followed_by_its_cursor() -> None:
    """A gap dated late (a re-opened range is dated by its first trade, the tracker's gap by the next one):
    the search starts far enough back to land before the gap, then follows ``last`` forward."""
    gap = Gap(StreamKey("KRAKEN", "BTC/USDT", "trade"), 10_218_400, 10_218_410, 0, TIMES[10_218_500], "late")

    async def work(fetcher: KrakenTradeFetcher, _: BinanceEmulator) -> FetchedTrades:
        return await fetcher.page(gap, gap.first_id, 1000)

    page, rest = _run(work, max_count=20)
    assert min(page.ids) <= gap.first_id <= max(page.ids)
    ends = [_ids(rest, i)[-1] for i in range(len(rest.requests))]
    followed = [i for i in range(1, len(rest.requests)) if int(rest.requests[i].query["since"]) == _last(rest, i - 1)]
    assert followed and all(ends[i - 1] < gap.first_id for i in followed)


def test_krakens_rate_limit_error_pauses_then_the_page_is_answered() -> None:
    gap = _gap(10_218_700, 10_218_709)

    async def work(fetcher: KrakenTradeFetcher, _: BinanceEmulator) -> FetchedTrades:
        return await fetcher.page(gap, gap.first_id, 1000)

    page, rest = _run(work, faults=Faults(rest_errors=((429, 0.0), (429, 0.0))))
    assert gap.first_id in page.ids
    assert [r.error for r in rest.requests[:3]] == ["EAPI:Rate limit exceeded"] * 2 + [""]
    assert all(r.status == 200 for r in rest.requests)  # Kraken says it in the body
    at = [r.at for r in rest.requests]
    assert at[1] - at[0] >= 2.0 - 1e-3 and at[2] - at[1] >= 4.0 - 1e-3  # 2 s, doubling while they persist


def test_a_service_error_is_retried_and_an_unknown_pair_is_not() -> None:
    gap = _gap(10_218_700, 10_218_709)

    async def work(fetcher: KrakenTradeFetcher, _: BinanceEmulator) -> FetchedTrades:
        return await fetcher.page(gap, gap.first_id, 1000)

    page, rest = _run(work, faults=Faults(rest_errors=((503, 0.05), ("bad_body", 0.0), ("empty_page", 0.0))))
    assert gap.first_id in page.ids
    assert [(r.status, r.error) for r in rest.requests[:4]] == [
        (503, "EService:Unavailable"), (200, ""), (200, ""), (200, ""),
    ]  # fmt: skip

    unknown = Gap(StreamKey("KRAKEN", "NOPE/USD", "trade"), 1, 2, 0, TIMES[FIRST_ID], "unknown")

    async def refused(fetcher: KrakenTradeFetcher, _: BinanceEmulator) -> None:
        with pytest.raises(BackfillError, match="EQuery:Unknown asset pair"):
            await fetcher.page(unknown, 1, 1000)

    _, rest = _run(refused)
    assert [r.error for r in rest.requests] == ["EQuery:Unknown asset pair"]  # asked once: retrying cannot help


def test_persistent_errors_give_up_after_the_attempts() -> None:
    gap = _gap(10_218_700, 10_218_709)

    async def work(fetcher: KrakenTradeFetcher, _: BinanceEmulator) -> None:
        with pytest.raises(BackfillError, match="after 2 attempts"):
            await fetcher.page(gap, gap.first_id, 1000)

    _, rest = _run(work, faults=Faults(rest_errors=((502, 0.01), (502, 0.01))), backfill_attempts=2)
    assert [r.status for r in rest.requests] == [502, 502]


def test_the_emulator_enforces_krakens_public_limit() -> None:
    """Three requests at once: two pass (burst 2), the third is told ``EGeneral:Too many requests``."""
    rest = KrakenRestEndpoints(BUNDLED_KRAKEN, clock=lambda: 100.0)
    answers = [rest.handle("/0/public/Trades?pair=XBTUSDT&since=0") for _ in range(3)]
    assert [a.status if a else None for a in answers] == [200, 200, 200]
    assert [r.error for r in rest.requests] == ["", "", "EGeneral:Too many requests"]
    assert answers[2] is not None and json.loads(answers[2].body) == {"error": ["EGeneral:Too many requests"]}
