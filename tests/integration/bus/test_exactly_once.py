"""Exactly once under failure: `k2 consume` processes killed with SIGKILL mid-batch, and rebalances.

The consumer runs as a real subprocess (``python -m k2.cli consume``) against the real broker. Each
kill lands while it is consuming and committing (at a random row count); the restarted process must
resume from the offsets stored in the Iceberg snapshot, so the table ends with every trade exactly once.
"""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from k2.config import K2Settings
from tests.conftest import eventually
from tests.integration.bus.conftest import assert_exactly, committed_rows, produce, start_consumer

pytestmark = pytest.mark.integration

TOTAL = 12_000


def _slow(settings: K2Settings) -> K2Settings:
    """Small batches and commits, so that there are many commits to land a kill in."""
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"batch_size": 400}),
            "lake": settings.lake.model_copy(update={"flush_rows": 700, "flush_seconds": 0.2}),
        }
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _finish(proc: subprocess.Popen[bytes], tmp_path: Path, name: str) -> None:
    code = proc.wait(timeout=120)
    assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]


def test_kill_9_mid_batch_then_restart_is_exactly_once(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch, tmp_path: Path
) -> None:
    settings = _slow(bus_settings)
    data = recording_batch.slice(0, TOTAL)
    produce(settings, data)
    rng = random.Random(20240808)
    kills = 0
    for _ in range(4):
        before = committed_rows(settings)
        if before >= TOTAL - 1_000:
            break
        target = rng.randint(before + 1, min(TOTAL - 1, before + 4_000))
        proc = start_consumer(settings, tmp_path, "crash", "--duration", "90")
        eventually(
            lambda t=target, p=proc: committed_rows(settings) >= t or p.poll() is not None, timeout=60, interval=0.01
        )
        assert proc.poll() is None, (tmp_path / "crash.log").read_text()[-3000:]
        _kill(proc)
        kills += 1
    assert kills >= 2
    assert committed_rows(settings) < TOTAL
    final = start_consumer(settings, tmp_path, "final", "--idle-exit", "3", "--duration", "90")
    _finish(final, tmp_path, "final")
    assert_exactly(settings, data)


def test_rebalance_with_a_consumer_killed_and_restarted_is_exactly_once(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch, tmp_path: Path
) -> None:
    settings = _slow(bus_settings)
    data = recording_batch.slice(0, TOTAL)
    produce(settings, data)
    a = start_consumer(settings, tmp_path, "a", "--duration", "90")
    b = start_consumer(settings, tmp_path, "b", "--idle-exit", "8", "--duration", "120")
    eventually(lambda: committed_rows(settings) >= 2_000, timeout=60, interval=0.01)
    _kill(a)  # b takes a's partitions once a's session times out
    eventually(lambda: committed_rows(settings) >= 5_000, timeout=60, interval=0.01)
    a = start_consumer(settings, tmp_path, "a2", "--idle-exit", "8", "--duration", "120")  # and a rejoins
    _finish(a, tmp_path, "a2")
    _finish(b, tmp_path, "b")
    assert_exactly(settings, data)
    b_log = (tmp_path / "b.log").read_text()
    assert b_log.count("consumer.assigned") >= 2, b_log[-3000:]  # b's partitions moved at least once
