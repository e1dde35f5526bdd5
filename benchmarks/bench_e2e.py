"""End to end, embedded, against a baseline and a ceiling measured in the same minutes.

    PYTHONPATH=. .venv/bin/python -m benchmarks.bench_e2e [--copies 10] [--rounds 3]
        [--runs k2,baseline,ceiling,session,k2p] [--session-copies 2] [--compare-src /path/to/old/src]

Every run serves a recording from K2's emulator in a child process (``speed=None``: as fast as the
client reads; decoded before listening) to a client in another child process (its own interpreter,
started fresh), over a real loopback WebSocket. The runs are interleaved round by round (K2,
baseline, ceiling, K2, baseline, ceiling, ...) so machine drift hits them all alike, and the report
gives each one's median and the ratios between medians:

* ``k2``: the embedded pipeline (the code behind ``k2 run``, trades only) on ``copies`` x the bundled
  34,419 real trades (ids and times shifted so every trade is distinct). The clock starts when the
  pipeline starts and stops when the last row is committed; the table is counted afterwards.
* ``baseline``: the straightforward embedded pipeline for the same job: a ``websockets`` client,
  ``json.loads`` per frame, ``Decimal`` per price and quantity, a pyarrow table of six columns per
  100,000 rows and pyiceberg ``append`` to a table in a SQLite catalog. Same emulator, same trades.
* ``k2p``: as ``k2``, with ``source.parse_process`` (the parser in a child process of its own; the
  client's CPU then includes that child's).
* ``ceiling``: a client that only counts frames (picows, no parsing): what the emulator can serve.
* ``session``: the whole bundled session (trades and bookTicker, their real interleaving; copies
  shifted likewise) through the embedded pipeline with both kinds, as messages (rows) per second.
* ``compare``: with ``--compare-src DIR``, the same ``k2`` run with ``DIR`` (e.g. the previous
  commit's ``src``, from ``git archive``) first on ``PYTHONPATH``: an A/B of the pipeline code
  in the same minutes (the emulator stays this tree's in both).

Each line also gives the CPU the client process and the emulator process used during the run: the
one near 100 % of a core is the one setting the pace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from k2.emulator.recording import BUNDLED_BINANCE_SESSION, BUNDLED_BINANCE_TRADES, RecordingWriter, read_recording
from k2.emulator.runner import EmulatorProcess
from k2.emulator.server import ReplayConfig

STREAMS = "/stream?streams=btcusdt@trade/ethusdt@trade"
SPAN_MS = 651_000  # the bundled recordings' span, rounded up: copy k is shifted k spans forward
RESULT = "RESULT "
ROOT = Path(__file__).resolve().parent.parent


# --- recordings --------------------------------------------------------------------------------------
def _id_spans(messages: list[dict[str, Any]], kind: str, key: str) -> dict[str, int]:
    ids: dict[str, list[int]] = {}
    for msg in messages:
        if msg["stream"].endswith(kind):
            ids.setdefault(msg["data"]["s"], []).append(msg["data"][key])
    return {s: max(v) - min(v) + 1 for s, v in ids.items()}


def build_recording(path: Path, copies: int, *, session: bool = False) -> tuple[int, int]:
    """``copies`` x the bundled trades (or the session's trades and bookTicker), shifted so every
    record is distinct: (trades, quotes) written."""
    source = BUNDLED_BINANCE_SESSION if session else BUNDLED_BINANCE_TRADES
    base = [(f.recv_us, msgspec.json.decode(f.frame)) for f in read_recording(source)]
    base = [(t, m) for t, m in base if m["stream"].endswith(("@trade", "@bookTicker"))]
    trade_span = _id_spans([m for _, m in base], "@trade", "t")
    quote_span = _id_spans([m for _, m in base], "@bookTicker", "u")
    trades = quotes = 0
    with RecordingWriter(path) as out:
        for c in range(copies):
            for recv_us, msg in base:
                d = dict(msg["data"])
                if msg["stream"].endswith("@trade"):
                    d["t"] += c * trade_span[d["s"]]
                    d["T"] += c * SPAN_MS
                    d["E"] += c * SPAN_MS
                    trades += 1
                else:
                    d["u"] += c * quote_span[d["s"]]
                    quotes += 1
                out.write(
                    msgspec.json.encode({"stream": msg["stream"], "data": d}).decode(), recv_us + c * SPAN_MS * 1000
                )
    return trades, quotes


# --- the clients (each runs in its own child process) --------------------------------------------------
async def _k2(url: str, work: Path, expected: int, kinds: tuple[str, ...], parse_process: bool) -> dict[str, Any]:
    from k2.config import K2Settings, LakeSettings, SourceSettings
    from k2.query.engine import QueryEngine
    from k2.services.pipeline import EmbeddedPipeline

    try:
        from k2.services.lifecycle import freeze_start_up
    except ImportError:  # --compare-src older than it: its `k2 run` did not freeze
        freeze_start_up = lambda: None  # noqa: E731

    settings = K2Settings(
        source=SourceSettings(
            symbols=("BTCUSDT", "ETHUSDT"),
            kinds=kinds,
            max_connect_attempts=3,
            **({"parse_process": True} if parse_process else {}),  # (so --compare-src may predate it)
        ),
        lake=LakeSettings(warehouse=work / "warehouse", flush_rows=100_000, flush_seconds=1.0),
    )
    pipeline = EmbeddedPipeline(settings, ws_base_url=url, is_sample_data=True)
    freeze_start_up()  # as `k2 run` does
    start, cpu, children = time.perf_counter(), time.process_time(), _children_cpu_s()
    task = asyncio.create_task(pipeline.run())
    while (s := pipeline.stats).rows_committed + s.quotes_committed < expected:
        if task.done():
            task.result()
            raise SystemExit("pipeline stopped early")
        await asyncio.sleep(0.01)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    pipeline.stop()
    await task
    cpu += _children_cpu_s() - children  # the parse process (joined when the pipeline stopped)
    engine = QueryEngine.from_settings(settings)
    stored = sum(int(engine.sql(f"SELECT count(*) AS n FROM {k}").to_pylist()[0]["n"]) for k in kinds)
    return {"elapsed": elapsed, "cpu": cpu, "rows": expected, "stored": stored}


async def _baseline(url: str, work: Path, expected: int) -> dict[str, Any]:
    """The straightforward embedded pipeline (see the module docstring)."""
    from datetime import UTC, datetime
    from decimal import Decimal

    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog
    from websockets.asyncio.client import connect

    decimal = pa.decimal128(38, 12)
    schema = pa.schema(
        [
            pa.field("symbol", pa.string(), nullable=False),
            pa.field("trade_id", pa.int64(), nullable=False),
            pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("price", decimal, nullable=False),
            pa.field("quantity", decimal, nullable=False),
            pa.field("side", pa.string(), nullable=False),
        ]
    )
    (work / "wh").mkdir(parents=True)
    catalog = SqlCatalog("baseline", uri=f"sqlite:///{work / 'catalog.db'}", warehouse=(work / "wh").as_uri())
    catalog.create_namespace("bench")
    table = catalog.create_table("bench.trades", schema=schema)
    columns: dict[str, list[Any]] = {f.name: [] for f in schema}
    committed = 0
    start, cpu = time.perf_counter(), time.process_time()

    def flush() -> None:
        nonlocal committed
        table.append(pa.table(columns, schema=schema))
        committed += len(columns["symbol"])
        for values in columns.values():
            values.clear()

    async with connect(url + STREAMS, compression=None, max_size=2**24) as ws:
        while committed + len(columns["symbol"]) < expected:
            d = json.loads(await ws.recv())["data"]
            columns["symbol"].append(d["s"])
            columns["trade_id"].append(d["t"])
            columns["timestamp"].append(datetime.fromtimestamp(d["T"] / 1000, tz=UTC))
            columns["price"].append(Decimal(d["p"]))
            columns["quantity"].append(Decimal(d["q"]))
            columns["side"].append("SELL" if d["m"] else "BUY")
            if len(columns["symbol"]) == 100_000:
                flush()
    if columns["symbol"]:
        flush()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    stored = len(catalog.load_table("bench.trades").scan(selected_fields=("trade_id",)).to_arrow())
    return {"elapsed": elapsed, "cpu": cpu, "rows": expected, "stored": stored}


async def _ceiling(url: str, expected: int) -> dict[str, Any]:
    """Count frames and nothing else."""
    from picows import WSFrame, WSListener, WSTransport, ws_connect

    done = asyncio.get_running_loop().create_future()
    marks: list[tuple[float, float]] = []

    class Counter(WSListener):  # type: ignore[misc]
        count = 0

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            self.count += 1
            if self.count == 1:
                marks.append((time.perf_counter(), time.process_time()))
            elif self.count == expected:
                marks.append((time.perf_counter(), time.process_time()))
                transport.disconnect()
                done.set_result(None)

    await ws_connect(Counter, url + STREAMS)
    await done
    (t0, c0), (t1, c1) = marks
    return {"elapsed": t1 - t0, "cpu": c1 - c0, "rows": expected - 1, "stored": expected}


def _child(args: argparse.Namespace) -> None:
    from k2.logging import configure_logging

    configure_logging(level="WARNING")
    work = Path(args.work)
    if args.child == "baseline":
        result = asyncio.run(_baseline(args.url, work, args.expected))
    elif args.child == "ceiling":
        result = asyncio.run(_ceiling(args.url, args.expected))
    else:
        kinds = ("trades", "quotes") if args.child == "session" else ("trades",)
        result = asyncio.run(_k2(args.url, work, args.expected, kinds, parse_process=args.child == "k2p"))
    print(RESULT + json.dumps(result), flush=True)


# --- the parent: interleaved rounds ---------------------------------------------------------------------
def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(kind: str, recording: Path, expected: int, work: Path, compare_src: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    paths = [str(ROOT)]
    if kind == "compare":
        assert compare_src is not None
        paths.insert(0, compare_src)
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    child = "k2" if kind == "compare" else kind
    with EmulatorProcess(ReplayConfig(recording=recording, speed=None, preload=True)) as emulator:
        assert emulator._proc is not None
        emulator_pid = emulator._proc.pid
        emulator_cpu = _cpu_s(emulator_pid)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_e2e", "--child", child, "--url", emulator.url,
             "--expected", str(expected), "--work", str(work)],
            env=env, cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        emulator_cpu = _cpu_s(emulator_pid) - emulator_cpu
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
    if out.returncode or not lines:
        raise SystemExit(f"{kind} run failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT))
    if result["stored"] != expected:
        raise SystemExit(f"{kind}: {result['stored']:,} rows stored, {expected:,} expected")
    result["rate"] = result["rows"] / result["elapsed"]
    result["emulator_cpu"] = emulator_cpu
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=10, help="copies of the 34,419 bundled trades per run")
    ap.add_argument("--session-copies", type=int, default=2, help="copies of the bundled session (166,351 msgs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", default="k2,baseline,ceiling,session", help="which runs, in the order of a round")
    ap.add_argument("--compare-src", help="a src directory (e.g. the previous commit's) to A/B the k2 run against")
    ap.add_argument("--child", choices=["k2", "k2p", "baseline", "ceiling", "session"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    kinds = [k.strip() for k in args.runs.split(",") if k.strip()]
    if args.compare_src:
        args.compare_src = str(Path(args.compare_src).resolve())
        if "compare" not in kinds:
            kinds.insert(kinds.index("k2") + 1 if "k2" in kinds else 0, "compare")
    unknown = set(kinds) - {"k2", "k2p", "baseline", "ceiling", "session", "compare"}
    if unknown or ("compare" in kinds and not args.compare_src):
        raise SystemExit(f"unknown runs {sorted(unknown)} (or compare without --compare-src)")
    with tempfile.TemporaryDirectory(prefix="k2-bench-e2e-") as tmp:
        root = Path(tmp)
        trades_rec, session_rec = root / "trades.jsonl.gz", root / "session.jsonl.gz"
        n_trades, _ = build_recording(trades_rec, args.copies)
        expected = {k: n_trades for k in ("k2", "k2p", "baseline", "ceiling", "compare")}
        if "session" in kinds:
            expected["session"] = sum(build_recording(session_rec, args.session_copies, session=True))
        print(f"load average before: {os.getloadavg()}; trades per run: {n_trades:,}", flush=True)
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in kinds:
                recording = session_rec if kind == "session" else trades_rec
                res = run_one(kind, recording, expected[kind], root / f"{kind}-{r}", args.compare_src)
                results[kind].append(res)
                client, emulator = res["cpu"] / res["elapsed"], res["emulator_cpu"] / res["elapsed"]
                busy = f"client CPU {client:4.0%}, emulator {emulator:4.0%}"
                print(
                    f"round {r + 1} {kind:9s} {res['rate']:>10,.0f}/s  elapsed {res['elapsed']:6.2f} s  {busy}"
                    f"  ({res['cpu'] / res['rows'] * 1e6:.2f} µs CPU/msg in the client)",
                    flush=True,
                )
        print(f"load average after: {os.getloadavg()}")
    medians = {k: statistics.median(r["rate"] for r in v) for k, v in results.items()}
    names = {
        "k2": "K2 embedded, trades/s",
        "k2p": "K2 embedded, parse process, trades/s",
        "compare": f"K2 embedded from {args.compare_src}, trades/s",
        "baseline": "straightforward pipeline, trades/s",
        "ceiling": "emulator count-only ceiling, frames/s",
        "session": "K2 embedded, whole session (trades + quotes), msgs/s",
    }
    print(f"\nmedians of {args.rounds} interleaved rounds (client CPU per message beside each):")
    for kind, rate in medians.items():
        runs = ", ".join(f"{r['rate']:,.0f}" for r in results[kind])
        cpu_us = statistics.median(r["cpu"] / r["rows"] * 1e6 for r in results[kind])
        print(f"  {names[kind]:56s} {rate:>10,.0f}  {cpu_us:5.2f} µs   ({runs})")
    pairs = (("k2", "baseline"), ("k2p", "baseline"), ("k2p", "k2"), ("k2", "ceiling"), ("k2p", "ceiling"),
             ("k2", "compare"), ("baseline", "ceiling"))  # fmt: skip
    for a, b in pairs:
        if a in medians and b in medians:
            print(f"  ratio {a} / {b}: {medians[a] / medians[b]:.2f}")


if __name__ == "__main__":
    main()
