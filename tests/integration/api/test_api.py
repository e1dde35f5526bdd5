"""The data routes against the live service: same answers as the engine, in every format, page by page."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from k2.query import QueryEngine
from k2.schema import TRADE_ARROW_SCHEMA
from k2.services.quality_report import quality_report
from tests.integration.api.conftest import Lake, LiveApi

pytestmark = pytest.mark.integration

ARROW = "application/vnd.apache.arrow.stream"
KEY = ["timestamp", "exchange", "symbol", "source_sequence", "trade_id"]


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in KEY])


@pytest.fixture(scope="module")
def engine(api_lake: Lake) -> Any:
    with QueryEngine.from_settings(api_lake.settings) as eng:
        yield eng


def test_trade_pages_cover_the_table_exactly_once_in_key_order(live_api: LiveApi, api_lake: Lake) -> None:
    pages, cursor = [], None
    with live_api.client(live_api.keys.read) as http:
        while True:
            params = {"symbol": "btcusdt", "limit": 4_000, "format": "arrow"} | ({"cursor": cursor} if cursor else {})
            response = http.get("/v1/trades", params=params)
            assert response.status_code == 200, response.text
            pages.append(pa.ipc.open_stream(response.content).read_all())
            cursor = response.headers.get("K2-Next-Cursor")
            if cursor is None:
                assert "Link" not in response.headers
                break
            assert f"cursor={cursor}" in response.headers["Link"] and 'rel="next"' in response.headers["Link"]
    got = pa.concat_tables(pages)
    assert got.schema == TRADE_ARROW_SCHEMA
    btc = api_lake.trades.filter(pc.equal(api_lake.trades["symbol"], "BTCUSDT"))
    assert [p.num_rows for p in pages] == [4_000] * 4 + [btc.num_rows - 16_000]
    assert got.equals(_sorted(btc).cast(TRADE_ARROW_SCHEMA))


def test_json_trades_carry_exact_decimals_as_strings(live_api: LiveApi, api_lake: Lake) -> None:
    with live_api.client(live_api.keys.read) as http:
        body = http.get("/v1/trades", params={"symbol": "ETHUSDT", "limit": 50}).json()
        arrow = pa.ipc.open_stream(
            http.get("/v1/trades", params={"symbol": "ETHUSDT", "limit": 50}, headers={"Accept": ARROW}).content
        ).read_all()
    assert len(body["data"]) == 50 and body["next_cursor"]
    first, row = body["data"][0], arrow.to_pylist()[0]
    assert isinstance(first["price"], str) and Decimal(first["price"]) == row["price"]
    assert Decimal(first["quantity"]) == row["quantity"]
    assert datetime.fromisoformat(first["timestamp"]) == row["timestamp"]
    assert first["vendor_data"] == dict(row["vendor_data"])
    assert [r["trade_id"] for r in body["data"]] == arrow.column("trade_id").to_pylist()


@pytest.mark.parametrize("fmt", ["json", "csv", "arrow", "parquet"])
def test_every_format_holds_the_same_bars(live_api: LiveApi, engine: QueryEngine, fmt: str) -> None:
    start = datetime(2024, 8, 8, 23, 56, tzinfo=UTC)
    want = engine.ohlcv("BTCUSDT", "1m", start_time=start).table
    with live_api.client(live_api.keys.read) as http:
        response = http.get(
            "/v1/ohlcv", params={"symbol": "BTCUSDT", "interval": "1m", "start": start.isoformat(), "format": fmt}
        )
    assert response.status_code == 200, response.text
    if fmt == "json":
        rows = response.json()["data"]
        assert response.headers["content-type"] == "application/json"
        assert [Decimal(r["vwap"]) for r in rows] == want.column("vwap").to_pylist()
        assert [Decimal(r["volume"]) for r in rows] == want.column("volume").to_pylist()
        assert [datetime.fromisoformat(r["bucket"]) for r in rows] == want.column("bucket").to_pylist()
        return
    if fmt == "csv":
        assert response.headers["content-type"].startswith("text/csv")
        options = pa_csv.ConvertOptions(column_types=want.schema)
        got = pa_csv.read_csv(io.BytesIO(response.content), convert_options=options)
    elif fmt == "arrow":
        assert response.headers["content-type"] == ARROW
        got = pa.ipc.open_stream(response.content).read_all()
    else:
        assert response.headers["content-type"] == "application/vnd.apache.parquet"
        got = pq.read_table(io.BytesIO(response.content))
    assert got.cast(want.schema).equals(want)


def test_accept_header_chooses_the_format_and_refuses_what_it_cannot_make(live_api: LiveApi) -> None:
    with live_api.client(live_api.keys.read) as http:
        csv = http.get("/v1/ohlcv", params={"symbol": "ETHUSDT"}, headers={"Accept": "text/csv;q=0.9, text/html"})
        refused = http.get("/v1/ohlcv", params={"symbol": "ETHUSDT"}, headers={"Accept": "text/html"})
        anything = http.get("/v1/ohlcv", params={"symbol": "ETHUSDT"}, headers={"Accept": "text/html, */*;q=0.1"})
    assert csv.headers["content-type"].startswith("text/csv") and csv.text.startswith('"bucket","open"')
    assert refused.status_code == 406 and refused.json()["error"]["code"] == "not_acceptable"
    assert anything.headers["content-type"] == "application/json"


def test_vwap_and_instruments_match_the_engine(live_api: LiveApi, engine: QueryEngine, api_lake: Lake) -> None:
    with live_api.client(live_api.keys.read) as http:
        vwap = http.get("/v1/vwap", params={"symbol": "ETHUSDT"}).json()
        instruments = http.get("/v1/instruments").json()["data"]
        empty = http.get("/v1/vwap", params={"symbol": "ETHUSDT", "start": "2030-01-01T00:00:00Z"}).json()
    assert Decimal(vwap["vwap"]) == engine.vwap("ETHUSDT") and empty["vwap"] is None
    counts = api_lake.trades["symbol"].value_counts()
    want = set(zip(counts.field(0).to_pylist(), counts.field(1).to_pylist(), strict=True))
    assert {(i["symbol"], i["trades"]) for i in instruments} == want


def test_quality_and_gaps_report_the_events(live_api: LiveApi, api_lake: Lake) -> None:
    with live_api.client(live_api.keys.read) as http:
        report = http.get("/v1/quality").json()["data"]
        btc_day = http.get("/v1/quality", params={"symbol": "BTCUSDT", "day": "2024-08-08"}).json()["data"]
        gaps = http.get("/v1/gaps").json()["data"]
        open_gaps = http.get("/v1/gaps", params={"status": "OPEN"}).json()["data"]
    want = quality_report(api_lake.settings).to_pylist()
    assert [(r["day"], r["symbol"], r["trades"], r["expected"], r["gaps_found"]) for r in report] == [
        (str(w["day"]), w["symbol"], w["trades"], w["expected"], w["gaps_found"]) for w in want
    ]
    assert report == json.loads(json.dumps([{**w, "day": str(w["day"])} for w in want]))
    assert [(r["symbol"], r["day"]) for r in btc_day] == [("BTCUSDT", "2024-08-08")]
    assert sorted((g["event_id"], g["status"]) for g in gaps) == [
        ("gap-btc-1", "RESOLVED"), ("gap-btc-2", "UNRECOVERABLE"), ("gap-eth-1", "OPEN"),
    ]  # fmt: skip
    assert [g["event_id"] for g in open_gaps] == ["gap-eth-1"]
    assert next(g for g in gaps if g["event_id"] == "gap-btc-2")["detail"] == "REST kept failing"


def test_sql_results_stream_in_every_format(live_api: LiveApi) -> None:
    text = "SELECT symbol, count(*) AS n, sum(quantity) AS volume FROM trades WHERE symbol = ? GROUP BY ALL"
    query = {"query": text, "params": ["ETHUSDT"]}
    with live_api.client(live_api.keys.sql) as http:
        body = http.post("/v1/sql", json=query).json()
        arrow = pa.ipc.open_stream(http.post("/v1/sql", json=query, params={"format": "arrow"}).content).read_all()
    assert body["columns"] == [
        {"name": "symbol", "type": "string"}, {"name": "n", "type": "int64"},
        {"name": "volume", "type": "decimal128(38, 12)"},
    ]  # fmt: skip
    assert body["rows"] == [["ETHUSDT", 14_515, str(arrow.column("volume")[0].as_py())]]
    assert body["truncated"] is False and body["row_count"] == 1


def test_errors_are_json_with_codes_and_no_server_paths(live_api: LiveApi, api_lake: Lake) -> None:
    warehouse = str(api_lake.settings.lake.warehouse.resolve())
    table_dir = f"{warehouse}/market_data.db/trades/data/missing.parquet"
    with live_api.client(live_api.keys.admin) as http:
        cases = {
            "bad_interval": http.get("/v1/ohlcv", params={"symbol": "BTCUSDT", "interval": "0m"}),
            "range": http.get("/v1/ohlcv", params={"symbol": "BTCUSDT", "interval": "367d"}),
            "cursor": http.get("/v1/trades", params={"cursor": "bm90LWEtY3Vyc29y"}),
            "validation": http.get("/v1/trades", params={"limit": "many"}),
            "not_found": http.get("/v1/nothing"),
            "method": http.delete("/v1/trades"),
            "missing_file": http.post("/v1/sql", json={"query": f"SELECT * FROM read_parquet('{table_dir}')"}),
            "syntax": http.post("/v1/sql", json={"query": "SELEC 1"}),
        }
    statuses = {name: r.status_code for name, r in cases.items()}
    assert statuses == {
        "bad_interval": 422, "range": 422, "cursor": 400, "validation": 422, "not_found": 404, "method": 405,
        "missing_file": 403, "syntax": 400,
    }  # fmt: skip
    for response in cases.values():
        error = response.json()["error"]
        assert set(error) == {"code", "message"} and error["message"]
        assert warehouse not in response.text and "Traceback" not in response.text, response.text
    assert "<path>" in cases["missing_file"].json()["error"]["message"]


def test_the_instrument_parameter_selects_every_venue_symbol_of_it(
    live_api: LiveApi, engine: QueryEngine, api_lake: Lake
) -> None:
    with live_api.client(live_api.keys.read) as http:
        page = http.get("/v1/trades", params={"instrument": "btc/usdt", "limit": 100_000, "format": "arrow"})
        bars = http.get("/v1/ohlcv", params={"instrument": "BTC/USDT", "interval": "5m"}).json()["data"]
        vwap = http.get("/v1/vwap", params={"instrument": "ETH/USDT"}).json()
        quality_response = http.get("/v1/quality", params={"instrument": "ETH/USDT"})
        assert quality_response.status_code == 200, quality_response.text
        quality = quality_response.json()["data"]
        gaps = http.get("/v1/gaps", params={"instrument": "ETH/USDT"}).json()["data"]
        neither = http.get("/v1/ohlcv")
        both = http.get("/v1/vwap", params={"symbol": "BTCUSDT", "instrument": "BTC/USDT"})
        malformed = http.get("/v1/trades", params={"instrument": "BTCUSDT"})
    trades = pa.ipc.open_stream(page.content).read_all()
    btc = api_lake.trades.filter(pc.equal(api_lake.trades["symbol"], "BTCUSDT"))
    assert sorted(trades.column("message_id").to_pylist()) == sorted(btc.column("message_id").to_pylist())
    assert set(trades.column("instrument").to_pylist()) == {"BTC/USDT"}
    want = engine.ohlcv(instrument="BTC/USDT", interval="5m").to_pylist()
    assert [(b["exchange"], b["bucket"], b["close"], b["trades"]) for b in bars] == [
        ("BINANCE", w["bucket"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"), str(w["close"]), w["trades"]) for w in want
    ]
    assert (vwap["instrument"], vwap["symbol"], Decimal(vwap["vwap"])) == ("ETH/USDT", None, engine.vwap("ETHUSDT"))
    assert {r["symbol"] for r in quality} == {"ETHUSDT"} and [g["event_id"] for g in gaps] == ["gap-eth-1"]
    assert neither.status_code == both.status_code == 400 and malformed.status_code == 422
