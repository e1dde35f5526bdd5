"""Several venues through Kafka: `k2 ingest --venues binance,aggtest` (one process, one runner) produces to each
venue's topics (``market.<asset_class>.<kind>.<venue>``); `k2 consume` reads every venue's topics into one
table per kind. Binance with duplicates and a withheld range backfilled over REST, AGGTEST with duplicates
and reorders; each venue's rows must land exactly once, with their canonical instrument."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from k2.bus.admin import admin_client
from k2.bus.topics import kind_topic
from k2.config import K2Settings
from k2.emulator.faults import Faults
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema.kinds import RecordKind
from k2.services.consume import default_topics, run_consume
from k2.services.ingest import IngestService
from k2.services.quality_report import quality_report_dicts
from tests import aggtest
from tests.integration.test_completeness import TOTAL, _recording
from tests.integration.test_multivenue import (
    AGG_TOTAL,
    _trades,
    assert_aggtest_exact,
    assert_binance_exact,
    run_both,
)

pytestmark = pytest.mark.integration

WITHHOLD = ((5_001, 40),)


def _ingest(settings: K2Settings) -> IngestService:
    return IngestService(settings, is_sample_data=True)


def test_two_venues_through_kafka_land_exactly_once_per_venue(bus_settings: K2Settings) -> None:
    aggtest.register()
    settings = bus_settings.model_copy(
        update={
            "source": bus_settings.source.model_copy(update={"venues": ("binance", "aggtest"), "kinds": ("trades",)}),
            "quality": bus_settings.quality.model_copy(update={"gap_grace_s": 1.0, "rest_weight_per_minute": 60_000}),
        }
    )
    binance_faults = Faults(duplicate_every=500, withhold=WITHHOLD)
    agg_faults = Faults(duplicate_every=50, reorder_every=70)
    service = asyncio.run(run_both(settings, binance_faults, agg_faults, _ingest))
    assert service.stats.backfilled == 40
    token = settings.kafka.asset_class
    for venue in ("binance", "aggtest"):
        assert service.sink.producers[(venue, RecordKind.TRADES)].topic == f"market.{token}.trades.{venue}"
        assert service.sink.producers[(venue, RecordKind.TRADES)].stats.failed == 0
    delivered = {v: service.sink.producers[(v, RecordKind.TRADES)].stats.delivered for v in ("binance", "aggtest")}
    assert delivered == {"binance": TOTAL, "aggtest": AGG_TOTAL}
    listed = set(admin_client(settings.kafka.bootstrap_servers).list_topics(timeout=10).topics)
    assert {
        kind_topic(token, k, v) for k in (RecordKind.TRADES, RecordKind.QUALITY_EVENTS) for v in ("binance", "aggtest")
    } <= listed
    assert kind_topic(token, RecordKind.QUOTES, "aggtest") not in listed  # AGGTEST serves no quotes

    # One consumer per kind, every venue's topic of it, one table.
    assert default_topics(settings) == [f"market.{token}.trades.binance", f"market.{token}.trades.aggtest"]
    stats = run_consume(settings, idle_exit_s=2.0, duration_s=120)
    assert stats.rows_committed == TOTAL + AGG_TOTAL and stats.dead_lettered == 0
    rows = _trades(settings)
    recording = _recording()
    withheld = {
        (recording[i]["s"], str(recording[i]["t"])) for start, n in WITHHOLD for i in range(start - 1, start - 1 + n)
    }
    assert_binance_exact(rows, withheld)
    assert_aggtest_exact(rows)

    # Each venue's quality events (its own topic) reached the one events table.
    events = (
        load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.QUALITY_EVENTS).scan().to_arrow()
    )
    kinds = Counter((e["exchange"], e["kind"]) for e in events.to_pylist())
    assert kinds[("BINANCE", "GAP")] >= 2 and kinds[("AGGTEST", "DUPLICATE")] >= 1
    report = quality_report_dicts(settings)
    per_venue = {e: sum(r["duplicates_dropped"] for r in report if r["exchange"] == e) for e in ("BINANCE", "AGGTEST")}
    binance_feed, agg_feed = service.feeds
    assert per_venue == {
        "BINANCE": binance_feed.get_stats()["quality"]["trades"]["duplicates_dropped"],
        "AGGTEST": agg_feed.get_stats()["quality"]["trades"]["duplicates_dropped"],
    }
    assert per_venue["AGGTEST"] > 0 and per_venue["BINANCE"] > 0
