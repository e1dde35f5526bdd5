"""TableWriter: one sorted Iceberg append per batch, retried on conflict, with built-in maintenance.

Each :meth:`TableWriter.append` validates the batch against the table's schema (exact decimals, no
floats), sorts it by the table's sort order (pyiceberg does not apply sort orders on write), writes
the Parquet data files once with K2's per-column encodings (:mod:`k2.lake.datafiles`), and
commits them in one snapshot (a fast append: one new manifest, nothing merged, nothing left behind)
that also carries the caller's ``snapshot_properties`` (e.g. Kafka offsets). When another writer
committed first, the table is reloaded and the *same* data files are committed again on top of the
new head, up to ``lake.commit_retries`` times with jittered backoff; then :class:`~k2.errors.CommitConflict`.

Every ``lake.maintenance_every_commits`` commits the writer runs :meth:`TableWriter.maintain`:
expire snapshots (``lake.keep_snapshots``, and ``lake.maintenance.snapshot_grace_s`` after a
compaction) and delete the files only they referenced, and merge the manifests once more than
``commit.manifest.min-count-to-merge`` piled up, so the cost of a commit stays flat as the table
ages. docs/lake.md has the measurements. Compaction, the orphan sweep and data retention are
heavier and run elsewhere (:mod:`k2.lake.upkeep`).

K2 owns the retry policy: tables are created with ``commit.retry.num-retries = 0`` so pyiceberg
does not retry silently underneath (see ``k2.lake.catalog.TABLE_PROPERTIES``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from k2.config import LakeSettings
from k2.errors import CommitConflict, LakeError
from k2.lake import maintenance
from k2.lake.datafiles import sort_keys, write_data_files
from k2.lake.files import delete_paths
from k2.logging import get_logger
from k2.metrics import (
    LAKE_BATCH_ROWS,
    LAKE_COMMIT_CONFLICTS,
    LAKE_COMMIT_SECONDS,
    LAKE_LAST_COMMIT_TIME,
    LAKE_MAINTENANCE_SECONDS,
    LAKE_ROWS_WRITTEN,
)

# Jittered exponential backoff between commit attempts: base * 2**attempt, capped, times U(0.5, 1.5).
_BACKOFF_BASE_S = 0.02
_BACKOFF_MAX_S = 1.0

ArrowData: TypeAlias = pa.Table | pa.RecordBatch | Sequence[pa.RecordBatch]


@dataclass(frozen=True)
class CommitResult:
    """What one :meth:`TableWriter.append` committed."""

    snapshot_id: int
    rows: int
    duration_s: float
    attempts: int


def _small_type(t: pa.DataType) -> pa.DataType:
    """``t`` with large strings/lists replaced by their 32-bit-offset forms (pyiceberg reads large)."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(_small_field(t.value_field))
    if pa.types.is_map(t):
        return pa.map_(_small_field(t.key_field), _small_field(t.item_field))
    if pa.types.is_struct(t):
        return pa.struct([_small_field(f) for f in t])
    return t


def _small_field(f: pa.Field) -> pa.Field:
    return pa.field(f.name, _small_type(f.type), f.nullable)


def _schema_problems(got: pa.Schema, want: pa.Schema) -> list[str]:
    """Human-readable differences between a batch's schema and the table's (empty when they match)."""
    problems: list[str] = []
    got_fields = {f.name: _small_field(f) for f in got}
    want_fields = {f.name: _small_field(f) for f in want}
    for name, field in want_fields.items():
        other = got_fields.get(name)
        if other is None:
            problems.append(f"missing column {name!r} ({field.type})")
        elif other.type != field.type:
            problems.append(f"column {name!r} is {other.type}, the table has {field.type}")
        elif other.nullable != field.nullable:
            problems.append(f"column {name!r} nullable={other.nullable}, the table has nullable={field.nullable}")
    problems.extend(
        f"unexpected column {name!r} ({got_fields[name].type})" for name in got_fields.keys() - want_fields.keys()
    )
    if not problems and list(got_fields) != list(want_fields):
        problems.append(f"columns in order {list(got_fields)}, the table has {list(want_fields)}")
    return problems


class TableWriter:
    """Appends canonical Arrow batches to one Iceberg table and keeps the table healthy.

    Thread-safe: appends and maintenance from several threads are serialized by a lock. Several
    writers (processes) may append to the same table; conflicts are retried.
    """

    def __init__(self, catalog: Catalog, identifier: tuple[str, str], lake: LakeSettings) -> None:
        self._catalog = catalog
        self._identifier = identifier
        self._lake = lake
        self._name = ".".join(identifier)
        self._log = get_logger(__name__, table=self._name)
        try:
            self._table: Table = catalog.load_table(identifier)
        except NoSuchTableError as exc:
            raise LakeError(f"no Iceberg table {self._name!r}: create it first") from exc
        self._lock = threading.Lock()
        self._commits = 0
        self._rows = 0
        self._conflicts = 0
        self._maintenance_runs = 0
        self._last_commit_at: datetime | None = None
        self._last_commit_s: float | None = None
        self._last_snapshot_id: int | None = None
        self._expected_schema = self._table.schema().as_arrow()
        self._schema_id = self._table.metadata.current_schema_id
        self._sort_keys = sort_keys(self._table.metadata)

    # --- public API ---------------------------------------------------------------------------------
    @property
    def table(self) -> Table:
        """The pyiceberg table as of this writer's last commit or refresh."""
        return self._table

    def refresh(self) -> Table:
        """Reload the table from the catalog (e.g. to read the newest snapshot summary before a commit)."""
        with self._lock:
            self._refresh()
            return self._table

    def append(self, data: ArrowData, snapshot_properties: Mapping[str, str] | None = None) -> CommitResult:
        """Commit ``data`` as one snapshot; ``snapshot_properties`` land in its summary.

        Zero rows and no properties is a no-op (``attempts == 0``). Zero rows *with* properties
        commits an empty snapshot carrying them (so e.g. consumed offsets still advance).
        """
        props = self._check_properties(snapshot_properties)
        arrow = self._to_table(data)
        if arrow.num_rows == 0 and not props:
            snapshot = self._table.current_snapshot()
            return CommitResult(snapshot.snapshot_id if snapshot else 0, 0, 0.0, 0)
        with self._lock:
            started = time.perf_counter()
            if arrow.num_rows:  # one chunk first: taking rows from many chunks costs a third more
                arrow = arrow.combine_chunks().sort_by(self._sort_keys)
            snapshot_id, attempts = self._commit_with_retry(arrow, props)
            duration = time.perf_counter() - started
            self._commits += 1
            self._rows += arrow.num_rows
            self._last_commit_at = datetime.now(UTC)
            self._last_commit_s = duration
            self._last_snapshot_id = snapshot_id
            LAKE_ROWS_WRITTEN.labels(table=self._name).inc(arrow.num_rows)
            LAKE_COMMIT_SECONDS.labels(table=self._name).observe(duration)
            LAKE_BATCH_ROWS.labels(table=self._name).observe(arrow.num_rows)
            LAKE_LAST_COMMIT_TIME.labels(table=self._name).set(self._last_commit_at.timestamp())
            self._log.debug(
                "lake.committed",
                snapshot_id=snapshot_id,
                rows=arrow.num_rows,
                attempts=attempts,
                seconds=duration,
            )
            if self._commits % self._lake.maintenance_every_commits == 0:
                try:
                    self._maintain_locked()
                except LakeError as exc:  # the data is committed: do not let this look like a failed append
                    self._log.warning("lake.maintenance_failed", error=str(exc))
        return CommitResult(snapshot_id, arrow.num_rows, duration, attempts)

    def maintain(self) -> None:
        """Expire snapshots beyond ``lake.keep_snapshots``, delete files only they referenced,
        and merge manifests if they piled up (e.g. a table without manifest merging)."""
        with self._lock:
            self._maintain_locked()

    def get_stats(self) -> dict[str, Any]:
        """Counters since this writer was created (for status pages and logs)."""
        return {
            "table": self._name,
            "commits": self._commits,
            "rows": self._rows,
            "conflicts": self._conflicts,
            "maintenance_runs": self._maintenance_runs,
            "last_commit_at": self._last_commit_at.isoformat() if self._last_commit_at else None,
            "last_commit_seconds": self._last_commit_s,
            "last_snapshot_id": self._last_snapshot_id,
        }

    # --- input --------------------------------------------------------------------------------------
    def _check_properties(self, props: Mapping[str, str] | None) -> dict[str, str]:
        out = dict(props or {})
        for key, value in out.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise LakeError(f"snapshot properties must be str -> str, got {key!r}: {value!r}")
            if maintenance.is_reserved(key):
                raise LakeError(f"snapshot property {key!r} is reserved by Iceberg")
        return out

    def _to_table(self, data: ArrowData) -> pa.Table:
        if isinstance(data, pa.Table):
            self._check_schema(data.schema)
            return data
        batches = [data] if isinstance(data, pa.RecordBatch) else list(data)
        if not batches:
            return self._expected_schema.empty_table()
        for batch in batches:
            if not isinstance(batch, pa.RecordBatch):
                raise LakeError(f"expected pyarrow RecordBatch, got {type(batch).__name__}")
            self._check_schema(batch.schema)
        try:
            return pa.Table.from_batches(batches)
        except pa.ArrowInvalid as exc:  # batches with differing (but each valid) metadata
            raise LakeError(f"cannot concatenate batches for {self._name}: {exc}") from exc

    def _check_schema(self, schema: pa.Schema) -> None:
        problems = _schema_problems(schema, self._expected_schema)
        if problems:
            raise LakeError(f"batch does not match the schema of table {self._name}: " + "; ".join(problems))

    # --- commit -------------------------------------------------------------------------------------
    def _write_files(self, arrow: pa.Table) -> list[DataFile]:
        return write_data_files(self._table.metadata, self._table.io, arrow)

    def _commit_once(self, files: list[DataFile], props: dict[str, str]) -> int:
        tx = self._table.transaction()
        with tx.update_snapshot(snapshot_properties=props).fast_append() as producer:
            for data_file in files:
                producer.append_data_file(data_file)
        tx.commit_transaction()
        return int(producer.snapshot_id)

    def _commit_with_retry(self, arrow: pa.Table, props: dict[str, str]) -> tuple[int, int]:
        files = self._write_files(arrow)
        spec_id = self._table.metadata.default_spec_id
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._commit_once(files, props), attempt
            except CommitFailedException as exc:
                # Guaranteed not to have landed: pyiceberg already removed its manifests.
                self._conflicts += 1
                LAKE_COMMIT_CONFLICTS.labels(table=self._name).inc()
                if attempt > self._lake.commit_retries:
                    delete_paths(self._table.io, [f.file_path for f in files])
                    self._refresh()  # so that the caller's next attempt starts from the new head
                    raise CommitConflict(
                        f"commit to {self._name} still conflicted after {attempt} attempts: {exc}"
                    ) from exc
                delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                self._log.info("lake.commit_conflict", attempt=attempt, retry_in_s=round(delay, 3), error=str(exc))
                time.sleep(delay)
                self._refresh()
                if self._table.metadata.default_spec_id != spec_id:
                    # The partition spec changed underneath: the files must be written again.
                    delete_paths(self._table.io, [f.file_path for f in files])
                    files = self._write_files(arrow)
                    spec_id = self._table.metadata.default_spec_id
            except LakeError:
                raise
            except Exception as exc:  # catalog/IO errors: outcome unknown, so keep the files
                raise LakeError(f"commit to {self._name} failed: {exc}") from exc

    def _refresh(self) -> None:
        try:
            self._table = self._catalog.load_table(self._identifier)
        except Exception as exc:
            raise LakeError(f"cannot reload table {self._name}: {exc}") from exc
        if self._table.metadata.current_schema_id != self._schema_id:
            raise LakeError(f"the schema of {self._name} changed underneath this writer: restart it")

    # --- maintenance --------------------------------------------------------------------------------
    def _maintain_locked(self) -> None:
        started = time.perf_counter()
        for attempt in range(self._lake.commit_retries + 1):
            try:
                self._run_maintenance()
                break
            except CommitConflict:
                self._conflicts += 1
                LAKE_COMMIT_CONFLICTS.labels(table=self._name).inc()
                if attempt == self._lake.commit_retries:
                    raise
                self._refresh()
            except (OSError, ValueError) as exc:  # unreadable metadata files and the like
                raise LakeError(f"maintenance of {self._name} failed: {exc}") from exc
        self._maintenance_runs += 1
        self._log.debug("lake.maintained", seconds=time.perf_counter() - started)

    def _run_maintenance(self) -> None:
        with LAKE_MAINTENANCE_SECONDS.labels(table=self._name, operation="expire_snapshots").time():
            result = maintenance.expire_snapshots(
                self._table, keep=self._lake.keep_snapshots, grace_s=self._lake.maintenance.snapshot_grace_s
            )
        if result.expired:
            self._log.debug(
                "lake.snapshots_expired", expired=len(result.expired), files_deleted=len(result.deleted_files)
            )
        stats = maintenance.table_stats(self._table)
        if stats.manifests > maintenance.manifest_merge_threshold(self._table):
            with LAKE_MAINTENANCE_SECONDS.labels(table=self._name, operation="merge_manifests").time():
                maintenance.merge_manifests(self._table)
