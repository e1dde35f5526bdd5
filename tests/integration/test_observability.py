"""Observability end to end: `k2 run --metrics-port` streams the bundled recording from the emulator
(a dropped connection, malformed frames, a gap that backfill closes over REST after a 429), a real
Prometheus scrapes it every second, and every PromQL query of the Grafana dashboards returns data;
Prometheus holds exactly the pipeline's figures, the alert rules load, the service log is JSON lines,
and `k2 status` reads the same process. Also: `k2 status` shows live figures during `k2 demo`.

Panels whose metrics only other processes produce (Kafka producer/consumer, query latency) are
verified by test_observability_kafka.py against `k2 ingest`, `k2 consume` and a query process; here
their labelled families are checked to really have no series.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from k2.cli import app
from k2.emulator.faults import MALFORMED_KINDS, Faults
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.services.status import build_report, scrape
from tests.conftest import eventually
from tests.observability import ALERTS, dashboard_exprs, declared_series, k2_names, prometheus_bin_dir

pytestmark = pytest.mark.integration

TOTAL_TRADES = 34_419
TABLE = "market_data.trades"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval becomes here (scrape interval 1 s)

# Metric families the embedded `k2 run` does not produce, and why; checked to have no labelled series here.
_DISTRIBUTED = "produced by `k2 ingest`/`k2 consume` (Kafka), not by the embedded `k2 run`"
NOT_IN_EMBEDDED_RUN = {
    "k2_query_duration_seconds": "produced by processes that run queries (`k2 query`, an API), not by `k2 run`",
    "k2_producer_messages_total": _DISTRIBUTED,
    "k2_producer_backpressure_waits_total": _DISTRIBUTED,
    "k2_consumer_messages_total": _DISTRIBUTED,
    "k2_consumer_dead_letters_total": _DISTRIBUTED,
    "k2_consumer_lag_rows": _DISTRIBUTED,
    "k2_producer_queue_rows": _DISTRIBUTED,
}
# Dashboard queries using any of these families are verified by test_observability_kafka.py (with
# real data from the Kafka processes), every other query here: together, all of them.
KAFKA_STACK_FAMILIES = frozenset(NOT_IN_EMBEDDED_RUN) | {
    "k2_lake_commit_failures_total",  # counted by both `k2 run` and `k2 consume`; panel shown with Kafka
}


def metric_families(expr: str) -> set[str]:
    """The k2 metric families (histogram suffixes removed) a PromQL expression uses."""
    names = k2_names(expr)
    return names | {name.removesuffix(suffix) for name in names for suffix in ("_bucket", "_sum", "_count")}


def split_dashboard_exprs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(queries verified on the embedded `k2 run`, queries verified on the Kafka stack)."""
    exprs = dashboard_exprs()
    kafka = [(t, e) for t, e in exprs if metric_families(e) & KAFKA_STACK_FAMILIES]
    return [x for x in exprs if x not in kafka], kafka


EMBEDDED_EXPRS, _ = split_dashboard_exprs()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@dataclass
class Stack:
    metrics_url: str
    prometheus_url: str
    injected: dict[str, int]
    frames_sent: int

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = _get_json(f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float:
        (sample,) = self.query(promql)
        return float(sample["value"][1])


def _start_prometheus(tmp: Path, targets: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A real Prometheus scraping ``targets`` (job name -> host:port) every second."""
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                str(prometheus_bin_dir() / "prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    eventually(ready, timeout=60, interval=0.2)
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("observability")
    bin_dir = prometheus_bin_dir()  # fetch before anything starts (may take a while the first time)
    assert (bin_dir / "prometheus").exists()
    # a dropped connection, malformed frames, and 40 withheld trades that backfill fetches over REST
    # after a 429: every feed, quality and backfill series gets data
    faults = Faults(
        malformed_every=4_000, disconnect_after=(15_000,), withhold=((5_001, 40),), rest_errors=((429, 0.1),)
    )
    with EmulatorThread(ReplayConfig(speed=None, faults=faults)) as emu:
        metrics_port = _free_port()
        env = {
            **os.environ,
            "K2_CONFIG_FILE": str(tmp / "absent.toml"),
            "K2_SOURCE__REST_URL": emu.emulator.http_url,
            "K2_SOURCE__RECONNECT_INITIAL_S": "0.05",
            "K2_QUALITY__GAP_GRACE_S": "0.5",
            "K2_SOURCE__EXCHANGE_INFO_CACHE": str(tmp / "xinfo.json"),
            "K2_LAKE__FLUSH_ROWS": "5000",
            "K2_LAKE__FLUSH_SECONDS": "0.2",
            "K2_LAKE__MAINTENANCE_EVERY_COMMITS": "2",
            "K2_LOG__FORMAT": "json",
        }
        with (tmp / "k2-run.log").open("wb") as run_log, (tmp / "k2-run.out").open("wb") as run_out:
            pipeline = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "k2.cli",
                    "run",
                    "--ws-url",
                    emu.url,
                    "--symbols",
                    "BTCUSDT,ETHUSDT",
                    "--warehouse",
                    str(tmp / "warehouse"),
                    "--sample",
                    "--metrics-port",
                    str(metrics_port),
                ],
                env=env,
                stdout=run_out,
                stderr=run_log,
            )
        prometheus = None
        try:
            prometheus, prom_url = _start_prometheus(tmp, {"k2-run": f"127.0.0.1:{metrics_port}"})
            stack = Stack(f"http://127.0.0.1:{metrics_port}/metrics", prom_url, {}, 0)

            def everything_committed_and_scraped() -> bool:
                assert pipeline.poll() is None, (tmp / "k2-run.log").read_text()[-3000:]
                rows = stack.query(f'k2_lake_rows_written_total{{table="{TABLE}"}}')
                if not rows or float(rows[0]["value"][1]) < TOTAL_TRADES:
                    return False
                # a few scrapes after the last commit, so every rate window has two samples
                return stack.value(f'count_over_time(k2_lake_rows_written_total{{table="{TABLE}"}}[5s])') >= 4

            eventually(everything_committed_and_scraped, timeout=180, interval=0.5)
            stack.injected = dict(emu.emulator.injected)
            stack.frames_sent = emu.emulator.frames_sent
            yield stack
        finally:
            _stop(pipeline)
            if prometheus is not None:
                _stop(prometheus)
    out = (tmp / "k2-run.out").read_text()
    assert pipeline.returncode == 0, (tmp / "k2-run.log").read_text()[-3000:]
    assert f"{TOTAL_TRADES} rows in" in out
    _assert_json_log((tmp / "k2-run.log").read_text())


def _assert_json_log(text: str) -> None:
    """K2_LOG__FORMAT=json: every line (K2's events and libraries' records) is one JSON object."""
    lines = [json.loads(line) for line in text.splitlines()]
    assert all({"event", "level", "timestamp"} <= set(line) for line in lines)
    assert all(line["timestamp"].endswith("Z") for line in lines)
    ours = [line for line in lines if "logger" not in line]  # structlog events (stdlib records carry "logger")
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", line["event"]) for line in ours), [e["event"] for e in ours]
    (stopped,) = [line for line in ours if line["event"] == "pipeline.stopped"]
    assert stopped["rows_committed"] == TOTAL_TRADES
    assert {"ws.connected", "ws.disconnected", "frame.rejected"} <= {line["event"] for line in ours}


def _grafana(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL)


@pytest.mark.parametrize(("title", "expr"), EMBEDDED_EXPRS, ids=[t for t, _ in EMBEDDED_EXPRS])
def test_every_dashboard_query_returns_data(stack: Stack, title: str, expr: str) -> None:
    result = stack.query(_grafana(expr))
    assert result, f"{title}: no data for {expr}"


def test_metrics_not_produced_here_really_have_no_series(stack: Stack) -> None:
    declared = declared_series()
    for family in NOT_IN_EMBEDDED_RUN:
        names = [n for n in declared if family in {n, *(n.removesuffix(s) for s in ("_bucket", "_sum", "_count"))}]
        assert names, f"{family} is not declared in k2.metrics any more: update NOT_IN_EMBEDDED_RUN"
        selector = "|".join(names)
        assert stack.query(f'{{__name__=~"{selector}"}}') == [], f"{family} is produced by `k2 run` now"


def test_prometheus_holds_exactly_the_pipeline_figures(stack: Stack) -> None:
    malformed = sum(stack.injected[k] for k in MALFORMED_KINDS)
    assert malformed > 0 and stack.injected["disconnect"] == 1 and stack.injected["withheld"] == 40
    assert stack.value("sum(k2_backfill_trades_total)") == 40
    assert stack.value('sum(k2_backfill_gaps_total{outcome="resolved"})') >= 1
    assert stack.query('k2_backfill_gaps_total{outcome="unrecoverable"}') == []
    assert stack.value('sum(k2_rest_requests_total{status="429"})') == 1
    assert stack.value(f'k2_lake_rows_written_total{{table="{TABLE}"}}') == TOTAL_TRADES
    # parsed from the WebSocket; the 40 withheld trades came in by backfill
    assert stack.value('k2_records_normalized_total{venue="binance", data_type="trades"}') == TOTAL_TRADES - 40
    assert stack.value("sum(k2_messages_rejected_total)") == malformed
    rejected = {r["metric"]["reason"]: float(r["value"][1]) for r in stack.query("k2_messages_rejected_total")}
    assert rejected == {k: float(stack.injected[k]) for k in MALFORMED_KINDS if stack.injected[k]}
    assert stack.value('k2_ws_messages_received_total{venue="binance"}') == stack.frames_sent
    assert stack.value('sum(k2_ws_reconnects_total{venue="binance"})') == 1
    assert stack.value('k2_ws_connected{venue="binance"}') == 1
    # the newest event of each symbol is the last trade of the recording (2024-08-09 00:05 UTC)
    newest = {r["metric"]["symbol"]: float(r["value"][1]) for r in stack.query("k2_last_event_timestamp_seconds")}
    assert set(newest) == {"BTCUSDT", "ETHUSDT"}
    assert all(1_723_161_600 < t < 1_723_162_000 for t in newest.values()), newest
    commits = stack.value(f'k2_lake_commit_duration_seconds_count{{table="{TABLE}"}}')
    assert commits >= 2
    assert stack.value(f'k2_lake_batch_rows_sum{{table="{TABLE}"}}') == TOTAL_TRADES
    assert stack.value(f'k2_lake_batch_rows_count{{table="{TABLE}"}}') == commits


def test_alert_rules_load_and_evaluate_in_prometheus(stack: Stack) -> None:
    groups = _get_json(f"{stack.prometheus_url}/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert all(r["health"] == "ok" for r in rules.values()), {n: r.get("lastError") for n, r in rules.items()}
    # the feed is up and every record was committed: no feed or commit alert is active
    active = {r["name"] for r in rules.values() if r["state"] != "inactive"}
    assert not active & {"K2ProcessDown", "K2FeedDown", "K2CommitsFailing"}


def test_status_reads_the_running_pipeline(stack: Stack) -> None:
    report = build_report(scrape(stack.metrics_url))
    (feed,) = [f for f in report.feeds if f.venue == "binance"]
    assert (feed.connected, feed.frames, feed.reconnects) == (True, stack.frames_sent, 1)
    (table,) = [t for t in report.tables if t.table == TABLE]
    assert table.rows == TOTAL_TRADES
    assert {s.symbol for s in report.symbols} == {"BTCUSDT", "ETHUSDT"}
    result = CliRunner().invoke(app, ["status", "--url", stack.metrics_url, "--interval", "0.2", "--count", "1"])
    assert result.exit_code == 0, result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.output.splitlines()]
    assert ["binance", "connected", f"{stack.frames_sent:,}", "0.0", "1"] in rows


def test_status_shows_live_figures_during_the_demo(tmp_path: Path) -> None:
    port = _free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "k2.cli",
            "demo",
            "--warehouse",
            str(tmp_path / "demo"),
            "--speed",
            "5",  # ~130 s of replay: the figures below are read while it runs, then SIGTERM ends it
            "--metrics-port",
            str(port),
        ],
        env={**os.environ, "K2_CONFIG_FILE": str(tmp_path / "absent.toml")},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def streaming() -> bool:
            assert demo.poll() is None, "the demo ended before any figure was read"
            try:
                report = build_report(scrape(url))
            except Exception:
                return False
            return any(f.venue == "binance" and f.connected and f.frames > 0 for f in report.feeds)

        eventually(streaming, timeout=60, interval=0.1)
        result = CliRunner().invoke(app, ["status", "--url", url, "--interval", "1.5", "--count", "1"])
        assert result.exit_code == 0, result.output
        rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.output.splitlines()]
        (binance,) = [r for r in rows if r[:2] == ["binance", "connected"]]
        assert float(binance[3].replace(",", "")) > 0, result.output  # frames/s while the replay runs
        demo.send_signal(signal.SIGTERM)  # the demo stops early, commits what it received, and sums up
        out, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, out.decode()[-3000:]
    assert f"Prometheus metrics on {url}" in out.decode()
    assert "Rows per symbol" in out.decode()
