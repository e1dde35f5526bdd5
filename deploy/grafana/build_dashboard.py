"""Builds deploy/grafana/dashboards/k2-pipeline-overview.json (the provisioned Grafana dashboard).

    python deploy/grafana/build_dashboard.py          # rewrite the JSON after editing the panels here

tests/unit/test_deploy.py fails when the JSON differs from what this script builds, and when a query
uses a metric not declared in src/k2/metrics.py. Stdlib only.
"""

# ruff: noqa: E501  (the panel list below is data: one panel per statement, queries kept whole)
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "k2-pipeline-overview.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RI = "$__rate_interval"
STATE = {"0": {"text": "DOWN", "color": "red"}}


class Layout:
    """Panels placed left to right in rows of width 24."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
        self.x = 0
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": len(self.panels) + 1,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        *,
        desc: str,
        kind: str = "timeseries",
        unit: str = "short",
        w: int = 8,
        up_text: str | None = None,
    ) -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + 8
        defaults: dict[str, Any] = {"unit": unit}
        if up_text is not None:
            mapping = {**STATE, "1": {"text": up_text, "color": "green"}}
            defaults["mappings"] = [{"type": "value", "options": mapping}]
        self.panels.append(
            {
                "type": kind,
                "title": title,
                "id": len(self.panels) + 1,
                "datasource": DATASOURCE,
                "description": desc,
                "gridPos": {"h": 8, "w": w, "x": self.x, "y": self.y},
                "targets": [
                    {
                        "refId": chr(65 + i),
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                        "range": True,
                        "instant": False,
                    }
                    for i, (expr, legend) in enumerate(targets)
                ],
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": {},
            }
        )
        self.x += w


def build() -> dict[str, Any]:
    d = Layout()
    d.row("Feeds")
    d.panel("Processes up", [('up{job=~"k2.*"}', "{{job}} {{instance}}")], kind="stat", w=4, up_text="up",
            desc="1 when Prometheus can scrape the process's /metrics endpoint.")  # fmt: skip
    d.panel("Feed connection state", [("max by (venue) (k2_ws_connected)", "{{venue}}")], kind="stat", w=4,
            up_text="connected", desc="1 while the venue's WebSocket is open.")  # fmt: skip
    d.panel("Frames received per venue", [(f"sum by (venue) (rate(k2_ws_messages_received_total[{RI}]))", "{{venue}}")],
            unit="ops", desc="WebSocket frames per second (counted once a second per connection).")  # fmt: skip
    d.panel("Reconnects", [(f"sum by (venue, reason) (increase(k2_ws_reconnects_total[{RI}]))", "{{venue}} {{reason}}")],
            desc="WebSocket reconnections by cause (dropped, error, max_age).")  # fmt: skip
    d.panel("Freshness: age of newest event per symbol",
            [("time() - max by (venue, symbol) (k2_last_event_timestamp_seconds)", "{{venue}} {{symbol}}")], unit="s",
            w=12, desc="Wall clock minus the newest exchange event time seen (replays of old recordings show their age).")  # fmt: skip
    d.panel("Records normalized",
            [(f"sum by (venue, data_type) (rate(k2_records_normalized_total[{RI}]))", "{{venue}} {{data_type}}")],
            unit="ops", w=12, desc="Canonical records per second out of the venue parsers.")  # fmt: skip

    d.row("Lake (Iceberg)")
    d.panel("Rows committed", [(f"sum by (table) (rate(k2_lake_rows_written_total[{RI}]))", "{{table}}")], unit="ops",
            desc="Rows per second committed to Iceberg.")  # fmt: skip
    commit = f"sum by (table, le) (rate(k2_lake_commit_duration_seconds_bucket[{RI}]))"
    d.panel("Commit latency",
            [(f"histogram_quantile(0.5, {commit})", "p50 {{table}}"), (f"histogram_quantile(0.99, {commit})", "p99 {{table}}")],
            unit="s", desc="Wall time of one append commit (write files + commit metadata).")  # fmt: skip
    d.panel("Commits per second", [(f"sum by (table) (rate(k2_lake_commit_duration_seconds_count[{RI}]))", "{{table}}")],
            unit="ops", desc="Successful Iceberg append commits per second.")  # fmt: skip
    d.panel("Time since last commit", [("time() - max by (table) (k2_lake_last_commit_timestamp_seconds)", "{{table}}")],
            unit="s", desc="Seconds since the last successful commit (alert K2CommitsFailing).")  # fmt: skip
    d.panel("Rows per commit (median)",
            [(f"histogram_quantile(0.5, sum by (table, le) (rate(k2_lake_batch_rows_bucket[{RI}])))", "{{table}}")],
            desc="Median batch size per commit.")  # fmt: skip
    d.panel("Maintenance duration (p99)",
            [(f"histogram_quantile(0.99, sum by (operation, le) (rate(k2_lake_maintenance_duration_seconds_bucket[{RI}])))",
              "{{operation}}")], unit="s", desc="Snapshot expiry and manifest merging run by the writer.")  # fmt: skip

    d.row("Quality and errors")
    d.panel("Rejected to quarantine",
            [(f"sum by (venue, reason) (increase(k2_messages_rejected_total[{RI}]))", "{{venue}} {{reason}}")],
            desc="Frames that failed validation, by reason (dead letters of the embedded path).")  # fmt: skip
    d.panel("Commit conflicts",
            [(f"sum by (table) (increase(k2_lake_commit_conflicts_total[{RI}])) or vector(0)", "{{table}}")],
            desc="Commits retried because another writer committed first (0 when none has happened).")  # fmt: skip
    d.panel("Query latency (p99)",
            [(f"histogram_quantile(0.99, sum by (kind, le) (rate(k2_query_duration_seconds_bucket[{RI}])))", "{{kind}}")],
            unit="s", desc="DuckDB query wall time by kind (trades, ohlcv, vwap, sql) in processes that serve queries.")  # fmt: skip

    d.row("Kafka (distributed mode: k2 ingest / k2 consume)")
    d.panel("Produced messages",
            [(f"sum by (topic, result) (rate(k2_producer_messages_total[{RI}]))", "{{topic}} {{result}}")], unit="ops",
            desc="Messages produced to Kafka by delivery result (delivered, failed).")  # fmt: skip
    d.panel("Producer queue", [("sum by (job, instance) (k2_producer_queue_rows)", "{{job}} {{instance}}")],
            desc="Rows (trades) waiting in the producer's local queue, not yet acknowledged by the brokers.")  # fmt: skip
    d.panel("Producer backpressure waits",
            [(f"sum by (topic) (increase(k2_producer_backpressure_waits_total[{RI}]))", "{{topic}}")],
            desc="Times the queue was full and the WebSocket source was paused until it drained.")  # fmt: skip
    d.panel("Consumed messages",
            [(f"sum by (topic, result) (rate(k2_consumer_messages_total[{RI}]))", "{{topic}} {{result}}")], unit="ops",
            desc="Messages consumed from Kafka by outcome (committed to Iceberg, dead_lettered, fenced).")  # fmt: skip
    d.panel("Dead letters",
            [(f"sum by (topic, reason) (increase(k2_consumer_dead_letters_total[{RI}]))", "{{topic}} {{reason}}")],
            desc="Messages sent to the dead-letter topic, by reason (alert K2DeadLettersIncreasing).")  # fmt: skip
    d.panel("Consumer lag", [("max by (topic, partition) (k2_consumer_lag_rows)", "{{topic}}[{{partition}}]")],
            desc="Messages between each partition's high watermark and the consumer's position (alert K2ConsumerLagGrowing).")  # fmt: skip
    d.panel("Iceberg commit failures",
            [(f"sum by (table) (increase(k2_lake_commit_failures_total[{RI}])) or vector(0)", "{{table}}")],
            desc="Commits that failed with an error and are retried (alert K2CommitErrors; 0 when none has happened).")  # fmt: skip

    d.row("Sequence gaps and data quality")
    d.panel("Quality events", [(f"sum by (venue, kind) (increase(k2_quality_events_total[{RI}]))", "{{venue}} {{kind}}")],
            desc="Sequence and data-quality events (gaps, duplicates, out of order, resets, price jumps, timestamps).")  # fmt: skip
    d.panel("Trades affected by quality events",
            [(f"sum by (venue, kind) (increase(k2_quality_affected_trades_total[{RI}]))", "{{venue}} {{kind}}")],
            desc="Trade ids missing, duplicates dropped, anomalies flagged.")  # fmt: skip
    d.panel("Gaps handled by backfill",
            [(f"sum by (venue, outcome) (increase(k2_backfill_gaps_total[{RI}]))", "{{venue}} {{outcome}}")],
            desc="Gaps closed from the venue's REST API (resolved) or not closable (unrecoverable: alert K2UnrecoverableGaps).")  # fmt: skip
    d.panel("Backfilled trades", [(f"sum by (venue) (rate(k2_backfill_trades_total[{RI}]))", "{{venue}}")], unit="ops",
            desc="Trades fetched by backfill and written after deduplication.")  # fmt: skip
    d.panel("REST requests", [(f"sum by (venue, status) (rate(k2_rest_requests_total[{RI}]))", "{{venue}} {{status}}")],
            unit="reqps", desc="Venue REST requests by status class (2xx, 4xx, 429, 5xx, error).")  # fmt: skip
    d.panel("REST rate-limit waiting",
            [(f"sum by (venue) (rate(k2_rest_rate_limit_wait_seconds_total[{RI}]))", "{{venue}}")], unit="percentunit",
            desc="Fraction of time spent waiting for the request-weight limiter or a Retry-After.")  # fmt: skip
    return {
        "uid": "k2-pipeline-overview",
        "title": "K2 pipeline overview",
        "description": "Feeds, rates, freshness, Iceberg commits, Kafka, gaps, quality and errors. Metrics: docs/operations.md.",
        "tags": ["k2"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": d.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    target.write_text(render())
    print(f"wrote {target}")
