"""Memory soak: the RSS of ``k2 run`` (or ``k2 consume``) over a long replay at a realistic rate.

    PYTHONPATH=. .venv/bin/python -m benchmarks.bench_soak run [--minutes 60] [--speed 10]
    PYTHONPATH=. .venv/bin/python -m benchmarks.bench_soak consume [--minutes 60] [--speed 10]

The bundled session (real Binance trades and best bid/offer, 2024-08-08 23:54-00:05 UTC, 166,351
messages in 651 s: about 255 a second) is repeated end to end, each copy shifted forward in time and
in ids so every record is new (a plain loop would repeat ids, which the pipeline drops as
duplicates, and the writes would stop), enough copies for the duration. K2's emulator replays it in
a child process at ``--speed`` times the recorded pace (10x: about 2,550 messages a second).

* ``run``: the real ``k2 run`` command (embedded: WebSocket -> Iceberg), trades and quotes, for
  ``--minutes``; it stops itself and commits.
* ``consume``: ``k2 ingest`` (WebSocket -> Kafka) feeds the topics and the real ``k2 consume``
  (Kafka -> Iceberg) drains them. The Kafka stack is the one ``eval "$(k2 dev env)"`` points at
  (``k2 dev up``); without ``K2_KAFKA__BOOTSTRAP_SERVERS`` set, a Kafka and a schema registry are
  started here from ``k2.devservices``. The figures are ``k2 consume``'s (``k2 ingest``'s beside).

The resident set size of each process is read from ``/proc/<pid>/status`` every ``--interval``
seconds. Reported: RSS at the end of the warm-up (``--warmup``, default a tenth of the run: imports,
the first commits and buffers reaching their steady size), the peak after it, the end, and the
least-squares slope over the samples after the warm-up (MB per hour): flat memory has a slope within
noise of zero. ``--csv`` keeps every sample.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from benchmarks.bench_e2e import SPAN_MS, build_recording
from k2.emulator.runner import EmulatorProcess
from k2.emulator.server import ReplayConfig

K2 = [sys.executable, "-m", "k2.cli"]


def rss_mb(pid: int) -> float | None:
    """Resident set size of a live process in MB (None once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per hour."""
    if len(samples) < 2:
        return math.nan
    ts, ms = [t for t, _ in samples], [m for _, m in samples]
    t_mean, m_mean = statistics.fmean(ts), statistics.fmean(ms)
    var = sum((t - t_mean) ** 2 for t in ts)
    return math.nan if var == 0 else sum((t - t_mean) * (m - m_mean) for t, m in samples) / var * 3600


def sample(procs: dict[str, subprocess.Popen[bytes]], watch: str, interval_s: float, until: float) -> dict[str, list]:
    """RSS samples of every process until ``watch`` exits (or ``until``, monotonic, passes)."""
    start = time.monotonic()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
    while procs[watch].poll() is None and time.monotonic() < until:
        for name, proc in procs.items():
            mb = rss_mb(proc.pid)
            if mb is not None:
                samples[name].append((time.monotonic() - start, mb))
        time.sleep(interval_s)
    return samples


def report(name: str, points: list[tuple[float, float]], warmup_s: float) -> None:
    steady = [(t, m) for t, m in points if t >= warmup_s]
    if not steady:
        print(f"  {name}: no samples after the warm-up ({len(points)} samples in all)")
        return
    start, peak, end = steady[0][1], max(m for _, m in steady), steady[-1][1]
    print(
        f"  {name:8s} RSS start {start:7.1f} MB   peak {peak:7.1f} MB   end {end:7.1f} MB   "
        f"slope {slope_mb_per_hour(steady):+7.1f} MB/h   (first sample {points[0][1]:.1f} MB; "
        f"{len(steady)} samples over {steady[-1][0] - steady[0][0]:.0f} s)"
    )


def _kafka_env(stack: ExitStack, root: Path) -> dict[str, str]:
    """K2_KAFKA__* for the given stack, or for a Kafka and registry started here."""
    env = {k: v for k, v in os.environ.items() if k.startswith("K2_")}
    if "K2_KAFKA__BOOTSTRAP_SERVERS" not in env:
        from k2.devservices.kafka import KafkaCluster
        from k2.devservices.registry import ApicurioRegistry

        cluster = KafkaCluster(root / "kafka")
        cluster.start()
        stack.callback(cluster.stop)
        registry = ApicurioRegistry(root / "registry")
        registry.start()
        stack.callback(registry.stop)
        env |= {"K2_KAFKA__BOOTSTRAP_SERVERS": cluster.bootstrap_servers, "K2_KAFKA__SCHEMA_REGISTRY_URL": registry.url}
    token = "soak" + uuid.uuid4().hex[:6]  # topics and group of this run only
    return env | {"K2_KAFKA__ASSET_CLASS": token, "K2_KAFKA__CONSUMER_GROUP": f"{token}-consume"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["run", "consume"])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--speed", type=float, default=10.0, help="times the session's recorded pace (~255 msgs/s)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, help="seconds excluded from start/peak/slope (default: a tenth)")
    ap.add_argument("--csv", type=Path, help="write every sample here")
    args = ap.parse_args()
    duration_s = args.minutes * 60
    warmup_s = args.warmup if args.warmup is not None else duration_s / 10
    copies = math.ceil(duration_s * args.speed / (SPAN_MS / 1000)) + 1
    with tempfile.TemporaryDirectory(prefix="k2-bench-soak-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        recording = root / "session.jsonl.gz"
        built = time.monotonic()
        trades, quotes = build_recording(recording, copies, session=True)
        print(f"recording: {copies} copies of the session, {trades + quotes:,} messages "
              f"({time.monotonic() - built:.0f} s to build); replay at {args.speed:g}x "
              f"(~{(trades + quotes) / copies / (SPAN_MS / 1000) * args.speed:,.0f} msgs/s) for {args.minutes:g} min",
              flush=True)  # fmt: skip
        emulator = EmulatorProcess(ReplayConfig(recording=recording, speed=args.speed))
        emulator.start()
        stack.callback(emulator.stop)
        env = dict(os.environ)
        common = ["--ws-url", emulator.url, "--rest-url", "http" + emulator.url[2:], "--sample"]
        common += ["--connect-attempts", "30"]  # a busy machine can keep the emulator from answering at first
        warehouse = ["--warehouse", str(root / "warehouse")]
        duration = ["--duration", str(duration_s)]
        procs: dict[str, subprocess.Popen[bytes]] = {}
        if args.mode == "consume":
            env |= _kafka_env(stack, root)
            procs["consume"] = subprocess.Popen([*K2, "consume", *warehouse, *duration], env=env)
            procs["ingest"] = subprocess.Popen([*K2, "ingest", *common, "--duration", str(duration_s)], env=env)
        else:
            procs["run"] = subprocess.Popen([*K2, "run", *common, *warehouse, *duration], env=env)
        for proc in procs.values():
            stack.callback(proc.kill)
        watch = "consume" if args.mode == "consume" else "run"
        print(f"load average before: {os.getloadavg()}", flush=True)
        samples = sample(procs, watch, args.interval, time.monotonic() + duration_s + 120)
        for proc in procs.values():
            proc.wait(120)
        print(f"load average after: {os.getloadavg()}")
        failed = {name: proc.returncode for name, proc in procs.items() if proc.returncode}
        print(f"RSS over {args.minutes:g} min at {args.speed:g}x (warm-up: first {warmup_s:.0f} s):")
        for name, points in samples.items():
            report(name, points, warmup_s)
        if args.csv is not None:
            with args.csv.open("w") as f:
                f.write("process,seconds,rss_mb\n")
                f.writelines(f"{name},{t:.1f},{m:.1f}\n" for name, points in samples.items() for t, m in points)
        if failed:
            raise SystemExit(f"exited with errors: {failed}")


if __name__ == "__main__":
    main()
