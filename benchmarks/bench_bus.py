"""Kafka path benchmarks: Avro serde per core, producer msgs/s, consumer -> Iceberg rows/s.

    .venv/bin/python -m benchmarks.bench_bus serde [--repeat 5]
    .venv/bin/python -m benchmarks.bench_bus kafka [--copies 6] [--consumers 1 2] [--partitions 6] [--tail 50000]

``serde`` (no broker) times, on the bundled real recording (34,419 trades), single thread:
  * ``fastavro-logical``: the straightforward way, one ``schemaless_writer``/``schemaless_reader``
    call per record with the full schema (Decimal and datetime objects), rows from ``to_pylist``
    and Arrow built with ``from_pylist``;
  * ``k2``: K2's path (:class:`AvroEncoder`/:class:`AvroDecoder`): raw schemas (decimal bytes and
    timestamp longs converted column-wise), no resolution when writer == reader;
  * ``k2-resolving``: K2's decoder reading v3-written messages with the v2 reader (schema resolution).

``kafka`` starts a broker and a registry from k2.devservices (or uses ``--bootstrap``/``--registry``),
produces ``copies`` x the recording with :class:`BatchProducer` (idempotent, acks=all, zstd) and
reports msgs/s from the first send to the last delivery report; then, for each value of
``--consumers``, runs that many consumer processes of a fresh group into a fresh Iceberg table and
reports rows/s from the first message consumed to the last Iceberg commit (all processes together).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa

from k2.bus.serde import AvroDecoder, AvroEncoder
from k2.config import K2Settings, KafkaSettings, LakeSettings
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.feed.stamp import parse_canonical
from k2.schema import TRADE, TRADE_ARROW_SCHEMA, to_arrow, to_avro
from k2.schema.kinds import RecordKind
from k2.schema.trade import TRADE_V2
from k2.sources import RawFrame


def recording() -> pa.RecordBatch:
    frames = [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(BUNDLED_BINANCE_TRADES)]
    return parse_canonical(
        "binance", frames, symbols=["BTCUSDT", "ETHUSDT"], first_sequence=1, is_sample_data=True
    ).records[RecordKind.TRADES]


def _rate(n: int, fn: Any, repeat: int) -> tuple[float, float, float]:
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), min(rates), max(rates)


def bench_serde(repeat: int) -> None:
    batch = recording()
    n = batch.num_rows
    full = fastavro.parse_schema(to_avro(TRADE))

    def naive_encode() -> list[bytes]:
        out = []
        for r in batch.to_pylist():
            r["vendor_data"] = dict(r["vendor_data"])
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, full, r)
            out.append(b"\0\0\0\0\1" + buf.getvalue())
        return out

    values = naive_encode()

    def naive_decode() -> pa.RecordBatch:
        recs = []
        for v in values:
            fo = io.BytesIO(v)
            fo.seek(5)
            rec = fastavro.schemaless_reader(fo, full, None)
            rec["vendor_data"] = list(rec["vendor_data"].items())
            recs.append(rec)
        return pa.RecordBatch.from_pylist(recs, schema=TRADE_ARROW_SCHEMA)

    encoder = AvroEncoder(1, TRADE)
    decoder = AvroDecoder(TRADE, lambda i: to_avro(TRADE))
    assert decoder.decode(values).batch.equals(batch)
    v2_schema = to_arrow(TRADE_V2)  # messages an older K2 sent, read by today's decoder (the upgrade)
    v2 = pa.RecordBatch.from_arrays([batch.column(f.name) for f in v2_schema], schema=v2_schema)
    v2_values = AvroEncoder(2, TRADE_V2).encode(v2)
    resolving = AvroDecoder(TRADE, lambda i: to_avro(TRADE_V2))
    resolved = resolving.decode(v2_values).batch
    assert resolved.column("instrument").null_count == n and resolved.select(v2_schema.names).equals(v2)

    print(f"trades per pass: {n}, passes: {repeat}, single thread; trades/s median (min - max)")
    for name, fn in (
        ("encode fastavro-logical", naive_encode),
        ("encode k2", lambda: encoder.encode(batch)),
        ("decode fastavro-logical", naive_decode),
        ("decode k2", lambda: decoder.decode(values)),
        ("decode k2-resolving v2->v3", lambda: resolving.decode(v2_values)),
    ):
        med, lo, hi = _rate(n, fn, repeat)
        print(f"  {name:28s} {med:>10,.0f}  ({lo:,.0f} - {hi:,.0f})")


# --- broker benchmarks -----------------------------------------------------------------------------
def _settings(bootstrap: str, registry: str, token: str, partitions: int, warehouse: Path) -> K2Settings:
    return K2Settings(
        lake=LakeSettings(warehouse=warehouse, flush_rows=100_000, flush_seconds=1.0),
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            schema_registry_url=registry,
            asset_class=token,
            partitions=partitions,
            consumer_group=f"bench-{token}",
            session_timeout_ms=6_000,
        ),
    )


def _produce(settings: K2Settings, batch: pa.RecordBatch, copies: int) -> tuple[int, float]:
    from k2.bus.admin import admin_client, ensure_topics, topic_specs
    from k2.bus.producer import BatchProducer
    from k2.bus.registry import SchemaRegistry
    from k2.bus.topics import dlq_topic, topic_name, value_subject

    kafka = settings.kafka
    topic = topic_name(kafka.asset_class, "trades", "binance")
    ensure_topics(admin_client(kafka.bootstrap_servers), topic_specs(kafka, topic, dlq_topic(topic)))
    registry = SchemaRegistry(kafka.schema_registry_url)
    schema_id = registry.register(value_subject(topic), TRADE)
    registry.close()
    producer = BatchProducer(kafka, topic, AvroEncoder(schema_id, TRADE))
    chunks = [batch.slice(i, 5_000) for i in range(0, batch.num_rows, 5_000)]

    async def send_all() -> None:
        for _ in range(copies):
            for chunk in chunks:
                await producer.send(chunk)

    start = time.perf_counter()
    asyncio.run(send_all())
    assert producer.close(120.0) == 0
    elapsed = time.perf_counter() - start
    assert producer.stats.failed == 0
    return producer.stats.delivered, elapsed


def _consume_worker(settings_json: str) -> dict[str, Any]:
    from k2.services.consume import build_consumer

    settings = K2Settings.model_validate_json(settings_json)
    consumer, registry = build_consumer(settings, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    stats = consumer.run(idle_exit_s=5.0, duration_s=600)
    registry.close()
    return stats.as_dict()


def _consume(settings: K2Settings, processes: int) -> tuple[int, float]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.map(_consume_worker, [settings.model_dump_json()] * processes)
    rows = sum(r["rows_committed"] for r in results)
    first = min(r["first_message_at"] for r in results if r["first_message_at"])
    last = max(r["last_commit_at"] for r in results if r["last_commit_at"])
    return rows, last - first


def _bench_tail(settings: K2Settings, per_partition: int) -> None:
    """`k2 ingest`'s start-up seed: read and decode the newest messages of every partition."""
    from k2.bus.registry import SchemaRegistry
    from k2.bus.tail import read_tail
    from k2.bus.topics import topic_name

    kafka = settings.kafka
    registry = SchemaRegistry(kafka.schema_registry_url)
    topic = topic_name(kafka.asset_class, "trades", "binance")
    start = time.perf_counter()
    tail = read_tail(kafka.bootstrap_servers, topic, AvroDecoder(TRADE, registry.fetch), max_messages=per_partition)
    elapsed = time.perf_counter() - start
    registry.close()
    n = tail.rows.num_rows
    print(f"seed read (read_tail, {per_partition:,}/partition): {n:,} msgs in {elapsed:.2f} s = {n / elapsed:,.0f}/s")


def bench_kafka(args: argparse.Namespace) -> None:
    from k2.devservices.kafka import KafkaCluster
    from k2.devservices.registry import ApicurioRegistry

    batch = recording()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        services: list[Any] = []
        bootstrap, registry_url = args.bootstrap, args.registry
        try:
            if bootstrap is None:
                cluster = KafkaCluster(root / "kafka")
                cluster.start()
                services.append(cluster)
                bootstrap = cluster.bootstrap_servers
            if registry_url is None:
                registry = ApicurioRegistry(root / "registry")
                registry.start()
                services.append(registry)
                registry_url = registry.url
            token = "b" + uuid.uuid4().hex[:8]
            base = _settings(bootstrap, registry_url, token, args.partitions, root / "wh")
            sent, elapsed = _produce(base, batch, args.copies)
            print(f"produce: {sent:,} msgs in {elapsed:.2f} s = {sent / elapsed:,.0f} msgs/s (acks=all, zstd)")
            if args.tail:
                _bench_tail(base, args.tail)
            for n in args.consumers:
                group = f"bench-{token}-{n}"
                settings = base.model_copy(
                    update={
                        "kafka": base.kafka.model_copy(update={"consumer_group": group}),
                        "lake": base.lake.model_copy(update={"warehouse": root / f"wh-{n}"}),
                    }
                )
                rows, seconds = _consume(settings, n)
                print(
                    f"consume -> Iceberg, {n} process(es): {rows:,} rows in {seconds:.2f} s = {rows / seconds:,.0f}/s"
                )
        finally:
            for service in reversed(services):
                service.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serde")
    s.add_argument("--repeat", type=int, default=5)
    k = sub.add_parser("kafka")
    k.add_argument("--copies", type=int, default=6, help="times the recording is produced")
    k.add_argument("--consumers", type=int, nargs="+", default=[1, 2])
    k.add_argument("--partitions", type=int, default=6)
    k.add_argument("--bootstrap")
    k.add_argument("--registry")
    k.add_argument("--tail", type=int, default=0, help="also time reading this many newest msgs per partition")
    args = ap.parse_args()
    if args.what == "serde":
        bench_serde(args.repeat)
    else:
        bench_kafka(args)


if __name__ == "__main__":
    main()
