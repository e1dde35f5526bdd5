"""Every Prometheus metric K2 emits, declared once, here, with its labels.

Rules: ``k2_`` prefix, unit suffix (``_total``, ``_seconds``, ``_bytes``, ``_rows``), labels with
small fixed value sets (venue, data_type, reason, table, operation, kind, symbol from the configured
bounded symbol list) and never a per-trade value. Code imports the metric objects from this module;
``tests/unit/test_metrics.py`` fails when code uses a metric or label not declared here, or when a
declared metric is never used.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROW_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000)

# --- sources: WebSocket session and parsers ------------------------------------------------------
WS_CONNECTED = Gauge(
    "k2_ws_connected",
    "1 while the venue's WebSocket connection is open, else 0.",
    ["venue"],
    registry=REGISTRY,
)
WS_RECONNECTS = Counter(
    "k2_ws_reconnects_total",
    "WebSocket reconnections, by cause (dropped, error, max_age).",
    ["venue", "reason"],
    registry=REGISTRY,
)
WS_MESSAGES = Counter(
    "k2_ws_messages_received_total",
    "Frames received from a venue's WebSocket.",
    ["venue"],
    registry=REGISTRY,
)
RECORDS_NORMALIZED = Counter(
    "k2_records_normalized_total",
    "Canonical records produced by the venue parsers.",
    ["venue", "data_type"],
    registry=REGISTRY,
)
MESSAGES_REJECTED = Counter(
    "k2_messages_rejected_total",
    "Frames rejected by validation and written to quarantine, by reason.",
    ["venue", "reason"],
    registry=REGISTRY,
)
LAST_EVENT_TIME = Gauge(
    "k2_last_event_timestamp_seconds",
    "Exchange event time of the newest record seen per configured symbol (Unix seconds).",
    ["venue", "symbol"],
    registry=REGISTRY,
)

# --- lake: Iceberg writer -----------------------------------------------------------------------
LAKE_ROWS_WRITTEN = Counter(
    "k2_lake_rows_written_total",
    "Rows committed to an Iceberg table.",
    ["table"],
    registry=REGISTRY,
)
LAKE_COMMIT_SECONDS = Histogram(
    "k2_lake_commit_duration_seconds",
    "Wall time of one Iceberg append commit (write files + commit metadata).",
    ["table"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
LAKE_BATCH_ROWS = Histogram(
    "k2_lake_batch_rows",
    "Rows per committed batch.",
    ["table"],
    buckets=_ROW_BUCKETS,
    registry=REGISTRY,
)
LAKE_COMMIT_CONFLICTS = Counter(
    "k2_lake_commit_conflicts_total",
    "Iceberg commits retried after another writer committed first.",
    ["table"],
    registry=REGISTRY,
)
LAKE_MAINTENANCE_SECONDS = Histogram(
    "k2_lake_maintenance_duration_seconds",
    "Wall time of table maintenance operations run by the writer.",
    ["table", "operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# --- query ----------------------------------------------------------------------------------------
QUERY_SECONDS = Histogram(
    "k2_query_duration_seconds",
    "Wall time of a query, by kind (trades, ohlcv, vwap, sql).",
    ["kind"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` for this process's registry on ``host:port`` (a daemon thread)."""
    start_http_server(port, addr=host, registry=REGISTRY)
