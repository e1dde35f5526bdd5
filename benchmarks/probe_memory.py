"""Which Python allocations of the embedded pipeline grow: tracemalloc snapshots over a replay.

    PYTHONPATH=. .venv/bin/python -m benchmarks.probe_memory [--minutes 20] [--speed 10] [--maintenance-s 120]

Runs ``k2 run``'s pipeline (``run_pipeline``: trades and quotes, the scheduled maintenance every
``--maintenance-s``) in this process, with tracemalloc on, against K2's emulator replaying the
bundled session at ``--speed`` (copies shifted so every record is new, as ``bench_soak`` does).
Snapshots at 4 minutes, half-way and 30 s before the end; prints RSS and the traced heap at each,
then the biggest differences between consecutive snapshots, by traceback. Memory outside Python's
heap (Arrow buffers, the allocator's arenas) shows in RSS but not in the traced heap.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchmarks.bench_e2e import SPAN_MS, build_recording
from k2.config import K2Settings, LakeSettings, MaintenanceSettings, SourceSettings
from k2.emulator.runner import EmulatorProcess
from k2.emulator.server import ReplayConfig
from k2.logging import configure_logging
from k2.services.run import run_pipeline


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _probe(url: str, work: Path, minutes: float, maintenance_s: float) -> None:
    settings = K2Settings(
        source=SourceSettings(
            symbols=("BTCUSDT", "ETHUSDT"), kinds=("trades", "quotes"), max_connect_attempts=3, ws_url=url, rest_url=url
        ),
        lake=LakeSettings(warehouse=work / "warehouse", maintenance=MaintenanceSettings(interval_s=maintenance_s)),
    )
    run = asyncio.create_task(
        run_pipeline(settings, duration_s=minutes * 60, is_sample_data=True, fetch_symbol_info=False)
    )
    start = time.monotonic()
    snapshots: list[tuple[float, tracemalloc.Snapshot, float]] = []
    for mark in (4 * 60, minutes * 30, minutes * 60 - 30):
        await asyncio.wait([run], timeout=max(0.0, mark - (time.monotonic() - start)))
        snapshots.append((time.monotonic() - start, tracemalloc.take_snapshot(), _rss_mb()))
        traced = tracemalloc.get_traced_memory()[0] / 2**20
        print(f"t={snapshots[-1][0]:.0f} s  RSS {snapshots[-1][2]:.1f} MB  traced {traced:.1f} MB", flush=True)
    await run
    for (t0, a, r0), (t1, b, r1) in itertools.pairwise(snapshots):
        print(f"\n=== {t0:.0f} s -> {t1:.0f} s (RSS {r0:.1f} -> {r1:.1f} MB)")
        for stat in b.compare_to(a, "traceback")[:12]:
            print(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks")
            for line in stat.traceback.format()[-8:]:
                print("     ", line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--speed", type=float, default=10.0)
    ap.add_argument("--maintenance-s", type=float, default=120.0)
    args = ap.parse_args()
    configure_logging(level="WARNING")
    tracemalloc.start(12)
    with tempfile.TemporaryDirectory(prefix="k2-probe-memory-") as tmp:
        work = Path(tmp)
        recording = work / "session.jsonl.gz"
        copy_s = SPAN_MS / 1000 / args.speed  # one copy of the session lasts this long at --speed
        messages = sum(build_recording(recording, int(args.minutes * 60 / copy_s) + 2, session=True))
        print(f"{messages:,} messages; replay at {args.speed:g}x for {args.minutes:g} min", flush=True)
        with EmulatorProcess(ReplayConfig(recording=recording, speed=args.speed, preload=True)) as emulator:
            asyncio.run(_probe(emulator.url, work, args.minutes, args.maintenance_s))


if __name__ == "__main__":
    main()
