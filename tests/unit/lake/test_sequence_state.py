"""What a trades table says about its sequence state on start (real SQLite catalog, real trades):
the state recorded with the newest commit, or, for a table written without one, each symbol's own
newest stored ids, whatever other symbols and any row's time say."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog

from k2.config import LakeSettings
from k2.lake import maintenance
from k2.lake.sequence_state import recover_state, stored_ids
from k2.lake.writer import TableWriter
from k2.quality.sequence import HoleRecord, StreamKey, StreamState
from k2.quality.state import StateFormatError, decode_state, encode_state, state_property

BTC = StreamKey("BINANCE", "BTCUSDT")
ETH = StreamKey("BINANCE", "ETHUSDT")


def _writer(catalog: Catalog, lake: LakeSettings) -> TableWriter:
    return TableWriter(catalog, (lake.namespace, lake.trades_table), lake)


def _symbol(trades: pa.RecordBatch, symbol: str) -> pa.RecordBatch:
    return trades.filter(pc.equal(trades.column("symbol"), symbol))


def test_state_text_round_trips_and_rejects_what_it_cannot_read() -> None:
    states = {
        BTC: StreamState(3_735_700_000, 1_723_161_255_342_000, (HoleRecord(5, 9, 77, "gap-x"), HoleRecord(11, 12, 78))),
        ETH: StreamState(1_520_540_309, None),
    }
    text = encode_state(states, max_holes=1_000)
    assert decode_state(text, "BINANCE") == states
    assert len(text) < 200  # compact: what every commit carries
    assert decode_state(encode_state(states, max_holes=1), "BINANCE")[BTC].holes == (HoleRecord(11, 12, 78),)
    for bad in (
        "{",
        '{"v": 99, "streams": []}',
        '{"v": 1, "streams": [["BTCUSDT", "trade", 10, null, [[12, 13, 0]]]]}',
    ):
        try:
            decode_state(bad, "BINANCE")
        except StateFormatError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_the_newest_commit_with_a_state_is_recovered_across_maintenance(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake)
    assert recover_state(writer.table, "BINANCE").states == {}  # empty table: empty state
    key = state_property("BINANCE")
    first = {BTC: StreamState(10, 1, ())}
    second = {BTC: StreamState(20, 2, (HoleRecord(12, 13, 5),)), ETH: StreamState(7, 3, ())}
    writer.append(trades.slice(0, 100), {key: encode_state(first, max_holes=10)})
    result = writer.append(trades.slice(100, 100), {key: encode_state(second, max_holes=10)})
    assert maintenance.merge_manifests(writer.refresh()) is not None  # a snapshot that adds no rows
    maintenance.expire_snapshots(writer.table, keep=2)
    recovered = recover_state(writer.refresh(), "BINANCE")
    assert recovered.states == second and recovered.snapshot_id != result.snapshot_id
    assert recover_state(writer.table, "OTHER").states is None  # rows there, no state for that exchange


def test_rows_added_without_a_state_after_it_mean_no_exact_state(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    writer = _writer(catalog, lake)
    writer.append(trades.slice(0, 100), {state_property("BINANCE"): encode_state({}, max_holes=10)})
    writer.append(trades.slice(100, 100))  # e.g. an older K2, or `k2 consume`
    recovered = recover_state(writer.refresh(), "BINANCE")
    assert recovered.states is None and "without a recorded state" in recovered.reason


def test_stored_ids_are_per_symbol_and_ignore_a_far_future_row(
    catalog: Catalog, lake: LakeSettings, trades: pa.RecordBatch
) -> None:
    """A table written before states were recorded: a BTCUSDT row stamped 2200 (as 4af7975 could
    store) and ETHUSDT quiet since long before BTCUSDT's newest rows. Each symbol still gets its own
    newest ids, with the holes among them."""
    writer = _writer(catalog, lake)
    btc, eth = _symbol(trades, "BTCUSDT"), _symbol(trades, "ETHUSDT")
    btc_ids = btc.column("source_sequence").to_numpy()
    writer.append(eth.slice(0, 500))
    writer.append(btc.slice(0, 3_000).filter(pa.array(np.arange(3_000) != 2_990)))  # one id missing
    future = btc.slice(3_000, 1)
    ts = future.schema.get_field_index("timestamp")
    year_2200 = pa.array([datetime(2200, 1, 1, tzinfo=UTC)], future.schema.field(ts).type)
    writer.append(future.set_column(ts, future.schema.field(ts), year_2200))
    seeds = stored_ids(writer.refresh(), "BINANCE", window_ids=100)
    assert set(seeds) == {"BTCUSDT", "ETHUSDT"}
    top = int(btc_ids[3_000])
    assert int(seeds["BTCUSDT"].ids.max()) == top and seeds["BTCUSDT"].holes_above == top - 101
    held = set(seeds["BTCUSDT"].ids.tolist())
    assert held == {int(i) for i in btc_ids[:3_001] if i >= top - 100} - {int(btc_ids[2_990])}
    eth_ids = eth.column("source_sequence").to_numpy()[:500]
    assert int(seeds["ETHUSDT"].ids.max()) == int(eth_ids.max())
    assert seeds["ETHUSDT"].ids.size == np.count_nonzero(eth_ids >= eth_ids.max() - 100)
