"""K2's exception tree. Every error that crosses a module boundary is one of these.

::

    K2Error
    ├── ConfigError                  settings that cannot work (bad symbol list, unknown venue, ...)
    ├── SchemaError                  a canonical-schema problem (drift, incompatible evolution)
    ├── SourceError                  exchange-side trouble
    │   ├── ConnectionLost           a WebSocket dropped (retryable: the session reconnects)
    │   └── ExchangeUnreachable      could not connect at all within the allowed attempts
    ├── RecordingError               a capture/recording file that cannot be read or written
    ├── LakeError                    Iceberg catalog/table/writer failures
    │   └── CommitConflict           another writer committed first (retryable: reload and retry)
    └── QueryError                   a query that cannot run
        └── ReadOnlyViolation        SQL that would write, attach or reach outside the warehouse

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
