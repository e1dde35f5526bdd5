"""The lake in distributed mode: pyiceberg's SQL catalog on PostgreSQL, table data on s3proxy (s3://)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from pyarrow import fs
from pyiceberg.catalog.sql import SqlCatalog

from k2.bus.offsets import table_offsets
from k2.config import LakeSettings, MaintenanceSettings
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.datafiles import write_data_files
from k2.lake.orphans import referenced_files
from k2.lake.upkeep import maintain_table
from k2.lake.writer import TableWriter
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from tests.integration.services.fixtures import PostgresService, S3Service

pytestmark = [pytest.mark.integration, pytest.mark.services]

ROWS = 500


def test_trades_table_on_postgres_catalog_and_s3_warehouse(
    s3: S3Service, postgres: PostgresService, tmp_path: Path
) -> None:
    recording = list(read_recording(BUNDLED_BINANCE_TRADES))[:ROWS]
    frames = [RawFrame(r.frame.encode(), r.recv_us) for r in recording]
    batch = parse_canonical(
        "binance", frames, symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    ).records[RecordKind.TRADES]
    namespace = f"md_{uuid.uuid4().hex[:8]}"
    prefix = f"wh-{namespace}"
    lake = LakeSettings(
        warehouse=tmp_path / "local",
        warehouse_uri=s3.warehouse_uri(prefix),
        catalog_uri=postgres.sqlalchemy_url,
        s3=s3.settings(),
        namespace=namespace,
    )

    assert s3.secret_key not in repr(lake)
    assert s3.secret_key not in repr(s3)
    assert lake.s3.fileio_properties() == {
        "s3.endpoint": s3.endpoint,
        "s3.region": "us-east-1",
        "s3.force-virtual-addressing": "false",
        "s3.access-key-id": s3.access_key,
        "s3.secret-access-key": s3.secret_key,
    }

    writer_catalog = open_catalog(lake)
    load_or_create_table(writer_catalog, lake, RecordKind.TRADES).append(pa.Table.from_batches([batch]))
    writer_catalog.engine.dispose()

    # A fresh catalog connection sees the committed rows, with exact decimals.
    reader_catalog = open_catalog(lake)
    reread = load_or_create_table(reader_catalog, lake, RecordKind.TRADES).scan().to_arrow()
    reader_catalog.engine.dispose()
    assert reread.num_rows == ROWS
    got = {
        (row["symbol"], row["trade_id"]): (row["price"], row["quantity"])
        for row in reread.select(["symbol", "trade_id", "price", "quantity"]).to_pylist()
    }
    expected = {}
    for rec in recording:
        data = json.loads(rec.frame)["data"]
        expected[(data["s"], str(data["t"]))] = (Decimal(data["p"]), Decimal(data["q"]))
    assert got == expected
    assert all(isinstance(p, Decimal) and isinstance(q, Decimal) for p, q in got.values())

    # The metadata and data files are objects in the bucket, the table row is in PostgreSQL.
    files = s3.filesystem().get_file_info(fs.FileSelector(f"{s3.bucket}/{prefix}", recursive=True))
    names = [f.path for f in files if f.type == fs.FileType.File]
    assert any(n.endswith(".parquet") and "/data/" in n for n in names)
    assert any(n.endswith(".metadata.json") for n in names)
    conninfo = psycopg.conninfo.make_conninfo(
        host=postgres.host, port=postgres.port, user=postgres.user, password=postgres.password, dbname=postgres.database
    )
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT table_name, metadata_location FROM iceberg_tables WHERE table_namespace = %s", (namespace,)
        ).fetchall()
    assert len(rows) == 1
    assert rows[0][0] == "trades"
    assert rows[0][1].startswith(f"s3://{s3.bucket}/{prefix}/{namespace}/trades/metadata/")


def test_maintenance_on_postgres_catalog_and_s3_warehouse(
    s3: S3Service, postgres: PostgresService, tmp_path: Path
) -> None:
    """Compaction, expiry and the orphan sweep work the same on S3: the sweep lists the bucket through
    the table's FileIO and leaves exactly the objects the metadata references."""
    frames = [RawFrame(r.frame.encode(), r.recv_us) for r in read_recording(BUNDLED_BINANCE_TRADES)]
    batch = parse_canonical(
        "binance", frames[:3000], symbols=("BTCUSDT", "ETHUSDT"), first_sequence=1, is_sample_data=True
    ).records[RecordKind.TRADES]
    namespace = f"mt_{uuid.uuid4().hex[:8]}"
    prefix = f"wh-{namespace}"
    lake = LakeSettings(
        warehouse=tmp_path / "local",
        warehouse_uri=s3.warehouse_uri(prefix),
        catalog_uri=postgres.sqlalchemy_url,
        s3=s3.settings(),
        namespace=namespace,
        keep_snapshots=1,
        maintenance=MaintenanceSettings(snapshot_grace_s=0, orphan_min_age_s=0),
    )
    catalog = open_catalog(lake)
    assert isinstance(catalog, SqlCatalog)
    try:
        load_or_create_table(catalog, lake, RecordKind.TRADES)
        writer = TableWriter(catalog, (namespace, "trades"), lake)
        for i in range(6):
            writer.append(batch.slice(i * 500, 500), snapshot_properties={"k2.kafka-offsets.g": f'{{"t":{{"0":{i}}}}}'})
        table = writer.table
        stray = write_data_files(table.metadata, table.io, pa.Table.from_batches([batch.slice(0, 10)]))

        report = maintain_table(catalog, (namespace, "trades"), lake)

        assert report.errors == {}
        assert report.compaction is not None and report.compaction.files_removed == 6
        assert report.orphans is not None and report.orphans.deleted == [f.file_path for f in stray]
        table.refresh()
        assert table.scan().to_arrow().num_rows == 3000
        assert table_offsets(table, "g") == {("t", 0): 5}
        listed = s3.filesystem().get_file_info(fs.FileSelector(f"{s3.bucket}/{prefix}", recursive=True))
        objects = {f"s3://{f.path}" for f in listed if f.type == fs.FileType.File}
        markers = {path.rsplit("/", 1)[0] for path in objects}  # s3proxy lists directory markers as objects
        files = objects - markers
        assert files <= referenced_files(table)  # (which also names the compacted files expiry deleted)
        assert {t.file.file_path for t in table.scan().plan_files()} | {table.metadata_location} <= files
        assert not {f.file_path for f in stray} & files
    finally:
        catalog.engine.dispose()
