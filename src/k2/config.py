"""K2Settings: every knob, read once (environment + optional TOML file) into a frozen object.

Environment variables use the ``K2_`` prefix and ``__`` for nesting, e.g.
``K2_SOURCE__SYMBOLS='["BTCUSDT","ETHUSDT"]'`` or ``K2_LAKE__FLUSH_ROWS=20000``. A TOML file named
by ``K2_CONFIG_FILE`` (default ``k2.toml`` in the working directory, if present) is read too;
environment variables win over the file. Tests build settings explicitly:
``K2Settings(lake=LakeSettings(warehouse=tmp_path))``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from k2.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ValidationSettings(_Section):
    """Range checks the parsers apply to every frame before anything is stored (docs/sources.md).

    A venue time (trade or event time) outside this window around the frame's receive time is
    quarantined (reason ``out_of_range``), never stored. Inside it, ``quality.max_future_s`` and
    ``quality.max_lag_s`` still flag smaller deviations as anomalies on stored rows. The venue's
    launch date is always the lower bound.
    """

    # A venue time may be at most this far after the receive time (clock skew between us and the venue).
    max_future_s: float = Field(default=300.0, ge=0, le=366 * 24 * 3600)
    # Live frames only (not replayed recordings, not REST backfill): a venue time at most this far
    # before the receive time. None: no limit.
    max_age_s: float | None = Field(default=3600.0, gt=0)


_KINDS = ("trades", "quotes")


def _clean_symbols(value: tuple[str, ...]) -> tuple[str, ...]:
    """Trimmed, upper case, de-duplicated; the venue's rules validate them (k2.sources.venue)."""
    cleaned = tuple(dict.fromkeys(s.strip().upper() for s in value if s.strip()))
    if not cleaned:
        raise ValueError("at least one symbol is required")
    return cleaned


def _clean_kinds(value: tuple[str, ...]) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(k.strip().lower() for k in value if k.strip()))
    if not cleaned or any(k not in _KINDS for k in cleaned):
        raise ValueError(f"kinds must be a non-empty subset of {', '.join(_KINDS)}, not {value!r}")
    return cleaned


class FeedSettings(_Section):
    """One venue's own part of a run of several (``source.feeds.<venue>``, e.g. ``[source.feeds.binance]``
    in k2.toml); what is unset falls back to the ``source`` section (docs/venues.md, "Several venues")."""

    symbols: tuple[str, ...] | None = None
    kinds: tuple[str, ...] | None = None
    ws_url: str | None = None
    rest_url: str | None = None

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _clean_symbols(value)

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _clean_kinds(value)


class SourceSettings(_Section):
    """Where market data comes from: one venue (k2.sources.VENUES) or several in one process, their
    symbols and record kinds."""

    venue: str = "binance"
    # Several venues in one process (`k2 run --venues binance,coinbase`); empty: just ``venue``.
    venues: tuple[str, ...] = ()
    # Per venue of the run: its own symbols, kinds and URLs (FeedSettings); unset ones come from here.
    feeds: dict[str, FeedSettings] = Field(default_factory=dict)
    # Venue-native (BTCUSDT) or canonical (BTC/USDT) symbols; the venue validates them.
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    # Record kinds to capture (k2.schema.kinds: trades, quotes); each must be one the venue serves
    # (with several venues, each venue captures those of them it serves).
    kinds: tuple[str, ...] = _KINDS
    # None: the venue's own live URLs (k2.sources.<venue>.VENUE); set them to use e.g. the emulator.
    ws_url: str | None = None
    rest_url: str | None = None
    # Reconnect policy: exponential backoff with full jitter, capped.
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    # Give up (ExchangeUnreachable) after this many consecutive failed connection attempts.
    # None means retry forever (long-running services); the CLI uses a finite number at start-up.
    max_connect_attempts: int | None = None
    # Binance closes a connection after 24 h; reconnect proactively before that.
    max_connection_age_s: float = 23 * 3600.0
    open_timeout_s: float = 10.0
    # exchangeInfo cache (base/quote assets), refreshed after this many seconds when live.
    exchange_info_ttl_s: float = 24 * 3600.0
    exchange_info_cache: Path = Path.home() / ".cache" / "k2" / "binance_exchange_info.json"
    # What a frame may hold to be stored at all (quarantined otherwise).
    validation: ValidationSettings = ValidationSettings()
    # Parse each venue's frames in a child process (k2.feed.offload), so receiving and parsing use
    # two cores; off: in the pipeline's own process.
    parse_process: bool = False

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _clean_symbols(value)

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _clean_kinds(value)

    @field_validator("venue")
    @classmethod
    def _venue(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("venues")
    @classmethod
    def _venues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.strip().lower() for v in value if v.strip()))

    @field_validator("feeds")
    @classmethod
    def _feed_names(cls, value: dict[str, FeedSettings]) -> dict[str, FeedSettings]:
        return {k.strip().lower(): v for k, v in value.items()}

    @model_validator(mode="after")
    def _feeds_of_the_run(self) -> SourceSettings:
        stray = sorted(set(self.feeds) - set(self.venue_names))
        if stray:
            raise ValueError(
                f"source.feeds names {', '.join(stray)}, not among the venues run ({', '.join(self.venue_names)})"
            )
        return self

    @property
    def venue_names(self) -> tuple[str, ...]:
        """The venues this process runs, in order: ``venues``, or ``(venue,)`` when it is empty."""
        return self.venues or (self.venue,)

    def feed(self, venue: str) -> FeedSettings:
        """``venue``'s settings with the section's filled in where it sets none (``kinds`` stays None when
        unset: each venue then takes those of the section's kinds it serves)."""
        own = self.feeds.get(venue, FeedSettings())
        return FeedSettings(
            symbols=own.symbols or self.symbols,
            kinds=own.kinds,
            ws_url=own.ws_url or self.ws_url,
            rest_url=own.rest_url or self.rest_url,
        )


class S3Settings(_Section):
    """Object storage of an ``s3://`` warehouse (distributed mode; see docs/distributed.md)."""

    endpoint: str | None = None  # e.g. http://127.0.0.1:19000 for s3proxy; None: AWS's own endpoint
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    path_style: bool = True  # S3-compatible stores (s3proxy, MinIO) want path-style addressing

    def fileio_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties (``s3.*``) for these settings; secrets unwrapped only here."""
        props = {"s3.region": self.region, "s3.force-virtual-addressing": str(not self.path_style).lower()}
        if self.endpoint:
            props["s3.endpoint"] = self.endpoint
        if self.access_key_id is not None:
            props["s3.access-key-id"] = self.access_key_id.get_secret_value()
        if self.secret_access_key is not None:
            props["s3.secret-access-key"] = self.secret_access_key.get_secret_value()
        return props


class MaintenanceSettings(_Section):
    """Table upkeep: compaction, snapshot retention, orphan sweep, data retention (docs/lake.md).

    `k2 maintain` runs it once; `k2 run` and `k2 consume` run it every ``interval_s`` on a
    background thread (``schedule``).
    """

    schedule: bool = True
    interval_s: float = Field(default=600.0, gt=0)
    # Compaction: per partition, data files smaller than 3/4 of the target are rewritten into files
    # of about the target size (sorted) once at least `compact_min_files` of them exist.
    compact: bool = True
    target_file_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    compact_min_files: int = Field(default=5, ge=2)
    # Time rule of snapshot expiry: the parent of a commit that removed data files (compaction,
    # retention) is kept this long after it, so queries planned before it keep reading.
    snapshot_grace_s: float = Field(default=600.0, ge=0)
    # Orphan sweep: unreferenced files under a table's location older than this are deleted.
    remove_orphans: bool = True
    orphan_min_age_s: float = Field(default=86_400.0, ge=0)
    # Data retention, off by default: table name -> days of data to keep (whole days, UTC).
    retention_days: dict[str, int] = Field(default_factory=dict)
    # Attempts per maintenance commit when other writers commit meanwhile (optimistic concurrency).
    commit_attempts: int = Field(default=10, ge=1)

    @field_validator("retention_days")
    @classmethod
    def _positive_days(cls, value: dict[str, int]) -> dict[str, int]:
        for table, days in value.items():
            if days < 1:
                raise ValueError(f"retention of {table!r} must be at least 1 day, not {days}")
        return value


class LakeSettings(_Section):
    """The Iceberg warehouse."""

    warehouse: Path = Path("k2-data")
    # SQLAlchemy URL of the SQL catalog; default: a SQLite file inside the warehouse.
    catalog_uri: str | None = None
    catalog_name: str = "k2"
    namespace: str = "market_data"
    trades_table: str = "trades"
    quotes_table: str = "quotes"
    events_table: str = "quality_events"  # quality events (gaps, duplicates, anomalies): docs/quality.md
    # Flush a batch to Iceberg when it reaches this many rows or this age, whichever first.
    flush_rows: int = Field(default=100_000, gt=0)
    flush_seconds: float = Field(default=1.0, gt=0)
    # Table maintenance run by the writer itself (see docs/lake.md).
    keep_snapshots: int = Field(default=20, ge=1)
    maintenance_every_commits: int = Field(default=10, ge=1)
    commit_retries: int = Field(default=5, ge=0)
    maintenance: MaintenanceSettings = MaintenanceSettings()

    # Distributed mode: an object-store warehouse such as "s3://k2/warehouse" (overrides `warehouse`
    # for table data; the quarantine stays in the local `warehouse` directory) and its S3 settings.
    warehouse_uri: str | None = None
    s3: S3Settings = S3Settings()

    @property
    def resolved_catalog_uri(self) -> str:
        if self.catalog_uri:
            return self.catalog_uri
        return f"sqlite:///{(self.warehouse / 'catalog.db').resolve()}"

    @property
    def quarantine_dir(self) -> Path:
        return self.warehouse / "quarantine"


class MetricsSettings(_Section):
    """Prometheus exposition."""

    port: int | None = None  # None: do not serve /metrics
    host: str = "127.0.0.1"


class LogSettings(_Section):
    level: str = "INFO"
    format: str = "console"


class KafkaSettings(_Section):
    """Distributed mode: Kafka topics, the schema registry, producer and consumer knobs (docs/kafka.md)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str = "http://127.0.0.1:8081"
    asset_class: str = "crypto"
    # Topics are created with these settings and checked against them at start-up.
    partitions: int = Field(default=6, gt=0)
    replication_factor: int = Field(default=1, gt=0)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    compression: str = "zstd"  # topic compression.type and producer compression.codec
    # Producer: bounded local queue; when full, the WebSocket source is paused (backpressure).
    producer_queue_messages: int = Field(default=100_000, gt=0)
    linger_ms: int = Field(default=20, ge=0)
    delivery_timeout_ms: int = Field(default=120_000, gt=0)
    # Consumer: one group per table; batches of up to batch_size messages per poll.
    consumer_group: str = "k2-iceberg-trades"
    batch_size: int = Field(default=10_000, gt=0)
    poll_timeout_s: float = Field(default=0.5, gt=0)
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    dlq_suffix: str = ".dlq"

    @field_validator("compression")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        if value not in ("zstd", "lz4", "snappy", "gzip", "none"):
            raise ValueError(f"unknown compression {value!r}: zstd, lz4, snappy, gzip or none")
        return value


class QualitySettings(_Section):
    """Completeness and data quality at ingest (docs/quality.md)."""

    # A gap is backfilled once it has stayed open this long (a reordered frame may still fill it).
    gap_grace_s: float = Field(default=2.0, ge=0)
    backfill: bool = True
    # Gaps larger than this many trades are recorded UNRECOVERABLE without fetching them.
    max_backfill_trades: int = Field(default=1_000_000, gt=0)
    backfill_page_limit: int = Field(default=1000, gt=0, le=1000)
    backfill_attempts: int = Field(default=8, ge=1)  # per page, across 429/418/5xx and network errors
    # Token bucket on Binance request weight: the documented limit is 6000 per minute; use a share.
    rest_weight_per_minute: int = Field(default=3000, gt=0)
    rest_weight_burst: int = Field(default=300, gt=0)
    rest_timeout_s: float = Field(default=10.0, gt=0)
    # A gap still incomplete after backfill is recorded UNRECOVERABLE, then fetched again every
    # interval for this long (0: never); a later success records it RESOLVED.
    backfill_retry_interval_s: float = Field(default=300.0, gt=0)
    backfill_retry_for_s: float = Field(default=3600.0, ge=0)
    # Ids this far below the high-water mark (and not older than it) may be a reset of the venue's
    # numbering: held until this many of one dense run confirm it (docs/quality.md).
    reset_threshold: int = Field(default=10_000_000, gt=0)
    reset_confirm_trades: int = Field(default=100, ge=1)
    # Holes per stream recorded with each commit (the newest; older ones count as held).
    state_max_holes: int = Field(default=1_000, ge=0)
    # A table without a recorded state (written by an older K2): per symbol, its stored ids this
    # close to its own highest id seed the tracker.
    seed_ids: int = Field(default=1_000_000, gt=0)
    # `k2 ingest` seeds it from the newest messages of its topic: this many per partition, read
    # further back (up to seed_max_messages) until every subscribed symbol's position is known.
    seed_messages: int = Field(default=50_000, gt=0)
    seed_max_messages: int = Field(default=500_000, gt=0)
    price_jump_fraction: float = Field(default=0.05, gt=0)
    price_window: int = Field(default=50, ge=1)
    max_future_s: float = Field(default=2.0, ge=0)
    max_lag_s: float = Field(default=30.0, gt=0)
    stale_after_s: float = Field(default=60.0, gt=0)
    # Quotes: the last this many update ids per stream are remembered to tell a repeat from a late update.
    quote_dedup_window: int = Field(default=10_000, ge=1)


class ApiSettings(_Section):
    """The REST query API and dashboard (`k2 serve`, `k2 run --serve`; docs/api.md)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # auto: open (no key needed) while bound to a loopback address and no key exists, keys otherwise;
    # keys: always require a key; open: never (refused on a non-loopback bind unless forced below).
    auth: Literal["auto", "keys", "open"] = "auto"
    allow_open_non_loopback: bool = False
    keys_file: Path | None = None  # default: <lake.warehouse>/api-keys.json
    # Requests per key (open mode: per client address), in the `limits` notation: "50/second",
    # "600/minute", or several: "20/second;600/minute". Answered 429 with Retry-After beyond it.
    rate_limit: str = "50/second"
    query_timeout_s: float = Field(default=10.0, gt=0)  # DuckDB is interrupted at this deadline
    max_rows: int = Field(default=1_000_000, gt=0)  # rows per response (trades page, SQL result, bars)
    workers: int = Field(default=4, gt=0)  # queries running at once; more wait up to query_timeout_s
    duckdb_memory_limit: str = "2GB"  # for all of the service's queries together
    duckdb_threads: int | None = Field(default=None, gt=0)  # None: DuckDB's default (one per core)
    # Aggregates (OHLCV, VWAP) kept per table snapshot for repeated requests (k2.query.cache); 0: off.
    result_cache_mb: int = Field(default=64, ge=0)


class K2Settings(BaseSettings):
    """All of K2's configuration. Frozen: read once, pass down."""

    model_config = SettingsConfigDict(
        env_prefix="K2_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    source: SourceSettings = SourceSettings()
    lake: LakeSettings = LakeSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    quality: QualitySettings = QualitySettings()
    kafka: KafkaSettings = KafkaSettings()
    api: ApiSettings = ApiSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("K2_CONFIG_FILE", "k2.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))


def load_settings(**overrides: Any) -> K2Settings:
    """Build settings from env/file plus explicit overrides, translating validation errors."""
    try:
        return K2Settings(**overrides)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise ConfigError(f"invalid configuration: {exc}") from exc
