"""Crash-only stance: a signal stops a service promptly with everything it received committed; a second
signal ends it at once; a bug is one line on stderr, never a (slow) rendered traceback.

Real subprocesses (``python -m k2.cli``, or a short script for the hooks): exit codes and stderr are
what an operator sees. The only time bound asserted is a generous "does not hang".
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from k2.config import LakeSettings
from k2.devservices.common import free_port, port_open
from k2.emulator.recording import BUNDLED_BINANCE_TRADES, read_recording
from k2.emulator.server import EmulatorThread, ReplayConfig
from k2.lake.catalog import load_or_create_table, open_catalog
from k2.schema.kinds import RecordKind
from tests.conftest import eventually

pytestmark = pytest.mark.integration

HANG_S = 60  # "does not hang": far above what any of these takes, even on a busy machine


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    return env | {"K2_CONFIG_FILE": str(tmp_path / "absent.toml")} | extra


def _committed(warehouse: Path) -> int:
    lake = LakeSettings(warehouse=warehouse)
    if not (warehouse / "catalog.db").exists():
        return 0
    snapshot = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES).current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.additional_properties.get("total-records", 0))


def test_sigterm_stops_k2_run_with_everything_received_committed(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse"
    log = tmp_path / "run.log"
    with EmulatorThread(ReplayConfig(speed=20.0)) as emu:  # the recording lasts ~33 s at 20x
        args = ["run", "--symbols", "BTCUSDT,ETHUSDT", "--ws-url", emu.url, "--rest-url", emu.emulator.http_url]
        env = _env(tmp_path, K2_LAKE__FLUSH_SECONDS="0.2", K2_LAKE__FLUSH_ROWS="5000")
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "k2.cli", *args, "--sample", "--warehouse", str(warehouse)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            def streaming() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                return _committed(warehouse) >= 1_000

            eventually(streaming, timeout=HANG_S, interval=0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=HANG_S) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        sent = emu.frames_sent
    output = log.read_text()
    stopped = re.search(r"stopped: (\d+) frames, (\d+) trades, 0 quotes, 0 rejected, (\d+) rows in \d+ commits", output)
    assert stopped is not None, output[-3000:]
    frames, trades, rows = (int(g) for g in stopped.groups())
    assert frames == trades == rows == _committed(warehouse)
    assert 1_000 <= frames <= sent  # stopped mid-replay
    # The rows committed are exactly the first ``frames`` trades the emulator sent, once each.
    expected = sorted(
        (d["s"], str(d["t"]))
        for d in (json.loads(r.frame)["data"] for r in list(read_recording(BUNDLED_BINANCE_TRADES))[:frames])
    )
    lake = LakeSettings(warehouse=warehouse)
    table = load_or_create_table(open_catalog(lake), lake, RecordKind.TRADES).scan(
        selected_fields=("symbol", "trade_id")
    )
    got = sorted(zip(*(table.to_arrow().column(c).to_pylist() for c in ("symbol", "trade_id")), strict=True))
    assert got == expected


_DRAIN_FOREVER = """
import asyncio, sys, time
from k2.config import K2Settings
from k2.services.lifecycle import run_until_stopped

stopping = asyncio.Event()

async def run() -> None:
    await stopping.wait()
    print("draining", flush=True)
    time.sleep(600)  # a drain that never ends and blocks the loop, like a flush waiting for a dead broker

asyncio.run(run_until_stopped(run, stopping.set, K2Settings(), None))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_shutdown_ends_the_process_at_once(tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "drain.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _DRAIN_FOREVER], env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        eventually(lambda: _ready(proc, log), timeout=HANG_S, interval=0.05)
        proc.send_signal(sig)
        eventually(lambda: "draining" in log.read_text(), timeout=HANG_S, interval=0.05)
        assert proc.poll() is None  # the first signal only asked it to stop: it is draining
        proc.send_signal(sig)
        assert proc.wait(timeout=HANG_S) == -sig  # the system's default action: no handler, no cleanup
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "service.stopping" in log.read_text()


def _ready(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """The script has installed its signal handlers (its asyncio loop is running)."""
    assert proc.poll() is None, log.read_text()
    status = Path(f"/proc/{proc.pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)  # type: ignore[union-attr]
    return bool(caught & (1 << (signal.SIGTERM - 1)))


_BUG_WITH_A_LARGE_LOCAL = """
import sys
import k2.services.run

async def buggy_pipeline(*args, **kwargs):
    big = {i: str(i) for i in range(2_000_000)}  # typer's pretty traceback rendered this for minutes
    raise RuntimeError(f"boom after {len(big)} items")

k2.services.run.run_pipeline = buggy_pipeline
from k2.cli import main

sys.argv = ["k2", "run", "--ws-url", "ws://127.0.0.1:9", "--warehouse", sys.argv[1]]
main()
"""


def test_a_bug_is_one_line_on_stderr_and_a_prompt_exit(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _BUG_WITH_A_LARGE_LOCAL, str(tmp_path / "wh")],
        env=_env(tmp_path),
        capture_output=True,
        timeout=HANG_S,
        check=False,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr[-3000:]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-3000:]
    match = re.fullmatch(r"error: unexpected RuntimeError: boom after 2000000 items \(traceback in (\S+)\)", lines[0])
    assert match is not None, lines[0]
    saved = Path(match.group(1))
    try:
        text = saved.read_text()
        assert text.startswith("Traceback (most recent call last):")
        assert "in buggy_pipeline" in text and text.rstrip().endswith("RuntimeError: boom after 2000000 items")
    finally:
        saved.unlink()


def test_sigterm_stops_the_emulator(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "emulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "k2.cli", "emulator", "--port", str(port)],
            env=_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return port_open(port)

        eventually(listening, timeout=HANG_S, interval=0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG_S) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not port_open(port)
