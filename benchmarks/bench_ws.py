"""Raw receive rate of WebSocketSession from the emulator over loopback (frames/s).

The emulator replays the bundled recording as fast as the client reads (``speed=None``, looping)
in a child process (its own GIL); the session runs here with a sink that only counts frames, so the
figure is the ceiling the WebSocket edge puts on the pipeline.

    /tmp/k2venv/bin/python benchmarks/bench_ws.py [--frames 500000] [--runs 3] [--in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from k2.config import SourceSettings
from k2.emulator.runner import EmulatorProcess
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.logging import configure_logging
from k2.sources.base import RawFrame
from k2.sources.binance import BinanceParser, BinanceSymbols
from k2.sources.session import WebSocketSession


async def receive(base_url: str, frames: int) -> tuple[float, float]:
    """Receive ``frames`` frames: (frames per second, this process's CPU µs per frame)."""
    url = BinanceParser(["BTCUSDT", "ETHUSDT"], rules=BinanceSymbols()).stream_urls(base_url)[0]
    session = WebSocketSession(url, venue="binance", settings=SourceSettings(max_connect_attempts=3))
    count = skipped = 0
    first = first_cpu = 0.0

    async def sink(batch: list[RawFrame]) -> None:
        nonlocal count, first, first_cpu
        if count == 0:  # the clock starts once the first batch is in: it is not counted
            first, first_cpu = time.perf_counter(), time.process_time()
            len(batch)
        count += len(batch)
        if count >= frames:
            session.stop()

    await session.run(sink)
    wall, cpu = time.perf_counter() - first, time.process_time() - first_cpu
    return (count - skipped) / wall, cpu / (count - skipped) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-process", action="store_true", help="emulator in a thread of this process")
    parser.add_argument("--uvloop", action="store_true", help="run the session on uvloop's event loop")
    args = parser.parse_args()
    configure_logging(level="WARNING")
    config = ReplayConfig(speed=None, loop=True)
    rates, costs = [], []
    for run in range(args.runs):
        runner = EmulatorThread(config) if args.in_process else EmulatorProcess(config)
        with runner:
            if args.uvloop:
                import uvloop

                rate, cpu_us = uvloop.run(receive(runner.url, args.frames))
            else:
                rate, cpu_us = asyncio.run(receive(runner.url, args.frames))
        rates.append(rate)
        costs.append(cpu_us)
        print(f"run {run + 1}: {rate:,.0f} frames/s, receiving process CPU {cpu_us:.2f} µs/frame")
    where = "thread of the same process" if args.in_process else "child process"
    print(
        f"WebSocketSession receive rate, emulator in a {where}, {args.frames:,} frames x {args.runs} runs: "
        f"median {statistics.median(rates):,.0f} frames/s (min {min(rates):,.0f}, max {max(rates):,.0f}); "
        f"receiving process CPU median {statistics.median(costs):.2f} µs/frame"
    )


if __name__ == "__main__":
    main()
