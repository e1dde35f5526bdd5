"""Apache Spark reads K2's tables unchanged, through K2's own catalog: the embedded warehouse (SQLite
catalog, local files) and the distributed stack (PostgreSQL catalog, S3 on s3proxy).

Checked on the bundled real recording (34,419 trades, written by K2's writer in several commits and
then compacted by K2): row counts, exact decimal prices and quantities (Spark ``DecimalType(38,12)``,
never a float), UTC timestamps to the microsecond, the ``vendor_data`` map, and a 1-minute OHLCV
computed by Spark SQL equal to K2's own (:class:`k2.query.QueryEngine`).
"""

from __future__ import annotations

import math
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from k2.config import LakeSettings
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.compaction import compact
from k2.lake.engines import spark_catalog_conf
from k2.lake.writer import TableWriter
from k2.query import QueryEngine
from k2.query.planner import to_us
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from tests.integration.services.fixtures import PostgresService, S3Service

pytestmark = [
    pytest.mark.integration,
    pytest.mark.services,
    # pyspark leaves the local sockets it reads collect() results from to the garbage collector.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

COMMITS = 8
OHLCV_SQL = """
SELECT unix_micros(bucket) AS bucket_us, open, high, low, close, volume, trades FROM (
  SELECT timestamp_micros((unix_micros(timestamp) div 60000000) * 60000000) AS bucket,
         min_by(price, struct(timestamp, source_sequence)) AS open,
         max(price) AS high,
         min(price) AS low,
         max_by(price, struct(timestamp, source_sequence)) AS close,
         sum(quantity) AS volume,
         count(*) AS trades
  FROM {table} WHERE symbol = :symbol GROUP BY 1
) ORDER BY bucket_us
"""


@pytest.fixture(scope="module")
def trades(bundled_frames: list[RawFrame]) -> pa.Table:
    parsed = parse_canonical(
        "binance", bundled_frames, symbols=("BTCUSDT", "ETHUSDT"), first_sequence=1, is_sample_data=True
    )
    return pa.Table.from_batches([parsed.records[RecordKind.TRADES]])


def _write(lake: LakeSettings, trades: pa.Table) -> None:
    """The recording in COMMITS commits by K2's writer, then compacted by K2 (both kinds of files)."""
    catalog = open_catalog(lake)
    assert isinstance(catalog, SqlCatalog)
    load_or_create_table(catalog, lake, RecordKind.TRADES)
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    step = math.ceil(trades.num_rows / COMMITS)
    for i in range(COMMITS):
        writer.append(trades.slice(i * step, step).to_batches())
    result = compact(writer.table, 10**9, min_files=3)
    assert result.files_removed >= 3 and result.snapshot_id is not None
    catalog.engine.dispose()  # the SQL catalog's connection pool (PostgreSQL: open connections)


def _k2_ohlcv(engine: QueryEngine, symbol: str) -> list[dict[str, Any]]:
    return [
        {**{k: bar[k] for k in ("open", "high", "low", "close", "volume", "trades")}, "bucket_us": to_us(bar["bucket"])}
        for bar in engine.ohlcv(symbol, "1m").to_pylist()
    ]


def _assert_spark_reads(spark: Any, lake: LakeSettings, trades: pa.Table, engine: QueryEngine) -> None:
    from pyspark.sql.types import DecimalType, MapType, StringType, TimestampType

    for key, value in spark_catalog_conf(lake).items():
        spark.conf.set(key, value)
    table = f"{lake.catalog_name}.{lake.namespace}.{lake.trades_table}"
    types = {f.name: f.dataType for f in spark.table(table).schema.fields}
    assert types["price"] == types["quantity"] == DecimalType(38, 12)
    assert types["timestamp"] == TimestampType()  # with time zone (UTC instants), not TimestampNTZType
    assert types["vendor_data"] == MapType(StringType(), StringType(), False)

    counts = spark.sql(f"SELECT symbol, count(*) AS n FROM {table} GROUP BY symbol").collect()
    want_counts = trades.group_by("symbol").aggregate([("symbol", "count")]).to_pylist()
    assert {r.symbol: r.n for r in counts} == {r["symbol"]: r["symbol_count"] for r in want_counts}

    rows = spark.sql(
        "SELECT message_id, price, quantity, unix_micros(timestamp) AS ts_us, "
        "date_format(timestamp, \"yyyy-MM-dd'T'HH:mm:ss.SSSSSSxxx\") AS ts_text, vendor_data "
        f"FROM {table}"
    ).collect()
    assert len(rows) == trades.num_rows
    want = {
        r["message_id"]: r
        for r in trades.select(["message_id", "price", "quantity", "timestamp", "vendor_data"]).to_pylist()
    }
    assert {r.message_id for r in rows} == set(want)
    for row in rows:
        expected = want[row.message_id]
        assert type(row.price) is Decimal and type(row.quantity) is Decimal
        assert (row.price, row.quantity) == (expected["price"], expected["quantity"])
        assert row.ts_us == to_us(expected["timestamp"])
        assert row.ts_text == expected["timestamp"].isoformat(timespec="microseconds")  # ...+00:00: UTC
        assert row.vendor_data == dict(expected["vendor_data"])

    for symbol in ("BTCUSDT", "ETHUSDT"):
        bars = [r.asDict() for r in spark.sql(OHLCV_SQL.format(table=table), args={"symbol": symbol}).collect()]
        k2_bars = _k2_ohlcv(engine, symbol)
        assert len(bars) == len(k2_bars) > 5
        assert bars == k2_bars


def test_spark_reads_the_embedded_warehouse(spark: Any, trades: pa.Table, tmp_path: Path) -> None:
    lake = LakeSettings(warehouse=tmp_path / "warehouse", catalog_name="k2_embedded")
    _write(lake, trades)
    with QueryEngine.from_settings(_settings(lake)) as engine:
        _assert_spark_reads(spark, lake, trades, engine)


def test_spark_reads_the_distributed_stack(
    spark: Any, trades: pa.Table, tmp_path: Path, s3: S3Service, postgres: PostgresService
) -> None:
    namespace = f"md_{uuid.uuid4().hex[:8]}"
    lake = LakeSettings(
        warehouse=tmp_path / "local",
        warehouse_uri=s3.warehouse_uri(f"spark-{namespace}"),
        catalog_uri=postgres.sqlalchemy_url,
        s3=s3.settings(),
        namespace=namespace,
        catalog_name="k2_distributed",
    )
    _write(lake, trades)
    # K2's own bars: its engine reads local warehouses, so the same rows written the same way locally.
    local = LakeSettings(warehouse=tmp_path / "embedded-copy")
    _write(local, trades)
    with QueryEngine.from_settings(_settings(local)) as engine:
        _assert_spark_reads(spark, lake, trades, engine)


def _settings(lake: LakeSettings) -> Any:
    from k2.config import K2Settings

    return K2Settings(lake=lake)
