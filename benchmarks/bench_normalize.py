"""Normalize rate: raw Binance frames -> canonical Arrow batches, on one core.

    .venv/bin/python -m benchmarks.bench_normalize [--batch 5000] [--repeat 10] [--odd-every N]

Parses the bundled real recording (34,419 frames) ``repeat`` times in batches of ``batch`` frames
through the production parser (msgspec decode + validation, columnar Arrow build, UUIDv5 ids) and
reports trades/s. Single thread, no I/O in the timed region. ``--odd-every N`` puts a frame of a
stream outside the subscription (quarantined as ``unsubscribed``) after every N frames: the cost of
odd frames in long batches (a backlog), which leave the one-pass path.
"""

from __future__ import annotations

import argparse
import statistics
import time

from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.schema.kinds import RecordKind
from k2.sources import RawFrame
from k2.sources.binance import BinanceParser, BinanceSymbols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--odd-every", type=int, default=0, help="an unsubscribed stream's frame after every N frames")
    args = ap.parse_args()
    frames = [RawFrame(f.frame.encode(), f.recv_us) for f in read_recording(BUNDLED_BINANCE_TRADES)]
    if args.odd_every:
        odd = b'{"stream":"solusdt@trade","data":{"e":"trade","s":"SOLUSDT"}}'
        frames = [
            x
            for i, f in enumerate(frames, 1)
            for x in ((f, RawFrame(odd, f.received_at_us)) if i % args.odd_every == 0 else (f,))
        ]
    parser = BinanceParser(["BTCUSDT", "ETHUSDT"], rules=BinanceSymbols())
    rates, cpu_us = [], []
    for _ in range(args.repeat):
        rows = 0
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(frames), args.batch):
            parsed = parser.parse(frames[i : i + args.batch])
            rows += parsed.rows(RecordKind.TRADES)
        rates.append(rows / (time.perf_counter() - start))
        cpu_us.append((time.process_time() - cpu) / len(frames) * 1e6)
    print(f"frames per pass: {len(frames)}, batch: {args.batch}, passes: {args.repeat}, odd every: {args.odd_every}")
    print(f"normalize trades/s: median {statistics.median(rates):,.0f}  min {min(rates):,.0f}  max {max(rates):,.0f}")
    print(f"CPU per frame (steadier than the rate on a busy machine): median {statistics.median(cpu_us):.2f} µs")


if __name__ == "__main__":
    main()
