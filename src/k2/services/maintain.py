"""`k2 maintain` and the maintenance scheduled inside `k2 run` / `k2 consume`.

Composition only: open the catalog, run :func:`k2.lake.upkeep.maintain_table` per table. The
scheduled form is a daemon thread with its own catalog connection, off the commit path: it exports
the tables' health at start and after every run, and (``lake.maintenance.schedule``) runs the
maintenance every ``lake.maintenance.interval_s``. Its commits race the process's own writer like
any other process's would (optimistic concurrency, see :mod:`k2.lake.upkeep`).

Each scheduled run happens in a short-lived child process (``spawn``): compaction reads whole
partitions into memory, and an allocator keeps much of what it freed, so in the long-running process
itself every run stepped the resident size up (benchmarks/bench_soak.py). The child returns its
:class:`MaintenanceReport` per table, which this process exports as metrics, and its memory goes back
to the system when it exits. It dies with its parent (``PR_SET_PDEATHSIG``) and is terminated on stop;
a run cut short leaves only orphan files, which a later sweep deletes.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyiceberg.catalog import Catalog

from k2.children import die_with_parent
from k2.config import K2Settings, load_settings
from k2.errors import K2Error
from k2.lake.catalog import open_catalog, table_name
from k2.lake.compaction import small_file_bytes
from k2.lake.health import table_health
from k2.lake.upkeep import MaintenanceReport, export_health, export_report, maintain_table
from k2.logging import LogFormat, configure_logging, get_logger, logging_config
from k2.schema.kinds import RecordKind

log = get_logger(__name__)


def k2_tables(settings: K2Settings) -> list[str]:
    """The tables K2 writes: one per record kind (trades, quotes) and the quality events."""
    lake = settings.lake
    return [table_name(lake, kind) for kind in (RecordKind.TRADES, RecordKind.QUOTES, RecordKind.QUALITY_EVENTS)]


def with_policy(
    settings: K2Settings, tables: Sequence[str] | None, *, retention_days: int | None = None, **policy: Any
) -> K2Settings:
    """``settings`` with the non-None ``lake.maintenance`` fields of ``policy`` replaced (`k2 maintain`
    options); ``retention_days`` applies to ``tables`` (default: K2's tables)."""
    data = settings.model_dump()
    data["lake"]["maintenance"].update({k: v for k, v in policy.items() if v is not None})
    if retention_days is not None:
        data["lake"]["maintenance"]["retention_days"] = {t: retention_days for t in (tables or k2_tables(settings))}
    return load_settings(**data)


def report_rows(reports: Sequence[MaintenanceReport]) -> list[dict[str, Any]]:
    """One display row per table: health before -> after and what the run did."""
    rows = []
    for report in reports:
        done = report.as_dict()
        before, after = report.before, report.after or report.before
        rows.append(
            {
                "table": report.table,
                "files": f"{before.data_files} -> {after.data_files}",
                "small files": f"{before.small_files} -> {after.small_files}",
                "partitions": after.partitions,
                "max files/partition": after.max_partition_files,
                "avg file": f"{round(after.avg_file_bytes):,} B",
                "snapshots": f"{before.snapshots} -> {after.snapshots}",
                "compacted": done["compacted_files"],
                "expired": done["expired_snapshots"],
                "orphans deleted": done["orphans_deleted"],
                "seconds": done["seconds"],
            }
        )
    return rows


def run_maintain(
    settings: K2Settings, tables: Sequence[str] | None = None, *, before_commit: Callable[[], None] | None = None
) -> list[MaintenanceReport]:
    """One maintenance run of each of ``tables`` (default: K2's tables that exist)."""
    lake = settings.lake
    catalog = open_catalog(lake)
    names = list(tables) if tables else [t for t in k2_tables(settings) if catalog.table_exists((lake.namespace, t))]
    return [maintain_table(catalog, (lake.namespace, name), lake, before_commit=before_commit) for name in names]


def pause_until_removed(marker: Path) -> None:
    """Create ``marker`` and wait until someone deletes it (`k2 maintain --pause-before-commit`, hidden).

    Makes "killed between writing the compacted files and committing them" a state a test can reach
    deterministically: it waits for the marker, then kills the process.
    """
    marker.write_text("compaction files written, commit pending\n")
    while marker.exists():
        time.sleep(0.05)


def maintain_in_child(
    settings: K2Settings, tables: Sequence[str], parent: int, log_config: tuple[str, LogFormat], sender: Any
) -> None:
    """A child process's body: maintain each existing table of ``tables``, send ``{table: report or error}``."""
    die_with_parent(parent)
    configure_logging(*log_config)
    lake = settings.lake
    outcome: dict[str, MaintenanceReport | str] = {}
    try:
        catalog = open_catalog(lake)
        for name in tables:
            try:
                if catalog.table_exists((lake.namespace, name)):
                    outcome[name] = maintain_table(catalog, (lake.namespace, name), lake, export=False)
            except Exception as exc:  # reported by the parent; the next interval tries again
                outcome[name] = f"{type(exc).__name__}: {exc}"
    finally:
        sender.send(outcome)
        sender.close()


class ScheduledMaintenance:
    """The background maintenance of a long-running process (see the module docstring)."""

    def __init__(self, settings: K2Settings, tables: Sequence[str]) -> None:
        self._settings = settings
        self._tables = list(tables)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="k2-maintenance", daemon=True)
        self.runs = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop and wait a little; a step cut short leaves only orphans (swept later)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        lake = self._settings.lake
        policy = lake.maintenance
        small = small_file_bytes(policy.target_file_bytes)
        catalog: Catalog | None = None
        first = True
        while first or not self._stop.wait(policy.interval_s):
            try:  # opened here, and again after a failure: the process may be creating it right now
                catalog = catalog or open_catalog(lake)
            except K2Error as exc:
                log.warning("maintenance.catalog_unavailable", error=str(exc))
                first = False
                continue
            if policy.schedule and not first:
                self._maintain_in_child()
            else:  # at start, or when only the health is wanted
                for name in self._tables:
                    try:
                        if catalog.table_exists((lake.namespace, name)):  # not a kind not written yet
                            export_health(table_health(catalog.load_table((lake.namespace, name)), small))
                    except Exception as exc:  # never let the thread die: the next interval tries again
                        log.warning("maintenance.failed", table=name, error=str(exc))
            if self._stop.is_set():
                return
            first = False
            self.runs += 1

    def _maintain_in_child(self) -> None:
        """One run of every table in a child process (module docstring); export what it reports."""
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        args = (self._settings, self._tables, os.getpid(), logging_config(), sender)
        child = context.Process(target=maintain_in_child, args=args, name="k2-maintenance", daemon=True)
        child.start()
        sender.close()
        try:
            while not receiver.poll(0.1):
                if self._stop.is_set():
                    child.terminate()  # cut short: orphans at most, swept by a later run
                    return
            outcome: dict[str, MaintenanceReport | str] = receiver.recv()
        except EOFError:  # it died without an answer (killed, out of memory)
            child.join(10)
            log.warning("maintenance.failed", tables=self._tables, error=f"child process ended: {child.exitcode}")
            return
        finally:
            child.join(10)
            receiver.close()
        for name, result in outcome.items():
            if isinstance(result, str):
                log.warning("maintenance.failed", table=name, error=result)
            else:
                export_report(result)


@contextmanager
def scheduled_maintenance(settings: K2Settings, tables: Sequence[str]) -> Iterator[ScheduledMaintenance]:
    """Run :class:`ScheduledMaintenance` for the duration of the block."""
    scheduler = ScheduledMaintenance(settings, tables)
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.stop()
