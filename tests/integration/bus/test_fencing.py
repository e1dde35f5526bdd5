"""The commit step's compare-and-set on a real table: a partition whose recorded offset moved since the
consumer took it is fenced (its rows are not committed), and other consumers' offsets are kept."""

from __future__ import annotations

import pyarrow as pa
import pytest

from k2.bus.consumer import _Commit, _Pending
from k2.bus.offsets import encode_offsets, offsets_property, table_offsets
from k2.config import K2Settings
from k2.services.consume import build_consumer
from tests.integration.bus.conftest import table_rows

pytestmark = pytest.mark.integration

T = "market.fence.trades.binance"


def test_a_moved_partition_is_fenced_and_the_others_offsets_survive(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch
) -> None:
    consumer, registry = build_consumer(bus_settings)
    try:
        writer = consumer._writer
        group = bus_settings.kafka.consumer_group
        # Another consumer of the group recorded partitions 0 and 1.
        writer.append([], {offsets_property(group): encode_offsets({(T, 0): 100, (T, 1): 50})})

        rows_p0, rows_p2 = recording_batch.slice(0, 10), recording_batch.slice(10, 5)
        job = _Commit(
            parts={
                (T, 0): _Pending([rows_p0], 10, 10, 90),  # started from 80: partition 0 moved to 100 meanwhile
                (T, 2): _Pending([rows_p2], 5, 5, 5),  # never recorded, still not recorded: ours
            },
            expected={(T, 0): 80, (T, 2): None},
        )
        done = consumer._commit(job)
        assert done.fenced == {(T, 0): (100, 10)}
        assert done.committed == {(T, 2): 5}
        assert table_offsets(writer.refresh(), group) == {(T, 0): 100, (T, 1): 50, (T, 2): 5}
        got = table_rows(bus_settings).column("message_id").to_pylist()
        assert sorted(got) == sorted(rows_p2.column("message_id").to_pylist())
    finally:
        consumer._close()
        registry.close()
