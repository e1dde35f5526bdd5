"""Compaction: rewrite a partition's small data files into a few files near a target size.

Every commit of the writer adds a small file per day it touches (86,400 a day at one commit a
second), and every query plans and opens each of them. Compaction, per partition of the current
partition spec:

1. **plan**: the partition's live data files smaller than 3/4 of ``target_file_bytes`` are the
   inputs, once there are at least ``min_files`` of them; in commit order, they are cut into
   ``ceil(input bytes / target)`` consecutive groups of about equal size (so the partition ends
   with that many new files, plus its files that were already big enough);
2. **rewrite**: each group is read with pyiceberg's own reader (schema projection by field id),
   checked to hold exactly the rows its files' metadata counts, sorted by the table's sort order
   and written as one Parquet file (:func:`k2.lake.datafiles.write_data_files`);
3. **commit** one snapshot that removes the inputs and adds the outputs (replace semantics: the
   same rows before and after; Iceberg operation ``overwrite``, since pyiceberg has no ``replace``
   producer, and ``k2.operation = compact`` in the summary), carrying the parent snapshot's custom
   properties (Kafka offsets, ...) forward.

Concurrency is optimistic: a writer that committed meanwhile makes the commit fail; the table is
reloaded, the inputs checked to be still live (a writer only appends, so they are), the carried
properties recomputed against the new head, and the *same* output files committed again. If an
input is gone (another compaction or a retention ran), nothing is committed and the outputs are
deleted. A crash between writing and committing leaves unreferenced outputs: the orphan sweep
(:mod:`k2.lake.orphans`) removes them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile, ManifestContent
from pyiceberg.table import FileScanTask, Table
from pyiceberg.typedef import Record

from k2.errors import CommitConflict, LakeError
from k2.lake.datafiles import sort_keys, write_data_files
from k2.lake.files import delete_paths
from k2.lake.maintenance import carried_properties
from k2.logging import get_logger

log = get_logger(__name__)

OPERATION = "compact"


@dataclass(frozen=True)
class FileGroup:
    """Small files of one partition that become one new file."""

    partition: Record
    files: tuple[DataFile, ...]

    @property
    def bytes(self) -> int:
        return sum(f.file_size_in_bytes for f in self.files)

    @property
    def rows(self) -> int:
        return sum(f.record_count for f in self.files)


@dataclass
class CompactionResult:
    """What one compaction run did (all zero when there was nothing to do)."""

    groups: int = 0
    files_removed: int = 0
    files_added: int = 0
    bytes_removed: int = 0
    bytes_added: int = 0
    rows: int = 0
    snapshot_id: int | None = None
    attempts: int = 0
    conflicts: int = 0
    skipped: str | None = None  # why nothing was committed although groups were planned
    added_paths: list[str] = field(default_factory=list)


def small_file_bytes(target_file_bytes: int) -> int:
    """Files below this size are compaction inputs (Iceberg's own default: 3/4 of the target)."""
    return target_file_bytes * 3 // 4


def _split(files: Sequence[DataFile], parts: int) -> list[list[DataFile]]:
    """``files`` cut into ``parts`` consecutive runs of about equal total size."""
    total = sum(f.file_size_in_bytes for f in files)
    groups: list[list[DataFile]] = [[]]
    done = 0
    for f in files:
        if groups[-1] and len(groups) < parts and done >= total * len(groups) / parts:
            groups.append([])
        groups[-1].append(f)
        done += f.file_size_in_bytes
    return groups


def plan_compaction(table: Table, target_file_bytes: int, min_files: int) -> list[FileGroup]:
    """The groups :func:`compact` would rewrite in the table's current snapshot (see the module docstring)."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    manifests = snapshot.manifests(table.io)
    if any(m.content == ManifestContent.DELETES for m in manifests):
        log.warning("lake.compaction_skipped", table=".".join(table.name()), reason="table has delete files")
        return []
    spec_id = table.metadata.default_spec_id
    threshold = small_file_bytes(target_file_bytes)
    by_partition: dict[Record, list[tuple[int, str, DataFile]]] = {}
    for manifest in manifests:
        if manifest.partition_spec_id != spec_id:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            data = entry.data_file
            if data.file_size_in_bytes < threshold:
                order = (entry.sequence_number or 0, data.file_path, data)
                by_partition.setdefault(data.partition, []).append(order)
    groups: list[FileGroup] = []
    for partition, entries in by_partition.items():
        if len(entries) < min_files:
            continue
        files = [data for _, _, data in sorted(entries, key=lambda e: (e[0], e[1]))]
        parts = math.ceil(sum(f.file_size_in_bytes for f in files) / target_file_bytes)
        groups.extend(FileGroup(partition, tuple(run)) for run in _split(files, parts) if len(run) > 1)
    return groups


def _rewrite(table: Table, group: FileGroup) -> list[DataFile]:
    """Read the group's rows (exactly the rows its metadata counts), sort them, write one file."""
    metadata = table.metadata
    scan = ArrowScan(metadata, table.io, metadata.schema(), AlwaysTrue())
    try:
        rows = scan.to_table([FileScanTask(f) for f in group.files])
    except (OSError, ValueError) as exc:
        raise LakeError(f"cannot read files to compact in {'.'.join(table.name())}: {exc}") from exc
    if rows.num_rows != group.rows:
        raise LakeError(
            f"compaction of {'.'.join(table.name())} read {rows.num_rows} rows from files whose metadata "
            f"counts {group.rows}: nothing rewritten"
        )
    keys = sort_keys(metadata)
    sorted_rows: pa.Table = rows.sort_by(keys) if keys else rows
    return write_data_files(metadata, table.io, sorted_rows, one_file_per_partition=True)


def _live_paths(table: Table) -> set[str]:
    snapshot = table.current_snapshot()
    if snapshot is None:
        return set()
    return {
        entry.data_file.file_path
        for manifest in snapshot.manifests(table.io)
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
    }


class InputsChanged(LakeError):
    """Files the compaction read are no longer live in the table: its output must not be committed."""


def commit_replace(
    table: Table, removed: Sequence[DataFile], added: Sequence[DataFile], *, attempts: int, operation: str
) -> tuple[int, int]:
    """Commit one snapshot removing ``removed`` and adding ``added`` (the same rows), retried on
    conflict against the reloaded head; returns (snapshot id, attempts).

    :class:`InputsChanged` when a removed file is no longer live; :class:`~k2.errors.CommitConflict`
    after ``attempts`` conflicts (nothing landed in either case).
    """
    name = ".".join(table.name())
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            table.refresh()
            live = _live_paths(table)
            gone = [f.file_path for f in removed if f.file_path not in live]
            if gone:
                raise InputsChanged(f"{len(gone)} file(s) of {name} changed underneath the {operation}: {gone[0]}")
        tx = table.transaction()
        try:
            props = carried_properties(table.current_snapshot(), operation)
            with tx.update_snapshot(snapshot_properties=props).overwrite() as producer:
                for data_file in removed:
                    producer.delete_data_file(data_file)
                for data_file in added:
                    producer.append_data_file(data_file)
            tx.commit_transaction()
            return int(producer.snapshot_id), attempt
        except ValidationException as exc:
            raise InputsChanged(f"files of {name} changed underneath the {operation}: {exc}") from exc
        except CommitFailedException as exc:
            log.info("lake.maintenance_conflict", table=name, operation=operation, attempt=attempt, error=str(exc))
            if attempt == attempts:
                raise CommitConflict(f"{operation} of {name} still conflicted after {attempt} attempts") from exc
            time.sleep(min(1.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")  # pragma: no cover


def compact(
    table: Table,
    target_file_bytes: int,
    min_files: int,
    *,
    attempts: int = 10,
    before_commit: Callable[[], None] | None = None,
) -> CompactionResult:
    """Plan, rewrite and commit (see the module docstring). ``table`` is refreshed first and is
    updated in place by the commit. ``before_commit`` runs once after every new file is written and
    before the first commit attempt (a seam for tests and `k2 maintain --pause-before-commit`)."""
    name = ".".join(table.name())
    try:
        table.refresh()
    except Exception as exc:
        raise LakeError(f"cannot reload table {name}: {exc}") from exc
    groups = plan_compaction(table, target_file_bytes, min_files)
    result = CompactionResult(groups=len(groups))
    if not groups:
        return result
    removed: list[DataFile] = []
    added: list[DataFile] = []
    try:
        for group in groups:
            added.extend(_rewrite(table, group))
            removed.extend(group.files)
    except BaseException as exc:
        delete_paths(table.io, [f.file_path for f in added])
        if isinstance(exc, Exception) and not isinstance(exc, LakeError):
            raise LakeError(f"compaction of {name} failed: {exc}") from exc
        raise
    result.added_paths = [f.file_path for f in added]
    if before_commit is not None:
        before_commit()
    try:
        result.snapshot_id, result.attempts = commit_replace(
            table, removed, added, attempts=attempts, operation=OPERATION
        )
    except (InputsChanged, CommitConflict) as exc:  # guaranteed not to have landed
        delete_paths(table.io, [f.file_path for f in added])
        result.skipped = str(exc)
        result.conflicts = attempts if isinstance(exc, CommitConflict) else 0
        log.warning("lake.compaction_not_committed", table=name, reason=str(exc))
        return result
    except Exception as exc:  # catalog or storage error: the outcome is unknown, keep the files
        raise LakeError(f"committing the compaction of {name} failed: {exc}") from exc
    result.conflicts = result.attempts - 1
    result.files_removed, result.files_added = len(removed), len(added)
    result.bytes_removed = sum(f.file_size_in_bytes for f in removed)
    result.bytes_added = sum(f.file_size_in_bytes for f in added)
    result.rows = sum(f.record_count for f in added)
    return result
