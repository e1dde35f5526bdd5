"""`k2 serve` on the distributed catalog (PostgreSQL): trades and quotes answered from its tables; and an
``s3://`` warehouse, which the engine cannot read yet, refused at start-up with a clear error."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from k2.config import ApiSettings, K2Settings, LakeSettings
from k2.errors import QueryError
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema.kinds import RecordKind
from k2.services.serve import ApiServer
from tests.integration.api.conftest import Lake
from tests.integration.services.fixtures import PostgresService, S3Service

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


def test_serve_refuses_an_s3_warehouse_clearly(
    api_lake: Lake, postgres: PostgresService, s3: S3Service, tmp_path: Path
) -> None:
    namespace = f"md_{uuid.uuid4().hex[:8]}"
    lake = LakeSettings(
        warehouse=tmp_path / "local",
        warehouse_uri=s3.warehouse_uri(f"wh-{namespace}"),
        catalog_uri=postgres.sqlalchemy_url,
        s3=s3.settings(),
        namespace=namespace,
    )
    _fill(lake, api_lake)
    settings = K2Settings(lake=lake, api=ApiSettings(port=0, auth="open", keys_file=tmp_path / "keys.json"))
    with pytest.raises(QueryError, match=r"only local \(file://\) warehouses can be queried"):
        ApiServer(settings)
