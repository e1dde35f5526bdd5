"""The pipeline columns, stamped once, after deduplication: ``platform_sequence``, ``is_sample_data`` and
the canonical ``instrument``.

A venue parser outputs a kind's *wire form*: the canonical record without these columns
(:func:`k2.schema.kinds.wire_schema`). The feed drops duplicates from it, then :func:`stamp` numbers the rows kept,
densely and in order, from the feed's next platform sequence, marks them sample or live, and gives
each row the canonical instrument of its symbol (``BTC/USDT``: the venue's
:meth:`~k2.sources.venue.SymbolRules.instrument`, which the feed holds). So a sequence number is never
handed to a row that is then dropped, several feeds writing one table each keep their own sequence
(per venue; see docs/venues.md), and every venue's rows can be selected by one instrument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from k2.config import ValidationSettings
from k2.schema.kinds import RecordKind, canonical_schema
from k2.sources.base import ParsedBatch, RawFrame
from k2.sources.columns import by_symbol


def stamp(
    kind: RecordKind,
    batch: pa.RecordBatch,
    first_sequence: int,
    is_sample_data: bool,
    instruments: Mapping[str, str],
) -> pa.RecordBatch:
    """``batch`` (wire form) with ``platform_sequence`` = first_sequence, first_sequence + 1, ...,
    ``is_sample_data`` set and ``instrument`` = ``instruments[symbol]`` (symbol -> ``BASE/QUOTE``; every
    symbol of the batch must be there): the canonical form of ``kind``."""
    n = batch.num_rows
    added = {
        "platform_sequence": pa.array(np.arange(first_sequence, first_sequence + n, dtype=np.int64)),
        "is_sample_data": pa.repeat(is_sample_data, n),
    }
    schema = canonical_schema(kind)
    if "instrument" in schema.names:
        added["instrument"] = by_symbol(batch.column("symbol"), dict(instruments))
    arrays = [added[f.name] if f.name in added else batch.column(f.name) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def parse_canonical(
    venue_name: str,
    frames: Sequence[RawFrame],
    *,
    symbols: Sequence[str],
    kinds: Sequence[RecordKind] = (RecordKind.TRADES,),
    first_sequence: int = 1,
    is_sample_data: bool = True,
    validation: ValidationSettings | None = None,
    **parser_options: Any,
) -> ParsedBatch:
    """Parse ``frames`` of a venue into canonical records (no deduplication, numbered from
    ``first_sequence`` per kind): for notebooks, tests and benchmarks that want a venue's rows without
    running a pipeline. Rejects are returned, not quarantined."""
    from k2.sources import load_venue  # the sources import this module's package: import when used

    venue = load_venue(venue_name)
    rules = venue.rules()
    parser = venue.build_parser(
        symbols, kinds, rules=rules, validation=validation or ValidationSettings(),
        is_sample_data=is_sample_data, **parser_options,
    )  # fmt: skip
    parsed = parser.parse(frames)
    instruments = {s: rules.instrument(s).name for s in parser.symbols}
    parsed.records = {k: stamp(k, b, first_sequence, is_sample_data, instruments) for k, b in parsed.records.items()}
    return parsed
