"""K2: live exchange market data, queryable within seconds, exactly once, forever.

The data's path through the package::

    sources/  (WebSocket session + pure venue parsers)  ->  schema/ (canonical records, Arrow batches)
      ->  lake/ (Iceberg writer, maintenance, quarantine)  ->  query/ (DuckDB over planned Parquet files)

``services/`` wires the stages together; ``cli.py`` is the thin command-line front end.
"""

from k2.errors import K2Error

__version__ = "0.1.0"

__all__ = ["K2Error", "__version__"]
