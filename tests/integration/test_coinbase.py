"""Coinbase end to end, embedded (`k2 run`'s machinery): the whole recorded Exchange session replayed by the
emulator in Coinbase's protocol with faults (disconnects, duplicates, reorders, withheld ranges, malformed,
hostile and crossed frames, REST 429 and 503) -> EmbeddedPipeline (subscribe handshake, heartbeats,
sequence tracking, REST backfill by trade id) -> the trades, quotes and quality-events tables.

The trades table must hold exactly the recording's 107 trades once each; the quotes table exactly the
recorded tickers the stream delivered (quotes are never backfilled), once each. Expected numbers are
computed independently from the recording and the fault plan, never from the code under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest

from k2.config import K2Settings, LakeSettings, QualitySettings, SourceSettings
from k2.devservices.common import free_port, port_open
from k2.emulator.coinbase import CoinbaseProtocol
from k2.emulator.faults import EXPECTED_REASON, FRAME, Faults, routable_frames
from k2.emulator.recording import BUNDLED_COINBASE_SESSION, read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.feed.trades import TradeCompleteness
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.quarantine import read_quarantine
from k2.query.engine import QueryEngine
from k2.schema.kinds import RecordKind
from k2.services.pipeline import EmbeddedPipeline
from k2.services.quality_report import quality_report_dicts
from k2.sources.timestamps import parse_us
from tests.conftest import eventually, eventually_async
from tests.pacing import assert_paced

pytestmark = pytest.mark.integration

PROTOCOL = CoinbaseProtocol()
ROUTED = list(routable_frames(read_recording(BUNDLED_COINBASE_SESSION), PROTOCOL.route))
PRODUCTS = (
    "SKL-USD",
    "SKL-BTC",
    "BAND-GBP",
    "NMR-EUR",
    "BAND-BTC",
    "YFI-BTC",
    "DASH-BTC",
    "NU-GBP",
    "CRV-EUR",
    "SKL-GBP",
)

# Withheld ranges (1-based positions among the recording's routed frames, level2 included): each holds
# trades followed later by another trade of the same product, so every hole is a gap K2 can see.
# (2177, 300): DASH-BTC 923561, NMR-EUR 868604-868605, SKL-USD 1568273-1568274; (3294, 2): SKL-BTC 280236;
# (5383, 8): DASH-BTC 923562-923564; (7303, 86): SKL-USD 1568289-1568297.
WITHHOLD = ((2_177, 300), (3_294, 2), (5_383, 8), (7_303, 86))
FAULT_PLAN = Faults(
    duplicate_every=50,
    reorder_every=70,
    withhold=WITHHOLD,
    disconnect_after=(40, 120),
    malformed_every=9,
    adversarial_every=4,
    crossed_every=10,
    rest_errors=((429, 0.2), (503, 0.1)),
)


def recorded(types: tuple[str, ...], *, withheld: bool | None = None) -> list[dict[str, Any]]:
    """The recorded messages of ``types`` in recording order (only the withheld ones, or only the
    others, when ``withheld`` says so)."""
    out = []
    for position, frame in enumerate(ROUTED, 1):
        message = json.loads(frame.raw)
        if message["type"] in types and (withheld is None or FAULT_PLAN.withheld(position) == withheld):
            out.append(message)
    return out


def trades() -> list[dict[str, Any]]:
    return recorded(("match", "last_match"))


def withheld_trades() -> set[tuple[str, str]]:
    return {(m["product_id"], str(m["trade_id"])) for m in recorded(("match", "last_match"), withheld=True)}


def settings_for(tmp_path: Path, **quality: Any) -> K2Settings:
    return K2Settings(
        source=SourceSettings(
            venue="coinbase", symbols=PRODUCTS, kinds=("trades", "quotes"), reconnect_initial_s=0.05,
            reconnect_max_s=0.2,
        ),
        lake=LakeSettings(warehouse=tmp_path / "warehouse", flush_rows=1_000, flush_seconds=0.2),
        quality=QualitySettings(**{"gap_grace_s": 1.0, **quality}),
    )  # fmt: skip


class _Service(Protocol):
    completeness: TradeCompleteness
    stats: Any

    async def run(self) -> Any: ...
    def stop(self) -> None: ...
    def get_stats(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=_Service)


async def run_settled(make: Callable[[K2Settings, str], S], settings: K2Settings, faults: Faults) -> tuple[S, Any]:
    """Replay the session with ``faults`` into ``make(settings with the emulator's REST URL, ws url)`` until
    everything sent (data, acks, heartbeats) is handled and no id is missing; then stop it."""
    config = ReplayConfig(protocol=CoinbaseProtocol(), recording=BUNDLED_COINBASE_SESSION, speed=None, faults=faults)
    async with BinanceEmulator(config) as emu:
        source = settings.source.model_copy(update={"rest_url": emu.http_url})
        service = make(settings.model_copy(update={"source": source}), emu.url)
        run = asyncio.create_task(service.run())
        tracker = service.completeness.tracker

        async def settled() -> bool:
            assert not run.done(), "stopped early"
            return (
                emu.finished.is_set()
                and service.stats.frames >= emu.frames_sent + emu.control_sent
                and service.get_stats()["backlog_frames"] == 0
                and service.completeness.backfilling == 0
                and all(not tracker.holes(k) for k in tracker.streams())
            )

        await eventually_async(settled, timeout=120)
        service.stop()
        await run
    return service, emu


def expected_faults(faults: Faults) -> dict[str, Counter[str]]:
    """Per product, from the frames the plan emits: duplicates, late (out-of-order) arrivals, and the
    gaps (maximal runs of ids missing from the stream below the product's last emitted id)."""
    from k2.emulator.faults import replay_frames

    emitted = [
        json.loads(f.raw)
        for f in replay_frames(read_recording(BUNDLED_COINBASE_SESSION), faults, {}, PROTOCOL.route, PROTOCOL)
        if f.kind in (FRAME, "duplicate") and (f.stream or "").startswith("matches:")
    ]
    out: dict[str, Counter[str]] = {}
    seen: dict[str, set[int]] = {}
    high: dict[str, int] = {}
    for m in emitted:
        p, t = m["product_id"], m["trade_id"]
        c = out.setdefault(p, Counter())
        if t in seen.setdefault(p, set()):
            c["duplicates"] += 1
        elif p in high and t < high[p]:
            c["out_of_order"] += 1
        seen[p].add(t)
        high[p] = max(high.get(p, t), t)
    for p, ids in seen.items():
        run = False
        for t in range(min(ids), max(ids) + 1):
            if t not in ids and not run:
                out[p]["gaps"] += 1
            run = t not in ids
    return out


def table_rows(settings: K2Settings, kind: str = "trades") -> list[dict[str, Any]]:
    return QueryEngine.from_settings(settings).sql(f"SELECT * FROM {kind}").to_pylist()


def events(settings: K2Settings) -> list[dict[str, Any]]:
    table = load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.QUALITY_EVENTS)
    return sorted(table.scan().to_arrow().to_pylist(), key=lambda r: (r["status_at"], r["kind"], r["first_id"]))


def assert_exactly_the_recording(rows: list[dict[str, Any]], backfilled: set[tuple[str, str]]) -> None:
    expected = {(m["product_id"], str(m["trade_id"])): m for m in trades()}
    keys = Counter((r["symbol"], r["trade_id"]) for r in rows)
    assert len(rows) == len(expected) == 107
    assert set(keys) == set(expected) and max(keys.values()) == 1, "every trade id exactly once"
    for r in rows:
        m = expected[(r["symbol"], r["trade_id"])]
        assert (r["price"], r["quantity"]) == (Decimal(m["price"]), Decimal(m["size"]))
        assert r["side"] == {"sell": "BUY", "buy": "SELL"}[m["side"]] and r["exchange"] == "COINBASE"
        assert r["source_sequence"] == m["trade_id"]
        assert int(r["timestamp"].timestamp() * 1e6) == pytest.approx(parse_us(m["time"]), abs=1)
        vendor = dict(r["vendor_data"])
        assert vendor["maker_side"] == m["side"]
        if vendor.get("backfilled") == "true":
            assert set(vendor) == {"maker_side", "base_asset", "quote_asset", "backfilled"}
        else:
            assert (vendor["type"], vendor["sequence"], vendor["taker_order_id"]) == (
                m["type"], str(m["sequence"]), m["taker_order_id"]
            )  # fmt: skip
    assert {(r["symbol"], r["trade_id"]) for r in rows if dict(r["vendor_data"]).get("backfilled")} == backfilled


def assert_the_delivered_tickers_once_each(rows: list[dict[str, Any]]) -> None:
    delivered = recorded(("ticker",), withheld=False)
    assert len(delivered) == 107 - len(recorded(("ticker",), withheld=True)) > 80
    keys = Counter((r["symbol"], r["source_sequence"]) for r in rows)
    assert len(rows) == len(delivered) and max(keys.values()) == 1, "every quote once"
    by_key = {(r["symbol"], r["source_sequence"]): r for r in rows}
    for t in delivered:
        row = by_key[(t["product_id"], t["sequence"])]
        assert (row["bid_price"], row["ask_price"]) == (Decimal(t["best_bid"]), Decimal(t["best_ask"]))
        assert row["bid_size"] is None and row["ask_size"] is None  # the 2021 ticker sent none
        assert row["instrument"] == t["product_id"].replace("-", "/") and row["exchange"] == "COINBASE"
        assert dict(row["vendor_data"])["trade_id"] == str(t["trade_id"])


def test_faults_are_repaired_and_the_tables_hold_exactly_the_recording(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    def make(s: K2Settings, ws_url: str) -> EmbeddedPipeline:
        return EmbeddedPipeline(s, ws_base_url=ws_url, is_sample_data=True)

    pipeline, emu = asyncio.run(run_settled(make, settings, FAULT_PLAN))
    withheld = withheld_trades()
    assert len(withheld) == 1 + 2 + 2 + 1 + 3 + 9 and emu.injected["disconnect"] == 2 and emu.injected["duplicate"] > 0
    assert emu.injected["reorder"] > 0
    assert_exactly_the_recording(table_rows(settings), withheld)
    assert_the_delivered_tickers_once_each(table_rows(settings, "quotes"))

    # The subscribe handshake was made on each of the three connections, and heartbeats came.
    session = pipeline.get_stats()["sessions"][0]
    assert session["connections"] == 3 and session["reconnects"] == 2
    assert emu.control_sent >= 3  # three acks, then heartbeats for as long as the run lasted

    # Bad frames: each quarantined with the reason its kind names, none stored.
    bad = {k: n for k, n in emu.injected.items() if k in EXPECTED_REASON and n}
    assert sum(bad.values()) >= 107 // 9 + 107 // 4  # the plan's malformed and hostile frames, crossed ones
    want: Counter[str] = Counter()
    for kind, n in bad.items():
        want[EXPECTED_REASON[kind].value] += n
    quarantined = Counter(r["reason"] for r in read_quarantine(Path(settings.lake.quarantine_dir)))
    assert quarantined == want
    assert pipeline.get_stats()["quote_quality"]["crossed"] == bad["crossed_quote"]

    # Sequence tracking and backfill, against the plan.
    plan = expected_faults(FAULT_PLAN)
    stats = pipeline.get_stats()["quality"]
    assert stats["duplicates_dropped"] == sum(c["duplicates"] for c in plan.values())
    assert stats["out_of_order"] == sum(c["out_of_order"] for c in plan.values())
    assert stats["gaps_detected"] == stats["gaps_resolved"] == sum(c["gaps"] for c in plan.values()) == 5
    assert stats["gaps_unrecoverable"] == 0 and stats["backfilled_rows"] == 18
    gaps = [e for e in events(settings) if e["kind"] == "GAP"]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in gaps:
        by_id.setdefault(e["event_id"], []).append(e)
    assert len(by_id) == 5 and all([r["status"] for r in rows] == ["OPEN", "RESOLVED"] for rows in by_id.values())
    assert {(r[1]["symbol"], str(i)) for r in by_id.values() for i in range(r[1]["first_id"], r[1]["last_id"] + 1)} == (
        withheld
    )

    # REST: the injected 429 and 503 first, then one page per gap, each asking exactly its ids, paced.
    requests = emu.rest.requests
    assert [r.status for r in requests] == [429, 503] + [200] * 5
    pages = {(r.path, r.query["after"], r.query["limit"]) for r in requests[2:]}
    assert pages == {
        (f"/products/{e[0]['symbol']}/trades", str(e[0]["last_id"] + 1), str(e[0]["last_id"] - e[0]["first_id"] + 1))
        for e in by_id.values()
    }
    assert requests[1].at - requests[0].at >= 0.2 - 1e-3  # the 429's Retry-After, honoured
    assert_paced([r.at for r in requests], 1, 5, 5)  # K2's share of Coinbase's 10/s (burst 15)

    # The quality report: per product, every trade of the recording, nothing missing. (Its rows of today
    # count the ticker stream's dropped repeats, whose events are timed when they were seen.)
    report = quality_report_dicts(settings)
    assert {r["day"] for r in report if r["trades"]} == {date(2021, 4, 17)}
    for product, c in plan.items():
        (total,) = [r for r in report if r["symbol"] == product and r["day"] == date(2021, 4, 17)]
        assert total["trades"] == sum(1 for m in trades() if m["product_id"] == product)
        assert total["missing"] == total["gaps_open"] == total["gaps_unrecoverable"] == 0
        assert total["gaps_found"] == total["gaps_backfilled"] == c["gaps"]
        assert total["backfilled_trades"] == sum(1 for p, _ in withheld if p == product)
        assert total["duplicates_dropped"] == c["duplicates"]


def test_a_second_run_over_the_same_session_stores_nothing_twice(tmp_path: Path) -> None:
    """The recorded session replayed again into the same tables (a restart that sees the same trades and
    tickers): every trade and quote is a repeat of what the tables hold, and is dropped."""
    settings = settings_for(tmp_path)

    def make(s: K2Settings, ws_url: str) -> EmbeddedPipeline:
        return EmbeddedPipeline(s, ws_base_url=ws_url, is_sample_data=True)

    asyncio.run(run_settled(make, settings, Faults()))
    second, _ = asyncio.run(run_settled(make, settings, Faults(duplicate_every=13)))
    assert_exactly_the_recording(table_rows(settings), set())
    assert len(table_rows(settings, "quotes")) == 107
    assert second.get_stats()["quality"]["duplicates_dropped"] >= 107


def test_k2_emulator_and_k2_run_speak_coinbase_from_the_command_line(tmp_path: Path) -> None:
    """`k2 emulator --venue coinbase` serves the bundled session and its REST side; `k2 run --venue coinbase`
    against it stores the whole recording (both real subprocesses, stopped with SIGTERM)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")} | {
        "K2_CONFIG_FILE": str(tmp_path / "absent.toml")
    }
    k2 = [sys.executable, "-m", "k2.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (tmp_path / "emulator.log").open("wb") as log:
            emulator = [*k2, "emulator", "--venue", "coinbase", "--port", str(port), "--speed", "max"]
            procs.append(subprocess.Popen(emulator, env=env, stdout=log, stderr=subprocess.STDOUT))
        eventually(lambda: procs[0].poll() is None and port_open(port), timeout=60, interval=0.1)
        page = httpx.get(f"http://127.0.0.1:{port}/products/NMR-EUR/trades?after=868600&limit=2", timeout=10)
        assert page.status_code == 200 and [t["trade_id"] for t in page.json()] == [868599, 868598]
        assert (page.headers["CB-BEFORE"], page.headers["CB-AFTER"]) == ("868599", "868598")
        warehouse = tmp_path / "warehouse"
        run = [*k2, "run", "--venue", "coinbase", "--symbols", ",".join(PRODUCTS), "--kinds", "trades,quotes",
               "--ws-url", f"ws://127.0.0.1:{port}", "--rest-url", f"http://127.0.0.1:{port}",
               "--warehouse", str(warehouse), "--sample"]  # fmt: skip
        with (tmp_path / "run.log").open("wb") as log:
            procs.append(subprocess.Popen(run, env=env, stdout=log, stderr=subprocess.STDOUT))
        settings = settings_for(tmp_path)

        def stored() -> bool:
            assert procs[1].poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            return (warehouse / "catalog.db").exists() and len(table_rows(settings, "quotes")) == 107

        eventually(stored, timeout=60, interval=0.5)
        eventually(lambda: len(table_rows(settings)) == 107, timeout=60, interval=0.5)
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert_exactly_the_recording(table_rows(settings), set())
    assert "stopped:" in (tmp_path / "run.log").read_text()
