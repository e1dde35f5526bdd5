"""What a trades table says about its sequence state on start: the recorded state, or the stored ids.

The embedded pipeline records the tracker's state in the summary of each trades commit
(:mod:`k2.quality.state`), so :func:`recover_state` reads it back from the newest snapshot of the
current lineage that carries it: the exact state of the committed rows, whatever the rows hold.
A table written without it (by a K2 older than the recorded state, or by `k2 consume`, which
writes trades without it after the newest recorded state) falls back to :func:`stored_ids`: per
symbol, every stored id within ``window_ids`` of that symbol's own highest id (docs/quality.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2.logging import get_logger
from k2.quality.sequence import Seed, StreamKey, StreamState
from k2.quality.state import StateFormatError, decode_state, state_property

log = get_logger(__name__)


@dataclass(frozen=True)
class Recovered:
    """``states`` recorded by the newest commit that carries them; None when the table's rows are
    not all described by a recorded state (then ``reason`` says why and the caller seeds from ids)."""

    states: dict[StreamKey, StreamState] | None
    reason: str
    snapshot_id: int | None = None


def _lineage(table: Table) -> Iterator[Snapshot]:
    """The current snapshot and its ancestors that are still retained, newest first."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        yield snapshot
        parent = snapshot.parent_snapshot_id
        snapshot = table.metadata.snapshot_by_id(parent) if parent is not None else None


def recover_state(table: Table, exchange: str) -> Recovered:
    """The tracker state of ``exchange`` recorded by the newest commit that carries one.

    Walking back from the current snapshot: a snapshot with the state ends the walk; one that added
    rows without it means rows the recorded state does not describe, so there is nothing exact to
    recover (``states=None``). An empty table has an empty state.
    """
    key = state_property(exchange)
    empty = True
    for snapshot in _lineage(table):
        empty = False
        summary = snapshot.summary
        props = summary.additional_properties if summary is not None else {}
        text = props.get(key)
        if text is not None:
            try:
                return Recovered(decode_state(text, exchange), "recorded", snapshot.snapshot_id)
            except StateFormatError as exc:
                return Recovered(None, f"recorded state unreadable: {exc}")
        if int(props.get("added-records", "0") or 0) > 0:
            return Recovered(None, f"snapshot {snapshot.snapshot_id} added rows without a recorded state")
    if empty:
        return Recovered({}, "empty table")
    return Recovered(None, "no retained snapshot records a state")


def stored_ids(table: Table, exchange: str, window_ids: int) -> dict[str, Seed]:
    """Per symbol of ``exchange``, every stored id within ``window_ids`` of the symbol's own highest
    id, with its trade time: a seed whose holes are all trusted (every stored id of that range was
    read), independent of other symbols and of any row's time.

    Reads ``symbol, source_sequence, timestamp`` of the exchange's rows once, as a stream of batches,
    keeping only each symbol's newest ids (memory ~ symbols x ``window_ids``).
    """
    equal_to: Any = EqualTo  # pyiceberg predicates are typed per field by the pydantic mypy plugin
    scan = table.scan(
        row_filter=equal_to("exchange", exchange), selected_fields=("symbol", "source_sequence", "timestamp")
    )
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    sizes: dict[str, int] = {}
    high: dict[str, int] = {}
    rows = 0
    for batch in scan.to_arrow_batch_reader():
        rows += batch.num_rows
        symbols = batch.column("symbol")
        ids_all = batch.column("source_sequence").to_numpy()
        times_all = batch.column("timestamp").cast(pa.int64()).to_numpy()
        for symbol in pc.unique(symbols).to_pylist():
            mask = pc.equal(symbols, symbol).to_numpy(zero_copy_only=False)
            ids, times = ids_all[mask], times_all[mask]
            top = max(high.get(symbol, int(ids.max())), int(ids.max()))
            high[symbol] = top
            near = ids >= top - window_ids
            parts.setdefault(symbol, []).append((ids[near], times[near]))
            sizes[symbol] = sizes.get(symbol, 0) + int(np.count_nonzero(near))
            if sizes[symbol] > 4 * window_ids:  # bound memory: keep only what is still near the top
                parts[symbol] = [_trim(parts[symbol], top - window_ids)]
                sizes[symbol] = parts[symbol][0][0].size
    out: dict[str, Seed] = {}
    for symbol, chunks in parts.items():
        floor = high[symbol] - window_ids
        ids, times = _trim(chunks, floor)
        out[symbol] = Seed(ids, times, floor - 1)
    log.info("quality.seed_from_stored_ids", exchange=exchange, rows_read=rows, symbols=len(out), window=window_ids)
    return out


def _trim(chunks: list[tuple[np.ndarray, np.ndarray]], floor: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([c[0] for c in chunks])
    times = np.concatenate([c[1] for c in chunks])
    near = ids >= floor
    return ids[near], times[near]
