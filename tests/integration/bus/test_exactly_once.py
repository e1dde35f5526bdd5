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
    """The data arrives in 5 parts. After each of the first 4 a consumer is started and SIGKILLed once
    the table holds a random count of the rows produced so far (whether it is mid-batch or idle then
    is left to chance, and nothing below depends on it); the last part is produced for the final
    consumer, which must end with every row exactly once."""
    settings = _slow(bus_settings)
    data = recording_batch.slice(0, TOTAL)
    part = TOTAL // 5
    rng = random.Random(20240808)
    for i in range(4):
        produce(settings, data.slice(i * part, part))
        before = committed_rows(settings)
        target = rng.randint(before + 1, (i + 1) * part)
        proc = start_consumer(settings, tmp_path, f"crash{i}", "--duration", "90")
        eventually(lambda p=proc: committed_rows(settings) >= target or p.poll() is not None, timeout=60, interval=0.01)  # noqa: B023
        assert proc.poll() is None, (tmp_path / f"crash{i}.log").read_text()[-3000:]
        _kill(proc)
    produce(settings, data.slice(4 * part))
    final = start_consumer(settings, tmp_path, "final", "--idle-exit", "3", "--duration", "90")
    _finish(final, tmp_path, "final")
    assert_exactly(settings, data)


def test_rebalance_with_a_consumer_killed_and_restarted_is_exactly_once(
    bus_settings: K2Settings, recording_batch: pa.RecordBatch, tmp_path: Path
) -> None:
    """Consumer a is SIGKILLed while it and b share the partitions; a2 joins later. b runs until
    stopped, so a2's join rebalances it (b is assigned again), whatever a's death did before."""
    settings = _slow(bus_settings)
    data = recording_batch.slice(0, TOTAL)
    produce(settings, data)
    a = start_consumer(settings, tmp_path, "a", "--duration", "90")
    b = start_consumer(settings, tmp_path, "b", "--duration", "300")
    eventually(lambda: committed_rows(settings) >= 2_000, timeout=60, interval=0.01)
    _kill(a)  # b takes a's partitions once a's session times out
    eventually(lambda: committed_rows(settings) >= 5_000, timeout=60, interval=0.01)
    assigned_before = (tmp_path / "b.log").read_text().count("consumer.assigned")
    a = start_consumer(settings, tmp_path, "a2", "--duration", "300")  # and a rejoins

    def settled() -> bool:
        assert a.poll() is None and b.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
        rejoined = "consumer.assigned" in (tmp_path / "a2.log").read_text()
        b_again = (tmp_path / "b.log").read_text().count("consumer.assigned") > assigned_before
        return rejoined and b_again and committed_rows(settings) >= TOTAL

    eventually(settled, timeout=120, interval=0.2)
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)  # a clean stop: each flushes what it read, then leaves the group
    _finish(a, tmp_path, "a2")
    _finish(b, tmp_path, "b")
    assert_exactly(settings, data)
