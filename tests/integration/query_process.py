"""A process that serves queries, for the observability test: ``QueryEngine`` queries of every kind
(trades, ohlcv, vwap, sql) against a warehouse, repeated until SIGTERM, with ``/metrics`` served on
the given port (K2 has no long-running query service yet; this stands in for one).

    python -m tests.integration.query_process WAREHOUSE PORT
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from k2.config import K2Settings, LakeSettings
from k2.metrics import serve_metrics
from k2.query.engine import QueryEngine


def main(warehouse: Path, port: int) -> None:
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    server = serve_metrics(port)
    with QueryEngine.from_settings(K2Settings(lake=LakeSettings(warehouse=warehouse))) as engine:
        while not stop.is_set():
            engine.query_trades(symbol="BTCUSDT", limit=10)
            engine.ohlcv("BTCUSDT", "1m")
            engine.vwap("ETHUSDT")
            engine.sql("SELECT count(*) AS n FROM trades WHERE symbol = ?", ["BTCUSDT"])
            stop.wait(0.5)
    server.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
