"""Iceberg catalog and table creation.

Embedded default: a SQLite SQL catalog and a local warehouse directory (``./k2-data``). The same code
takes a PostgreSQL URL and an S3 warehouse in distributed mode. Tables are created from the canonical
schema (never from incoming data) with the partition spec and sort order chosen in docs/lake.md, and
evolved to the current schema version by writers on start (:func:`evolve_table`; docs/lake.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
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
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform

from k2.config import LakeSettings
from k2.errors import LakeError
from k2.logging import get_logger
from k2.schema import to_iceberg
from k2.schema.evolution import SchemaHistoryError, missing_fields, relaxed_fields
from k2.schema.kinds import KindSpec, RecordKind, spec

log = get_logger(__name__)

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


def create_table(
    catalog: Catalog,
    identifier: tuple[str, str],
    kind: RecordKind | str,
    *,
    partition: PartitionSpec | None = None,
    properties: Mapping[str, str] | None = None,
) -> Table:
    """Create ``kind``'s table at ``identifier`` from the kind's *first* schema version and evolve it to the
    current one in the same commit (one metadata file): the steps an old table takes in
    :func:`evolve_table`, so both end with the declared field ids (:mod:`k2.schema.evolution`).
    ``partition`` overrides the kind's spec (tests and benchmarks compare layouts);
    TableAlreadyExistsError when it exists."""
    s = spec(kind)
    first = s.history[0]
    tx = catalog.create_table_transaction(
        identifier,
        schema=to_iceberg(first),
        partition_spec=partition if partition is not None else partition_spec(s.kind),
        sort_order=sort_order(s.kind),
        properties={
            **TABLE_PROPERTIES, "k2.record": first.name, "k2.schema-version": str(first.version), **(properties or {}),
        },
    )  # fmt: skip
    _add_missing(tx, s, {f.name: f.required for f in first.fields}, ".".join(identifier))
    try:
        tx.commit_transaction()  # answers the staged table, which cannot be scanned: load the committed one
    except CommitFailedException as exc:  # its one requirement failed: another process created the table first
        raise TableAlreadyExistsError(f"{'.'.join(identifier)} was created meanwhile") from exc
    return _checked(catalog.load_table(identifier), s)


def evolve_table(table: Table, kind: RecordKind | str, *, attempts: int = 5) -> Table:
    """``table`` with the kind's later schema versions' steps (columns added, optional, in order; required
    columns relaxed to optional), then checked:
    every field id must be the declared one (:class:`~k2.errors.LakeError` otherwise). Another process
    evolving it at the same time makes the commit fail; it is reloaded and looked at again."""
    s = spec(kind)
    for attempt in range(1, attempts + 1):
        tx = table.transaction()
        changed = _add_missing(tx, s, {f.name: f.required for f in table.schema().fields}, ".".join(table.name()))
        if not changed:
            break
        try:
            table = tx.commit_transaction()
        except CommitFailedException:  # another process evolved (or wrote) it meanwhile: look again
            if attempt == attempts:
                raise
            table = table.refresh()
            continue
        log.info("lake.table_evolved", table=".".join(table.name()), changed=changed)
        break
    return _checked(table, s)


def _add_missing(tx: Transaction, s: KindSpec, present: Mapping[str, bool], name: str) -> list[str]:
    """Stage the kind's schema steps a table with the columns ``present`` (name -> required) lacks: the
    columns later versions add (in version order), the columns they relax to optional, and the schema
    version. The names changed; none when the table is current."""
    try:
        missing = missing_fields(s.history, present)
        relaxed = relaxed_fields(s.history, [n for n, required in present.items() if required])
    except SchemaHistoryError as exc:
        raise LakeError(f"table {name}: {exc}") from exc
    if missing or relaxed:
        declared = to_iceberg(s.record)
        with tx.update_schema() as update:
            for f in relaxed:
                update.update_column(f.name, required=False, doc=f.doc)
            for f in missing:
                update.add_column(f.name, declared.find_field(f.id).field_type, doc=f.doc, required=False)
        tx.set_properties({"k2.schema-version": str(s.record.version)})
    return [f.name for f in (*relaxed, *missing)]


def _checked(table: Table, s: KindSpec) -> Table:
    declared = to_iceberg(s.record)
    if not _same_fields(table.schema(), declared):
        raise LakeError(
            f"table {'.'.join(table.name())} has field ids {_ids(table.schema())}, K2 declares {_ids(declared)} "
            f"for {s.record.name} v{s.record.version}: it was not created or evolved by K2"
        )
    return table


def _ids(schema: Schema) -> dict[str, int]:
    return {f.name: f.field_id for f in schema.fields}


def _same_fields(table: Schema, declared: Schema) -> bool:
    """Same columns with the same ids, types and nullability (docs may differ: a table evolved by an older K2)."""
    if len(table.fields) != len(declared.fields):
        return False
    return all(
        (a.field_id, a.name, a.field_type, a.required) == (b.field_id, b.name, b.field_type, b.required)
        for a, b in zip(table.fields, declared.fields, strict=True)
    )


def load_or_create_table(catalog: Catalog, lake: LakeSettings, kind: RecordKind | str, *, evolve: bool = True) -> Table:
    """The table of ``kind``, created from its canonical schema on first use (never from incoming data).

    ``evolve``: bring an existing table to the current schema version (writers do, on start: docs/lake.md,
    "Schema evolution"); readers pass False and read older tables as they are.
    """
    s = spec(kind)
    identifier = table_identifier(lake, s.kind)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        pass
    else:
        return evolve_table(table, s.kind) if evolve else table
    try:
        return create_table(catalog, identifier, s.kind)
    except TableAlreadyExistsError:  # another process created it first
        table = catalog.load_table(identifier)
        return evolve_table(table, s.kind) if evolve else table
