"""Offsets in Iceberg snapshot summaries: encoding, walking back, fencing, merging (pure), on a real table."""

from __future__ import annotations

import pytest

from k2.bus.offsets import (
    decode_offsets,
    encode_offsets,
    fenced_partitions,
    merge_offsets,
    offsets_property,
    recorded_offsets,
    table_offsets,
)
from k2.config import K2Settings
from k2.errors import LakeError
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.writer import TableWriter
from k2.schema.kinds import RecordKind

T = "market.crypto.trades.binance"


def test_encoding_is_compact_sorted_and_round_trips() -> None:
    offsets = {(T, 2): 7, (T, 0): 1_000_000_000_123, ("market.x.trades.y", 0): 0}
    text = encode_offsets(offsets)
    assert text == '{"market.crypto.trades.binance":{"0":1000000000123,"2":7},"market.x.trades.y":{"0":0}}'
    assert decode_offsets(text) == offsets
    assert offsets_property("g1") == "k2.kafka-offsets.g1"


@pytest.mark.parametrize("text", ["", "[1]", '{"t": {"0": -1}}', '{"t": {"x": 1}}', '{"t": {"0": "5"}}', '{"t": 3}'])
def test_unreadable_offsets_are_a_lake_error(text: str) -> None:
    with pytest.raises(LakeError, match="unreadable Kafka offsets"):
        decode_offsets(text)


def test_negative_offsets_are_never_encoded() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        encode_offsets({(T, 0): -1})


def test_recorded_offsets_walk_back_to_the_newest_summary_of_the_group() -> None:
    key = offsets_property("g")
    summaries = [
        {"operation": "replace"},  # maintenance
        {offsets_property("other"): '{"t":{"0":99}}'},
        {key: '{"t":{"0":5,"1":6}}'},
        {key: '{"t":{"0":1}}'},
    ]
    assert recorded_offsets(iter(summaries), "g") == {("t", 0): 5, ("t", 1): 6}
    assert recorded_offsets(iter(summaries), "other") == {("t", 0): 99}
    assert recorded_offsets(iter(summaries), "nobody") == {}


def test_fencing_compares_with_the_offset_the_consumer_started_from() -> None:
    head = {(T, 0): 10, (T, 1): 20}
    assert fenced_partitions(head, {(T, 0): 10, (T, 1): 20}) == set()
    assert fenced_partitions(head, {(T, 0): 10, (T, 1): 15}) == {(T, 1)}
    assert fenced_partitions(head, {(T, 2): None}) == set()  # never recorded, still not recorded
    assert fenced_partitions(head, {(T, 0): None}) == {(T, 0)}  # someone committed it meanwhile


def test_merge_keeps_other_consumers_partitions() -> None:
    head = {(T, 0): 10, (T, 1): 20, (T, 2): 30}
    assert merge_offsets(head, {(T, 1): 25, (T, 3): 1}) == {(T, 0): 10, (T, 1): 25, (T, 2): 30, (T, 3): 1}
    assert head == {(T, 0): 10, (T, 1): 20, (T, 2): 30}


def test_table_offsets_follow_the_snapshot_chain_of_a_real_table(settings: K2Settings) -> None:
    lake = settings.lake
    catalog = open_catalog(lake)
    table = load_or_create_table(catalog, lake, RecordKind.TRADES)
    assert table_offsets(table, "g") == {}
    writer = TableWriter(catalog, (lake.namespace, lake.trades_table), lake)
    empty = table.schema().as_arrow().empty_table().to_batches() or []
    writer.append(empty, {offsets_property("g"): encode_offsets({(T, 0): 3})})
    writer.append(empty, {offsets_property("g"): encode_offsets({(T, 0): 8, (T, 1): 2})})
    writer.append(empty, {"k2.platform-sequence": "77"})  # another writer's commit, without our offsets
    assert table_offsets(writer.refresh(), "g") == {(T, 0): 8, (T, 1): 2}
    assert table_offsets(writer.table, "h") == {}
    assert len(writer.table.snapshots()) == 3
