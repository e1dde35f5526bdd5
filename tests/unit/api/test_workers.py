"""The worker pool: a query past its deadline is interrupted in DuckDB, and a full pool answers PoolBusy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from k2.api.workers import PoolBusy, QueryTimeout, WorkerPool
from k2.config import ApiSettings, K2Settings, LakeSettings


def _pool(tmp_path: Path, workers: int) -> WorkerPool:
    return WorkerPool(K2Settings(lake=LakeSettings(warehouse=tmp_path / "wh"), api=ApiSettings(workers=workers)))


def test_deadline_interrupts_duckdb_and_the_worker_stays_usable(tmp_path: Path) -> None:
    pool = _pool(tmp_path, 1)

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        async with pool.borrow(loop.time() + 30) as worker:
            runaway = "SELECT sum(i) FROM range(1000000000000) t(i)"
            with pytest.raises(QueryTimeout):
                await pool.call(worker, loop.time() + 0.5, lambda: worker.con.sql(runaway).fetchall())
            rows = await pool.call(worker, loop.time() + 30, lambda: worker.con.sql("SELECT 42").fetchall())
        return int(rows[0][0])

    try:
        assert asyncio.run(scenario()) == 42
    finally:
        pool.close()


def test_a_full_pool_answers_busy_at_the_deadline(tmp_path: Path) -> None:
    pool = _pool(tmp_path, 1)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with pool.borrow(loop.time() + 30):
            with pytest.raises(PoolBusy):
                async with pool.borrow(loop.time() + 0.1):
                    pass
        async with pool.borrow(loop.time() + 0.1):  # released: available again
            pass

    try:
        asyncio.run(scenario())
    finally:
        pool.close()
