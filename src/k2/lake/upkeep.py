"""One maintenance run of one table: retention, compaction, manifest merge, snapshot expiry, orphan sweep.

`k2 maintain` runs it once per table; `k2 run` and `k2 consume` run it every
``lake.maintenance.interval_s`` on a background thread (:mod:`k2.services.maintain`). Each step is
its own Iceberg commit, built against the table's head and retried when another writer committed
first (optimistic concurrency: the writer's commit always lands, the maintenance commit is rebuilt
on top of it, its rows and snapshot properties carried forward). A failing step is counted
(``k2_lake_maintenance_failures_total``), reported, and does not stop the others; the table is
never left changed by half a step.

Order matters: retention first (no point compacting days about to be dropped), then compaction,
then manifest merge and expiry (which also deletes the files the first two replaced, once their
grace has passed), and the orphan sweep last (it only touches files older than its safety age).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.config import LakeSettings
from k2.errors import CommitConflict, K2Error, LakeError
from k2.lake import maintenance
from k2.lake.compaction import CompactionResult, compact, small_file_bytes
from k2.lake.health import TableHealth, table_health
from k2.lake.orphans import OrphanSweep, sweep_orphans
from k2.lake.retention import drop_before, retention_cutoff
from k2.logging import get_logger
from k2.metrics import (
    LAKE_COMPACTED_FILES,
    LAKE_DATA_FILES,
    LAKE_FILE_AVG_BYTES,
    LAKE_LAST_MAINTENANCE,
    LAKE_MAINTENANCE_FAILURES,
    LAKE_MAINTENANCE_SECONDS,
    LAKE_ORPHAN_BYTES,
    LAKE_ORPHANS_DELETED,
    LAKE_PARTITION_MAX_FILES,
    LAKE_PARTITIONS,
    LAKE_SMALL_FILES,
    LAKE_SNAPSHOTS,
)

log = get_logger(__name__)

T = TypeVar("T")


@dataclass
class MaintenanceReport:
    """What one run did to one table."""

    table: str
    before: TableHealth
    after: TableHealth | None = None
    retention_cutoff: datetime | None = None
    retention_snapshot: int | None = None
    compaction: CompactionResult | None = None
    merged_manifests: bool = False
    expired_snapshots: int = 0
    deleted_files: int = 0
    orphans: OrphanSweep | None = None
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    finished_at: float = 0.0  # Unix time

    def as_dict(self) -> dict[str, object]:
        c = self.compaction
        return {
            "table": self.table,
            "before": self.before.as_dict(),
            "after": self.after.as_dict() if self.after else None,
            "retention_cutoff": self.retention_cutoff.isoformat() if self.retention_cutoff else None,
            "retention_snapshot": self.retention_snapshot,
            "compacted_files": c.files_removed if c else 0,
            "compaction_outputs": c.files_added if c else 0,
            "compaction_conflicts": c.conflicts if c else 0,
            "compaction_skipped": c.skipped if c else None,
            "merged_manifests": self.merged_manifests,
            "expired_snapshots": self.expired_snapshots,
            "deleted_files": self.deleted_files,
            "orphans_deleted": len(self.orphans.deleted) if self.orphans else 0,
            "orphan_bytes_deleted": self.orphans.deleted_bytes if self.orphans else 0,
            "orphan_bytes_kept": self.orphans.kept_young_bytes if self.orphans else 0,
            "seconds": round(self.seconds, 3),
            "errors": dict(self.errors),
        }


def _retrying(table: Table, attempts: int, step: Callable[[], T]) -> T:
    """``step`` retried against the reloaded table on :class:`CommitConflict` (jittered backoff)."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except CommitConflict:
            if attempt == attempts:
                raise
            time.sleep(min(1.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))
            table.refresh()
    raise AssertionError("unreachable")  # pragma: no cover


def export_health(health: TableHealth) -> None:
    """Set the ``k2_lake_*`` health gauges of ``health.table``."""
    name = health.table
    LAKE_DATA_FILES.labels(table=name).set(health.data_files)
    LAKE_SMALL_FILES.labels(table=name).set(health.small_files)
    LAKE_PARTITIONS.labels(table=name).set(health.partitions)
    LAKE_PARTITION_MAX_FILES.labels(table=name).set(health.max_partition_files)
    LAKE_FILE_AVG_BYTES.labels(table=name).set(health.avg_file_bytes)
    LAKE_SNAPSHOTS.labels(table=name).set(health.snapshots)


def export_report(report: MaintenanceReport) -> None:
    """Count and record what one run did (``k2_lake_*`` metrics of ``report.table``).

    Separate from :func:`maintain_table` so a run done in a child process (the scheduled maintenance,
    :mod:`k2.services.maintain`) is exported by the process that serves the metrics.
    """
    name = report.table
    for operation, seconds in report.step_seconds.items():
        LAKE_MAINTENANCE_SECONDS.labels(table=name, operation=operation).observe(seconds)
    for operation in report.errors.keys() - {"health"}:  # a missing figure is not a failed step
        LAKE_MAINTENANCE_FAILURES.labels(table=name, operation=operation).inc()
    if report.compaction is not None:
        LAKE_COMPACTED_FILES.labels(table=name).inc(report.compaction.files_removed)
    if report.orphans is not None:
        LAKE_ORPHANS_DELETED.labels(table=name).inc(len(report.orphans.deleted))
        LAKE_ORPHAN_BYTES.labels(table=name).set(report.orphans.kept_young_bytes)
    if report.after is not None:
        export_health(report.after)
    LAKE_LAST_MAINTENANCE.labels(table=name).set(report.finished_at)


def maintain_table(
    catalog: Catalog,
    identifier: tuple[str, str],
    lake: LakeSettings,
    *,
    now: datetime | None = None,
    before_commit: Callable[[], None] | None = None,
    export: bool = True,
) -> MaintenanceReport:
    """One maintenance run of ``identifier`` with ``lake.maintenance``'s policy (module docstring).

    ``before_commit`` runs after compaction has written its files and before it commits (a seam
    for tests and `k2 maintain --pause-before-commit`). ``export``: record the run in this process's
    metrics (:func:`export_report`).
    """
    started = time.perf_counter()
    policy = lake.maintenance
    name = ".".join(identifier)
    try:
        table = catalog.load_table(identifier)
    except Exception as exc:
        raise LakeError(f"cannot load table {name}: {exc}") from exc
    small = small_file_bytes(policy.target_file_bytes)
    report = MaintenanceReport(name, table_health(table, small))
    attempts = policy.commit_attempts

    def step(operation: str, work: Callable[[], None]) -> None:
        began = time.perf_counter()
        try:
            work()
        except K2Error as exc:
            report.errors[operation] = str(exc)
            log.warning("lake.maintenance_step_failed", table=name, operation=operation, error=str(exc))
        except (OSError, ValueError) as exc:  # unreadable metadata files and the like
            report.errors[operation] = f"{type(exc).__name__}: {exc}"
            log.warning("lake.maintenance_step_failed", table=name, operation=operation, error=str(exc))
        finally:
            report.step_seconds[operation] = time.perf_counter() - began

    days = policy.retention_days.get(identifier[1])
    if days is not None:

        def retention() -> None:
            report.retention_cutoff = retention_cutoff(now or datetime.now(UTC), days)
            cutoff = report.retention_cutoff
            report.retention_snapshot = _retrying(table, attempts, lambda: drop_before(table, cutoff))

        step("retention", retention)
    if policy.compact:

        def compaction() -> None:
            report.compaction = compact(
                table,
                policy.target_file_bytes,
                policy.compact_min_files,
                attempts=attempts,
                before_commit=before_commit,
            )

        step("compact", compaction)

    def merge() -> None:
        def once() -> bool:
            table.refresh()
            if maintenance.table_stats(table).manifests <= maintenance.manifest_merge_threshold(table):
                return False
            return maintenance.merge_manifests(table) is not None

        report.merged_manifests = _retrying(table, attempts, once)

    step("merge_manifests", merge)

    def expire() -> None:
        result = _retrying(
            table,
            attempts,
            lambda: maintenance.expire_snapshots(table, keep=lake.keep_snapshots, grace_s=policy.snapshot_grace_s),
        )
        report.expired_snapshots, report.deleted_files = len(result.expired), len(result.deleted_files)

    step("expire_snapshots", expire)
    if policy.remove_orphans:

        def orphans() -> None:
            report.orphans = sweep_orphans(table, policy.orphan_min_age_s)

        step("remove_orphans", orphans)
    try:
        table.refresh()
        report.after = table_health(table, small)
    except Exception as exc:  # the run itself is done; only the figures are missing
        report.errors["health"] = str(exc)
    report.seconds = time.perf_counter() - started
    report.finished_at = time.time()
    if export:
        export_report(report)
    log.info("lake.maintained", **{k: v for k, v in report.as_dict().items() if k not in ("before", "after")})
    return report
