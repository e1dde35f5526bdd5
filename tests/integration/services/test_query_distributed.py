"""The query engine and `k2 query` on the distributed lake: a PostgreSQL catalog and an ``s3://`` warehouse on
s3proxy, written by K2's writer, read by DuckDB through pyiceberg's own S3 filesystem (k2.query.files).

Every answer equals the answer over the same rows, committed the same way, in a local warehouse; the SQL
sandbox holds on S3 (no other prefix, bucket or local file); an S3 object that table maintenance removed
under a reader takes the same retry path as a local file.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import fs
from structlog.testing import capture_logs
from typer.testing import CliRunner

from k2.cli import app
from k2.config import K2Settings, LakeSettings, MaintenanceSettings
from k2.emulator.recording import BUNDLED_BINANCE_SESSION, read_recording
from k2.errors import ReadOnlyViolation
from k2.feed.stamp import parse_canonical
from k2.lake import maintenance
from k2.lake.catalog import open_catalog
from k2.lake.compaction import compact
from k2.lake.writer import TableWriter
from k2.query import QueryEngine, files, sql
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from tests.integration.services.fixtures import (
    PostgresService,
    S3Service,
    distributed_lake,
    write_commits,
)
from tests.unit.query import reference as ref

pytestmark = [pytest.mark.integration, pytest.mark.services]


@dataclass(frozen=True)
class Twins:
    """The same rows in a distributed lake (``remote``) and in a local warehouse (``local``)."""

    remote: LakeSettings
    local: LakeSettings
    trades: pa.Table
    quotes: pa.Table


@pytest.fixture(scope="module")
def twins(s3: S3Service, postgres: PostgresService, tmp_path_factory: pytest.TempPathFactory) -> Twins:
    """The bundled real session (trades and bookTicker quotes), each table in two commits by K2's writer."""
    frames = [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(BUNDLED_BINANCE_SESSION)]
    parsed = parse_canonical(
        "binance", frames, symbols=("BTCUSDT", "ETHUSDT"), kinds=(RecordKind.TRADES, RecordKind.QUOTES),
        first_sequence=1, is_sample_data=True,
    )  # fmt: skip
    trades = pa.Table.from_batches([parsed.records[RecordKind.TRADES]])
    quotes = pa.Table.from_batches([parsed.records[RecordKind.QUOTES]])
    root = tmp_path_factory.mktemp("twins")
    namespace = f"q_{uuid.uuid4().hex[:8]}"
    remote = distributed_lake(s3, postgres, root / "remote-local", namespace)
    local = LakeSettings(warehouse=root / "local", namespace=namespace)
    for lake in (remote, local):
        write_commits(lake, RecordKind.TRADES, trades, (20_000,))
        write_commits(lake, RecordKind.QUOTES, quotes, (70_000,))
    return Twins(remote, local, trades, quotes)


def _answers(engine: QueryEngine) -> dict[str, Any]:
    return {
        "btc trades": engine.query_trades("BTCUSDT", limit=5_000).table,
        "all trades": engine.query_trades(limit=100_000).table,
        "btc 1m bars": engine.ohlcv("BTCUSDT", "1m").table,
        "eth 10s bars": engine.ohlcv("ETHUSDT", "10s").table,
        "eth vwap": engine.vwap("ETHUSDT"),
        "eth quotes": engine.query_quotes("ETHUSDT", limit=5_000).table,
        "spread": engine.spread().table,
        "as-of": engine.trades_with_quotes("BTCUSDT", limit=2_000).table,
        "sql": engine.sql(
            "SELECT symbol, count(*) AS n, sum(quantity) AS volume FROM trades GROUP BY ALL ORDER BY symbol"
        ).table,
        "symbols": engine.symbols(),
    }


def test_the_engine_answers_from_s3_exactly_as_from_a_local_warehouse(
    twins: Twins, s3: S3Service, capfd: pytest.CaptureFixture[str]
) -> None:
    with (
        QueryEngine.from_settings(K2Settings(lake=twins.remote)) as remote,
        QueryEngine.from_settings(K2Settings(lake=twins.local)) as local,
    ):
        planned = remote.plan().files
        assert planned and all(f.startswith(f"{twins.remote.warehouse_uri}/{twins.remote.namespace}/") for f in planned)
        got, want = _answers(remote), _answers(local)
        assert remote.stats()["rows"] == twins.trades.num_rows

    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == value, name
    assert got["all trades"].num_rows == twins.trades.num_rows
    assert got["eth quotes"].num_rows == 5_000 and got["as-of"].num_rows == 2_000
    # Exact against an independent computation in Python integers and Fractions.
    btc = ref.rows(twins.trades, "BTCUSDT")
    assert got["btc 1m bars"].to_pylist() == ref.ohlcv(btc, timedelta(minutes=1))
    assert got["eth vwap"] == ref.vwap(ref.rows(twins.trades, "ETHUSDT"))
    out, err = capfd.readouterr()
    assert s3.secret_key not in out + err


def _env(lake: LakeSettings) -> dict[str, str | None]:
    """The lake as `k2`'s environment (None: unset); secrets unwrapped only for the child command."""
    s3 = lake.s3
    return {
        "K2_LAKE__WAREHOUSE": str(lake.warehouse),
        "K2_LAKE__NAMESPACE": lake.namespace,
        "K2_LAKE__WAREHOUSE_URI": lake.warehouse_uri,
        "K2_LAKE__CATALOG_URI": lake.catalog_uri,
        "K2_LAKE__S3__ENDPOINT": s3.endpoint,
        "K2_LAKE__S3__REGION": s3.region,
        "K2_LAKE__S3__ACCESS_KEY_ID": s3.access_key_id.get_secret_value() if s3.access_key_id else None,
        "K2_LAKE__S3__SECRET_ACCESS_KEY": s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
    }


CLI_SQL = "SELECT symbol, count(*) AS n, max(price) AS high FROM trades WHERE symbol = ? GROUP BY ALL"


@pytest.mark.parametrize(
    "command",
    [
        ["trades", "--symbol", "BTCUSDT", "--limit", "300", "--format", "csv"],
        ["ohlcv", "--symbol", "ETHUSDT", "--interval", "1m", "--format", "csv"],
        ["vwap", "--symbol", "BTCUSDT"],
        ["quotes", "--symbol", "BTCUSDT", "--limit", "300", "--format", "csv"],
        ["sql", CLI_SQL, "-p", "ETHUSDT", "--format", "csv"],
    ],
    ids=lambda c: c[0],
)  # fmt: skip
def test_k2_query_reads_the_distributed_lake(twins: Twins, s3: S3Service, command: list[str]) -> None:
    runner = CliRunner()
    remote = runner.invoke(app, ["query", *command], env=_env(twins.remote))
    local = runner.invoke(app, ["query", *command], env=_env(twins.local))
    assert remote.exit_code == 0, remote.output
    assert local.exit_code == 0, local.output
    assert remote.output == local.output
    assert len(remote.output.splitlines()) >= (1 if command[0] == "vwap" else 2)  # (a header and) rows
    assert s3.secret_key not in remote.output


def _decoy(s3: S3Service, twins: Twins, key: str) -> str:
    """A copy of one of the table's own Parquet files at ``key`` (bucket/...): something a query could read
    if the sandbox let it, so a refusal is about the location, never about a missing object."""
    store = s3.filesystem()
    with QueryEngine.from_settings(K2Settings(lake=twins.remote)) as engine:
        source = engine.plan().files[0].removeprefix("s3://")
    store.create_dir(key.split("/", 1)[0])  # the bucket (no-op when it exists)
    store.copy_file(source, key)
    return f"s3://{key}"


def test_sql_cannot_read_another_prefix_bucket_or_local_file(twins: Twins, s3: S3Service) -> None:
    warehouse = twins.remote.warehouse_uri or ""
    other_prefix = _decoy(s3, twins, f"{s3.bucket}/elsewhere-{uuid.uuid4().hex[:6]}/x.parquet")
    other_bucket = _decoy(s3, twins, f"k2-other-{uuid.uuid4().hex[:6]}/x.parquet")
    other_namespace = _decoy(s3, twins, f"{warehouse.removeprefix('s3://')}/not_{twins.remote.namespace}/x.parquet")
    local_file = str(next((twins.local.warehouse).rglob("*.parquet")))
    attempts = [
        ("SELECT count(*) FROM read_parquet($f)", {"f": other_prefix}),
        ("SELECT count(*) FROM read_parquet($f)", {"f": other_bucket}),
        ("SELECT count(*) FROM read_parquet($f)", {"f": other_namespace}),
        ("SELECT count(*) FROM read_parquet($f)", {"f": other_prefix.replace("s3://", "s3a://")}),
        ("SELECT count(*) FROM read_parquet($f)", {"f": f"{warehouse}/{twins.remote.namespace}/../x.parquet"}),
        ("SELECT count(*) FROM read_parquet($f)", {"f": local_file}),
        ("SELECT * FROM read_csv('/etc/passwd')", None),
        ("SELECT * FROM glob($g)", {"g": f"s3://{s3.bucket}/**"}),
        (f"SELECT count(*) FROM read_parquet('{other_bucket}')", None),  # the attack spelled inline
    ]
    with QueryEngine.from_settings(K2Settings(lake=twins.remote)) as engine:
        own = engine.plan().files[0]
        # The table's own objects are readable by their URI: the refusals below are about the location.
        assert engine.sql("SELECT count(*) AS n FROM read_parquet($f)", {"f": own}).to_pylist()[0]["n"] > 0
        for query, params in attempts:
            with pytest.raises(ReadOnlyViolation):
                engine.sql(query, params)


def test_the_s3_filesystem_itself_refuses_everything_outside_the_tables(twins: Twins, s3: S3Service) -> None:
    """The second wall, behind DuckDB's allowed_directories: the filesystem DuckDB reads S3 through."""
    other = _decoy(s3, twins, f"{s3.bucket}/elsewhere-{uuid.uuid4().hex[:6]}/x.parquet")
    catalog = open_catalog(twins.remote, create=False)
    try:
        table = catalog.load_table((twins.remote.namespace, twins.remote.trades_table))
    finally:
        catalog.engine.dispose()
    store = files.data_store(table)
    assert store.root == f"{twins.remote.warehouse_uri}/{twins.remote.namespace}/"
    scoped = store.filesystem
    assert isinstance(scoped, files.ScopedS3)
    own = next(iter(t.file.file_path for t in table.scan().plan_files()))
    with scoped.open(own) as handle:
        assert handle.read(4) == b"PAR1"
    outside = [other, other.replace("s3://", "s3a://"), f"{store.root}../x.parquet", f"{store.root}./x", "s3://"]
    for path in outside:
        with pytest.raises(PermissionError):
            scoped.open(path)
        with pytest.raises(PermissionError):
            scoped.info(path)
    with pytest.raises(PermissionError):
        scoped.ls(f"s3://{s3.bucket}/")
    with pytest.raises(PermissionError):
        scoped.open(own, "wb")
    with pytest.raises(PermissionError):
        scoped.rm(own)
    assert s3.filesystem().get_file_info(own.removeprefix("s3://")).type == fs.FileType.File


COMMITS, ROWS = 20, 500


def _fragmented(
    s3: S3Service, postgres: PostgresService, tmp_path: Path, trades: pa.Table
) -> tuple[LakeSettings, TableWriter, Any]:
    """A trades table on S3 with one small file per commit, and the writer that made it."""
    lake = distributed_lake(
        s3, postgres, tmp_path / "local", f"m_{uuid.uuid4().hex[:8]}",
        keep_snapshots=1, maintenance=MaintenanceSettings(snapshot_grace_s=0, orphan_min_age_s=0),
    )  # fmt: skip
    write_commits(lake, RecordKind.TRADES, trades.slice(0, COMMITS * ROWS), tuple(range(ROWS, COMMITS * ROWS, ROWS)))
    catalog = open_catalog(lake)
    return lake, TableWriter(catalog, (lake.namespace, lake.trades_table), lake), catalog


def _expected(trades: pa.Table) -> list[dict[str, Any]]:
    return ref.ohlcv(ref.rows(trades.slice(0, COMMITS * ROWS), "BTCUSDT"), timedelta(minutes=1))


def _gone(s3: S3Service, uris: tuple[str, ...]) -> bool:
    infos = s3.filesystem().get_file_info([u.removeprefix("s3://") for u in uris])
    return all(info.type == fs.FileType.NotFound for info in infos)


def test_an_s3_object_expired_under_a_reader_is_retried_on_the_current_snapshot(
    twins: Twins, s3: S3Service, postgres: PostgresService, tmp_path: Path
) -> None:
    """Maintenance removed the files of the snapshot the engine holds, planned and cached, before it reads
    them (DuckDB finds no object when it lists the planned files): refreshed, retried, exact."""
    lake, writer, catalog = _fragmented(s3, postgres, tmp_path, twins.trades)
    try:
        with QueryEngine(catalog, lake, refresh_interval_s=None) as engine:
            held = engine.plan("BTCUSDT")  # the plan ohlcv("BTCUSDT") uses, cached
            assert len(held.files) == COMMITS
            compact(writer.table, 10**9, min_files=5)
            maintenance.expire_snapshots(writer.table, keep=1, grace_s=0)
            assert _gone(s3, held.files)

            with capture_logs() as logs:
                assert engine.ohlcv("BTCUSDT", "1m").to_pylist() == _expected(twins.trades)
            assert engine.sql("SELECT count(*) AS n FROM trades").to_pylist() == [{"n": COMMITS * ROWS}]
            assert engine.plan().snapshot_id != held.snapshot_id and len(engine.plan().files) == 1
    finally:
        catalog.engine.dispose()
    missing = [e["error"] for e in logs if e["event"] == "query.file_missing"]
    assert len(missing) == 1 and "No files found" in missing[0]  # DuckDB's own error for a listed object


class _MaintainedOnFirstOpen(files.ScopedS3):
    """The engine's S3 filesystem, but the first time DuckDB opens a data file, table maintenance runs
    just before: the object DuckDB listed moments ago is gone when it opens it (the race forced)."""

    def __init__(self, scoped: files.ScopedS3, root: str, maintain: Callable[[], None]) -> None:
        super().__init__(scoped.fs, root)
        self.maintain: Callable[[], None] | None = maintain

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        maintain, self.maintain = self.maintain, None
        if maintain is not None:
            maintain()
        return super()._open(path, mode, *args, **kwargs)


def test_an_s3_object_removed_between_listing_and_opening_takes_the_same_retry_path(
    twins: Twins, s3: S3Service, postgres: PostgresService, tmp_path: Path
) -> None:
    lake, writer, catalog = _fragmented(s3, postgres, tmp_path, twins.trades)
    try:
        store = files.data_store(writer.table)
        assert isinstance(store.filesystem, files.ScopedS3)

        def maintain() -> None:
            compact(writer.table, 10**9, min_files=5)
            maintenance.expire_snapshots(writer.table, keep=1, grace_s=0)

        racing = _MaintainedOnFirstOpen(store.filesystem, store.root, maintain)
        connection = sql.open_connection(store.root, filesystem=racing)
        with QueryEngine(catalog, lake, refresh_interval_s=None, connection=connection) as engine:
            held = engine.plan("BTCUSDT")
            with capture_logs() as logs:
                assert engine.ohlcv("BTCUSDT", "1m").to_pylist() == _expected(twins.trades)
            assert racing.maintain is None and _gone(s3, held.files)  # the race happened, the answer is exact
            assert engine.plan().snapshot_id != held.snapshot_id
    finally:
        catalog.engine.dispose()
    missing = [e["error"] for e in logs if e["event"] == "query.file_missing"]
    assert len(missing) == 1 and "Path does not exist" in missing[0] and "/data/" in missing[0]  # at open
