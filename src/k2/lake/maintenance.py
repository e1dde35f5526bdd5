"""Table maintenance: snapshot expiry (and the files only expired snapshots referenced), manifest
merging, the summary properties every maintenance snapshot carries forward, and metadata stats.

The writer runs :func:`expire_snapshots` and :func:`merge_manifests` every few commits so the table's
metadata stays bounded: a pyiceberg commit re-reads and re-writes the whole ``metadata.json``, whose
size grows with every retained snapshot, and scan planning reads every manifest. ``k2 maintain``
and the scheduled maintenance (:mod:`k2.lake.upkeep`) call the same functions.

Which snapshots are kept (docs/lake.md, "Retention and readers"):

- **count**: the newest ``keep`` snapshots, and every branch or tag head;
- **time**: the parent of every commit that *removed* data files (compaction, retention, a delete)
  for ``grace_s`` after that commit, because it is the last snapshot that references the removed
  files: a query that planned before the commit keeps reading them for that long.

Only files that no retained snapshot references are deleted. Old ``metadata.json`` versions are
removed by pyiceberg itself (``write.metadata.delete-after-commit.enabled``, verified in the tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import ManifestFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Operation, Snapshot

from k2.errors import CommitConflict, LakeError
from k2.lake.files import delete_paths, local_dir

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
"""Summary key marking a snapshot that K2 maintenance produced (``merge-manifests``, ``compact``, ``retention``)."""


def carried_properties(snapshot: Snapshot | None, operation: str) -> dict[str, str]:
    """The custom summary properties of ``snapshot`` (Kafka offsets, the platform sequence, any
    other writer's state), for a maintenance snapshot committed on top of it, marked ``operation``.

    A maintenance commit changes no rows, so "the newest snapshot's properties" must stay true:
    readers such as the Kafka consumer look at the head first. Always computed against the parent
    the commit is built on (again on every retry), so a carried value can never be stale.
    """
    summary = snapshot.summary if snapshot is not None else None
    props = summary.additional_properties if summary is not None else {}
    carried = {k: v for k, v in props.items() if not is_reserved(k) and k != MAINTENANCE_OPERATION_KEY}
    carried[MAINTENANCE_OPERATION_KEY] = operation
    return carried


def is_reserved(key: str) -> bool:
    """True for summary keys Iceberg writes itself."""
    return key in ICEBERG_SUMMARY_KEYS or key.startswith("partitions.")


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


def table_stats(table: Table) -> TableStats:
    """Snapshot, manifest, data-file and metadata-file counts of ``table`` as loaded."""
    snapshot = table.current_snapshot()
    manifests = len(snapshot.manifests(table.io)) if snapshot else 0
    summary = snapshot.summary if snapshot and snapshot.summary else None
    data_files = int(summary["total-data-files"] or 0) if summary else 0
    records = int(summary["total-records"] or 0) if summary else 0
    on_disk: int | None = None
    meta_dir = local_dir(table.metadata_location)
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


def _is_append(snapshot: Snapshot) -> bool:
    return snapshot.summary is not None and snapshot.summary.operation == Operation.APPEND


def _covered(expired: list[Snapshot], retained_ids: set[int], all_snapshots: list[Snapshot]) -> bool:
    """True when every expired snapshot reaches a retained one through appends only: each of its
    data files is then still live in that retained snapshot, so no data file can become unreferenced
    and only manifest lists and manifests need to be compared (no manifest is read)."""
    children: dict[int, list[Snapshot]] = {}
    for snapshot in all_snapshots:
        if snapshot.parent_snapshot_id is not None:
            children.setdefault(snapshot.parent_snapshot_id, []).append(snapshot)
    for start in expired:
        frontier, seen, reached = [start.snapshot_id], set(), False
        while frontier and not reached:
            current = frontier.pop()
            for child in children.get(current, []):
                if child.snapshot_id in seen or not _is_append(child):
                    continue
                seen.add(child.snapshot_id)
                if child.snapshot_id in retained_ids:
                    reached = True
                    break
                frontier.append(child.snapshot_id)
        if not reached:
            return False
    return True


def _unreferenced_files(table: Table, expired: list[Snapshot], retained: list[Snapshot]) -> list[str]:
    """Files reachable from the expired snapshots and from no retained one."""
    old = _manifests_of(table, expired)
    kept = _manifests_of(table, retained)
    gone = [m for path, m in old.items() if path not in kept]
    files = [s.manifest_list for s in expired]
    files.extend(m.manifest_path for m in gone)
    retained_ids = {s.snapshot_id for s in retained}
    if gone and not _covered(expired, retained_ids, list(table.metadata.snapshots)):
        files.extend(
            sorted(_entry_paths(table, gone, live_only=False) - _entry_paths(table, kept.values(), live_only=True))
        )
    return files


def held_by_grace(snapshots: Iterable[Snapshot], grace_s: float, now_ms: int) -> set[int]:
    """Snapshots kept by the time rule: the parent of every non-append commit of the last ``grace_s``."""
    cutoff = now_ms - int(grace_s * 1000)
    return {
        s.parent_snapshot_id
        for s in snapshots
        if s.parent_snapshot_id is not None and not _is_append(s) and s.timestamp_ms > cutoff
    }


def expire_snapshots(
    table: Table, keep: int, *, grace_s: float = 0.0, now_ms: int | None = None, delete_files: bool = True
) -> ExpireResult:
    """Expire every snapshot that neither rule keeps (see the module docstring), then delete the
    manifest lists, manifests and data files that only expired snapshots referenced.

    ``table`` is refreshed first and updated in place by the commit. A commit conflict (another
    process changed the table meanwhile) is :class:`~k2.errors.CommitConflict`: refresh and retry.
    """
    if keep < 1:
        raise LakeError(f"keep must be at least 1, not {keep}")
    try:
        table.refresh()
    except Exception as exc:
        raise LakeError(f"cannot reload table {table.name()}: {exc}") from exc
    metadata = table.metadata
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    protected = {ref.snapshot_id for ref in metadata.refs.values()}
    newest_first = sorted(metadata.snapshots, key=lambda s: (s.sequence_number or 0, s.timestamp_ms), reverse=True)
    keep_ids = {s.snapshot_id for s in newest_first[:keep]} | protected
    keep_ids |= held_by_grace(metadata.snapshots, grace_s, now_ms)
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
    """Manifest count above which :func:`merge_manifests` runs: the table's
    ``commit.manifest.min-count-to-merge`` (K2's writer appends without merging, see its docstring)."""
    props = table.metadata.properties
    return int(props.get(TableProperties.MANIFEST_MIN_MERGE_COUNT, TableProperties.MANIFEST_MIN_MERGE_COUNT_DEFAULT))


_FORCED_MERGE: Mapping[str, str] = {
    TableProperties.MANIFEST_MERGE_ENABLED: "true",
    TableProperties.MANIFEST_MIN_MERGE_COUNT: "2",
}


def merge_manifests(table: Table) -> int | None:
    """Rewrite the current snapshot's manifests into as few as the target size allows.

    pyiceberg has no rewrite-manifests action, so this commits a merging append of no files, with
    merging forced on through the table's own properties *inside the same transaction* (set, used
    by the append, then restored before the one commit: the table's properties end unchanged). The
    new snapshot carries the previous snapshot's custom properties (e.g. the committed Kafka
    offsets) forward and is marked ``k2.operation = merge-manifests``. Returns the new snapshot id,
    or None when there was nothing to merge.
    """
    snapshot = table.current_snapshot()
    if snapshot is None or len(snapshot.manifests(table.io)) < 2:
        return None
    props = table.metadata.properties
    restore = {k: props[k] for k in _FORCED_MERGE if k in props}
    unset = [k for k in _FORCED_MERGE if k not in props]
    tx = table.transaction()
    tx.set_properties(dict(_FORCED_MERGE))
    producer = tx.update_snapshot(snapshot_properties=carried_properties(snapshot, "merge-manifests")).merge_append()
    producer.commit()
    if restore:
        tx.set_properties(restore)
    if unset:
        tx.remove_properties(*unset)
    try:
        tx.commit_transaction()
    except CommitFailedException as exc:
        raise CommitConflict(f"merging manifests of {table.name()} conflicted: {exc}") from exc
    return int(producer.snapshot_id)
