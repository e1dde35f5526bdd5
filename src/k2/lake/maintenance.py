"""Table maintenance: expire snapshots (and the files only they referenced), merge manifests, stats.

The writer runs :func:`expire_snapshots` every few commits so the table's metadata stays bounded:
a pyiceberg commit re-reads and re-writes the whole ``metadata.json``, whose size grows with every
retained snapshot, and scan planning reads every manifest. ``k2 maintain`` calls the same functions.

Safety: only files that no *retained* snapshot references are deleted, so a reader holding any of the
newest ``keep`` snapshots still finds every file it needs. Old ``metadata.json`` versions are removed
by pyiceberg itself (``write.metadata.delete-after-commit.enabled``, verified in the tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io import FileIO
from pyiceberg.manifest import ManifestFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Operation, Snapshot

from k2.errors import CommitConflict, LakeError
from k2.logging import get_logger

ICEBERG_SUMMARY_KEYS = frozenset(
    {
        "operation",
        "added-data-files",
        "added-delete-files",
        "added-equality-deletes",
        "added-files-size",
        "added-position-deletes",
        "added-position-delete-files",
        "added-records",
        "deleted-data-files",
        "deleted-records",
        "added-equality-delete-files",
        "removed-delete-files",
        "removed-equality-deletes",
        "removed-equality-delete-files",
        "removed-files-size",
        "removed-position-deletes",
        "removed-position-delete-files",
        "total-equality-deletes",
        "total-position-deletes",
        "total-data-files",
        "total-delete-files",
        "total-records",
        "total-files-size",
        "changed-partition-count",
        "partition-summaries-included",
    }
)
"""Summary keys Iceberg itself writes; caller-supplied snapshot properties may not use them."""

MAINTENANCE_OPERATION_KEY = "k2.operation"
"""Summary key marking a snapshot that K2 maintenance produced (value: ``merge-manifests``)."""


@dataclass(frozen=True)
class ExpireResult:
    expired: tuple[int, ...]
    deleted_files: tuple[str, ...]


@dataclass(frozen=True)
class TableStats:
    """How big a table's metadata is; what the writer keeps bounded."""

    snapshots: int
    manifests: int  # in the current snapshot
    data_files: int  # live, in the current snapshot
    records: int
    metadata_log_entries: int
    metadata_files_on_disk: int | None  # *.metadata.json files (local warehouses only)

    def as_dict(self) -> dict[str, int | None]:
        return {
            "snapshots": self.snapshots,
            "manifests": self.manifests,
            "data_files": self.data_files,
            "records": self.records,
            "metadata_log_entries": self.metadata_log_entries,
            "metadata_files_on_disk": self.metadata_files_on_disk,
        }


def _local_dir(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def table_stats(table: Table) -> TableStats:
    """Snapshot, manifest, data-file and metadata-file counts of ``table`` as loaded."""
    snapshot = table.current_snapshot()
    manifests = len(snapshot.manifests(table.io)) if snapshot else 0
    summary = snapshot.summary if snapshot and snapshot.summary else None
    data_files = int(summary["total-data-files"] or 0) if summary else 0
    records = int(summary["total-records"] or 0) if summary else 0
    on_disk: int | None = None
    meta_dir = _local_dir(table.metadata_location)
    if meta_dir is not None and meta_dir.parent.is_dir():
        on_disk = sum(1 for _ in meta_dir.parent.glob("*.metadata.json"))
    return TableStats(
        snapshots=len(table.metadata.snapshots),
        manifests=manifests,
        data_files=data_files,
        records=records,
        metadata_log_entries=len(table.metadata.metadata_log),
        metadata_files_on_disk=on_disk,
    )


def delete_paths(io: FileIO, paths: Iterable[str]) -> int:
    """Delete files, ignoring ones already gone; returns how many were deleted."""
    deleted = 0
    for path in paths:
        try:
            io.delete(path)
            deleted += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            get_logger(__name__).warning("lake.delete_failed", path=path, error=str(exc))
    return deleted


def drop_unused_manifests(table: Table, written: Iterable[str], snapshot_id: int) -> int:
    """Delete manifests a commit wrote but its snapshot does not list.

    A merging append first writes a manifest for the new files and then merges it into a bigger
    one; pyiceberg 0.12 leaves the first behind, unreferenced by any snapshot.
    """
    snapshot = table.snapshot_by_id(snapshot_id)
    if snapshot is None:
        return 0
    listed = {m.manifest_path for m in snapshot.manifests(table.io)}
    return delete_paths(table.io, [path for path in written if path not in listed])


def _manifests_of(table: Table, snapshots: Iterable[Snapshot]) -> dict[str, ManifestFile]:
    out: dict[str, ManifestFile] = {}
    for snapshot in snapshots:
        for manifest in snapshot.manifests(table.io):
            out[manifest.manifest_path] = manifest
    return out


def _entry_paths(table: Table, manifests: Iterable[ManifestFile], *, live_only: bool) -> set[str]:
    """Data/delete file paths in ``manifests``; ``live_only`` skips entries marked deleted."""
    paths: set[str] = set()
    for manifest in manifests:
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=live_only):
            paths.add(entry.data_file.file_path)
    return paths


def _only_appends(table: Table, expired: list[Snapshot]) -> bool:
    """True when no data file can have become unreferenced: every snapshot is an append and every
    expired one is an ancestor of the current snapshot (no rollback, no side branch)."""
    if any(s.summary is None or s.summary.operation != Operation.APPEND for s in table.metadata.snapshots):
        return False
    ancestors: set[int] = set()
    snapshot = table.current_snapshot()
    while snapshot is not None:
        ancestors.add(snapshot.snapshot_id)
        parent = snapshot.parent_snapshot_id
        snapshot = table.metadata.snapshot_by_id(parent) if parent is not None else None
    return all(s.snapshot_id in ancestors for s in expired)


def _unreferenced_files(table: Table, expired: list[Snapshot], retained: list[Snapshot]) -> list[str]:
    """Files reachable from the expired snapshots and from no retained one."""
    old = _manifests_of(table, expired)
    kept = _manifests_of(table, retained)
    gone = [m for path, m in old.items() if path not in kept]
    files = [s.manifest_list for s in expired]
    files.extend(m.manifest_path for m in gone)
    if gone and not _only_appends(table, expired):
        files.extend(
            sorted(_entry_paths(table, gone, live_only=False) - _entry_paths(table, kept.values(), live_only=True))
        )
    return files


def expire_snapshots(table: Table, keep: int, *, delete_files: bool = True) -> ExpireResult:
    """Expire all but the newest ``keep`` snapshots (branch and tag heads are always kept), then
    delete the manifest lists, manifests and data files that only expired snapshots referenced.

    ``table`` is refreshed first and updated in place by the commit.
    """
    if keep < 1:
        raise LakeError(f"keep must be at least 1, not {keep}")
    try:
        table.refresh()
    except Exception as exc:
        raise LakeError(f"cannot reload table {table.name()}: {exc}") from exc
    metadata = table.metadata
    protected = {ref.snapshot_id for ref in metadata.refs.values()}
    newest_first = sorted(metadata.snapshots, key=lambda s: (s.sequence_number or 0, s.timestamp_ms), reverse=True)
    keep_ids = {s.snapshot_id for s in newest_first[:keep]} | protected
    expired = [s for s in newest_first if s.snapshot_id not in keep_ids]
    if not expired:
        return ExpireResult((), ())
    retained = [s for s in newest_first if s.snapshot_id in keep_ids]
    to_delete = _unreferenced_files(table, expired, retained) if delete_files else []
    ids = [s.snapshot_id for s in expired]
    try:
        table.maintenance.expire_snapshots().by_ids(ids).commit()
    except CommitFailedException as exc:
        raise CommitConflict(f"expiring snapshots of {table.name()} conflicted: {exc}") from exc
    except ValueError as exc:  # a snapshot already expired by a concurrent maintenance run
        raise CommitConflict(f"expiring snapshots of {table.name()}: {exc}") from exc
    delete_paths(table.io, to_delete)
    return ExpireResult(tuple(ids), tuple(to_delete))


def manifest_merge_threshold(table: Table) -> int:
    """Manifest count above which :func:`merge_manifests` is worth running.

    With ``commit.manifest-merge.enabled`` appends merge by themselves once ``min-count-to-merge``
    manifests pile up, so only a count well above that means something is off.
    """
    props = table.metadata.properties
    min_count = int(
        props.get(TableProperties.MANIFEST_MIN_MERGE_COUNT, TableProperties.MANIFEST_MIN_MERGE_COUNT_DEFAULT)
    )
    merging = props.get(TableProperties.MANIFEST_MERGE_ENABLED, "false").lower() == "true"
    return 2 * min_count if merging else min_count


def merge_manifests(table: Table) -> int | None:
    """Rewrite the current snapshot's manifests into as few as the target size allows.

    pyiceberg 0.12 has no rewrite-manifests action, so this commits an append of no files with
    merging forced on. The new snapshot carries the previous snapshot's custom properties (e.g. the
    committed Kafka offsets) forward and is marked ``k2.operation = merge-manifests``. Returns the
    new snapshot id, or None when there was nothing to merge.
    """
    snapshot = table.current_snapshot()
    if snapshot is None or len(snapshot.manifests(table.io)) < 2:
        return None
    carried = {
        k: v
        for k, v in (snapshot.summary.additional_properties if snapshot.summary else {}).items()
        if k not in ICEBERG_SUMMARY_KEYS and not k.startswith("partitions.") and k != MAINTENANCE_OPERATION_KEY
    }
    carried[MAINTENANCE_OPERATION_KEY] = "merge-manifests"
    tx = table.transaction()
    producer = tx.update_snapshot(snapshot_properties=carried).merge_append()
    producer._merge_enabled = True
    producer._min_count_to_merge = 2
    try:
        producer.commit()
        tx.commit_transaction()
    except CommitFailedException as exc:
        raise CommitConflict(f"merging manifests of {table.name()} conflicted: {exc}") from exc
    drop_unused_manifests(table, producer._written_manifests, producer.snapshot_id)
    return int(producer.snapshot_id)
