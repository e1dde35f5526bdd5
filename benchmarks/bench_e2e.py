"""End to end, embedded: emulator (separate process, real loopback WebSocket) -> pipeline -> Iceberg, queryable.

    .venv/bin/python -m benchmarks.bench_e2e [--copies 10] [--flush-rows 100000]

Builds a recording of ``copies`` x the bundled 34,419 real trades (ids and times shifted so every
trade is distinct), serves it from the emulator in a child process (``speed=None``, as fast as read), and runs the
embedded pipeline (the code behind ``k2 run``) against it. The clock starts when the pipeline starts
and stops when the last row is committed; the rate is rows / elapsed. The table is then counted with
the query engine to prove every row is queryable.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import msgspec

from k2.config import K2Settings, LakeSettings, SourceSettings
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, RecordingWriter, read_recording
from k2.emulator.runner import EmulatorProcess
from k2.emulator.server import ReplayConfig
from k2.logging import configure_logging
from k2.query.engine import QueryEngine
from k2.services.pipeline import EmbeddedPipeline


def build_recording(path: Path, copies: int) -> int:
    base = [msgspec.json.decode(f.frame) for f in read_recording(BUNDLED_BINANCE_TRADES)]
    span_ms = 651_000
    id_span = {"BTCUSDT": 19_904, "ETHUSDT": 14_515}
    n = 0
    with RecordingWriter(path) as out:
        for c in range(copies):
            for msg in base:
                d = dict(msg["data"])
                d["t"] += c * id_span[d["s"]]
                d["T"] += c * span_ms
                d["E"] += c * span_ms
                out.write(msgspec.json.encode({"stream": msg["stream"], "data": d}).decode(), d["E"] * 1000)
                n += 1
    return n


async def run(settings: K2Settings, url: str, expected: int) -> tuple[float, EmbeddedPipeline]:
    pipeline = EmbeddedPipeline(settings, ws_base_url=url, is_sample_data=True)
    start = time.perf_counter()
    task = asyncio.create_task(pipeline.run())
    while pipeline.stats.rows_committed < expected:
        if task.done():
            task.result()
            raise SystemExit("pipeline stopped early")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    pipeline.stop()
    await task
    return elapsed, pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--flush-rows", type=int, default=100_000)
    ap.add_argument("--flush-seconds", type=float, default=1.0)
    args = ap.parse_args()
    configure_logging(level="WARNING")
    work = Path(tempfile.mkdtemp(prefix="k2-bench-e2e-"))
    recording = work / "recording.jsonl.gz"
    expected = build_recording(recording, args.copies)
    settings = K2Settings(
        source=SourceSettings(symbols=("BTCUSDT", "ETHUSDT"), max_connect_attempts=3),
        lake=LakeSettings(warehouse=work / "warehouse", flush_rows=args.flush_rows, flush_seconds=args.flush_seconds),
    )
    with EmulatorProcess(ReplayConfig(recording=recording, speed=None, preload=True)) as emulator:
        elapsed, pipeline = asyncio.run(run(settings, emulator.url, expected))
    count = QueryEngine.from_settings(settings).sql("SELECT count(*) AS n FROM trades").to_pylist()[0]["n"]
    stats = pipeline.stats
    print(f"trades: {expected:,}  committed: {stats.rows_committed:,} in {stats.commits} commits  queryable: {count:,}")
    print(f"elapsed: {elapsed:.2f} s  end-to-end emulator->Iceberg: {expected / elapsed:,.0f} trades/s")
    if count != expected:
        raise SystemExit("row count mismatch")


if __name__ == "__main__":
    main()
