"""Every Prometheus metric K2 emits, declared once, here, with its labels.

Rules: ``k2_`` prefix, unit suffix (``_total``, ``_seconds``, ``_bytes``, ``_rows``), labels with
small fixed value sets (venue, data_type, reason, table, operation, kind, symbol from the configured
bounded symbol list) and never a per-trade value. Code imports the metric objects from this module;
``tests/unit/test_metrics.py`` fails when code uses a metric or label not declared here, or when a
declared metric is never used.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

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
LAKE_LAST_COMMIT_TIME = Gauge(
    "k2_lake_last_commit_timestamp_seconds",
    "Wall-clock time of the last successful Iceberg commit (Unix seconds).",
    ["table"],
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
    "Wall time of table maintenance operations (expire_snapshots, merge_manifests, compact, retention, "
    "remove_orphans), run by the writer, `k2 maintain` or the scheduled maintenance.",
    ["table", "operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# --- lake health (exported by the scheduled maintenance of `k2 run` / `k2 consume`) ---------------
LAKE_DATA_FILES = Gauge(
    "k2_lake_data_files",
    "Live data files in the table's current snapshot.",
    ["table"],
    registry=REGISTRY,
)
LAKE_SMALL_FILES = Gauge(
    "k2_lake_small_data_files",
    "Live data files below the compaction threshold (3/4 of lake.maintenance.target_file_bytes).",
    ["table"],
    registry=REGISTRY,
)
LAKE_PARTITIONS = Gauge(
    "k2_lake_partitions",
    "Partitions holding live data files.",
    ["table"],
    registry=REGISTRY,
)
LAKE_PARTITION_MAX_FILES = Gauge(
    "k2_lake_partition_max_files",
    "Live data files in the table's fullest partition.",
    ["table"],
    registry=REGISTRY,
)
LAKE_FILE_AVG_BYTES = Gauge(
    "k2_lake_data_file_avg_bytes",
    "Average size of the table's live data files.",
    ["table"],
    registry=REGISTRY,
)
LAKE_SNAPSHOTS = Gauge(
    "k2_lake_retained_snapshots",
    "Snapshots the table's metadata retains.",
    ["table"],
    registry=REGISTRY,
)
LAKE_ORPHAN_BYTES = Gauge(
    "k2_lake_orphan_bytes",
    "Unreferenced files under the table's location left by the last orphan sweep (younger than its safety age).",
    ["table"],
    registry=REGISTRY,
)
LAKE_LAST_MAINTENANCE = Gauge(
    "k2_lake_last_maintenance_timestamp_seconds",
    "Wall-clock time the last maintenance run of the table finished (Unix seconds).",
    ["table"],
    registry=REGISTRY,
)
LAKE_MAINTENANCE_FAILURES = Counter(
    "k2_lake_maintenance_failures_total",
    "Maintenance operations that failed (the table is unchanged by them; the next run tries again).",
    ["table", "operation"],
    registry=REGISTRY,
)
LAKE_COMPACTED_FILES = Counter(
    "k2_lake_compacted_files_total",
    "Small data files replaced by compaction.",
    ["table"],
    registry=REGISTRY,
)
LAKE_ORPHANS_DELETED = Counter(
    "k2_lake_orphan_files_deleted_total",
    "Orphan files (unreferenced, older than the safety age) deleted by the sweep.",
    ["table"],
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

QUERY_RESULT_CACHE = Counter(
    "k2_query_result_cache_total",
    "Aggregate (OHLCV, VWAP) lookups in the per-snapshot result cache, by outcome (hit, miss).",
    ["outcome"],
    registry=REGISTRY,
)


# --- bus: Kafka producer / consumer ---------------------------------------------------------------
PRODUCER_MESSAGES = Counter(
    "k2_producer_messages_total",
    "Messages produced to Kafka, by delivery result (delivered, failed).",
    ["topic", "result"],
    registry=REGISTRY,
)
PRODUCER_QUEUE_MESSAGES = Gauge(
    "k2_producer_queue_rows",
    "Messages (one row each) in the producer's local queue, not yet acknowledged by the broker.",
    ["topic"],
    registry=REGISTRY,
)
PRODUCER_BACKPRESSURE = Counter(
    "k2_producer_backpressure_waits_total",
    "Times the producer's queue was full and the source was paused until it drained.",
    ["topic"],
    registry=REGISTRY,
)
CONSUMER_MESSAGES = Counter(
    "k2_consumer_messages_total",
    "Messages consumed from Kafka, by outcome (committed to Iceberg, dead_lettered, fenced).",
    ["topic", "result"],
    registry=REGISTRY,
)
CONSUMER_DEAD_LETTERS = Counter(
    "k2_consumer_dead_letters_total",
    "Messages sent to the dead-letter topic, by reason.",
    ["topic", "reason"],
    registry=REGISTRY,
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Expose ``/metrics`` for this process's registry on ``host:port`` from a daemon thread.

    Every long-running K2 process calls this once at start-up when ``settings.metrics.port`` is set
    (``k2 run``/``k2 demo --metrics-port``, ``k2 ingest``, ``k2 consume``). ``port=0`` binds a free
    port: read it from ``server.server_port``. ``server.shutdown()`` stops serving. ``k2 status``
    and Prometheus scrape this endpoint.
    """
    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    return server


# --- quality: sequence tracking, backfill, data-quality checks ------------------------------------
QUALITY_EVENTS = Counter(
    "k2_quality_events_total",
    "Sequence and data-quality events (one per detected gap/burst), by kind.",
    ["venue", "kind"],
    registry=REGISTRY,
)
QUALITY_AFFECTED_TRADES = Counter(
    "k2_quality_affected_trades_total",
    "Trades concerned by quality events, by kind (ids missing, duplicates dropped, anomalies).",
    ["venue", "kind"],
    registry=REGISTRY,
)
BACKFILL_TRADES = Counter(
    "k2_backfill_trades_total",
    "Trades fetched from the venue's REST API by backfill and written (after deduplication).",
    ["venue"],
    registry=REGISTRY,
)
BACKFILL_GAPS = Counter(
    "k2_backfill_gaps_total",
    "Gaps handled by backfill, by outcome (resolved, unrecoverable).",
    ["venue", "outcome"],
    registry=REGISTRY,
)
REST_REQUESTS = Counter(
    "k2_rest_requests_total",
    "REST requests to a venue, by HTTP status class (2xx, 4xx, 429, 5xx, error).",
    ["venue", "status"],
    registry=REGISTRY,
)
REST_WAIT_SECONDS = Counter(
    "k2_rest_rate_limit_wait_seconds_total",
    "Time spent waiting for the request-weight limiter or a Retry-After.",
    ["venue"],
    registry=REGISTRY,
)

# --- consumer lag and commit failures (issue 5) ---------------------------------------------------
CONSUMER_LAG = Gauge(
    "k2_consumer_lag_rows",
    "Messages (one trade each) between the consumer's position and the partition's high watermark.",
    ["topic", "partition"],
    registry=REGISTRY,
)
LAKE_COMMIT_FAILURES = Counter(
    "k2_lake_commit_failures_total",
    "Iceberg commits that failed with an error (conflicts excluded); the rows are kept and retried.",
    ["table"],
    registry=REGISTRY,
)

# --- REST query API (k2 serve; docs/api.md) --------------------------------------------------------
API_REQUESTS = Counter(
    "k2_api_requests_total",
    "REST API requests answered, by route template and status class (2xx, 4xx, 429, 5xx).",
    ["route", "status"],
    registry=REGISTRY,
)
API_REQUEST_SECONDS = Histogram(
    "k2_api_request_duration_seconds",
    "Time from receiving a REST API request to its response headers (streamed bodies continue after).",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
API_QUERIES_STOPPED = Counter(
    "k2_api_queries_stopped_total",
    "API queries interrupted in DuckDB, by reason (timeout, disconnect).",
    ["reason"],
    registry=REGISTRY,
)
API_QUERIES = Counter(
    "k2_api_queries_total",
    "API requests that borrowed a query worker, by phase (started, finished): started - finished are in "
    "flight (running or streaming); at api.workers, new ones wait.",
    ["phase"],
    registry=REGISTRY,
)
