"""Queries by canonical instrument: the filter's arguments, and the instrument of rows stored without one.

Every trade and quote written by K2 since trade schema v3 carries its ``instrument`` (``BTC/USDT``),
stamped by the feed from the venue's symbol rules. Trades written before hold null there (the column
was added to the table by schema evolution, docs/lake.md). Rather than rewriting old files, the
engine derives their instrument from the symbol, by the same venue rules
(:mod:`k2.sources.instruments`): :func:`instrument_filter` adds those venue symbols to an
``instrument=`` filter, and :func:`fill_instruments` fills the column in the rows a query returns.
The read-only SQL views show the column as stored (null for those rows): docs/query.md.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import ConfigError, QueryError
from k2.sources.instruments import canonical, instruments_of, legacy_keys


def instrument_filter(text: str | None) -> tuple[str | None, tuple[str, ...]]:
    """(canonical instrument, ``EXCHANGE:SYMBOL`` of every venue symbol of it) for ``text``; QueryError
    when ``text`` is not ``BASE/QUOTE``."""
    if text is None:
        return None, ()
    try:
        name = canonical(text)
    except ConfigError as exc:
        raise QueryError(str(exc)) from None
    return name, legacy_keys(name)


def fill_instruments(table: pa.Table) -> pa.Table:
    """``table`` with each null ``instrument`` derived from its exchange and symbol (rows stored before the
    column existed); unchanged when nothing is null or the table has no such column."""
    if "instrument" not in table.column_names or table.column("instrument").null_count == 0:
        return table
    column = table.column("instrument")
    missing = pc.is_null(column)
    old = table.filter(missing).select(["exchange", "symbol"]).group_by(["exchange", "symbol"]).aggregate([])
    derived = instruments_of(zip(old["exchange"].to_pylist(), old["symbol"].to_pylist(), strict=True))
    exchange, symbol = (table.column(c).cast(pa.string()) for c in ("exchange", "symbol"))
    keys = pc.binary_join_element_wise(exchange, symbol, "\x00")
    names = {f"{e}\x00{s}": v for (e, s), v in derived.items()}
    lookup = pa.array(list(names), pa.string())
    values = pa.array(list(names.values()), pa.string())
    filled = pc.take(values, pc.index_in(keys, value_set=lookup))
    index = table.column_names.index("instrument")
    field = table.schema.field(index)
    return table.set_column(index, field, pc.if_else(missing, filled, column).cast(field.type))


__all__ = ["fill_instruments", "instrument_filter"]
