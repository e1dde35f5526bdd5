"""`k2 run --serve PORT`: one command captures (emulator -> pipeline -> Iceberg) and serves the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from k2.devservices.common import free_port
from k2.emulator.server import EmulatorThread, ReplayConfig
from tests.conftest import eventually

pytestmark = pytest.mark.integration


def test_k2_run_serves_its_own_pipeline(tmp_path: Path) -> None:
    port = free_port()
    with EmulatorThread(ReplayConfig(speed=20.0)) as emu:
        env = {**os.environ, "K2_SOURCE__EXCHANGE_INFO_CACHE": str(tmp_path / "xinfo.json")}
        command = [
            sys.executable, "-m", "k2.cli", "run", "--ws-url", emu.url, "--rest-url", emu.url.replace("ws", "http", 1),
            "--warehouse", str(tmp_path / "warehouse"), "--sample", "--serve", str(port), "--duration", "300",
        ]  # fmt: skip
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

                def serving_live_data() -> bool:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    try:
                        feeds = http.get("/v1/feeds").json()
                    except httpx.HTTPError:
                        return False
                    venues = feeds["venues"]
                    return (
                        feeds["source"] == "process"
                        and len(venues) == 1
                        and venues[0]["connected"]
                        and (venues[0]["records_per_s"] or 0) > 0
                        and any(f["kind"] == "trades" and f["records_last_minute"] > 0 for f in feeds["feeds"])
                    )

                eventually(serving_live_data, timeout=120, interval=0.5)
                trades = http.get("/v1/trades", params={"symbol": "BTCUSDT", "limit": 5}).json()["data"]
                assert len(trades) == 5 and all(t["is_sample_data"] for t in trades)
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped:" in out
