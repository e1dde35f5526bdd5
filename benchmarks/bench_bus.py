"""Kafka path benchmarks: Avro serde per core; producer msgs/s and consumer -> Iceberg rows/s, each
against the straightforward way in the same run.

    .venv/bin/python -m benchmarks.bench_bus serde [--repeat 5]
    .venv/bin/python -m benchmarks.bench_bus kafka [--copies 24] [--runs 3] [--consumers 1] [--partitions 6]

``serde`` (no broker) times, on the bundled real recording (34,419 trades), single thread:
  * ``fastavro-logical``: the straightforward way, one ``schemaless_writer``/``schemaless_reader``
    call per record with the full schema (Decimal and datetime objects), rows from ``to_pylist``
    and Arrow built with ``from_pylist``;
  * ``k2``: K2's column-wise path (:class:`AvroEncoder`/:class:`AvroDecoder`);
  * ``k2-per-message``: K2's decoder with ``columnar=False`` (fastavro per message, raw schemas:
    the path K2 keeps for messages the column-wise plan does not handle);
  * ``k2-resolving``: K2's decoder reading v3-written messages with the v2 reader (schema resolution).

``kafka`` starts a broker and a registry from k2.devservices (or uses ``--bootstrap``/``--registry``)
and runs, ``--runs`` times and interleaved (the order alternating run by run, so drifts in the
machine's speed hit both alike):
  * produce ``copies`` x the recording with :class:`BatchProducer` (K2), and with the per-record
    producer: ``to_pylist`` rows, fastavro ``schemaless_writer`` per record with the logical schema,
    ``Producer.produce`` per record with a delivery callback, the same librdkafka settings
    (:func:`k2.bus.producer.producer_config`: idempotent, acks=all, zstd, linger); msgs/s from the
    first send to the last delivery report;
  * consume that topic into a fresh Iceberg table with ``--consumers`` `k2 consume` processes of a
    fresh group (K2), and with one per-record consumer process: ``consume()`` batches, fastavro
    ``schemaless_reader`` per message, ``Table.from_pylist`` and pyiceberg's ``table.append`` every
    ``lake.flush_rows`` rows or ``lake.flush_seconds``, then a Kafka offset commit; rows/s from the
    first message consumed to the last Iceberg commit.
Then the medians and their ratios. A control (single-thread serde rates, no broker) is printed before
and after: it shows the machine's speed in the same minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa

from k2.bus.serde import AvroDecoder, AvroEncoder, frame
from k2.config import K2Settings, KafkaSettings, LakeSettings
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.feed.stamp import parse_canonical
from k2.logging import configure_logging
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
    per_message = AvroDecoder(TRADE, lambda i: to_avro(TRADE), columnar=False)
    assert per_message.decode(values).batch.equals(batch)
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
        ("decode k2-per-message", lambda: per_message.decode(values)),
        ("decode k2-resolving v2->v3", lambda: resolving.decode(v2_values)),
    ):
        med, lo, hi = _rate(n, fn, repeat)
        print(f"  {name:28s} {med:>10,.0f}  ({lo:,.0f} - {hi:,.0f})")


def control(repeat: int = 3) -> str:
    """Single-thread serde rates (no broker): the machine's speed in these minutes."""
    batch = recording()
    n = batch.num_rows
    full = fastavro.parse_schema(to_avro(TRADE))
    values = AvroEncoder(1, TRADE).encode(batch)

    def naive_decode() -> None:
        for v in values:
            fo = io.BytesIO(v)
            fo.seek(5)
            fastavro.schemaless_reader(fo, full, None)

    decoder = AvroDecoder(TRADE, lambda i: to_avro(TRADE))
    per_record = _rate(n, naive_decode, repeat)[0]
    k2 = _rate(n, lambda: decoder.decode(values), repeat)[0]
    return f"serde control: decode fastavro per record {per_record:,.0f}/s, k2 {k2:,.0f}/s (single thread)"


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


def _topic(settings: K2Settings) -> tuple[str, int]:
    """The settings' trades topic (created) and the trade schema's id (registered)."""
    from k2.bus.admin import admin_client, ensure_topics, topic_specs
    from k2.bus.registry import SchemaRegistry
    from k2.bus.topics import dlq_topic, topic_name, value_subject

    kafka = settings.kafka
    topic = topic_name(kafka.asset_class, "trades", "binance")
    ensure_topics(admin_client(kafka.bootstrap_servers), topic_specs(kafka, topic, dlq_topic(topic)))
    registry = SchemaRegistry(kafka.schema_registry_url)
    schema_id = registry.register(value_subject(topic), TRADE)
    registry.close()
    return topic, schema_id


def _chunks(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
    return [batch.slice(i, 5_000) for i in range(0, batch.num_rows, 5_000)]


def _produce(settings: K2Settings, batch: pa.RecordBatch, copies: int) -> float:
    """K2: :class:`BatchProducer`; msgs/s from the first send to the last delivery report."""
    from k2.bus.producer import BatchProducer

    topic, schema_id = _topic(settings)
    producer = BatchProducer(settings.kafka, topic, AvroEncoder(schema_id, TRADE))
    chunks = _chunks(batch)

    async def send_all() -> None:
        for _ in range(copies):
            for chunk in chunks:
                await producer.send(chunk)

    start = time.perf_counter()
    asyncio.run(send_all())
    assert producer.close(120.0) == 0
    elapsed = time.perf_counter() - start
    assert producer.stats.failed == 0 and producer.stats.delivered == copies * batch.num_rows
    return producer.stats.delivered / elapsed


def _produce_per_record(settings: K2Settings, batch: pa.RecordBatch, copies: int) -> float:
    """The straightforward producer: fastavro and ``produce`` per record, K2's librdkafka settings."""
    from confluent_kafka import Producer

    from k2.bus.producer import producer_config

    topic, schema_id = _topic(settings)
    producer = Producer(producer_config(settings.kafka, "bench-per-record"))
    schema = fastavro.parse_schema(to_avro(TRADE))
    header = frame(schema_id, b"")
    counts = {"delivered": 0, "failed": 0}

    def on_delivery(err: Any, msg: Any) -> None:
        counts["failed" if err is not None else "delivered"] += 1

    chunks = _chunks(batch)
    start = time.perf_counter()
    for _ in range(copies):
        for chunk in chunks:
            for i, row in enumerate(chunk.to_pylist()):
                row["vendor_data"] = dict(row["vendor_data"])
                buf = io.BytesIO()
                buf.write(header)
                fastavro.schemaless_writer(buf, schema, row)
                while True:
                    try:
                        producer.produce(topic, buf.getvalue(), row["symbol"].encode(), on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.005)
                if i % 1_000 == 0:
                    producer.poll(0)
    assert producer.flush(120.0) == 0
    elapsed = time.perf_counter() - start
    assert counts == {"delivered": copies * batch.num_rows, "failed": 0}
    return counts["delivered"] / elapsed


def _consume_worker(settings_json: str) -> dict[str, Any]:
    from k2.services.consume import build_consumer

    configure_logging("WARNING")
    settings = K2Settings.model_validate_json(settings_json)
    consumer, registry = build_consumer(settings, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    stats = consumer.run(idle_exit_s=5.0, duration_s=600)
    registry.close()
    return stats.as_dict()


def _per_record_consume_worker(settings_json: str) -> dict[str, Any]:
    """The straightforward consumer: fastavro per message, pyiceberg ``append`` per flush, then the
    Kafka offsets committed (at least once). Same table spec, flush size and interval as K2's."""
    from confluent_kafka import Consumer

    from k2.lake.catalog import load_or_create_table, open_catalog

    configure_logging("WARNING")
    settings = K2Settings.model_validate_json(settings_json)
    kafka, lake = settings.kafka, settings.lake
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": kafka.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([_topic(settings)[0]])
    schema = fastavro.parse_schema(to_avro(TRADE))
    rows: list[dict[str, Any]] = []
    committed, first, last, since, idle = 0, None, None, time.monotonic(), time.monotonic()

    def flush() -> None:
        nonlocal rows, committed, last, since
        if rows:
            table.append(pa.Table.from_pylist(rows, schema=TRADE_ARROW_SCHEMA))
            consumer.commit(asynchronous=False)
            committed += len(rows)
            last = time.time()
        rows, since = [], time.monotonic()

    try:
        while time.monotonic() - idle < 5.0:
            for msg in consumer.consume(kafka.batch_size, kafka.poll_timeout_s):
                if msg.error() is not None:
                    continue
                if first is None:
                    first = time.time()
                idle = time.monotonic()
                fo = io.BytesIO(msg.value())
                fo.seek(5)
                record = fastavro.schemaless_reader(fo, schema, None)
                record["vendor_data"] = list(record["vendor_data"].items())
                rows.append(record)
            if len(rows) >= lake.flush_rows or (rows and time.monotonic() - since >= lake.flush_seconds):
                flush()
        flush()
    finally:
        consumer.close()
    return {"rows_committed": committed, "first_message_at": first, "last_commit_at": last}


def _consume(settings: K2Settings, processes: int, worker: Any = _consume_worker) -> float:
    """rows/s of ``processes`` consumer processes, from the first message to the last commit."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.map(worker, [settings.model_dump_json()] * processes)
    rows = sum(r["rows_committed"] for r in results)
    first = min(r["first_message_at"] for r in results if r["first_message_at"])
    last = max(r["last_commit_at"] for r in results if r["last_commit_at"])
    return rows / (last - first)


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


def _variant(base: K2Settings, token: str, warehouse: Path) -> K2Settings:
    """``base`` with its own topic (asset class ``token``), group and warehouse."""
    return base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"asset_class": token, "consumer_group": f"bench-{token}"}),
            "lake": base.lake.model_copy(update={"warehouse": warehouse}),
        }
    )


def _report(name: str, k2: list[float], baseline: list[float], unit: str) -> None:
    ratios = [a / b for a, b in zip(k2, baseline, strict=True)]
    print(f"\n{name} ({unit}), run by run: K2 / per-record = ratio")
    for i, (a, b, r) in enumerate(zip(k2, baseline, ratios, strict=True), 1):
        print(f"  run {i}: {a:>10,.0f} / {b:>10,.0f} = {r:.2f}x")
    k2_med, base_med = statistics.median(k2), statistics.median(baseline)
    print(f"  median: {k2_med:>10,.0f} / {base_med:>10,.0f} = {k2_med / base_med:.2f}x")


def bench_kafka(args: argparse.Namespace) -> None:
    from k2.devservices.kafka import KafkaCluster
    from k2.devservices.registry import ApicurioRegistry

    batch = recording()
    print(f"load average: {os.getloadavg()[0]:.2f}; {control()}", flush=True)
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
            n = args.copies * batch.num_rows
            print(f"{n:,} messages per run, {args.partitions} partitions, {args.runs} interleaved runs", flush=True)
            produced: dict[str, list[float]] = {"k2": [], "per-record": []}
            for run in range(args.runs):
                order = ["k2", "per-record"] if run % 2 == 0 else ["per-record", "k2"]
                for who in order:
                    settings = _variant(base, f"{token}_p{run}_{who[0]}", root / "unused")
                    produce = _produce if who == "k2" else _produce_per_record
                    produced[who].append(produce(settings, batch, args.copies))
                    print(f"  produce run {run + 1} {who}: {produced[who][-1]:,.0f} msgs/s", flush=True)
            if args.tail:
                _bench_tail(_variant(base, f"{token}_p0_k", root / "unused"), args.tail)
            source = f"{token}_p0_k"  # the topic K2 produced in run 1: every consumer reads it
            consumed: dict[str, list[float]] = {"k2": [], "per-record": []}
            for run in range(args.runs):
                order = ["k2", "per-record"] if run % 2 == 0 else ["per-record", "k2"]
                for who in order:
                    settings = _variant(base, source, root / f"wh-{run}-{who}")
                    settings = settings.model_copy(
                        update={"kafka": settings.kafka.model_copy(update={"consumer_group": f"c{run}-{who}"})}
                    )
                    if who == "k2":
                        consumed[who].append(_consume(settings, args.consumers))
                    else:
                        consumed[who].append(_consume(settings, 1, _per_record_consume_worker))
                    print(f"  consume run {run + 1} {who}: {consumed[who][-1]:,.0f} rows/s", flush=True)
            _report("produce", produced["k2"], produced["per-record"], "msgs/s")
            _report(
                f"consume -> Iceberg, K2 {args.consumers} process(es) vs 1",
                consumed["k2"],
                consumed["per-record"],
                "rows/s",
            )
        finally:
            for service in reversed(services):
                service.stop()
    print(f"\nload average: {os.getloadavg()[0]:.2f}; {control()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serde")
    s.add_argument("--repeat", type=int, default=5)
    k = sub.add_parser("kafka")
    k.add_argument("--copies", type=int, default=24, help="times the recording is produced per run")
    k.add_argument("--runs", type=int, default=3, help="interleaved runs of K2 and the per-record baseline")
    k.add_argument("--consumers", type=int, default=1, help="K2 consumer processes (the baseline runs one)")
    k.add_argument("--partitions", type=int, default=6)
    k.add_argument("--bootstrap")
    k.add_argument("--registry")
    k.add_argument("--tail", type=int, default=0, help="also time reading this many newest msgs per partition")
    args = ap.parse_args()
    configure_logging("WARNING")
    if args.what == "serde":
        bench_serde(args.repeat)
    else:
        bench_kafka(args)


if __name__ == "__main__":
    main()
