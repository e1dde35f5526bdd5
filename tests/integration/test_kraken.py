"""Kraken end to end, embedded: the emulator speaks Kraken WebSocket v2 (status, one ack per symbol,
heartbeats) and REST (``Trades`` by ``since``, Kraken's errors) over real sockets; `k2 run`'s machinery
subscribes, parses, tracks trade ids, backfills gaps over REST and commits to Iceberg.

With disconnects, duplicates, reorders and withheld ranges (backfilled through a Kraken rate-limit error and a
503), the trades table holds exactly the recording's 1,000 trades once each and the quotes table its two real
tickers; with malformed and hostile messages among the real ones, each is quarantined with the reason the
fault plan says, and nothing else changes. Expected numbers come from the recording and the fault plan,
never from the code under test. `k2 emulator --venue kraken` serves the same protocol.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from k2.config import K2Settings, LakeSettings, QualitySettings, SourceSettings
from k2.emulator.faults import CROSSED_QUOTE, Faults, expected_reasons, replay_frames, routable_frames
from k2.emulator.kraken import BUNDLED_KRAKEN, STATUS, KrakenProtocol, route
from k2.emulator.recording import read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.lake.quarantine import read_quarantine
from k2.query.engine import QueryEngine
from k2.schema.kinds import RecordKind
from k2.services.pipeline import EmbeddedPipeline
from k2.services.quality_report import quality_report_dicts
from k2.sources.timestamps import parse_us
from tests.conftest import eventually
from tests.integration import venue_replay
from tests.integration.venue_replay import S
from tests.pacing import assert_paced

pytestmark = pytest.mark.integration

PROTOCOL = KrakenProtocol()
FRAMES = list(routable_frames(read_recording(BUNDLED_KRAKEN), route))  # 563 messages, recording order
SYMBOLS = ("BTC/USDT", "XBTUSD")  # a v2 symbol and Kraken's REST altname of BTC/USD
ACKS = 4  # trade and ticker, one ack per symbol
TOTAL = 1_000
WITHHOLD = ((100, 10), (250, 40), (500, 3))
FAULT_PLAN = Faults(
    duplicate_every=7,
    reorder_every=11,
    withhold=WITHHOLD,
    disconnect_after=(150, 400),
    rest_errors=((429, 0.0), (503, 0.1)),
)
BAD_FRAMES = Faults(malformed_every=20, adversarial_every=7, crossed_every=1, duplicate_every=50)


def _loads(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def recorded_trades() -> dict[int, dict[str, Any]]:
    """Trade id -> the recorded trade (numbers as Decimals of their text)."""
    out = {}
    for frame in FRAMES:
        message = _loads(frame.raw)
        if message["channel"] == "trade":
            out.update({t["trade_id"]: t for t in message["data"]})
    return out


def recorded_tickers() -> list[dict[str, Any]]:
    return [_loads(f.raw)["data"][0] for f in FRAMES if f.stream and f.stream.startswith("ticker:")]


def withheld_ids() -> set[int]:
    """Ids of the trades the withheld messages carry (positions count the recording's messages)."""
    return {
        t["trade_id"] for start, n in WITHHOLD for f in FRAMES[start - 1 : start - 1 + n] for t in _loads(f.raw)["data"]
    }


def expected_faults(faults: Faults) -> Counter[str]:
    """Duplicates, late arrivals and gaps (maximal runs of ids missing below the last one seen) in the
    trade ids the emulator emits for ``faults``."""
    emitted = replay_frames(read_recording(BUNDLED_KRAKEN), faults, {}, route=route, venue=PROTOCOL)
    out: Counter[str] = Counter()
    seen: set[int] = set()
    high: int | None = None
    for frame in emitted:
        if not (frame.stream or "").startswith("trade:"):
            continue
        for t in _loads(frame.raw)["data"]:
            x = t["trade_id"]
            if x in seen:
                out["duplicates"] += 1
            elif high is not None and x < high:
                out["out_of_order"] += 1
            seen.add(x)
            high = x if high is None else max(high, x)
    run = False
    for x in range(min(seen), max(seen) + 1):
        if x not in seen and not run:
            out["gaps"] += 1
        run = x not in seen
    out["missing"] = max(seen) - min(seen) + 1 - len(seen)
    return out


def kraken_settings(tmp_path: Path, **quality: Any) -> K2Settings:
    return K2Settings(
        source=SourceSettings(
            venue="kraken",
            symbols=SYMBOLS,
            kinds=("trades", "quotes"),
            exchange_info_cache=tmp_path / "xinfo.json",
            reconnect_initial_s=0.05,
            reconnect_max_s=0.2,
        ),
        lake=LakeSettings(warehouse=tmp_path / "warehouse", flush_rows=5_000, flush_seconds=0.2),
        quality=QualitySettings(**{"gap_grace_s": 1.0, **quality}),
    )


async def run_settled(
    make: Callable[[K2Settings, str], S], settings: K2Settings, faults: Faults
) -> tuple[S, BinanceEmulator]:
    """Replay the Kraken recording with ``faults`` into ``make(...)`` until it has settled (see
    :func:`tests.integration.venue_replay.run_settled`). The replay is held until K2's two subscriptions are
    acknowledged (its status and one ack per symbol: Kraken answers each channel's subscribe on its own; a live
    venue's tickers sent in between would be missed, as they are on Kraken)."""
    config = ReplayConfig(recording=BUNDLED_KRAKEN, protocol=KrakenProtocol(), faults=faults, hold_at=1)
    return await venue_replay.run_settled(make, settings, config, subscribed_when_control_sent=1 + ACKS)


def _embedded(settings: K2Settings, faults: Faults) -> tuple[EmbeddedPipeline, BinanceEmulator]:
    def make(s: K2Settings, ws_url: str) -> EmbeddedPipeline:
        return EmbeddedPipeline(s, ws_base_url=ws_url, is_sample_data=True)

    return asyncio.run(run_settled(make, settings, faults))


def trade_rows(settings: K2Settings) -> list[dict[str, Any]]:
    return QueryEngine.from_settings(settings).sql("SELECT * FROM trades").to_pylist()


def quote_rows(settings: K2Settings) -> list[dict[str, Any]]:
    return QueryEngine.from_settings(settings).sql("SELECT * FROM quotes ORDER BY ingestion_timestamp").to_pylist()


def gap_events(settings: K2Settings) -> list[dict[str, Any]]:
    table = load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.QUALITY_EVENTS)
    events = table.scan().to_arrow().to_pylist()
    return sorted((e for e in events if e["kind"] == "GAP"), key=lambda e: (e["status_at"], e["first_id"]))


def assert_exactly_the_recording(rows: list[dict[str, Any]], backfilled: set[int]) -> None:
    """Every recorded trade once, each value exactly the recording's; ``backfilled`` came over REST."""
    recorded = recorded_trades()
    ids = Counter(int(r["trade_id"]) for r in rows)
    assert len(rows) == len(recorded) == TOTAL and set(ids) == set(recorded) and max(ids.values()) == 1
    for r in rows:
        t = recorded[int(r["trade_id"])]
        assert (r["symbol"], r["exchange"], r["currency"]) == ("BTC/USDT", "KRAKEN", "USDT")
        assert (r["price"], r["quantity"]) == (t["price"], t["qty"])
        assert r["side"] == t["side"].upper() and r["source_sequence"] == t["trade_id"]
        assert int(r["timestamp"].timestamp() * 1_000_000) == parse_us(t["timestamp"])
        vendor = dict(r["vendor_data"])
        assert vendor["ord_type"] == t["ord_type"] and vendor["quote_asset"] == "USDT"
    assert {int(r["trade_id"]) for r in rows if dict(r["vendor_data"]).get("backfilled") == "true"} == backfilled


def assert_exactly_the_tickers(rows: list[dict[str, Any]]) -> None:
    tickers = recorded_tickers()
    assert len(rows) == len(tickers) == 2
    for r, t in zip(rows, tickers, strict=True):
        assert (r["symbol"], r["instrument"], r["exchange"], r["currency"]) == ("BTC/USD", "BTC/USD", "KRAKEN", "USD")
        assert (r["bid_price"], r["bid_size"], r["ask_price"], r["ask_size"]) == (
            t["bid"],
            t["bid_qty"],
            t["ask"],
            t["ask_qty"],
        )
        assert r["timestamp"] is None  # the 2024 tickers carry no time
        assert r["source_sequence"] == int(r["ingestion_timestamp"].timestamp() * 1_000_000)  # receive order
        assert dict(r["vendor_data"])["volume"] == str(t["volume"])


def test_faults_are_repaired_and_the_tables_hold_exactly_the_recording(tmp_path: Path) -> None:
    settings = kraken_settings(tmp_path)
    pipeline, emu = _embedded(settings, FAULT_PLAN)
    withheld = withheld_ids()
    assert emu.injected["withheld"] == 53 and len(withheld) > 53  # messages withheld, trades they carry
    assert emu.injected["disconnect"] == 2 and emu.injected["duplicate"] > 0 and emu.injected["reorder"] > 0
    assert_exactly_the_recording(trade_rows(settings), withheld)
    assert_exactly_the_tickers(quote_rows(settings))

    want = expected_faults(FAULT_PLAN)
    stats = pipeline.get_stats()["quality"]
    assert stats["duplicates_dropped"] == want["duplicates"] > 0
    assert stats["out_of_order"] == want["out_of_order"] > 0
    assert stats["gaps_detected"] == stats["gaps_resolved"] == want["gaps"] >= 3
    assert stats["gaps_unrecoverable"] == 0 and stats["backfilled_rows"] == len(withheld) == want["missing"]

    # Each gap recorded OPEN, then RESOLVED with the trades it recovered: exactly the withheld ones.
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in gap_events(settings):
        by_id.setdefault(e["event_id"], []).append(e)
    assert len(by_id) == want["gaps"]
    assert all([e["status"] for e in events] == ["OPEN", "RESOLVED"] for events in by_id.values())
    resolved = [events[1] for events in by_id.values()]
    assert {i for e in resolved for i in range(e["first_id"], e["last_id"] + 1)} == withheld
    assert {e["exchange"] for e in resolved} == {"KRAKEN"} and {e["stream"] for e in resolved} == {"trade"}

    # The REST side: Kraken's rate-limit error (a 200), a 503, then answers; never more than one a second.
    assert emu.rest is not None
    requests = emu.rest.requests
    assert [(r.status, r.error) for r in requests[:2]] == [
        (200, "EAPI:Rate limit exceeded"),
        (503, "EService:Unavailable"),
    ]
    assert all((r.status, r.error) == (200, "") for r in requests[2:])
    assert requests[1].at - requests[0].at >= 2.0 - 1e-3  # paused after the rate-limit error
    assert {r.path for r in requests} == {"/0/public/Trades"} and {r.query["pair"] for r in requests} == {"XBTUSDT"}
    assert_paced([r.at for r in requests], 1, 1, 1.0)

    report = [r for r in quality_report_dicts(settings) if r["symbol"] == "BTC/USDT"]
    total = {k: sum(r[k] for r in report) for k in ("trades", "missing", "gaps_found", "gaps_backfilled")}
    assert total == {"trades": TOTAL, "missing": 0, "gaps_found": want["gaps"], "gaps_backfilled": want["gaps"]}


def test_malformed_and_hostile_messages_are_quarantined_with_their_reason(tmp_path: Path) -> None:
    settings = kraken_settings(tmp_path, backfill=False)
    pipeline, emu = _embedded(settings, BAD_FRAMES)
    reasons = expected_reasons(PROTOCOL)
    bad = {kind: n for kind, n in emu.injected.items() if kind in reasons and n}
    assert set(bad) == set(reasons), "every bad-frame kind was injected"
    want = Counter[str]()
    for kind, n in bad.items():
        want[reasons[kind].value] += n
    quarantined = Counter(e["reason"] for e in read_quarantine(settings.lake.quarantine_dir))
    assert quarantined == want
    assert_exactly_the_recording(trade_rows(settings), set())  # the real messages, untouched
    assert_exactly_the_tickers(quote_rows(settings))
    assert pipeline.get_stats()["quote_quality"]["crossed"] == emu.injected[CROSSED_QUOTE] == 2
    assert pipeline.get_stats()["quality"]["gaps_detected"] == 0


def test_a_restart_gap_is_found_from_the_table_and_backfilled(tmp_path: Path) -> None:
    """Run 1 stops after message 200; the feed moves on while K2 is down; run 2 sees message 301 on: the
    trades of messages 201-300 are one gap, found from the table's recorded state, backfilled over REST."""
    settings = kraken_settings(tmp_path)
    _embedded(settings, Faults(withhold=((201, len(FRAMES)),)))
    first = {int(r["trade_id"]) for r in trade_rows(settings)}
    down = {t["trade_id"] for f in FRAMES[200:300] for t in _loads(f.raw)["data"]}
    assert first and max(first) < min(down)

    pipeline, _ = _embedded(settings, Faults(withhold=((1, 300),)))
    assert_exactly_the_recording(trade_rows(settings), down)
    events = gap_events(settings)
    assert [(e["first_id"], e["last_id"], e["status"]) for e in events] == [
        (min(down), max(down), "OPEN"),
        (min(down), max(down), "RESOLVED"),
    ]
    assert pipeline.get_stats()["quality"]["duplicates_dropped"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_k2_emulator_venue_kraken_serves_krakens_protocol() -> None:
    port = _free_port()
    k2 = Path(sys.executable).parent / "k2"
    proc = subprocess.Popen(
        [str(k2), "emulator", "--venue", "kraken", "--port", str(port), "--speed", "max"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    async def session() -> list[dict[str, Any]]:
        async with connect(f"ws://127.0.0.1:{port}/v2", compression=None) as ws:
            got = [json.loads(await asyncio.wait_for(ws.recv(), 10))]
            await ws.send(json.dumps({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USDT"],
                                      "snapshot": True}, "req_id": 7}))  # fmt: skip
            got += [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
            return got

    def attempt() -> list[dict[str, Any]]:
        try:
            return asyncio.run(session())
        except OSError as exc:  # not listening yet
            raise AssertionError(f"emulator not up: {exc}") from exc

    try:
        got = eventually(attempt, timeout=30, interval=0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert got[0] == json.loads(STATUS)
    assert got[1]["method"] == "subscribe" and got[1]["req_id"] == 7 and got[1]["success"] is True
    assert got[2]["channel"] == "trade" and got[2]["type"] == "snapshot" and len(got[2]["data"]) == 50
    assert code == 0
