"""The quote routes against the live service: quotes page by page, spread statistics, best bid/offer
per bucket and the as-of join, checked against the rows the tables hold (and the engine), in every
format; and the same routes on a warehouse that has no quotes table."""

from __future__ import annotations

import bisect
import io
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from k2.config import K2Settings, LakeSettings
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.query import QueryEngine
from k2.query.quotes import AS_OF_COLUMNS, BBO_SCHEMA, QUOTE_ARROW_SCHEMA
from k2.schema import TRADE_ARROW_SCHEMA
from k2.schema.kinds import RecordKind
from tests.integration.api.conftest import Lake, LiveApi, api_settings

pytestmark = pytest.mark.integration

QUOTE_KEY = ["ingestion_timestamp", "exchange", "symbol", "source_sequence", "message_id"]
TRADE_KEY = ["timestamp", "exchange", "symbol", "source_sequence", "trade_id"]
ASOF_SCHEMA = pa.schema([*TRADE_ARROW_SCHEMA, *AS_OF_COLUMNS])
US = timedelta(microseconds=1)
TWELVE = Decimal(1).scaleb(-12)


def _of(table: pa.Table, symbol: str) -> pa.Table:
    return table.filter(pc.equal(table["symbol"], symbol))


def _sorted(table: pa.Table, key: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in key])


def _pages(http: httpx.Client, path: str, params: dict[str, Any]) -> list[pa.Table]:
    pages, cursor = [], None
    while True:
        response = http.get(path, params={**params, "format": "arrow"} | ({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        pages.append(pa.ipc.open_stream(response.content).read_all())
        cursor = response.headers.get("K2-Next-Cursor")
        if cursor is None:
            return pages
        assert f"cursor={cursor}" in response.headers["Link"]


@pytest.fixture(scope="module")
def engine(api_lake: Lake) -> Any:
    with QueryEngine.from_settings(api_lake.settings) as eng:
        yield eng


def test_quote_pages_cover_the_table_exactly_once_in_key_order(live_api: LiveApi, api_lake: Lake) -> None:
    with live_api.client(live_api.keys.read) as http:
        pages = _pages(http, "/v1/quotes", {"symbol": "ethusdt", "limit": 20_000})
    got = pa.concat_tables(pages)
    eth = _of(api_lake.quotes, "ETHUSDT")
    assert got.schema == QUOTE_ARROW_SCHEMA
    assert [p.num_rows for p in pages] == [20_000, 20_000, eth.num_rows - 40_000]
    assert got.equals(_sorted(eth, QUOTE_KEY).cast(QUOTE_ARROW_SCHEMA))


def test_quotes_select_on_receive_time_and_carry_exact_decimals(live_api: LiveApi, api_lake: Lake) -> None:
    start, end = "2024-08-08T23:58:00Z", "2024-08-08T23:58:01.5Z"
    with live_api.client(live_api.keys.read) as http:
        body = http.get("/v1/quotes", params={"symbol": "BTCUSDT", "start": start, "end": end, "limit": 10_000}).json()
    received = api_lake.quotes["ingestion_timestamp"]
    lo, hi = datetime.fromisoformat(start), datetime.fromisoformat(end)
    want = _sorted(
        _of(api_lake.quotes.filter(pc.and_(pc.greater_equal(received, lo), pc.less(received, hi))), "BTCUSDT"),
        QUOTE_KEY,
    ).to_pylist()
    assert body["next_cursor"] is None and len(body["data"]) == len(want) > 50
    for row, expected in zip(body["data"], want, strict=True):
        assert isinstance(row["bid_price"], str) and Decimal(row["bid_price"]) == expected["bid_price"]
        assert Decimal(row["ask_size"]) == expected["ask_size"]
        assert row["timestamp"] is None  # Binance bookTicker carries no exchange time
        assert datetime.fromisoformat(row["ingestion_timestamp"]) == expected["ingestion_timestamp"]
        assert row["source_sequence"] == expected["source_sequence"]
        assert row["instrument"] == "BTC/USDT"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_quote_pages_in_csv_and_parquet_hold_the_arrow_rows(live_api: LiveApi, fmt: str) -> None:
    params = {"symbol": "BTCUSDT", "limit": 2_000}
    with live_api.client(live_api.keys.read) as http:
        arrow = pa.ipc.open_stream(http.get("/v1/quotes", params={**params, "format": "arrow"}).content).read_all()
        response = http.get("/v1/quotes", params={**params, "format": fmt})
    assert response.status_code == 200 and response.headers["K2-Next-Cursor"]
    if fmt == "csv":
        flat = arrow.drop_columns(["vendor_data"])
        got = pa_csv.read_csv(
            io.BytesIO(response.content), convert_options=pa_csv.ConvertOptions(column_types=flat.schema)
        ).select(flat.column_names)
        assert got.cast(flat.schema).equals(flat)
    else:
        assert pq.read_table(io.BytesIO(response.content)).equals(arrow)


@pytest.mark.parametrize("fmt", ["json", "csv", "arrow"])
def test_spread_matches_the_engine_in_every_format(live_api: LiveApi, engine: QueryEngine, fmt: str) -> None:
    start = datetime(2024, 8, 9, 0, 1, tzinfo=UTC)
    want = engine.spread(start_time=start).table
    with live_api.client(live_api.keys.read) as http:
        response = http.get("/v1/spread", params={"start": start.isoformat(), "format": fmt})
    assert response.status_code == 200, response.text
    assert want.num_rows == 2
    if fmt == "json":
        rows = response.json()["data"]
        assert [(r["symbol"], r["quotes"]) for r in rows] == [
            (s, n) for s, n in zip(want["symbol"].to_pylist(), want["quotes"].to_pylist(), strict=True)
        ]
        assert [Decimal(r["mean_spread_bps"]) for r in rows] == want["mean_spread_bps"].to_pylist()
        assert all(isinstance(r["min_spread"], str) for r in rows)
        return
    if fmt == "csv":
        got = pa_csv.read_csv(
            io.BytesIO(response.content), convert_options=pa_csv.ConvertOptions(column_types=want.schema)
        )
    else:
        got = pa.ipc.open_stream(response.content).read_all()
    assert got.cast(want.schema).equals(want)


def _bbo_reference(quotes: pa.Table, width_us: int) -> list[dict[str, Any]]:
    """Per bucket of receive time: the last quote by (received, update id, K2 sequence), and the spread's
    min, max and exact mean, computed here row by row from what the table holds."""
    buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for q in quotes.to_pylist():
        buckets[(q["ingestion_timestamp"] - datetime(1970, 1, 1, tzinfo=UTC)) // US // width_us].append(q)
    out = []
    for b in sorted(buckets):
        rows = buckets[b]
        last = max(rows, key=lambda q: (q["ingestion_timestamp"], q["source_sequence"], q["platform_sequence"]))
        spreads = [q["ask_price"] - q["bid_price"] for q in rows]
        out.append(
            {
                "exchange": "BINANCE", "symbol": last["symbol"],
                "bucket": datetime(1970, 1, 1, tzinfo=UTC) + b * width_us * US, "quotes": len(rows),
                "bid_price": last["bid_price"], "bid_size": last["bid_size"],
                "ask_price": last["ask_price"], "ask_size": last["ask_size"],
                "min_spread": min(spreads), "max_spread": max(spreads),
                "mean_spread": (sum(spreads) / len(rows)).quantize(TWELVE, rounding=ROUND_HALF_EVEN),
            }
        )  # fmt: skip
    return out


def test_bbo_buckets_hold_the_last_quote_and_exact_spread_statistics(live_api: LiveApi, api_lake: Lake) -> None:
    with live_api.client(live_api.keys.read) as http:
        arrow = http.get("/v1/bbo", params={"symbol": "BTCUSDT", "interval": "5s", "format": "arrow"})
        json_rows = http.get("/v1/bbo", params={"symbol": "BTCUSDT", "interval": "5s"}).json()["data"]
    got = pa.ipc.open_stream(arrow.content).read_all()
    assert got.schema == BBO_SCHEMA
    want = _bbo_reference(_of(api_lake.quotes, "BTCUSDT"), 5_000_000)
    assert got.to_pylist() == want and len(want) > 100
    assert [Decimal(r["mean_spread"]) for r in json_rows] == [w["mean_spread"] for w in want]
    assert [datetime.fromisoformat(r["bucket"]) for r in json_rows] == [w["bucket"] for w in want]


def _prevailing(quotes: pa.Table, tolerance: timedelta) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """The quote of a trade's symbol received last strictly before the trade, if at most ``tolerance`` older."""
    by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q in _sorted(quotes, QUOTE_KEY).to_pylist():
        by_symbol[q["symbol"]].append(q)
    times = {s: [q["ingestion_timestamp"] for q in qs] for s, qs in by_symbol.items()}

    def find(trade: dict[str, Any]) -> dict[str, Any] | None:
        i = bisect.bisect_left(times[trade["symbol"]], trade["ingestion_timestamp"]) - 1
        if i < 0:
            return None
        quote = by_symbol[trade["symbol"]][i]
        return quote if trade["ingestion_timestamp"] - quote["ingestion_timestamp"] <= tolerance else None

    return find


def test_asof_pages_give_each_trade_its_prevailing_quote(
    live_api: LiveApi, api_lake: Lake, engine: QueryEngine
) -> None:
    params = {"symbol": "BTCUSDT", "start": "2024-08-08T23:59:00Z", "end": "2024-08-09T00:01:00Z"}
    with live_api.client(live_api.keys.read) as http:
        pages = _pages(http, "/v1/asof", {**params, "limit": 1_500, "tolerance": "1ms"})
        body = http.get("/v1/asof", params={**params, "limit": 3, "tolerance": "1ms"}).json()
    got = pa.concat_tables(pages)
    assert got.schema == ASOF_SCHEMA and len(pages) > 2
    start, end = datetime(2024, 8, 8, 23, 59, tzinfo=UTC), datetime(2024, 8, 9, 0, 1, tzinfo=UTC)
    want = engine.trades_with_quotes(
        "BTCUSDT", start_time=start, end_time=end, limit=100_000, tolerance=timedelta(milliseconds=1)
    ).table
    assert got.equals(_sorted(want, TRADE_KEY))
    find = _prevailing(_of(api_lake.quotes, "BTCUSDT"), timedelta(milliseconds=1))
    matched = 0
    for row in got.to_pylist():
        quote = find(row)
        if quote is None:
            assert row["bid_price"] is None and row["quote_sequence"] is None
        else:
            matched += 1
            assert (row["bid_price"], row["ask_price"], row["ask_size"]) == (
                quote["bid_price"], quote["ask_price"], quote["ask_size"],
            )  # fmt: skip
            assert (row["quote_sequence"], row["quote_received_at"]) == (
                quote["source_sequence"], quote["ingestion_timestamp"],
            )  # fmt: skip
    assert got.num_rows > matched > got.num_rows // 2  # within 1 ms: most trades have a quote, not all
    first = body["data"][0]
    assert body["next_cursor"] and len(body["data"]) == 3
    assert first["trade_id"] == got["trade_id"][0].as_py()
    assert first["bid_price"] is None or Decimal(first["bid_price"]) == got["bid_price"][0].as_py()


def test_feeds_report_trades_and_quotes_per_feed(live_api: LiveApi, api_lake: Lake) -> None:
    with live_api.client(live_api.keys.read) as http:
        feeds = http.get("/v1/feeds").json()["feeds"]
    assert {(f["exchange"], f["symbol"], f["kind"]) for f in feeds} == {
        ("BINANCE", s, k) for s in ("BTCUSDT", "ETHUSDT") for k in ("trades", "quotes")
    }
    eth_quotes = next(f for f in feeds if f["symbol"] == "ETHUSDT" and f["kind"] == "quotes")
    newest = pc.max(_of(api_lake.quotes, "ETHUSDT")["ingestion_timestamp"]).as_py()
    assert datetime.fromisoformat(eth_quotes["last_event"]) == newest  # no exchange time: the receive time
    assert eth_quotes["records_last_minute"] == 0 and eth_quotes["freshness_s"] > 3600


def test_empty_ranges_answer_no_rows(live_api: LiveApi) -> None:
    empty = {"symbol": "BTCUSDT", "start": "2024-08-09T00:00:00Z", "end": "2024-08-09T00:00:00Z"}
    with live_api.client(live_api.keys.read) as http:
        answers = {path: http.get(f"/v1/{path}", params=empty) for path in ("quotes", "spread", "bbo", "asof")}
        too_large = http.get("/v1/asof", params={"limit": 100_001})  # an as-of page is joined in memory
    assert {p: (r.status_code, r.json()["data"]) for p, r in answers.items()} == {
        p: (200, []) for p in ("quotes", "spread", "bbo", "asof")
    }
    assert too_large.status_code == 422 and too_large.json()["error"]["code"] == "invalid_request"


def test_quote_routes_without_a_quotes_table(
    api_lake: Lake, tmp_path: Any, start_api: Callable[[K2Settings], str]
) -> None:
    """A warehouse holding only trades (a trades-only capture): quotes answer no rows, the as-of join null quotes."""
    lake = LakeSettings(warehouse=tmp_path / "warehouse")
    load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES).append(api_lake.trades.slice(0, 500))
    trades_only = Lake(api_lake.settings.model_copy(update={"lake": lake}), api_lake.trades, api_lake.quotes)
    url = start_api(api_settings(trades_only, auth="open"))
    with httpx.Client(base_url=url, timeout=60) as http:
        quotes = http.get("/v1/quotes").json()
        spread = http.get("/v1/spread").json()
        bbo = http.get("/v1/bbo", params={"symbol": "BTCUSDT"}).json()
        asof = http.get("/v1/asof", params={"limit": 100}).json()
        feeds = http.get("/v1/feeds").json()["feeds"]
    assert (quotes, spread, bbo) == ({"next_cursor": None, "data": []}, {"data": []}, {"data": []})
    assert len(asof["data"]) == 100 and asof["next_cursor"]
    assert all(r["bid_price"] is None and r["quote_received_at"] is None for r in asof["data"])
    assert {f["kind"] for f in feeds} == {"trades"}


def test_the_quote_routes_take_the_instrument_as_the_selection(live_api: LiveApi, api_lake: Lake) -> None:
    """``instrument`` goes through the shared Selection to every quote route: on this one-venue lake the
    instrument's rows are its one venue symbol's, and JSON rows (validated models) carry the instrument."""
    with live_api.client(live_api.keys.read) as http:
        by_instrument = pa.concat_tables(_pages(http, "/v1/quotes", {"instrument": "eth/usdt", "limit": 50_000}))
        spread = http.get("/v1/spread", params={"instrument": "ETH/USDT"}).json()["data"]
        bbo = [http.get("/v1/bbo", params={**sel, "interval": "1m"}).json()["data"] for sel in (
            {"instrument": "BTC/USDT"}, {"symbol": "BTCUSDT"})]  # fmt: skip
        asof = http.get("/v1/asof", params={"instrument": "BTC/USDT", "limit": 50}).json()["data"]
        neither = http.get("/v1/bbo", params={"interval": "1m"})
    assert by_instrument.equals(_sorted(_of(api_lake.quotes, "ETHUSDT"), QUOTE_KEY).cast(QUOTE_ARROW_SCHEMA))
    assert set(by_instrument.column("instrument").to_pylist()) == {"ETH/USDT"}
    assert [(r["exchange"], r["symbol"]) for r in spread] == [("BINANCE", "ETHUSDT")]
    assert bbo[0] == bbo[1] and len(bbo[0]) > 1
    assert len(asof) == 50 and {(r["symbol"], r["instrument"]) for r in asof} == {("BTCUSDT", "BTC/USDT")}
    assert neither.status_code == 400 and "symbol or an instrument" in neither.json()["error"]["message"]
