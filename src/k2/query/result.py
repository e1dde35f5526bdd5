"""QueryResult: an Arrow table with conversions. Decimals stay exact in every form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from k2.errors import QueryError

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query as Arrow (prices ``decimal128(38, 12)``, times ``timestamp[us, tz=UTC]``)."""

    table: pa.Table

    @property
    def num_rows(self) -> int:
        return int(self.table.num_rows)

    @property
    def column_names(self) -> list[str]:
        return list(self.table.column_names)

    def to_pylist(self) -> list[dict[str, Any]]:
        """Rows as dicts: decimals as ``Decimal``, timestamps as aware UTC ``datetime``."""
        rows: list[dict[str, Any]] = self.table.to_pylist()
        return rows

    def to_pandas(self) -> pd.DataFrame:
        """A pandas DataFrame (decimal columns hold ``Decimal`` objects). Needs pandas installed."""
        try:
            import pandas  # noqa: F401
        except ImportError as exc:
            raise QueryError("to_pandas() needs pandas: pip install 'k2[dataframes]'") from exc
        frame: pd.DataFrame = self.table.to_pandas()
        return frame

    def to_polars(self) -> pl.DataFrame:
        """A polars DataFrame (decimal columns as ``Decimal(38, 12)``). Needs polars installed."""
        try:
            import polars
        except ImportError as exc:
            raise QueryError("to_polars() needs polars: pip install 'k2[dataframes]'") from exc
        frame = polars.from_arrow(self.table)
        assert isinstance(frame, polars.DataFrame)
        return frame
