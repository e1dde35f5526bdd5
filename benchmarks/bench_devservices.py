"""Cold and warm start times of the distributed-mode dev services (k2.devservices).

Cold: an empty Maven repository (K2_MAVEN_REPO) and an empty K2 cache (K2_CACHE_DIR), so every jar and
archive is downloaded from Maven Central. PostgreSQL comes from Debian's packages: its "cold" figure
is a first initdb with the binaries already installed (apt-get is not timed). Warm: the caches filled.
Each figure is the time from the call to start() until the readiness check passed.

    python -m benchmarks.bench_devservices [--cold] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _services() -> dict[str, Callable[[Path], Any]]:
    from k2.devservices import ApicurioRegistry, KafkaCluster, PostgresServer, S3Proxy

    return {
        "kafka (1 node)": lambda d: KafkaCluster(d, brokers=1),
        "kafka (3 nodes)": lambda d: KafkaCluster(d, brokers=3),
        "apicurio registry": lambda d: ApicurioRegistry(d),
        "s3proxy": lambda d: S3Proxy(d),
        "postgresql": lambda d: PostgresServer(d),
    }


def measure(runs: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {}
    for name, make in _services().items():
        for _ in range(runs):
            workdir = Path(tempfile.mkdtemp(prefix="k2-bench-"))
            service = make(workdir)
            start = time.monotonic()
            service.start()
            started = time.monotonic() - start
            start = time.monotonic()
            service.stop()
            stopped = time.monotonic() - start
            shutil.rmtree(workdir, ignore_errors=True)
            results.setdefault(name, []).append((started, stopped))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="empty Maven repo and K2 cache (downloads everything)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    scratch = None
    if args.cold:
        scratch = Path(tempfile.mkdtemp(prefix="k2-cold-"))
        os.environ["K2_MAVEN_REPO"] = str(scratch / "m2")
        os.environ["K2_CACHE_DIR"] = str(scratch / "cache")
    from k2.logging import configure_logging

    configure_logging(level="WARNING")
    results = measure(1 if args.cold else args.runs)
    label = "cold (download + start)" if args.cold else f"warm (median of {args.runs})"
    print(f"| service | {label} start s | stop s |")
    print("| --- | ---: | ---: |")
    for name, samples in results.items():
        starts = sorted(s for s, _ in samples)
        stops = sorted(s for _, s in samples)
        print(f"| {name} | {starts[len(starts) // 2]:.1f} | {stops[len(stops) // 2]:.1f} |")
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
