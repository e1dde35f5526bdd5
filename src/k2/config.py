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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from k2.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceSettings(_Section):
    """Where market data comes from."""

    venue: str = "binance"
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    ws_url: str = "wss://stream.binance.com:9443"
    rest_url: str = "https://api.binance.com"
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

    @field_validator("symbols")
    @classmethod
    def _upper_symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(dict.fromkeys(s.strip().upper() for s in value if s.strip()))
        if not cleaned:
            raise ValueError("at least one symbol is required")
        for symbol in cleaned:
            if not symbol.isalnum():
                raise ValueError(f"invalid symbol {symbol!r}: letters and digits only")
        return cleaned


class LakeSettings(_Section):
    """The Iceberg warehouse."""

    warehouse: Path = Path("k2-data")
    # SQLAlchemy URL of the SQL catalog; default: a SQLite file inside the warehouse.
    catalog_uri: str | None = None
    catalog_name: str = "k2"
    namespace: str = "market_data"
    trades_table: str = "trades"
    # Flush a batch to Iceberg when it reaches this many rows or this age, whichever first.
    flush_rows: int = Field(default=100_000, gt=0)
    flush_seconds: float = Field(default=1.0, gt=0)
    # Table maintenance run by the writer itself (see docs/lake.md).
    keep_snapshots: int = Field(default=20, ge=1)
    maintenance_every_commits: int = Field(default=10, ge=1)
    commit_retries: int = Field(default=5, ge=0)

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
