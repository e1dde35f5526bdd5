"""Completeness end to end: emulator faults (disconnects, duplicates, reorders, withheld ranges, REST
errors) -> embedded pipeline with sequence tracking and REST backfill -> Iceberg -> quality report.

Expected numbers are computed independently from the recording and the fault plan, never from the
tracker under test.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from k2.config import K2Settings, LakeSettings, QualitySettings, SourceSettings
from k2.emulator.faults import Faults, replay_frames, routable_frames
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.emulator.server import BinanceEmulator, ReplayConfig
from k2.feed.trades import TradeCompleteness as Completeness
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.query.engine import QueryEngine
from k2.schema.kinds import RecordKind
from k2.services.pipeline import EmbeddedPipeline
from k2.services.quality_report import quality_report_dicts
from tests.conftest import eventually_async
from tests.pacing import assert_paced

pytestmark = pytest.mark.integration

TOTAL = 34_419


def _recording() -> list[dict[str, Any]]:
    """The recorded trades in recording order (symbol, id, price, quantity)."""
    return [json.loads(f.raw) for f in routable_frames(read_recording(BUNDLED_BINANCE_TRADES))]


def _settings(tmp_path: Path, **quality: Any) -> K2Settings:
    return K2Settings(
        source=SourceSettings(
            exchange_info_cache=tmp_path / "xinfo.json", reconnect_initial_s=0.05, reconnect_max_s=0.2
        ),
        lake=LakeSettings(warehouse=tmp_path / "warehouse", flush_rows=5_000, flush_seconds=0.2),
        quality=QualitySettings(**{"gap_grace_s": 1.0, "rest_weight_per_minute": 60_000, **quality}),
    )


# The acceptance fault plan: duplicates, reorders, three withheld ranges, two disconnects, REST 429 + 503.
WITHHOLD = ((5_001, 40), (12_001, 1_500), (20_001, 3))
FAULT_PLAN = Faults(
    duplicate_every=500,
    reorder_every=700,
    withhold=WITHHOLD,
    disconnect_after=(8_050, 25_050),
    rest_errors=((429, 0.2), (503, 0.1)),
)


def withheld_trades(recording: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(symbol, trade id) of the trades :data:`WITHHOLD` keeps off the stream."""
    return {
        (recording[i]["s"], str(recording[i]["t"])) for start, n in WITHHOLD for i in range(start - 1, start - 1 + n)
    }


def _with_rest(settings: K2Settings, url: str) -> K2Settings:
    return settings.model_copy(update={"source": settings.source.model_copy(update={"rest_url": url})})


def _expected_faults(faults: Faults) -> dict[str, Counter[str]]:
    """Per symbol: duplicates and late (out-of-order) arrivals in the emitted stream, and the gaps
    (maximal runs of ids missing from the stream, below the symbol's last emitted id)."""
    emitted = [json.loads(f.raw) for f in replay_frames(read_recording(BUNDLED_BINANCE_TRADES), faults, {})]
    out: dict[str, Counter[str]] = {}
    seen: dict[str, set[int]] = {}
    high: dict[str, int] = {}
    for d in emitted:
        s, t = d["s"], d["t"]
        c = out.setdefault(s, Counter())
        if t in seen.setdefault(s, set()):
            c["duplicates"] += 1
        elif s in high and t < high[s]:
            c["out_of_order"] += 1
        seen[s].add(t)
        high[s] = max(high.get(s, t), t)
    for s, ids in seen.items():
        lo, hi = min(ids), max(ids)
        run = False
        for t in range(lo, hi + 1):
            if t not in ids and not run:
                out[s]["gaps"] += 1
            run = t not in ids
        out[s]["missing"] = (hi - lo + 1) - len(ids)
    return out


class _Service(Protocol):
    """What the embedded pipeline and `k2 ingest`'s service share for these tests."""

    completeness: Completeness
    stats: Any

    async def run(self) -> Any: ...
    def stop(self) -> None: ...
    def get_stats(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=_Service)


async def run_settled(
    make: Callable[[K2Settings, str], S],
    settings: K2Settings,
    faults: Faults,
    speed: float | None = None,
    *,
    complete: bool = False,
) -> tuple[S, BinanceEmulator]:
    """Replay the recording with ``faults`` into ``make(settings with the emulator's REST URL, ws url)``
    until everything sent is handled and every gap is backfilled (or abandoned; with ``complete``,
    until no id is missing at all, through the slow retries); then stop it."""
    async with BinanceEmulator(ReplayConfig(speed=speed, faults=faults)) as emu:
        service = make(_with_rest(settings, emu.http_url), emu.url)
        run = asyncio.create_task(service.run())
        tracker = service.completeness.tracker

        async def settled() -> bool:
            assert not run.done(), "stopped early"
            return (
                emu.finished.is_set()
                and service.stats.frames >= emu.frames_sent
                and service.get_stats()["backlog_frames"] == 0
                and service.completeness.backfilling == 0
                and all(
                    not tracker.holes(k) or (not complete and _all_abandoned(tracker.holes(k)))
                    for k in tracker.streams()
                )
            )

        await eventually_async(settled, timeout=120)
        service.stop()
        await run
    return service, emu


async def _run(
    settings: K2Settings, faults: Faults, *, complete: bool = False
) -> tuple[EmbeddedPipeline, BinanceEmulator]:
    def make(s: K2Settings, ws_url: str) -> EmbeddedPipeline:
        return EmbeddedPipeline(s, ws_base_url=ws_url, is_sample_data=True)

    return await run_settled(make, settings, faults, complete=complete)


def _all_abandoned(holes: list[Any]) -> bool:
    return all(state.value == "abandoned" for _, _, state in holes)


def _table_rows(settings: K2Settings) -> list[dict[str, Any]]:
    engine = QueryEngine.from_settings(settings)
    return engine.sql(
        "SELECT symbol, trade_id, price, quantity, side, vendor_data['backfilled'] AS backfilled FROM trades"
    ).to_pylist()


def _events(settings: K2Settings) -> list[dict[str, Any]]:
    table = load_or_create_table(open_catalog(settings.lake), settings.lake, RecordKind.QUALITY_EVENTS)
    return sorted(table.scan().to_arrow().to_pylist(), key=lambda r: (r["status_at"], r["kind"], r["first_id"]))


def _assert_exactly_the_recording(rows: list[dict[str, Any]], withheld: set[tuple[str, str]]) -> None:
    expected = {(d["s"], str(d["t"])): d for d in _recording()}
    assert len(rows) == len(expected) == TOTAL
    keys = Counter((r["symbol"], r["trade_id"]) for r in rows)
    assert set(keys) == set(expected) and max(keys.values()) == 1, "every trade id exactly once"
    for r in rows:
        d = expected[(r["symbol"], r["trade_id"])]
        assert (r["price"], r["quantity"], r["side"]) == (Decimal(d["p"]), Decimal(d["q"]), "SELL" if d["m"] else "BUY")
    assert {(r["symbol"], r["trade_id"]) for r in rows if r["backfilled"] == "true"} == withheld


def assert_restart_gap_resolved(settings: K2Settings, down: set[tuple[str, str]]) -> None:
    """Per symbol, the trades sent while K2 was down are one gap, recorded OPEN then RESOLVED."""
    gaps = [e for e in _events(settings) if e["kind"] == "GAP"]
    for symbol in ("BTCUSDT", "ETHUSDT"):
        ids = sorted(int(t) for s, t in down if s == symbol)
        assert [(g["first_id"], g["last_id"], g["status"]) for g in gaps if g["symbol"] == symbol] == [
            (ids[0], ids[-1], "OPEN"),
            (ids[0], ids[-1], "RESOLVED"),
        ]


def test_faults_are_repaired_and_reported_exactly(tmp_path: Path) -> None:
    faults = FAULT_PLAN
    # 100 weight/s with a burst of 50: the ~9 historicalTrades requests (25 each) must be paced.
    settings = _settings(tmp_path, backfill_page_limit=500, rest_weight_per_minute=6_000, rest_weight_burst=50)
    pipeline, emu = asyncio.run(_run(settings, faults))
    recording = _recording()
    withheld = withheld_trades(recording)
    assert emu.injected["withheld"] == len(withheld) == 1_543
    assert emu.injected["disconnect"] == 2
    _assert_exactly_the_recording(_table_rows(settings), withheld)

    want = _expected_faults(faults)
    assert sum(c["duplicates"] for c in want.values()) == emu.injected["duplicate"]
    stats = pipeline.get_stats()["quality"]
    assert stats["duplicates_dropped"] == emu.injected["duplicate"]
    assert stats["out_of_order"] == sum(c["out_of_order"] for c in want.values())
    assert stats["gaps_detected"] == stats["gaps_resolved"] == sum(c["gaps"] for c in want.values()) == 5
    assert stats["gaps_unrecoverable"] == 0 and stats["backfilled_rows"] == 1_543

    # The gap table: each gap once OPEN, then RESOLVED with the trades it recovered.
    gaps = [e for e in _events(settings) if e["kind"] == "GAP"]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in gaps:
        by_id.setdefault(e["event_id"], []).append(e)
    assert len(by_id) == 5
    for rows in by_id.values():
        assert [r["status"] for r in rows] == ["OPEN", "RESOLVED"]
        assert rows[1]["recovered"] == rows[1]["count"] == rows[1]["last_id"] - rows[1]["first_id"] + 1
        assert rows[0]["detected_at"] <= rows[1]["status_at"]
    recovered = {(r[1]["symbol"], str(i)) for r in by_id.values() for i in range(r[1]["first_id"], r[1]["last_id"] + 1)}
    assert recovered == withheld

    # The REST side saw the injected errors, then only successful pages.
    statuses = [r.status for r in emu.rest.requests]
    assert statuses[:2] == [429, 503] and set(statuses[2:]) == {200}
    # Retry-After honoured: the pause starts when the 429 is answered, after it arrived.
    assert emu.rest.requests[1].at - emu.rest.requests[0].at >= 0.2 - 1e-3
    assert_paced([r.at for r in emu.rest.requests], 25, 50, 100)  # unpaced, they would take ~50 ms

    # The report, summed over days, matches what was injected, per symbol.
    report = quality_report_dicts(settings)
    assert {r["day"] for r in report} == {date(2024, 8, 8), date(2024, 8, 9)}
    for symbol, c in want.items():
        rows = [r for r in report if r["symbol"] == symbol]
        total = {k: sum(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], int)}
        assert total["trades"] == sum(1 for d in recording if d["s"] == symbol)
        assert total["missing"] == 0
        assert total["backfilled_trades"] == sum(1 for s, _ in withheld if s == symbol)
        assert total["gaps_found"] == total["gaps_backfilled"] == c["gaps"]
        assert total["gaps_unrecoverable"] == total["gaps_open"] == 0
        assert total["duplicates_dropped"] == c["duplicates"]
        assert total["out_of_order"] == c["out_of_order"]
        assert total["resets"] == total["price_jump"] == total["stale_feed"] == 0
        assert min(r["first_id"] for r in rows) == min(d["t"] for d in recording if d["s"] == symbol)
        assert max(r["last_id"] for r in rows) == max(d["t"] for d in recording if d["s"] == symbol)


def test_restart_gap_is_found_from_the_table_and_backfilled(tmp_path: Path) -> None:
    """Run 1 stops after frame 10,000; the feed moves on while K2 is down; run 2 sees frame 15,001 on."""
    settings = _settings(tmp_path)
    asyncio.run(_run(settings, Faults(withhold=((10_001, TOTAL),))))
    first = _table_rows(settings)
    assert len(first) == 10_000 and not any(r["backfilled"] for r in first)

    pipeline, _ = asyncio.run(_run(settings, Faults(withhold=((1, 15_000),))))
    recording = _recording()
    down = {(d["s"], str(d["t"])) for d in recording[10_000:15_000]}
    _assert_exactly_the_recording(_table_rows(settings), down)
    assert_restart_gap_resolved(settings, down)
    assert pipeline.get_stats()["quality"]["duplicates_dropped"] == 0


def test_persistent_rest_errors_leave_the_gap_unrecoverable_then_a_restart_repairs_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, backfill_attempts=2)
    faults = Faults(withhold=((3_001, 10),), rest_errors=((503, 0.05), (503, 0.05)))
    pipeline, emu = asyncio.run(_run(settings, faults))
    assert [r.status for r in emu.rest.requests] == [503, 503]
    assert len(_table_rows(settings)) == TOTAL - 10
    gaps = [e for e in _events(settings) if e["kind"] == "GAP"]
    ids = {e["event_id"] for e in gaps}
    assert [e["status"] for e in gaps if e["status"] != "OPEN"] == ["UNRECOVERABLE"] * len(ids)
    assert all("HTTP 503" in e["detail"] for e in gaps if e["status"] == "UNRECOVERABLE")
    report = quality_report_dicts(settings)
    assert sum(r["gaps_unrecoverable"] for r in report) == len(ids)
    assert sum(r["missing"] for r in report) == 10

    # Restart against a healthy REST API while the stream replays the same data (still without the
    # lost trades): the holes are found in the table, backfilled, and the same gap records become
    # RESOLVED; every replayed trade is a duplicate.
    pipeline, _ = asyncio.run(_run(settings, Faults(withhold=((3_001, 10),))))
    _assert_exactly_the_recording(_table_rows(settings), {(d["s"], str(d["t"])) for d in _recording()[3_000:3_010]})
    assert pipeline.get_stats()["quality"]["duplicates_dropped"] == TOTAL - 10
    latest = {e["event_id"]: e["status"] for e in _events(settings) if e["kind"] == "GAP"}
    assert latest == dict.fromkeys(ids, "RESOLVED")


def _gap_history(settings: K2Settings) -> dict[str, list[str]]:
    """Per gap event id, its statuses in order."""
    out: dict[str, list[str]] = {}
    for e in _events(settings):
        if e["kind"] == "GAP":
            out.setdefault(e["event_id"], []).append(e["status"])
    return out


def test_transient_rest_faults_are_retried_before_a_gap_is_given_up(tmp_path: Path) -> None:
    """A 200 with a broken body, an empty page for a range that has trades, an answer slower than
    the client's timeout and a 503, each once: backfill retries the page and every gap is RESOLVED
    in the same run (before, the first two made the gap UNRECOVERABLE until the next start)."""
    settings = _settings(tmp_path, rest_timeout_s=0.5)
    rest_faults = (("bad_body", 0.0), ("empty_page", 0.0), ("slow", 2.0), (503, 0.05))
    withheld = {(d["s"], str(d["t"])) for d in _recording()[3_000:3_010]}
    pipeline, emu = asyncio.run(_run(settings, Faults(withhold=((3_001, 10),), rest_errors=rest_faults)))
    _assert_exactly_the_recording(_table_rows(settings), withheld)
    assert [r.status for r in emu.rest.requests][:4] == [200, 200, 200, 503]  # then the right answers
    history = _gap_history(settings)
    assert history and all(statuses == ["OPEN", "RESOLVED"] for statuses in history.values())
    assert pipeline.get_stats()["quality"]["gaps_unrecoverable"] == 0


def test_an_unrecoverable_gap_is_retried_on_a_slow_schedule_and_resolved(tmp_path: Path) -> None:
    """Backfill's attempts all fail (503 twice with 2 attempts): the gap is recorded UNRECOVERABLE,
    then fetched again after quality.backfill_retry_interval_s in the same run, and RESOLVED."""
    settings = _settings(tmp_path, backfill_attempts=2, backfill_retry_interval_s=0.5)
    withheld = {(d["s"], str(d["t"])) for d in _recording()[3_000:3_010]}
    faults = Faults(withhold=((3_001, 10),), rest_errors=((503, 0.05), (503, 0.05)))
    asyncio.run(_run(settings, faults, complete=True))
    _assert_exactly_the_recording(_table_rows(settings), withheld)
    history = _gap_history(settings)
    assert sorted(history.values()) == sorted(
        [["OPEN", "UNRECOVERABLE", "RESOLVED"]] + [["OPEN", "RESOLVED"]] * (len(history) - 1)
    )
    report = quality_report_dicts(settings)
    assert sum(r["gaps_unrecoverable"] for r in report) == sum(r["missing"] for r in report) == 0
    assert sum(r["gaps_backfilled"] for r in report) == len(history)
