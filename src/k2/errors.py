"""K2's exception tree. Every error that crosses a module boundary is one of these.

::

    K2Error
    ├── ConfigError                  settings that cannot work (bad symbol list, unknown venue, ...)
    ├── SchemaError                  a canonical-schema problem (drift, incompatible evolution)
    ├── SourceError                  exchange-side trouble
    │   ├── ConnectionLost           a WebSocket dropped (retryable: the session reconnects)
    │   ├── ExchangeUnreachable      could not connect at all within the allowed attempts
    │   ├── RateLimited              REST 429/418 from the venue (retryable after retry_after_s)
    │   └── BackfillError            a gap that backfill could not close
    ├── RecordingError               a capture/recording file that cannot be read or written
    ├── LakeError                    Iceberg catalog/table/writer failures
    │   └── CommitConflict           another writer committed first (retryable: reload and retry)
    ├── QueryError                   a query that cannot run
    │   ├── ReadOnlyViolation        SQL that would write, attach or reach outside the warehouse
    │   └── SnapshotExpired          files of the snapshot a query holds were removed by maintenance (retryable)
    ├── ApiError                     the REST API refused a request (k2.client): auth, limits, bad input
    ├── ScrapeError                  a process's /metrics endpoint could not be read (`k2 status`)
    ├── BusError                     Kafka / schema-registry failures
    │   ├── BusUnavailable           broker or registry unreachable (retryable)
    │   ├── TopicMismatch            an existing topic differs from the configured one
    │   └── IncompatibleSchema       the registry rejected a schema under the subject's compatibility
    └── DevServiceError              a dev/test service (k2.devservices) that cannot be fetched or started

``retryable`` tells callers whether trying again can help. Library errors (pyiceberg, duckdb,
websockets) are translated at the edge where they are caught; only the CLI turns a K2Error into an
exit code and a one-line message.
"""

from __future__ import annotations


class K2Error(Exception):
    """Base class of every error K2 raises on purpose."""

    retryable: bool = False


class ConfigError(K2Error):
    """Settings that cannot work."""


class SchemaError(K2Error):
    """A problem with a canonical schema or one of its derived forms."""


class SourceError(K2Error):
    """Trouble on the exchange side of the pipeline."""


class ConnectionLost(SourceError):
    """A live connection dropped; the session reconnects."""

    retryable = True


class ExchangeUnreachable(SourceError):
    """The exchange could not be reached within the allowed attempts."""


class ParseProcessError(SourceError):
    """The child process that parses a feed's frames died or failed (``source.parse_process``)."""


class RecordingError(K2Error):
    """A recording (capture file) that cannot be read or written."""


class LakeError(K2Error):
    """Iceberg catalog, table or writer failure."""


class CommitConflict(LakeError):
    """Another writer committed first; reload the table and retry."""

    retryable = True


class QueryError(K2Error):
    """A query that cannot run."""


class ReadOnlyViolation(QueryError):
    """SQL that would modify data or reach outside the warehouse."""


class ApiError(K2Error):
    """The REST query API answered with an error (raised by :mod:`k2.client`).

    ``status`` is the HTTP status, ``code`` the API's error code (``unauthorized``, ``rate_limited``,
    ``query_timeout``, ...); ``retry_after_s`` is set for 429/503. Query errors (400) and read-only
    refusals (403 ``read_only``) are raised as :class:`QueryError` / :class:`ReadOnlyViolation` instead.
    """

    def __init__(self, message: str, *, status: int, code: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s
        self.retryable = status in (429, 503)


class SnapshotExpired(QueryError):
    """Files of the snapshot a query planned or read were removed by table maintenance (expiry after a
    compaction or retention); the query returned nothing. Retry: it plans against the current snapshot."""

    retryable = True


class ScrapeError(K2Error):
    """A K2 process's ``/metrics`` endpoint could not be read or parsed (retryable)."""

    retryable = True


class BusError(K2Error):
    """Kafka or schema-registry failure."""


class BusUnavailable(BusError):
    """The broker or the schema registry could not be reached."""

    retryable = True


class TopicMismatch(BusError):
    """An existing topic's partitions or configuration differ from the configured ones."""


class IncompatibleSchema(BusError):
    """The schema registry rejected a schema under the subject's compatibility level."""


class RateLimited(SourceError):
    """The venue's REST API refused a request for rate reasons (HTTP 429/418); retry after a delay."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackfillError(SourceError):
    """A gap could not be backfilled (REST errors persisted, or the venue no longer has the trades)."""


class DevServiceError(K2Error):
    """A development service (Kafka, registry, S3, PostgreSQL) could not be downloaded, started or stopped."""
