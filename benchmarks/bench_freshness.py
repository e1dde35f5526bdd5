"""End-to-end freshness: from a trade's (emulated) exchange time to the moment a query returns it.

    PYTHONPATH=. .venv/bin/python -m benchmarks.bench_freshness embedded [--seconds 120] [--speed 5]
    PYTHONPATH=. .venv/bin/python -m benchmarks.bench_freshness kafka [--seconds 120] [--speed 5]

The emulator (child process, ``preload=True``) replays the bundled real recording at ``speed`` times
the recorded pace, so exchange times are meaningful only relative to the replay. The **emulated
event time** of a trade is ``t_start + (T - T_first) / speed``, where ``T`` is its exchange trade
time (the canonical ``timestamp`` column, Binance ``T``), ``T_first`` that of the recording's first
frame and ``t_start`` the wall-clock moment K2 received that first frame (its ``ingestion_timestamp``;
the emulator sends it when the replay starts, over loopback). Freshness of a trade is
``visible_at - emulated event time``, where ``visible_at`` is the wall-clock moment a poll query
that returns the trade for the first time completes.

Everything runs at default settings (flush 1 s / 100,000 rows; producer linger 20 ms; consumer poll
0.5 s), each service in its own process:

* ``embedded``: emulator -> ``k2 run`` (EmbeddedPipeline) -> Iceberg;
* ``kafka``: emulator -> ``k2 ingest`` -> Kafka (KafkaCluster + ApicurioRegistry from k2.devservices)
  -> ``k2 consume`` -> Iceberg. A tail consumer (own group) also records when each trade is
  readable in Kafka, which splits the latency into stages.

This process polls every ``--poll-ms`` (default 100) with ``QueryEngine.sql`` (metadata refreshed
before every query): the rows of each symbol above the newest ``source_sequence`` seen so far.
After ``--seconds`` of replay the source is stopped and polling continues until every trade the
source received is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from k2.config import K2Settings, KafkaSettings, LakeSettings, SourceSettings
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.emulator.runner import EmulatorProcess
from k2.emulator.server import ReplayConfig
from k2.feed.stamp import parse_canonical
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.logging import configure_logging
from k2.query.engine import QueryEngine
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame

SYMBOLS = ("BTCUSDT", "ETHUSDT")
Key = tuple[str, int]  # (symbol, source_sequence)


def first_trade_time_us() -> tuple[Key, int]:
    """The key and exchange time of the recording's first frame (the one the replay starts with)."""
    first = next(iter(read_recording(BUNDLED_BINANCE_TRADES)))
    parsed = parse_canonical(
        "binance",
        [RawFrame(first.frame.encode(), first.recv_us)],
        symbols=["BTCUSDT", "ETHUSDT"],
        first_sequence=1,
        is_sample_data=True,
    )
    batch = parsed.records[RecordKind.TRADES]
    key = (batch.column("symbol")[0].as_py(), batch.column("source_sequence")[0].as_py())
    return key, batch.column("timestamp").cast(pa.int64())[0].as_py()


# --- child processes --------------------------------------------------------------------------------
def _embedded_child(settings_json: str, url: str) -> None:
    from k2.services.run import run_pipeline

    configure_logging(level="WARNING")
    settings = K2Settings.model_validate_json(settings_json)
    stats = asyncio.run(run_pipeline(settings, ws_base_url=url, is_sample_data=True, fetch_symbol_info=False))
    print(f"  [embedded] {stats}", flush=True)


def _ingest_child(settings_json: str, url: str) -> None:
    from k2.services.ingest import run_ingest

    configure_logging(level="WARNING")
    settings = K2Settings.model_validate_json(settings_json)
    stats = asyncio.run(run_ingest(settings, ws_base_url=url, is_sample_data=True))
    print(f"  [ingest] {stats.as_dict()}", flush=True)


def _consume_child(settings_json: str) -> None:
    from k2.services.consume import run_consume

    configure_logging(level="WARNING")
    stats = run_consume(K2Settings.model_validate_json(settings_json))
    print(f"  [consume] {stats.as_dict()}", flush=True)


def _spawn(target: Callable[..., None], *args: Any) -> multiprocessing.process.BaseProcess:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=False)
    proc.start()
    return proc


def _stop(proc: multiprocessing.process.BaseProcess, timeout_s: float = 60.0) -> None:
    """SIGTERM: the services flush and commit what they hold, then exit."""
    if proc.is_alive():
        proc.terminate()
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()


# --- measurement ------------------------------------------------------------------------------------
@dataclass
class Observed:
    visible_at: dict[Key, float] = field(default_factory=dict)  # wall clock, s
    trade_us: dict[Key, int] = field(default_factory=dict)
    ingest_us: dict[Key, int] = field(default_factory=dict)
    in_kafka_at: dict[Key, float] = field(default_factory=dict)
    poll_s: list[float] = field(default_factory=list)


class Poller:
    """Polls the table for rows newer than the per-symbol watermarks; records when each first shows."""

    def __init__(self, lake: LakeSettings, observed: Observed) -> None:
        self.engine = QueryEngine(open_catalog(lake), lake, refresh_interval_s=0.0)
        self.observed = observed
        self.watermark = dict.fromkeys(SYMBOLS, -1)
        where = " OR ".join("(symbol = ? AND source_sequence > ?)" for _ in SYMBOLS)
        self.text = (
            "SELECT symbol, source_sequence, epoch_us(timestamp) AS t, epoch_us(ingestion_timestamp) AS i "
            f"FROM trades WHERE {where}"  # fixed text; values are bound as parameters
        )

    def poll(self) -> int:
        start = time.time()
        params: list[Any] = []
        for symbol in SYMBOLS:
            params += [symbol, self.watermark[symbol]]
        rows = self.engine.sql(self.text, params).to_pylist()
        now = time.time()
        self.observed.poll_s.append(now - start)
        obs = self.observed
        for row in rows:
            key = (row["symbol"], row["source_sequence"])
            if key in obs.visible_at:
                continue
            obs.visible_at[key] = now
            obs.trade_us[key] = row["t"]
            obs.ingest_us[key] = row["i"]
            self.watermark[key[0]] = max(self.watermark[key[0]], key[1])
        return len(rows)

    def count(self) -> int:
        return int(self.engine.sql("SELECT count(*) AS n FROM trades").to_pylist()[0]["n"])


def _poll_until(poller: Poller, interval_s: float, done: Callable[[], bool]) -> None:
    while not done():
        start = time.monotonic()
        poller.poll()
        time.sleep(max(0.0, interval_s - (time.monotonic() - start)))


def _drain(poller: Poller, interval_s: float, quiet_s: float = 5.0, limit_s: float = 60.0) -> None:
    """Keep polling after the source stopped until nothing new shows for ``quiet_s``."""
    deadline = time.monotonic() + limit_s
    last_new = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_new < quiet_s:
        start = time.monotonic()
        if poller.poll():
            last_new = time.monotonic()
        time.sleep(max(0.0, interval_s - (time.monotonic() - start)))


class KafkaTail(threading.Thread):
    """Reads the trades topic (own group, from the start) and records when each trade is readable."""

    def __init__(self, settings: K2Settings, topic: str, observed: Observed) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        from k2.bus.registry import SchemaRegistry
        from k2.bus.serde import AvroDecoder
        from k2.schema import TRADE

        self.registry = SchemaRegistry(settings.kafka.schema_registry_url)
        self.decoder = AvroDecoder(TRADE, self.registry.fetch)
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"freshness-tail-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self.consumer.subscribe([topic])
        self.observed = observed
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for msg in self.consumer.consume(1000, 0.05):
                if msg.error() is not None:
                    continue
                now = time.time()
                rec = self.decoder.decode_one(msg.value())
                self.observed.in_kafka_at.setdefault((rec["symbol"], rec["source_sequence"]), now)
        self.consumer.close()
        self.registry.close()


# --- modes --------------------------------------------------------------------------------------------
def _wait(what: str, check: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def _group_stable(settings: K2Settings) -> Callable[[], bool]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})

    def check() -> bool:
        try:
            desc = admin.describe_consumer_groups([settings.kafka.consumer_group])[settings.kafka.consumer_group]
            group = desc.result(10)
        except Exception:
            return False
        return str(group.state).endswith("STABLE") and any(m.assignment.topic_partitions for m in group.members)

    return check


def run_mode(args: argparse.Namespace, root: Path) -> Observed:
    lake = LakeSettings(warehouse=root / "wh")
    settings = K2Settings(source=SourceSettings(symbols=SYMBOLS, max_connect_attempts=3), lake=lake)
    observed = Observed()
    services: list[Any] = []
    procs: list[multiprocessing.process.BaseProcess] = []
    tail: KafkaTail | None = None
    try:
        if args.mode == "kafka":
            from k2.bus.topics import topic_name
            from k2.devservices.kafka import KafkaCluster
            from k2.devservices.registry import ApicurioRegistry

            cluster = KafkaCluster(root / "kafka")
            cluster.start()
            services.append(cluster)
            registry = ApicurioRegistry(root / "registry")
            registry.start()
            services.append(registry)
            token = "f" + uuid.uuid4().hex[:8]
            kafka = KafkaSettings(
                bootstrap_servers=cluster.bootstrap_servers,
                schema_registry_url=registry.url,
                asset_class=token,
                consumer_group=f"freshness-{token}",
                **({"poll_timeout_s": args.consumer_poll_s} if args.consumer_poll_s else {}),
            )
            settings = settings.model_copy(update={"kafka": kafka})
        load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES)  # before the services race to create it
        poller = Poller(lake, observed)
        emulator = EmulatorProcess(ReplayConfig(speed=args.speed, preload=True))
        emulator.start()
        services.append(emulator)
        if args.mode == "kafka":
            topic = topic_name(settings.kafka.asset_class, RecordKind.TRADES.value, settings.source.venue)
            procs.append(_spawn(_consume_child, settings.model_dump_json()))
            _wait("the consumer group", _group_stable(settings))
            tail = KafkaTail(settings, topic, observed)
            tail.start()
            procs.append(_spawn(_ingest_child, settings.model_dump_json(), emulator.url))
        else:
            procs.append(_spawn(_embedded_child, settings.model_dump_json(), emulator.url))
        source = procs[-1]
        _wait("the first visible trade", lambda: poller.poll() > 0 or not source.is_alive(), timeout_s=180)
        end = time.monotonic() + args.seconds
        _poll_until(poller, args.poll_ms / 1000, lambda: time.monotonic() >= end)
        _stop(source)
        _drain(poller, args.poll_ms / 1000)
        visible = len(observed.visible_at)
        total = poller.count()
        print(f"trades visible to the poller: {visible:,}; rows in the table: {total:,}")
        if visible != total:
            print("  WARNING: the poller missed rows (a row became visible below a watermark)")
    finally:
        if tail is not None:
            tail.stopping.set()
            tail.join(10)
        for proc in reversed(procs):
            _stop(proc)
        for service in reversed(services):
            service.stop()
    return observed


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _line(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:44s} (no data)"
    p = [_pct(values, q) for q in (0.5, 0.9, 0.99)]
    return (
        f"  {name:44s} n={len(values):>6,}  p50 {p[0]:7.3f}  p90 {p[1]:7.3f}  p99 {p[2]:7.3f}  "
        f"max {max(values):7.3f}  min {min(values):7.3f}"
    )


def report(observed: Observed, speed: float, warmup_s: float) -> None:
    first_key, first_us = first_trade_time_us()
    if first_key not in observed.ingest_us:
        raise SystemExit("the recording's first trade is not in the table: cannot anchor the replay")
    t_start = observed.ingest_us[first_key] / 1e6
    event = {k: t_start + (t - first_us) / 1e6 / speed for k, t in observed.trade_us.items()}
    keys = [k for k in observed.visible_at if event[k] - t_start >= warmup_s]
    span = max(event[k] for k in observed.visible_at) - t_start
    print(f"replay: speed {speed}x, {span:.1f} s of emulated time; the first {warmup_s:.0f} s excluded below")
    print("seconds; n=trades")
    print(_line("freshness: visible - emulated event time", [observed.visible_at[k] - event[k] for k in keys]))
    print(_line("  (all trades, incl. warm-up)", [observed.visible_at[k] - event[k] for k in observed.visible_at]))
    print(_line("stage: received by K2 - event", [observed.ingest_us[k] / 1e6 - event[k] for k in keys]))
    if observed.in_kafka_at:
        kk = [k for k in keys if k in observed.in_kafka_at]
        print(
            _line(
                "stage: readable in Kafka - received",
                [observed.in_kafka_at[k] - observed.ingest_us[k] / 1e6 for k in kk],
            )
        )
        print(
            _line(
                "stage: visible to query - readable in Kafka",
                [observed.visible_at[k] - observed.in_kafka_at[k] for k in kk],
            )
        )
    else:
        print(
            _line(
                "stage: visible to query - received",
                [observed.visible_at[k] - observed.ingest_us[k] / 1e6 for k in keys],
            )
        )
    print(_line("poll query duration (refresh + SQL)", observed.poll_s))
    print(f"polls: {len(observed.poll_s):,}, median {statistics.median(observed.poll_s) * 1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["embedded", "kafka"])
    ap.add_argument("--seconds", type=float, default=120.0, help="wall-clock seconds of replay measured")
    ap.add_argument("--speed", type=float, default=5.0, help="replay speed (1.0 = recorded pace)")
    ap.add_argument("--poll-ms", type=float, default=100.0)
    ap.add_argument("--consumer-poll-s", type=float, help="kafka: override KafkaSettings.poll_timeout_s (0.5)")
    ap.add_argument("--warmup", type=float, default=10.0, help="emulated seconds excluded from the headline")
    args = ap.parse_args()
    configure_logging(level="WARNING")
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="k2-bench-fresh-") as tmp:
        observed = run_mode(args, Path(tmp))
    print(f"load average after: {os.getloadavg()}")
    report(observed, args.speed, args.warmup)


if __name__ == "__main__":
    main()
