"""Failed deliveries of `k2 ingest`, re-opened as gaps while it runs.

The sequence tracker marks a trade as seen when it is handed to the producer. If Kafka is down for
longer than ``kafka.delivery_timeout_ms``, librdkafka gives up on the queued messages: without this
module those trades would be lost until a restart found their hole in the topic. Instead:

1. the producer keeps each failed message (:meth:`~k2.bus.producer.BatchProducer.take_failed`);
   their ids and trade times are decoded from the values K2 encoded itself (no registry call);
2. once the producer is *settled* (every partition that failed has delivered a later message, or
   nothing is queued or in flight at all), no failed message can still be persisted later, so the
   topic is read from the earliest time a failed message can have been produced (its failure report
   minus the delivery timeout, minus a minute for clocks) on, through Kafka's time index: a failed
   message may have been persisted after all ("possibly persisted": written, but its acknowledgement
   lost);
3. the ids the topic does not hold are re-opened in the tracker
   (:meth:`~k2.feed.trades.TradeCompleteness.reopen`): recorded as a GAP, OPEN, and backfilled
   over REST like any gap, then RESOLVED. The ids the topic does hold are left alone: no duplicate.

A check that fails (the broker went away again) is retried a second later. Trades still waiting for a
check when the process stops are not lost either: the next start finds them as holes of the topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa

from k2.bus.producer import FailedDelivery
from k2.bus.registry import SchemaRegistry
from k2.bus.serde import AvroDecoder
from k2.bus.tail import read_tail
from k2.config import KafkaSettings
from k2.errors import K2Error
from k2.logging import RateLimitedLogger, get_logger
from k2.schema import TRADE, to_avro

log = get_logger(__name__)


class Reopens(Protocol):
    """What takes the ids back as gaps (:meth:`k2.feed.trades.TradeCompleteness.reopen`)."""

    def reopen(self, symbol: str, ids: np.ndarray, trade_times_us: np.ndarray, now_us: int) -> int: ...


RETRY_S = 1.0  # after a failed check (the broker is still, or again, unreachable)
CLOCK_MARGIN_MS = 60_000  # the topic is read from this much before the earliest possible create time


@dataclass
class Undelivered:
    """Trades whose delivery failed, per symbol, and a time (ms) before which none was produced."""

    ids: dict[str, list[np.ndarray]] = field(default_factory=dict)
    times: dict[str, list[np.ndarray]] = field(default_factory=dict)
    since_ms: int | None = None

    def __bool__(self) -> bool:
        return bool(self.ids)

    def add(self, rows: pa.RecordBatch, since_ms: int) -> None:
        symbols = rows.column("symbol").to_numpy(zero_copy_only=False)
        ids = rows.column("source_sequence").to_numpy()
        times = rows.column("timestamp").cast(pa.int64()).to_numpy()
        for symbol in np.unique(symbols).tolist():
            mask = symbols == symbol
            self.ids.setdefault(symbol, []).append(ids[mask])
            self.times.setdefault(symbol, []).append(times[mask])
        self.since_ms = since_ms if self.since_ms is None else min(self.since_ms, since_ms)

    def merge(self, other: Undelivered) -> None:
        for symbol in other.ids:
            self.ids.setdefault(symbol, []).extend(other.ids[symbol])
            self.times.setdefault(symbol, []).extend(other.times[symbol])
        if other.since_ms is not None:
            self.since_ms = other.since_ms if self.since_ms is None else min(self.since_ms, other.since_ms)


class Redelivery:
    """Turns the trades producer's failed deliveries into gaps of ``completeness``, once the topic
    says which of them it does not hold. Call :meth:`step` often (the Kafka sink does, every loop of the runner)."""

    def __init__(self, kafka: KafkaSettings, topic: str, schema_id: int, completeness: Reopens) -> None:
        self.kafka = kafka
        self.topic = topic
        self.completeness = completeness
        own = to_avro(TRADE)

        def fetch(requested: int) -> object:  # the values are ours: decoded without the registry
            if requested != schema_id:
                raise KeyError(requested)
            return own

        self._decoder = AvroDecoder(TRADE, fetch)
        self._pending = Undelivered()
        self._check: asyncio.Future[dict[str, tuple[np.ndarray, np.ndarray]]] | None = None
        self._checking = Undelivered()
        self._retry_at = 0.0
        self._limited = RateLimitedLogger(log, interval_s=10.0)
        self.reopened = 0  # ids re-opened as gaps
        self.persisted = 0  # failed deliveries the topic held after all

    @property
    def waiting(self) -> int:
        """Failed deliveries not decided yet (waiting for, or in, a check)."""
        return sum(int(a.size) for u in (self._pending, self._checking) for arrays in u.ids.values() for a in arrays)

    def add(self, failed: Sequence[FailedDelivery]) -> None:
        if not failed:
            return
        result = self._decoder.decode([f.value for f in failed])
        for _, error in result.errors:  # never expected: K2 encoded these values itself
            log.error("ingest.undelivered_undecodable", error=str(error))
        produced_after = min(f.reported_ms for f in failed) - self.kafka.delivery_timeout_ms
        self._pending.add(result.batch, produced_after)
        self._limited.warning("ingest.delivery_failed", "failed", topic=self.topic, trades=result.batch.num_rows)

    def step(self, failed: Sequence[FailedDelivery], settled: bool, now_us: int) -> None:
        """Take new failures; finish a check that is done (re-opening what the topic lacks); start one
        when failures wait and the producer is ``settled``."""
        self.add(failed)
        if self._check is not None:
            if not self._check.done():
                return
            check, self._check = self._check, None
            checked, self._checking = self._checking, Undelivered()
            try:
                absent = check.result()
            except K2Error as exc:
                self._limited.warning(
                    "ingest.undelivered_check_failed", "check", topic=self.topic, error=str(exc), retry_in_s=RETRY_S
                )
                self._pending.merge(checked)
                self._retry_at = time.monotonic() + RETRY_S
                return
            self._reopen(checked, absent, now_us)
        if self._pending and settled and time.monotonic() >= self._retry_at:
            self._checking, self._pending = self._pending, Undelivered()
            self._check = asyncio.ensure_future(asyncio.to_thread(self._absent, self._checking))

    def cancel(self) -> None:
        """On stop: whatever still waits is found again by the next start (a hole in the topic)."""
        if self._check is not None:
            self._check.cancel()
        if self.waiting:
            log.warning("ingest.undelivered_at_stop", topic=self.topic, trades=self.waiting)

    def _absent(self, pending: Undelivered) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(thread) Per symbol, the ids (and trade times) of ``pending`` that the topic does not hold."""
        assert pending.since_ms is not None
        registry = SchemaRegistry(self.kafka.schema_registry_url)
        try:
            tail = read_tail(
                self.kafka.bootstrap_servers, self.topic, AvroDecoder(TRADE, registry.fetch),
                max_messages=0, since_ms=max(0, pending.since_ms - CLOCK_MARGIN_MS),
            )  # fmt: skip
        finally:
            registry.close()
        rows = tail.rows
        symbols = rows["symbol"].to_numpy(zero_copy_only=False)
        held = rows["source_sequence"].to_numpy()
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for symbol, arrays in pending.ids.items():
            ids = np.concatenate(arrays)
            times = np.concatenate(pending.times[symbol])
            missing = ~np.isin(ids, held[symbols == symbol])
            out[symbol] = (ids[missing], times[missing])
        return out

    def _reopen(self, checked: Undelivered, absent: dict[str, tuple[np.ndarray, np.ndarray]], now_us: int) -> None:
        for symbol, arrays in checked.ids.items():
            ids, times = absent[symbol]
            failed = sum(int(a.size) for a in arrays)
            reopened = self.completeness.reopen(symbol, ids, times, now_us)
            self.reopened += reopened
            self.persisted += failed - int(ids.size)
            log.warning(
                "ingest.undelivered_reopened", topic=self.topic, symbol=symbol, failed=failed,
                held_by_topic=failed - int(ids.size), reopened=reopened,
            )  # fmt: skip
