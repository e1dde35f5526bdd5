"""`k2 status`: a live terminal view of any running K2 process, read from its ``/metrics`` endpoint.

The view is built from two scrapes (rates are the counter increase between them divided by the
time between them), so it works against every K2 process that serves metrics (`k2 run`,
`k2 demo --metrics-port`, `k2 ingest`, `k2 consume`) without any other API. Sections: feeds
(connection state, frames/s, reconnects), symbols (newest exchange event time and its age),
normalized records/s and rejections, lake tables (rows/s, commits, commit latency, last commit),
lake health (data files, small files, files per partition, average file size, snapshots, orphan
bytes, last maintenance run: exported by the scheduled maintenance), sequence gaps and quality
events, and every other ``k2_*`` series the process exports (Kafka producer/consumer, backfill,
REST) by name.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from k2.errors import ScrapeError

Labels = tuple[tuple[str, str], ...]

DEFAULT_URL = "http://127.0.0.1:9108/metrics"

# Series shown in their own sections; everything else k2_* goes to "other series".
_KNOWN_PREFIXES = (
    "k2_ws_connected",
    "k2_ws_messages_received_total",
    "k2_ws_reconnects_total",
    "k2_last_event_timestamp_seconds",
    "k2_records_normalized_total",
    "k2_messages_rejected_total",
    "k2_lake_rows_written_total",
    "k2_lake_commit_duration_seconds",
    "k2_lake_last_commit_timestamp_seconds",
    "k2_lake_commit_conflicts_total",
    "k2_lake_data_files",
    "k2_lake_small_data_files",
    "k2_lake_partitions",
    "k2_lake_partition_max_files",
    "k2_lake_data_file_avg_bytes",
    "k2_lake_retained_snapshots",
    "k2_lake_orphan_bytes",
    "k2_lake_last_maintenance_timestamp_seconds",
    "k2_quality_events_total",
    "k2_backfill_gaps_total",
)


@dataclass(frozen=True)
class Scrape:
    """One read of a ``/metrics`` endpoint: sample name -> {labels: value}, and when it was taken."""

    url: str
    at: float
    samples: dict[str, dict[Labels, float]]

    def series(self, name: str) -> dict[Labels, float]:
        return self.samples.get(name, {})

    def total(self, name: str, **match: str) -> float | None:
        """Sum of the series of ``name`` whose labels include ``match``; None when there is none."""
        values = [v for labels, v in self.series(name).items() if _matches(labels, match)]
        return sum(values) if values else None


def parse_exposition(text: str, *, url: str = "", at: float | None = None) -> Scrape:
    """Parse Prometheus text exposition (only ``k2_*`` samples are kept)."""
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("k2_"):
                    samples[sample.name][tuple(sorted(sample.labels.items()))] = float(sample.value)
    except ValueError as exc:
        raise ScrapeError(f"{url or 'metrics'}: not Prometheus text exposition: {exc}") from exc
    return Scrape(url, time.time() if at is None else at, dict(samples))


def scrape(url: str, timeout_s: float = 2.0) -> Scrape:
    """GET ``url`` (a K2 process's /metrics endpoint) and parse it."""
    if not url.startswith(("http://", "https://")):
        raise ScrapeError(f"not an http(s) URL: {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (scheme checked above)
            body = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeError(f"cannot read {url}: {reason}") from exc
    return parse_exposition(body, url=url)


# --- the report -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedStatus:
    venue: str
    connected: bool | None
    frames: float
    frames_per_s: float | None
    reconnects: float


@dataclass(frozen=True)
class SymbolStatus:
    venue: str
    symbol: str
    last_event: datetime
    age_s: float


@dataclass(frozen=True)
class TableStatus:
    table: str
    rows: float
    rows_per_s: float | None
    commits: float
    mean_commit_s: float | None
    last_commit: datetime | None
    conflicts: float


@dataclass(frozen=True)
class HealthStatus:
    """A table's health, as the scheduled maintenance last exported it (see k2.lake.health)."""

    table: str
    data_files: float
    small_files: float | None
    partitions: float | None
    max_partition_files: float | None
    avg_file_bytes: float | None
    snapshots: float | None
    orphan_bytes: float | None
    last_maintenance: datetime | None


@dataclass(frozen=True)
class SeriesStatus:
    name: str
    labels: Labels
    value: float
    per_s: float | None


@dataclass(frozen=True)
class StatusReport:
    url: str
    taken_at: datetime
    feeds: list[FeedStatus] = field(default_factory=list)
    symbols: list[SymbolStatus] = field(default_factory=list)
    records: list[SeriesStatus] = field(default_factory=list)
    rejected: list[SeriesStatus] = field(default_factory=list)
    tables: list[TableStatus] = field(default_factory=list)
    health: list[HealthStatus] = field(default_factory=list)
    quality: list[SeriesStatus] = field(default_factory=list)
    other: list[SeriesStatus] = field(default_factory=list)


def build_report(current: Scrape, previous: Scrape | None = None) -> StatusReport:
    """The status figures from the current scrape; rates need the previous one."""
    now = current.at

    def rate(name: str, labels: Labels) -> float | None:
        if previous is None or current.at <= previous.at:
            return None
        before = previous.series(name).get(labels)
        after = current.series(name)[labels]
        if before is None:
            return None
        increase = after - before if after >= before else after  # a reset restarts the counter at 0
        return increase / (current.at - previous.at)

    def label_sets(name: str) -> Iterable[tuple[dict[str, str], Labels, float]]:
        for labels, value in sorted(current.series(name).items()):
            yield dict(labels), labels, value

    venues = sorted(
        {d["venue"] for n in ("k2_ws_connected", "k2_ws_messages_received_total") for d, _, _ in label_sets(n)}
    )
    feeds = []
    for venue in venues:
        frames_series = {
            k: v for k, v in current.series("k2_ws_messages_received_total").items() if ("venue", venue) in k
        }
        rates = [rate("k2_ws_messages_received_total", k) for k in frames_series]
        connected = current.total("k2_ws_connected", venue=venue)
        feeds.append(
            FeedStatus(
                venue=venue,
                connected=None if connected is None else connected >= 1,
                frames=sum(frames_series.values()),
                frames_per_s=None if not rates or None in rates else sum(r for r in rates if r is not None),
                reconnects=current.total("k2_ws_reconnects_total", venue=venue) or 0.0,
            )
        )
    symbols = [
        SymbolStatus(d["venue"], d["symbol"], datetime.fromtimestamp(value, tz=UTC), max(0.0, now - value))
        for d, _, value in label_sets("k2_last_event_timestamp_seconds")
    ]
    tables = []
    for d, labels, rows in label_sets("k2_lake_rows_written_total"):
        table = d["table"]
        commits = current.total("k2_lake_commit_duration_seconds_count", table=table) or 0.0
        seconds = current.total("k2_lake_commit_duration_seconds_sum", table=table)
        last = current.total("k2_lake_last_commit_timestamp_seconds", table=table)
        tables.append(
            TableStatus(
                table=table,
                rows=rows,
                rows_per_s=rate("k2_lake_rows_written_total", labels),
                commits=commits,
                mean_commit_s=seconds / commits if commits and seconds is not None else None,
                last_commit=datetime.fromtimestamp(last, tz=UTC) if last else None,
                conflicts=current.total("k2_lake_commit_conflicts_total", table=table) or 0.0,
            )
        )

    health = []
    for d, _, files in label_sets("k2_lake_data_files"):
        table = d["table"]
        last = current.total("k2_lake_last_maintenance_timestamp_seconds", table=table)
        health.append(
            HealthStatus(
                table=table,
                data_files=files,
                small_files=current.total("k2_lake_small_data_files", table=table),
                partitions=current.total("k2_lake_partitions", table=table),
                max_partition_files=current.total("k2_lake_partition_max_files", table=table),
                avg_file_bytes=current.total("k2_lake_data_file_avg_bytes", table=table),
                snapshots=current.total("k2_lake_retained_snapshots", table=table),
                orphan_bytes=current.total("k2_lake_orphan_bytes", table=table),
                last_maintenance=datetime.fromtimestamp(last, tz=UTC) if last else None,
            )
        )

    def series(names: Iterable[str]) -> list[SeriesStatus]:
        return [
            SeriesStatus(name, labels, value, rate(name, labels) if name.endswith("_total") else None)
            for name in names
            for _, labels, value in label_sets(name)
        ]

    other_names = sorted(
        n for n in current.samples if not n.startswith(_KNOWN_PREFIXES) and not n.endswith(("_bucket", "_created"))
    )
    return StatusReport(
        url=current.url,
        taken_at=datetime.fromtimestamp(now, tz=UTC),
        feeds=feeds,
        symbols=symbols,
        records=series(["k2_records_normalized_total"]),
        rejected=series(["k2_messages_rejected_total"]),
        tables=tables,
        health=health,
        quality=series(["k2_quality_events_total", "k2_backfill_gaps_total"]),
        other=series(other_names),
    )


# --- rendering --------------------------------------------------------------------------------------
def render(report: StatusReport, error: str | None = None) -> RenderableType:
    """The report as rich tables (what `k2 status` shows, refreshed in place)."""
    title = Text.assemble(("K2 status ", "bold"), (report.url, "cyan"), f"  at {_time(report.taken_at)} UTC")
    parts: list[RenderableType] = [title]
    if error:
        parts.append(Text(f"unreachable: {error} (showing the last figures read)", style="bold red"))

    feeds = _table("Feeds", "venue", "state", "frames", "frames/s", "reconnects")
    for f in report.feeds:
        state = (
            Text("?", style="yellow")
            if f.connected is None
            else (Text("connected", style="green") if f.connected else Text("DOWN", style="bold red"))
        )
        feeds.add_row(f.venue, state, _count(f.frames), _rate(f.frames_per_s), _count(f.reconnects))
    parts.append(feeds)

    symbols = _table("Symbols (newest exchange event)", "venue", "symbol", "last event (UTC)", "age")
    for s in report.symbols:
        symbols.add_row(s.venue, s.symbol, _time(s.last_event), _age(s.age_s))
    parts.append(symbols)

    flow = _table("Records", "metric", "labels", "total", "per s")
    for item in [*report.records, *report.rejected]:
        flow.add_row(item.name.removeprefix("k2_"), _labels(item.labels), _count(item.value), _rate(item.per_s))
    parts.append(flow)

    tables = _table("Lake", "table", "rows", "rows/s", "commits", "mean commit", "last commit (UTC)", "conflicts")
    for t in report.tables:
        tables.add_row(
            t.table,
            _count(t.rows),
            _rate(t.rows_per_s),
            _count(t.commits),
            "-" if t.mean_commit_s is None else f"{t.mean_commit_s * 1000:.1f} ms",
            "-" if t.last_commit is None else _time(t.last_commit),
            _count(t.conflicts),
        )
    parts.append(tables)

    if report.health:
        health = _table(
            "Lake health", "table", "files", "small", "partitions", "max/partition", "avg file", "snapshots",
            "orphans", "last maintenance (UTC)",
        )  # fmt: skip
        for h in report.health:
            health.add_row(
                h.table,
                _count(h.data_files),
                _optional(h.small_files),
                _optional(h.partitions),
                _optional(h.max_partition_files),
                "-" if h.avg_file_bytes is None else _bytes(h.avg_file_bytes),
                _optional(h.snapshots),
                "-" if h.orphan_bytes is None else _bytes(h.orphan_bytes),
                "-" if h.last_maintenance is None else _time(h.last_maintenance),
            )
        parts.append(health)

    quality = _table("Gaps and quality events", "metric", "labels", "total", "per s")
    for item in report.quality:
        quality.add_row(item.name.removeprefix("k2_"), _labels(item.labels), _count(item.value), _rate(item.per_s))
    parts.append(quality)

    if report.other:
        other = _table("Other series (lag, gaps, bus, queries)", "metric", "labels", "value", "per s")
        for item in report.other:
            other.add_row(item.name, _labels(item.labels), _number(item.value), _rate(item.per_s))
        parts.append(other)
    return Group(*parts)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < 2 else "right")
    return table


def _labels(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _optional(value: float | None) -> str:
    return "-" if value is None else _count(value)


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _number(value: float) -> str:
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.3f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:,.0f} d"


def _matches(labels: Labels, match: dict[str, str]) -> bool:
    return all((k, v) in labels for k, v in match.items())


# --- the command ------------------------------------------------------------------------------------
def watch(url: str, *, interval_s: float, console: Console, updates: int | None = None) -> StatusReport:
    """Scrape ``url`` every ``interval_s`` and redraw the view in place.

    ``updates=None`` runs until interrupted (Ctrl-C); otherwise stop after that many redraws (each
    one after a fresh scrape, so rates are shown from the first). A failed first scrape raises
    :class:`ScrapeError`; later failures are shown in the view and retried.
    """
    previous = scrape(url)
    report = build_report(previous)
    shown = 0
    with Live(render(report), console=console, auto_refresh=False, transient=False) as live:
        try:
            while updates is None or shown < updates:
                time.sleep(interval_s)
                try:
                    current = scrape(url)
                except ScrapeError as exc:
                    live.update(render(report, error=str(exc)), refresh=True)
                else:
                    report = build_report(current, previous)
                    previous = current
                    live.update(render(report), refresh=True)
                shown += 1
        except KeyboardInterrupt:
            pass
    return report
