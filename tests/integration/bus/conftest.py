"""Fixtures for the Kafka tests: a real KRaft broker and Apicurio Registry (Confluent API), and helpers.

``bus`` gives the bootstrap servers and registry URL of the session's broker and registry (the
``kafka`` and ``schema_registry`` fixtures, started from the project's dev services). Every test uses its own
topic (a unique asset class) and consumer group, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from k2.bus.admin import admin_client, ensure_topics, topic_specs
from k2.bus.producer import BatchProducer
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroEncoder
from k2.bus.topics import dlq_topic, topic_name, value_subject
from k2.config import K2Settings, KafkaSettings, LakeSettings, SourceSettings
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema import TRADE
from k2.schema.kinds import RecordKind
from k2.schema.model import RecordSchema
from k2.sources import RawFrame
from tests.integration.services.fixtures import KafkaService, RegistryService


@dataclass(frozen=True)
class Bus:
    bootstrap_servers: str
    registry_url: str


@pytest.fixture(scope="session")
def bus(kafka: KafkaService, schema_registry: RegistryService) -> Bus:
    """The session's broker and registry (tests/integration/services/fixtures.py)."""
    return Bus(kafka.bootstrap_servers, schema_registry.url)


@pytest.fixture(autouse=True)
def _free_clients() -> Iterator[None]:
    """Collect each test's Kafka clients (their callbacks form reference cycles) while the broker still
    runs, so that no client keeps reconnecting to a stopped broker at the end of the session."""
    yield
    gc.collect()


@pytest.fixture
def bus_settings(bus: Bus, tmp_path: Path) -> K2Settings:
    """Settings with a fresh topic (unique asset class), group and warehouse for one test."""
    token = "t" + uuid.uuid4().hex[:10]
    return K2Settings(
        source=SourceSettings(symbols=("BTCUSDT", "ETHUSDT"), exchange_info_cache=tmp_path / "xinfo.json"),
        lake=LakeSettings(warehouse=tmp_path / "warehouse", flush_rows=5_000, flush_seconds=0.3),
        kafka=KafkaSettings(
            bootstrap_servers=bus.bootstrap_servers,
            schema_registry_url=bus.registry_url,
            asset_class=token,
            partitions=3,
            consumer_group=f"g-{token}",
            batch_size=2_000,
            poll_timeout_s=0.2,
            session_timeout_ms=6_000,
            linger_ms=5,
        ),
    )


@pytest.fixture(scope="session")
def recording_batch(bundled_frames: list[RawFrame]) -> pa.RecordBatch:
    """The bundled recording parsed to one canonical batch (34,419 trades)."""
    parsed = parse_canonical(
        "binance", bundled_frames, symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    )
    assert not parsed.rejected
    return parsed.records[RecordKind.TRADES]


IGNORED = ("ingestion_timestamp", "platform_sequence")  # set by whichever process received the frame


def table_rows(settings: K2Settings) -> pa.Table:
    lake = settings.lake
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
    return table.scan().to_arrow()


def assert_exactly(settings: K2Settings, expected: pa.RecordBatch | pa.Table) -> None:
    """The table holds exactly ``expected``: same count, each message id once, every value equal."""
    got = table_rows(settings)
    assert got.num_rows == expected.num_rows
    ids = got.column("message_id").to_pylist()
    assert len(set(ids)) == len(ids), "every message exactly once"
    columns = [n for n in expected.schema.names if n not in IGNORED]
    want = pa.Table.from_batches([expected]) if isinstance(expected, pa.RecordBatch) else expected
    key = [("message_id", "ascending")]
    assert got.select(columns).sort_by(key).to_pylist() == want.select(columns).sort_by(key).to_pylist()


def produce(settings: K2Settings, batch: pa.RecordBatch, record: RecordSchema = TRADE) -> str:
    """Produce ``batch`` to the settings' trades topic (created if needed) through BatchProducer; the topic."""
    kafka = settings.kafka
    topic = topic_name(kafka.asset_class, "trades", "binance")
    ensure_topics(admin_client(kafka.bootstrap_servers), topic_specs(kafka, topic, dlq_topic(topic)))
    registry = SchemaRegistry(kafka.schema_registry_url)
    schema_id = registry.register(value_subject(topic), record)
    registry.close()
    producer = BatchProducer(kafka, topic, AvroEncoder(schema_id, record))
    asyncio.run(producer.send(batch))
    assert producer.close(30.0) == 0
    assert producer.stats.delivered == batch.num_rows
    return topic


def subprocess_env(settings: K2Settings, tmp_path: Path) -> dict[str, str]:
    """Environment that makes `python -m k2.cli consume` use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    env["K2_CONFIG_FILE"] = str(tmp_path / "no-such-k2.toml")
    for name, value in settings.kafka.model_dump().items():
        env[f"K2_KAFKA__{name.upper()}"] = str(value)
    env["K2_LAKE__WAREHOUSE"] = str(settings.lake.warehouse)
    env["K2_LAKE__FLUSH_ROWS"] = str(settings.lake.flush_rows)
    env["K2_LAKE__FLUSH_SECONDS"] = str(settings.lake.flush_seconds)
    return env


def start_k2(
    settings: K2Settings, tmp_path: Path, name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m k2.cli <args>`` with ``settings`` (plus ``env``), logging to ``<name>.log``."""
    with (tmp_path / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "k2.cli", *args],
            env=subprocess_env(settings, tmp_path) | (env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def start_consumer(settings: K2Settings, tmp_path: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    return start_k2(settings, tmp_path, name, "consume", *args)


def high_watermarks(settings: K2Settings, topic: str) -> dict[int, int]:
    """Each partition's high watermark (an AssertionError while the topic has no leader yet, so that
    ``eventually`` asks again)."""
    probe = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "probe"})
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    except KafkaException as exc:
        raise AssertionError(str(exc)) from exc
    finally:
        probe.close()


def committed_rows(settings: K2Settings) -> int:
    """Rows in the table's current snapshot (0 before the first commit)."""
    lake = settings.lake
    snapshot = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES).current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.additional_properties.get("total-records", 0))
