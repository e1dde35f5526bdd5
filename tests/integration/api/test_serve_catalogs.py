"""`k2 serve` on the distributed catalog (PostgreSQL): trades and quotes answered from its tables; and on the
whole distributed lake (PostgreSQL catalog, ``s3://`` warehouse on s3proxy), answering as a local warehouse does."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from k2.config import ApiSettings, K2Settings, LakeSettings
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema.kinds import RecordKind
from k2.services.serve import ApiServer
from tests.integration.api.conftest import QUOTE_SPLIT, SPLIT, Lake, api_settings
from tests.integration.services.fixtures import PostgresService, S3Service, distributed_lake, write_commits

pytestmark = [pytest.mark.integration, pytest.mark.services]


def _fill(lake: LakeSettings, source: Lake) -> None:
    catalog = open_catalog(lake)
    load_or_create_table(catalog, lake, RecordKind.TRADES).append(source.trades.slice(0, 1_000))
    load_or_create_table(catalog, lake, RecordKind.QUOTES).append(source.quotes.slice(0, 3_000))
    catalog.engine.dispose()


def test_serve_reads_the_postgres_catalog(api_lake: Lake, postgres: PostgresService, tmp_path: Path) -> None:
    lake = LakeSettings(
        warehouse=tmp_path / "warehouse", catalog_uri=postgres.sqlalchemy_url, namespace=f"md_{uuid.uuid4().hex[:8]}"
    )
    _fill(lake, api_lake)
    settings = K2Settings(lake=lake, api=ApiSettings(port=0, auth="open", keys_file=tmp_path / "keys.json"))
    with ApiServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        ready = http.get("/readyz").json()
        trades = pa.ipc.open_stream(http.get("/v1/trades", params={"format": "arrow", "limit": 5_000}).content)
        quotes = http.get("/v1/quotes", params={"limit": 5_000}).json()["data"]
        spread = http.get("/v1/spread").json()["data"]
    assert ready["status"] == "ready" and ready["table"] == f"{lake.namespace}.trades"
    assert sorted(trades.read_all().column("trade_id").to_pylist()) == sorted(
        api_lake.trades.slice(0, 1_000).column("trade_id").to_pylist()
    )
    assert len(quotes) == 3_000 and sum(s["quotes"] for s in spread) == 3_000


def _pages(http: httpx.Client, path: str, params: dict[str, Any]) -> list[Any]:
    """Every page of a paginated route (JSON), following the cursors."""
    pages, cursor = [], None
    while True:
        response = http.get(path, params=params | ({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        pages.append(response.json()["data"])
        cursor = response.headers.get("K2-Next-Cursor")
        if cursor is None:
            return pages


def test_serve_reads_an_s3_warehouse_as_it_reads_a_local_one(
    api_lake: Lake, postgres: PostgresService, s3: S3Service, tmp_path: Path, start_api: Callable[[K2Settings], str]
) -> None:
    """The distributed lake (PostgreSQL catalog, tables on s3proxy, written by K2's writer in the same commits
    as the local session lake) answers every request as the local one does; SQL stays inside its tables."""
    lake = distributed_lake(s3, postgres, tmp_path / "local", f"md_{uuid.uuid4().hex[:8]}")
    write_commits(lake, RecordKind.TRADES, api_lake.trades, (SPLIT,))
    write_commits(lake, RecordKind.QUOTES, api_lake.quotes, (QUOTE_SPLIT,))
    remote = K2Settings(lake=lake, api=ApiSettings(port=0, auth="open", keys_file=tmp_path / "keys.json"))
    local_url = start_api(api_settings(api_lake, auth="open"))
    elsewhere = f"s3://{s3.bucket}/elsewhere/x.parquet"
    s3.filesystem().copy_file(next(iter(_data_files(lake))).removeprefix("s3://"), elsewhere.removeprefix("s3://"))
    escapes = [
        f"SELECT count(*) FROM read_parquet('{elsewhere}')",
        f"SELECT count(*) FROM read_parquet('{lake.warehouse_uri}/{lake.namespace}/../x.parquet')",
        f"SELECT * FROM glob('s3://{s3.bucket}/**')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT count(*) FROM read_parquet('{next(api_lake.settings.lake.warehouse.rglob('*.parquet'))}')",
    ]
    sql = (
        "SELECT symbol, count(*) AS n, sum(quantity) AS volume, max(price) AS high FROM trades GROUP BY ALL ORDER BY 1"
    )
    with (
        ApiServer(remote) as server,
        httpx.Client(base_url=server.url, timeout=60) as s3_http,
        httpx.Client(base_url=local_url, timeout=60) as local_http,
    ):
        ready = s3_http.get("/readyz").json()
        trades = _pages(s3_http, "/v1/trades", {"symbol": "BTCUSDT", "limit": 5_000})
        assert trades == _pages(local_http, "/v1/trades", {"symbol": "BTCUSDT", "limit": 5_000})
        for path, params in [
            ("/v1/ohlcv", {"symbol": "BTCUSDT", "interval": "1m"}),
            ("/v1/ohlcv", {"symbol": "ETHUSDT", "interval": "5s", "format": "csv"}),
            ("/v1/vwap", {"symbol": "ETHUSDT"}),
            ("/v1/quotes", {"symbol": "ETHUSDT", "limit": 2_000}),
            ("/v1/trades", {"format": "arrow", "limit": 100_000}),
        ]:
            got, want = s3_http.get(path, params=params), local_http.get(path, params=params)
            assert got.status_code == want.status_code == 200, got.text
            if params.get("format") == "arrow":
                assert pa.ipc.open_stream(got.content).read_all().equals(pa.ipc.open_stream(want.content).read_all())
            else:
                assert got.content == want.content, path
        answer = s3_http.post("/v1/sql", json={"query": sql})
        assert answer.status_code == 200 and answer.json() == local_http.post("/v1/sql", json={"query": sql}).json()
        refused = [s3_http.post("/v1/sql", json={"query": q}) for q in escapes]
    assert ready["status"] == "ready" and ready["table"] == f"{lake.namespace}.trades"
    assert (
        sum(len(page) for page in trades)
        == pa.compute.sum(pa.compute.equal(api_lake.trades.column("symbol"), "BTCUSDT")).as_py()
    )
    assert len(answer.json()["rows"]) == 2
    for query, response in zip(escapes, refused, strict=True):
        assert response.status_code == 403, (query, response.text)
        assert response.json()["error"]["code"] == "read_only"
        assert s3.bucket not in response.text and "/etc" not in response.text  # no path in an answer


def _data_files(lake: LakeSettings) -> list[str]:
    catalog = open_catalog(lake, create=False)
    try:
        table = catalog.load_table((lake.namespace, lake.trades_table))
        return [task.file.file_path for task in table.scan().plan_files()]
    finally:
        catalog.engine.dispose()
