"""Iceberg catalog and table creation.

Embedded default: a SQLite SQL catalog and a local warehouse directory (``./k2-data``). The same code
takes a PostgreSQL URL and an S3 warehouse in distributed mode. Tables are created from the canonical
schema (never from incoming data) with the partition spec and sort order chosen in docs/lake.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform

from k2.config import LakeSettings
from k2.errors import LakeError
from k2.schema import to_iceberg
from k2.schema.kinds import RecordKind, spec
from k2.schema.model import RecordSchema

# Table properties K2 sets on every table it creates (see docs/lake.md for the measurements).
TABLE_PROPERTIES: dict[str, str] = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    # Row groups of 128 Ki rows (Iceberg's default is 1 Mi): DuckDB skips the groups outside a query's
    # time range by their statistics and spreads a day's scan evenly over its threads. A one-hour
    # trade query took 13-17 ms instead of 33-49 ms, 1-minute bars of a day 65-102 ms instead of
    # 108-121 ms, for 0.6 % more bytes (benchmarks/results/query.md).
    "write.parquet.row-group-limit": "131072",
    # Merge small manifests on append so scan planning stays flat as commits accumulate.
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
    # Keep the metadata.json history bounded as well.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # K2's TableWriter owns the commit-retry policy (lake.commit_retries, conflict metric, backoff);
    # pyiceberg would otherwise retry silently underneath it.
    "commit.retry.num-retries": "0",
}


# The AWS SDK inside pyarrow sends streaming request checksums by default, which S3-compatible stores
# such as s3proxy reject (XAmzContentSHA256Mismatch); "when_required" works with AWS and with them.
S3_CHECKSUM_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def relax_s3_checksums() -> None:
    """Set :data:`S3_CHECKSUM_ENV` in this process (unless already set); call before S3 clients exist."""
    for key, value in S3_CHECKSUM_ENV.items():
        os.environ.setdefault(key, value)


def open_catalog(lake: LakeSettings, *, create: bool = True, **extra: Any) -> Catalog:
    """Open (creating if needed) the SQL catalog named in the settings.

    Embedded: SQLite + local directory. Distributed: ``lake.catalog_uri`` (e.g. PostgreSQL) and
    ``lake.warehouse_uri`` (``s3://...``) with ``lake.s3`` giving the endpoint and credentials.
    ``create=False`` (read commands) creates nothing, not even the warehouse directory: a missing
    embedded catalog is :class:`~k2.errors.LakeError` naming the warehouse.
    """
    if lake.catalog_uri is None:
        if not create and not (lake.warehouse / "catalog.db").is_file():
            raise LakeError(f"no K2 table in {lake.warehouse}: there is no catalog there (check --warehouse)")
        lake.warehouse.mkdir(parents=True, exist_ok=True)
    if not create:
        extra = {"init_catalog_tables": "false", **extra}
    if lake.warehouse_uri:
        warehouse = lake.warehouse_uri
    else:
        warehouse = str(lake.warehouse) if "://" in str(lake.warehouse) else lake.warehouse.resolve().as_uri()
    props: dict[str, Any] = {}
    if warehouse.startswith(("s3://", "s3a://")):
        props = dict(lake.s3.fileio_properties())
        if lake.s3.endpoint:
            relax_s3_checksums()
    props.update(extra)
    for attempt in range(1, _OPEN_ATTEMPTS + 1):
        try:
            catalog = SqlCatalog(lake.catalog_name, uri=lake.resolved_catalog_uri, warehouse=warehouse, **props)
            if create:
                with contextlib.suppress(NamespaceAlreadyExistsError):
                    catalog.create_namespace(lake.namespace)
            return catalog
        except Exception as exc:  # sqlalchemy / driver errors: translate at the edge
            # Two processes (or threads) opening a new SQLite catalog together race to create its
            # tables ("already exists", "UNIQUE constraint"): the loser finds them on the next try.
            if attempt == _OPEN_ATTEMPTS or not _lost_creation_race(exc):
                raise LakeError(f"cannot open catalog {lake.catalog_name!r}: {exc}") from exc
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


_OPEN_ATTEMPTS = 5


def _lost_creation_race(exc: Exception) -> bool:
    text = str(exc)
    return "already exists" in text or "UNIQUE constraint" in text


def load_existing_table(catalog: Catalog, lake: LakeSettings, name: str) -> Table:
    """A table that must exist already (read commands create nothing): :class:`~k2.errors.LakeError`
    naming the table and the warehouse when it does not."""
    identifier = (lake.namespace, name)
    try:
        return catalog.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError):
        problem = "nothing was written there"
    except Exception as exc:  # e.g. a catalog database without the catalog's own tables
        problem = f"the catalog cannot list it: {type(exc).__name__}"
    where = lake.warehouse_uri or str(lake.warehouse)
    raise LakeError(f"no table {'.'.join(identifier)} in {where}: {problem} (check --warehouse)")


def table_name(lake: LakeSettings, kind: RecordKind | str) -> str:
    """The Iceberg table of ``kind`` in the lake namespace (``lake.<kind>_table`` settings rename them)."""
    names = {
        RecordKind.TRADES: lake.trades_table,
        RecordKind.QUOTES: lake.quotes_table,
        RecordKind.QUALITY_EVENTS: lake.events_table,
    }
    return names[spec(kind).kind]


def table_identifier(lake: LakeSettings, kind: RecordKind | str) -> tuple[str, str]:
    return (lake.namespace, table_name(lake, kind))


def partition_spec(kind: RecordKind | str) -> PartitionSpec:
    """The kind's partition spec: ``day(<time column>)`` (one data file per commit per day touched)."""
    s = spec(kind)
    column, transform, name = s.partition
    if transform != "day":
        raise LakeError(f"unsupported partition transform {transform!r} for {s.name}")
    source = to_iceberg(s.record).find_field(column).field_id
    return PartitionSpec(PartitionField(source_id=source, field_id=1000, transform=DayTransform(), name=name))


def sort_order(kind: RecordKind | str) -> SortOrder:
    """The kind's sort order (e.g. ``symbol, timestamp``: a symbol's rows are contiguous in each file)."""
    s = spec(kind)
    schema = to_iceberg(s.record)
    fields = [SortField(source_id=schema.find_field(c).field_id, transform=IdentityTransform()) for c in s.sort]
    return SortOrder(*fields)


def load_or_create_table(catalog: Catalog, lake: LakeSettings, kind: RecordKind | str) -> Table:
    """The table of ``kind``, created from its canonical schema on first use (never from incoming data)."""
    s = spec(kind)
    identifier = table_identifier(lake, s.kind)
    try:
        return relax_to_canonical(catalog.load_table(identifier), s.record)
    except NoSuchTableError:
        pass
    properties = {**TABLE_PROPERTIES, "k2.record": s.record.name, "k2.schema-version": str(s.record.version)}
    try:
        return catalog.create_table(
            identifier,
            schema=to_iceberg(s.record),
            partition_spec=partition_spec(s.kind),
            sort_order=sort_order(s.kind),
            properties=properties,
        )
    except TableAlreadyExistsError:  # another process created it first
        return catalog.load_table(identifier)


def relax_to_canonical(table: Table, record: RecordSchema, attempts: int = 3) -> Table:
    """``table`` with every column the canonical ``record`` declares optional made optional too.

    The one schema change K2 applies to existing tables by itself: a newer canonical version may
    relax a required field (Quote v2's ``bid_size``/``ask_size``), and an Iceberg table created
    with the older version must accept the rows' nulls. Required -> optional is always a safe
    Iceberg evolution; nothing else (new or retyped columns) is done here. Several processes may
    open the table at once: a lost commit reloads and checks again.
    """
    optional = {f.name for f in record.fields if not f.required}
    for attempt in range(attempts):
        required = [f.name for f in table.schema().fields if f.required and f.name in optional]
        if not required:
            return table
        try:
            with table.update_schema() as update:
                for name in required:
                    update.make_column_optional(name)
            with table.transaction() as tx:
                tx.set_properties({"k2.schema-version": str(record.version)})
        except CommitFailedException:
            if attempt + 1 == attempts:
                raise
        table.refresh()
    return table
