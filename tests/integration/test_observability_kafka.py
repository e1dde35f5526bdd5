"""Observability of distributed mode, end to end: `k2 ingest` streams the bundled recording from the
emulator into a real Kafka broker (with a small producer queue, so backpressure happens), three
undecodable messages are written to the topic, `k2 consume` commits everything to Iceberg, and a
process runs QueryEngine queries on that table. A real Prometheus scrapes the three processes every
second; every dashboard query that test_observability.py leaves to this stack returns data, and
Prometheus holds exactly these processes' figures (deliveries, commits, dead letters, lag 0 per
partition once caught up, no commit failure).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from k2.bus.consumer import DEAD_LETTER_REASONS
from k2.bus.topics import topic_name
from k2.emulator.server import EmulatorThread, ReplayConfig
from tests.conftest import eventually
from tests.integration.services.fixtures import KafkaService, RegistryService
from tests.integration.test_observability import (
    EMBEDDED_EXPRS,
    KAFKA_STACK_FAMILIES,
    Stack,
    _free_port,
    _get_json,
    _grafana,
    _start_prometheus,
    _stop,
    split_dashboard_exprs,
)
from tests.observability import ROOT, dashboard_exprs, prometheus_bin_dir

pytestmark = pytest.mark.integration

TOTAL_TRADES = 34_419
GARBAGE = 3  # undecodable messages written straight to the topic: dead-lettered as not_framed
PARTITIONS = 3
TABLE = "market_data.trades"
_, KAFKA_EXPRS = split_dashboard_exprs()


class KafkaStack(Stack):
    topic: str = ""


def _popen(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def kafka_stack(
    kafka: KafkaService, schema_registry: RegistryService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaStack]:
    tmp = tmp_path_factory.mktemp("observability-kafka")
    prometheus_bin_dir()
    token = "o" + uuid.uuid4().hex[:10]
    topic = topic_name(token, "trades", "binance")
    warehouse = tmp / "warehouse"
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")} | {
        "K2_CONFIG_FILE": str(tmp / "absent.toml"),
        "K2_LAKE__WAREHOUSE": str(warehouse),
        "K2_LAKE__FLUSH_ROWS": "5000",
        "K2_LAKE__FLUSH_SECONDS": "0.3",
        "K2_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "K2_KAFKA__SCHEMA_REGISTRY_URL": schema_registry.url,
        "K2_KAFKA__ASSET_CLASS": token,
        "K2_KAFKA__PARTITIONS": str(PARTITIONS),
        "K2_KAFKA__CONSUMER_GROUP": f"g-{token}",
        "K2_KAFKA__PRODUCER_QUEUE_MESSAGES": "1000",  # far below the recording: the source is paused
        "K2_KAFKA__POLL_TIMEOUT_S": "0.2",
        "K2_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "K2_KAFKA__LINGER_MS": "5",
    }
    ports = {job: _free_port() for job in ("k2-ingest", "k2-consume", "k2-query")}
    cli = [sys.executable, "-m", "k2.cli"]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    prometheus = None
    with EmulatorThread(ReplayConfig(speed=None)) as emu:
        try:
            prometheus, prom_url = _start_prometheus(tmp, {job: f"127.0.0.1:{p}" for job, p in ports.items()})
            stack = KafkaStack(f"http://127.0.0.1:{ports['k2-consume']}/metrics", prom_url, {}, 0)
            stack.topic = topic

            def sum_of(promql: str) -> float:
                result = stack.query(f"sum({promql})")
                return float(result[0]["value"][1]) if result else 0.0

            def running() -> None:
                for job, proc in procs.items():
                    assert proc.poll() is None, (tmp / f"{job}.log").read_text()[-3000:]

            ingest_args = ["ingest", "--ws-url", emu.url, "--symbols", "BTCUSDT,ETHUSDT", "--sample"]
            ingest_args += ["--metrics-port", str(ports["k2-ingest"])]
            procs["k2-ingest"] = _popen([*cli, *ingest_args], env, tmp / "k2-ingest.log")

            def ingest_up() -> bool:  # the topic exists once the metrics endpoint serves
                running()
                return bool(stack.query('up{job="k2-ingest"} == 1'))

            eventually(ingest_up, timeout=60, interval=0.2)
            consume_args = ["consume", "--metrics-port", str(ports["k2-consume"])]
            procs["k2-consume"] = _popen([*cli, *consume_args], env, tmp / "k2-consume.log")

            def delivered() -> bool:
                running()
                return sum_of('k2_producer_messages_total{result="delivered"}') >= TOTAL_TRADES

            eventually(delivered, timeout=120, interval=0.5)

            def dead_letter_baseline_scraped() -> bool:
                # increase() needs a 0 sample before the first dead letter: the consumer exports every reason at 0
                # from its start, and Prometheus must have scraped that before the garbage arrives.
                running()
                zeros = stack.query(f'k2_consumer_dead_letters_total{{job="k2-consume", topic="{topic}"}} == 0')
                return len(zeros) == len(DEAD_LETTER_REASONS)

            eventually(dead_letter_baseline_scraped, timeout=60, interval=0.2)
            garbage = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap_servers})
            for i in range(GARBAGE):
                garbage.produce(topic, f"not avro {i}".encode(), b"BTCUSDT")
            assert garbage.flush(30) == 0

            def consumed() -> bool:
                running()
                return (
                    sum_of('k2_consumer_messages_total{result="committed"}') >= TOTAL_TRADES
                    and sum_of('k2_consumer_messages_total{result="dead_lettered"}') >= GARBAGE
                )

            eventually(consumed, timeout=120, interval=0.5)
            query_args = ["-m", "tests.integration.query_process", str(warehouse), str(ports["k2-query"])]
            procs["k2-query"] = _popen([sys.executable, *query_args], env, tmp / "k2-query.log")

            def settled() -> bool:
                running()
                if len(stack.query("k2_query_duration_seconds_count")) < 4:
                    return False
                # caught up, and a few scrapes of every process since, so each rate window has two samples
                lag = stack.query(f'k2_consumer_lag_rows{{job="k2-consume", topic="{topic}"}}')
                return (
                    len(lag) == PARTITIONS
                    and all(float(s["value"][1]) == 0 for s in lag)
                    and stack.value('min(count_over_time(up{job=~"k2-.*"}[5s]))') >= 4
                    and len(stack.query("count_over_time(k2_query_duration_seconds_count[5s]) >= 4")) == 4
                )

            eventually(settled, timeout=90, interval=0.5)
            yield stack
        finally:
            for proc in procs.values():
                _stop(proc)
            if prometheus is not None:
                _stop(prometheus)
    for job, proc in procs.items():
        assert proc.returncode == 0, (tmp / f"{job}.log").read_text()[-3000:]
    out = (tmp / "k2-consume.log").read_text()
    assert f"{TOTAL_TRADES} rows in" in out and f"{GARBAGE} dead-lettered" in out


def test_dead_letter_reasons_are_the_decoders_reasons() -> None:
    source = (ROOT / "src" / "k2" / "bus" / "serde.py").read_text()
    assert set(re.findall(r'WireFormatError\(\s*"([a-z_]+)"', source)) == set(DEAD_LETTER_REASONS)


def test_the_two_observability_stacks_split_the_dashboard_between_them() -> None:
    """No dashboard query is left out: each runs against the embedded or the Kafka stack."""
    assert sorted(EMBEDDED_EXPRS + KAFKA_EXPRS) == sorted(dashboard_exprs())
    assert not set(EMBEDDED_EXPRS) & set(KAFKA_EXPRS)
    titles = {title for title, _ in KAFKA_EXPRS}
    assert {"Consumer lag", "Iceberg commit failures", "Query latency (p99)", "Producer queue"} <= titles
    assert KAFKA_STACK_FAMILIES  # every family listed there is used by some dashboard query
    used = {f for _, e in KAFKA_EXPRS for f in KAFKA_STACK_FAMILIES if f in e}
    assert used == set(KAFKA_STACK_FAMILIES)


@pytest.mark.parametrize(("title", "expr"), KAFKA_EXPRS, ids=[t for t, _ in KAFKA_EXPRS])
def test_every_kafka_dashboard_query_returns_data(kafka_stack: KafkaStack, title: str, expr: str) -> None:
    result = kafka_stack.query(_grafana(expr))
    assert result, f"{title}: no data for {expr}"


def test_prometheus_holds_exactly_the_kafka_figures(kafka_stack: KafkaStack) -> None:
    s, topic = kafka_stack, kafka_stack.topic
    assert (
        s.value(f'k2_producer_messages_total{{job="k2-ingest", topic="{topic}", result="delivered"}}') == TOTAL_TRADES
    )
    assert s.query('k2_producer_messages_total{result="failed"}') == []
    assert s.value(f'k2_producer_backpressure_waits_total{{job="k2-ingest", topic="{topic}"}}') >= 1
    assert s.value(f'k2_producer_queue_rows{{job="k2-ingest", topic="{topic}"}}') == 0  # everything acknowledged
    quality = topic.replace(".trades.", ".quality_events.")
    assert s.value(f'k2_producer_queue_rows{{job="k2-ingest", topic="{quality}"}}') == 0  # no events to send
    assert s.value('k2_records_normalized_total{job="k2-ingest", venue="binance"}') == TOTAL_TRADES
    consumed = {r["metric"]["result"]: float(r["value"][1]) for r in s.query("k2_consumer_messages_total")}
    assert consumed == {"committed": TOTAL_TRADES, "dead_lettered": GARBAGE}
    dead = {
        (r["metric"]["topic"], r["metric"]["reason"]): float(r["value"][1])
        for r in s.query("k2_consumer_dead_letters_total")
    }
    # every reason is exported from the start (0), so that increase() sees the first dead letter
    quotes = topic.replace(".trades.", ".quotes.")
    assert dead == {(topic, reason): GARBAGE if reason == "not_framed" else 0 for reason in DEAD_LETTER_REASONS} | {
        (side, reason): 0
        for side in (quality, quotes)  # the quality-events and quotes streams of `k2 consume`
        for reason in DEAD_LETTER_REASONS
    }
    assert s.value(f'k2_lake_rows_written_total{{job="k2-consume", table="{TABLE}"}}') == TOTAL_TRADES
    lag = {
        (r["metric"]["topic"], r["metric"]["partition"]): float(r["value"][1]) for r in s.query("k2_consumer_lag_rows")
    }
    assert lag == {(t, str(p)): 0.0 for t in (topic, quality, quotes) for p in range(PARTITIONS)}
    assert s.value(f'k2_lake_commit_failures_total{{job="k2-consume", table="{TABLE}"}}') == 0
    kinds = {r["metric"]["kind"] for r in s.query('k2_query_duration_seconds_count{job="k2-query"} > 0')}
    assert kinds == {"trades", "ohlcv", "vwap", "sql"}


def test_alerts_on_the_kafka_stack(kafka_stack: KafkaStack) -> None:
    """The dead letters make K2DeadLettersIncreasing active (pending, firing once they are 5 minutes
    old: which one depends on how long the tests before this one took); lag, commit-error and
    process alerts stay inactive."""

    def rules_with_dead_letter_alert() -> dict[str, Any]:
        # Rules are evaluated every second: wait (bounded) for the evaluation that sees the dead letters.
        groups = _get_json(f"{kafka_stack.prometheus_url}/api/v1/rules")["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert rules["K2DeadLettersIncreasing"]["alerts"], "K2DeadLettersIncreasing not pending yet"
        return rules

    rules = eventually(rules_with_dead_letter_alert, timeout=30, interval=0.5)
    assert all(r["health"] == "ok" for r in rules.values()), {n: r.get("lastError") for n, r in rules.items()}
    active = {name for name, r in rules.items() if r["state"] != "inactive"}
    assert not active & {"K2ProcessDown", "K2ConsumerLagGrowing", "K2CommitErrors", "K2ProducerDeliveryFailures"}
    (alert,) = rules["K2DeadLettersIncreasing"]["alerts"]
    assert alert["state"] in ("pending", "firing")
    assert alert["labels"] == {
        "alertname": "K2DeadLettersIncreasing",
        "severity": "warning",
        "job": "k2-consume",
        "topic": kafka_stack.topic,
        "reason": "not_framed",
    }
