"""REST API throughput and latency on the table built by ``benchmarks.build_table`` (>= 10M rows).

    python -m benchmarks.build_table --warehouse benchmarks/.work/query --rows 10000000 --batch-rows 500000
    python -m benchmarks.bench_api --warehouse benchmarks/.work/query --duration 20 --out benchmarks/results/api.md

Starts `k2 serve` in a child process (its own interpreter: the load generator must not share its GIL)
in open mode on loopback with the rate limit lifted, then, for each endpoint and each concurrency
(``--clients``, default 1, 10, 50), runs that many clients (asyncio, one HTTP/1.1 keep-alive
connection each) sending requests back to back for ``--duration`` seconds after ``--warmup`` seconds:
requests/s, p50 and p99 latency (full response read). Endpoints:

- ``ohlcv``: 1-minute bars of BTCUSDT for the UTC day 2024-08-09 (a full symbol-day), JSON;
- ``trades``: a 1,000-trade page of BTCUSDT starting at a random minute of that day, JSON.

The service keeps aggregates per table snapshot (``api.result_cache_mb``, k2.query.cache), so with
the default settings every OHLCV request after the first is answered from memory (the table does not
change during the run): that is the repeated-dashboard case. ``--result-cache-mb 0`` measures every
request computing its bars.

Then the transfer of ``--transfer-rows`` (default 1,000,000) trades in one page, as Arrow IPC and as
JSON, timed to the last byte and decoded by the client (pyarrow / json.loads). The client and the
server share the machine's cores: figures are for this machine as it was, with its load noted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

DAY = "2024-08-09"
SYMBOL = "BTCUSDT"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(warehouse: Path, workers: int, cache_mb: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "K2_API__RATE_LIMIT": "1000000/second",
        "K2_API__WORKERS": str(workers),
        **({} if cache_mb is None else {"K2_API__RESULT_CACHE_MB": str(cache_mb)}),
        "K2_API__QUERY_TIMEOUT_S": "120",
        "K2_LOG__LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "k2.cli",
        "serve",
        "--warehouse",
        str(warehouse),
        "--port",
        str(port),
        "--auth",
        "open",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("k2 serve exited")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("k2 serve did not become ready")


def _request(endpoint: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    if endpoint == "ohlcv":
        return "/v1/ohlcv", {
            "symbol": SYMBOL,
            "interval": "1m",
            "start": f"{DAY}T00:00:00Z",
            "end": "2024-08-10T00:00:00Z",
        }
    minute = rng.randrange(0, 24 * 60 - 1)
    start = f"{DAY}T{minute // 60:02d}:{minute % 60:02d}:00Z"
    return "/v1/trades", {"symbol": SYMBOL, "start": start, "limit": 1000}


async def _load(url: str, endpoint: str, clients: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    measure_from = t_start + warmup_s
    stop_at = measure_from + duration_s

    async def client(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            while (now := time.perf_counter()) < stop_at:
                path, params = _request(endpoint, rng)
                response = await http.get(path, params=params)
                done = time.perf_counter()
                if response.status_code != 200:
                    errors += 1
                elif now >= measure_from:
                    latencies.append(done - now)

    await asyncio.gather(*(client(i) for i in range(clients)))
    latencies.sort()
    n = len(latencies)
    return {
        "endpoint": endpoint,
        "clients": clients,
        "requests": n,
        "errors": errors,
        "req_per_s": round(n / duration_s, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if n else None,
        "p99_ms": round(1000 * latencies[min(n - 1, int(0.99 * n))], 1) if n else None,
    }


def transfer(url: str, rows: int) -> list[dict[str, Any]]:
    out = []
    params = {"symbol": SYMBOL, "start": f"{DAY}T00:00:00Z", "limit": rows}
    for fmt in ("arrow", "json"):
        with httpx.Client(base_url=url, timeout=600) as http:
            started = time.perf_counter()
            response = http.get("/v1/trades", params={**params, "format": fmt})
            received = time.perf_counter()
            got = (
                pa.ipc.open_stream(response.content).read_all().num_rows
                if fmt == "arrow"
                else len(response.json()["data"])
            )
            decoded = time.perf_counter()
        out.append(
            {
                "format": fmt,
                "rows": got,
                "bytes": len(response.content),
                "transfer_s": round(received - started, 2),
                "decode_s": round(decoded - received, 2),
                "rows_per_s": round(got / (decoded - started)),
            }
        )
    return out


def _markdown(load: list[dict[str, Any]], moved: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# REST API benchmark (`python -m benchmarks.bench_api`)",
        "",
        f"- {meta['when']}; {meta['machine']}; load average before: {meta['loadavg']}",
        f"- table: {meta['warehouse']} ({meta['rows']} rows); server workers: {meta['workers']}; "
        f"result cache: {meta['result_cache']}; "
        f"{meta['duration_s']} s per cell after {meta['warmup_s']} s warm-up",
        "",
        "| endpoint | clients | requests/s | p50 ms | p99 ms | requests | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in load:
        lines.append(
            f"| {r['endpoint']} | {r['clients']} | {r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['requests']} | {r['errors']} |"
        )
    lines += [
        "",
        "| format | rows | bytes | transfer s | decode s | rows/s end to end |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in moved:
        lines.append(
            f"| {m['format']} | {m['rows']} | {m['bytes']} | {m['transfer_s']} | {m['decode_s']} | {m['rows_per_s']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", type=Path, default=Path("benchmarks/.work/query"))
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--endpoints", default="ohlcv,trades")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--transfer-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--result-cache-mb", type=int, help="the service's api.result_cache_mb (0: every request computes its bars)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    build = json.loads((args.warehouse / "build.json").read_text()) if (args.warehouse / "build.json").exists() else {}
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "warehouse": args.warehouse,
        "rows": build.get("rows", "?"),
        "workers": args.workers,
        "result_cache": "default (64 MB)" if args.result_cache_mb is None else f"{args.result_cache_mb} MB",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
    }
    proc, url = start_server(args.warehouse, args.workers, args.result_cache_mb)
    try:
        load = []
        for endpoint in args.endpoints.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                result = asyncio.run(_load(url, endpoint, clients, args.duration, args.warmup))
                print(json.dumps(result), flush=True)
                load.append(result)
        moved = transfer(url, args.transfer_rows) if args.transfer_rows else []
        for m in moved:
            print(json.dumps(m), flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = _markdown(load, moved, meta)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
