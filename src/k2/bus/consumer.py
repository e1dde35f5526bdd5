"""IcebergConsumer: Kafka -> Avro decode -> Iceberg, exactly once.

Each flush commits the decoded rows *and* the Kafka offsets after them in one Iceberg snapshot
(``k2.kafka-offsets.<group>`` in its summary, see :mod:`k2.bus.offsets`). On assignment the consumer
seeks every partition to the offset the table records (the beginning when it records none). So a
crash at any moment (kill -9 included) loses nothing and duplicates nothing: what was committed is
in the table with its offsets, what was not is read again. Kafka's own committed offsets are only
advisory (for lag monitoring): ``enable.auto.commit=false``, committed asynchronously after each
Iceberg commit, never read back.

Several consumers of one group may write one table. A flush is a per-partition compare-and-set
against the table head: a partition whose recorded offset moved since this consumer took it (it was
reassigned while this one stalled) is dropped from the batch and re-sought, the other partitions'
offsets are copied from the head, and on a commit conflict both steps are redone against the new
head (the writer's own retry is off because it would re-commit stale offsets).

Commits run on one commit thread, at most one in flight, while the main thread decodes the next
batch (Parquet writing releases the GIL); their outcome is applied on the main thread before the next
flush and before any rebalance callback proceeds, so the writer is never used by two threads.

Undecodable or invalid messages are copied to the dead-letter topic with the error and their source
coordinates in headers, and counted; their offsets advance with the batch (after the dead letters are
acknowledged by the broker), so one bad message never stalls a partition.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from k2.bus.dlq import dlq_headers
from k2.bus.offsets import (
    encode_offsets,
    fenced_partitions,
    merge_offsets,
    offsets_property,
    table_offsets,
)
from k2.bus.producer import producer_config
from k2.bus.serde import AvroDecoder
from k2.bus.topics import dlq_topic
from k2.config import KafkaSettings
from k2.errors import BusError, CommitConflict, LakeError
from k2.lake.writer import TableWriter
from k2.logging import RateLimitedLogger, get_logger
from k2.metrics import CONSUMER_DEAD_LETTERS, CONSUMER_LAG, CONSUMER_MESSAGES, LAKE_COMMIT_FAILURES
from k2.stats import Counters

log = get_logger(__name__)

TP = tuple[str, int]
_FLUSH_ATTEMPTS = 8
_DLQ_FLUSH_TIMEOUT_S = 30.0
_LAG_INTERVAL_S = 1.0  # how often k2_consumer_lag_rows is refreshed
# the reasons of k2.bus.serde.WireFormatError (a test checks the two agree)
DEAD_LETTER_REASONS = ("not_framed", "unknown_schema", "incompatible_schema", "undecodable", "invalid_value")


def consumer_config(kafka: KafkaSettings, client_id: str) -> dict[str, Any]:
    """librdkafka settings of the exactly-once consumer."""
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": kafka.consumer_group,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # Eager assignment: a partition is revoked here before it is assigned elsewhere.
        "partition.assignment.strategy": "range",
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": max(500, kafka.session_timeout_ms // 5),
    }


@dataclass
class _Pending:
    """Decoded rows of one partition waiting for the next flush, and the offset after them."""

    batches: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    messages: int = 0
    next_offset: int = 0
    dead_lettered: int = 0  # of ``messages``: counted as dead_lettered, not committed


@dataclass
class _Commit:
    """One flush handed to the commit thread, and what became of it."""

    parts: dict[TP, _Pending]
    expected: dict[TP, int | None]  # the recorded offset each partition's rows start from
    committed: dict[TP, int] = field(default_factory=dict)  # next offsets now recorded in the table
    fenced: dict[TP, tuple[int | None, int]] = field(default_factory=dict)  # tp -> (recorded, messages)
    conflicts: int = 0


@dataclass
class ConsumerStats(Counters):
    messages: int = 0
    rows_committed: int = 0
    commits: int = 0
    dead_lettered: int = 0
    fenced: int = 0
    conflicts: int = 0
    rebalances: int = 0
    first_message_at: float | None = None  # wall clock (Unix seconds), for rate measurements
    last_commit_at: float | None = None


class IcebergConsumer:
    """Consumes ``topics`` as group ``kafka.consumer_group`` into the table behind ``writer``.

    ``writer`` must be built with ``commit_retries=0`` (see the module docstring); the consumer owns
    the retry loop. Call :meth:`run`; :meth:`stop` (e.g. from a signal handler) ends it after a final
    flush.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Sequence[str],
        decoder: AvroDecoder,
        writer: TableWriter,
        *,
        flush_rows: int,
        flush_seconds: float,
        client_id: str = "k2-consume",
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topics = list(topics)
        self.group = kafka.consumer_group
        self.stats = ConsumerStats()
        self._decoder = decoder
        self._writer = writer
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._property = offsets_property(self.group)
        self._expected: dict[TP, int | None] = {}  # recorded offset when taken / after our last commit
        self._pending: dict[TP, _Pending] = {}
        self._pending_rows = 0
        self._pending_since = time.monotonic()
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="k2-commit")
        self._inflight: Future[_Commit] | None = None
        self._stopping = False
        self._last_activity = time.monotonic()  # last message or assignment: the idle clock
        self._limited = RateLimitedLogger(log, interval_s=10.0)
        self._table_label = ".".join(writer.table.name())
        # exported as 0 from the start, so that increase() in the alert rules sees the first one
        LAKE_COMMIT_FAILURES.labels(table=self._table_label)
        for topic in self.topics:
            for reason in DEAD_LETTER_REASONS:
                CONSUMER_DEAD_LETTERS.labels(topic=topic, reason=reason)
        self._lag_at = 0.0
        config = consumer_config(kafka, client_id) | dict(overrides or {})
        config["error_cb"] = self._on_client_error
        self._consumer = Consumer(config)
        self._dlq = Producer(producer_config(kafka, client_id + "-dlq"))
        self._consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    # --- public -------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        """Leave the group and release the clients without consuming (for a consumer never run;
        :meth:`run` closes by itself)."""
        self._close()

    @property
    def assignment(self) -> list[TP]:
        return sorted(self._expected)

    def run(
        self,
        *,
        duration_s: float | None = None,
        idle_exit_s: float | None = None,
        max_messages: int | None = None,
        on_flush: Callable[[ConsumerStats], None] | None = None,
    ) -> ConsumerStats:
        """Consume until :meth:`stop`, ``duration_s``, ``idle_exit_s`` without messages (with nothing
        pending and partitions assigned) or ``max_messages``; flush, close, return the stats."""
        started = self._last_activity = time.monotonic()
        try:
            while not self._stopping:
                messages = self._consumer.consume(self.kafka.batch_size, self._poll_timeout(time.monotonic()))
                now = time.monotonic()
                if messages:
                    if self.stats.first_message_at is None:
                        self.stats.first_message_at = time.time()
                    self._last_activity = now
                    self._handle(messages)
                if self._inflight is not None and self._inflight.done():
                    self._settle()
                if self._due(now):
                    self._flush()
                    if on_flush is not None:
                        on_flush(self.stats)
                if now - self._lag_at >= _LAG_INTERVAL_S:
                    self._lag_at = now
                    self._update_lag()
                if duration_s is not None and now - started >= duration_s:
                    break
                if max_messages is not None and self.stats.messages >= max_messages:
                    break
                if (
                    idle_exit_s is not None
                    and now - self._last_activity >= idle_exit_s
                    and not self._pending
                    and self._inflight is None
                    and self._expected
                ):
                    break
            self._flush(wait=True)
        finally:
            self._close()
        log.info("consumer.stopped", group=self.group, **self.stats.as_dict())
        return self.stats

    # --- intake -------------------------------------------------------------------------------------
    def _handle(self, messages: list[Message]) -> None:
        by_tp: dict[TP, list[Message]] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                self._on_message_error(err)
                continue
            tp = (str(msg.topic()), int(msg.partition() or 0))
            if tp not in self._expected:  # a message fetched before a revoke: not ours any more
                continue
            by_tp.setdefault(tp, []).append(msg)
        for tp, msgs in by_tp.items():
            self.stats.messages += len(msgs)
            result = self._decoder.decode([m.value() for m in msgs])
            for index, error in result.errors:
                self._dead_letter(msgs[index], error.reason, str(error))
            pending = self._pending.get(tp)
            if pending is None:
                pending = self._pending[tp] = _Pending()
                if not self._pending_rows:
                    self._pending_since = time.monotonic()
            if result.batch.num_rows:
                pending.batches.append(result.batch)
                pending.rows += result.batch.num_rows
                self._pending_rows += result.batch.num_rows
            pending.messages += len(msgs)
            pending.dead_lettered += len(result.errors)
            pending.next_offset = int(msgs[-1].offset() or 0) + 1

    def _dead_letter(self, msg: Message, reason: str, error: str) -> None:
        topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
        timestamp_type, timestamp_ms = msg.timestamp()
        headers = dlq_headers(
            reason=reason,
            error=error,
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp_ms if timestamp_type else None,
            group=self.group,
            original=_header_list(msg.headers()),
        )
        target = dlq_topic(topic, self.kafka.dlq_suffix)
        while True:
            try:
                self._dlq.produce(target, msg.value(), msg.key(), headers=headers)
                break
            except BufferError:
                self._dlq.poll(0.1)
        self.stats.dead_lettered += 1
        CONSUMER_DEAD_LETTERS.labels(topic=topic, reason=reason).inc()
        CONSUMER_MESSAGES.labels(topic=topic, result="dead_lettered").inc()
        self._limited.warning(
            "consumer.dead_letter", reason, topic=topic, partition=partition, offset=offset, reason=reason, error=error
        )

    def _poll_timeout(self, now: float) -> float:
        """Wait for messages no longer than until the pending rows' flush falls due (freshness)."""
        if not self._pending:
            return self.kafka.poll_timeout_s
        return max(0.0, min(self.kafka.poll_timeout_s, self._pending_since + self._flush_seconds - now))

    def _due(self, now: float) -> bool:
        if not self._pending:
            return False
        return self._pending_rows >= self._flush_rows or now - self._pending_since >= self._flush_seconds

    # --- commit -------------------------------------------------------------------------------------
    def _flush(self, *, wait: bool = False) -> None:
        """Hand everything pending to the commit thread (after the previous commit is settled).

        Decoding goes on while the thread commits: at most one commit is in flight. Partitions'
        expected offsets advance optimistically; :meth:`_settle` undoes that for fenced ones.
        """
        self._settle()
        if self._pending:
            remaining = self._dlq.flush(_DLQ_FLUSH_TIMEOUT_S)
            if remaining:
                raise BusError(f"{remaining} dead letters not acknowledged: offsets cannot advance past them")
            job = _Commit(parts=self._pending, expected={tp: self._expected.get(tp) for tp in self._pending})
            for tp, part in job.parts.items():
                self._expected[tp] = part.next_offset
            self._pending = {}
            self._pending_rows = 0
            self._inflight = self._committer.submit(self._commit, job)
        if wait:
            self._settle()

    def _commit(self, job: _Commit) -> _Commit:
        """Commit thread: fence, merge and append against the table head; redone on every conflict."""
        for attempt in range(1, _FLUSH_ATTEMPTS + 1):
            head = table_offsets(self._writer.table, self.group)
            for tp in fenced_partitions(head, {tp: job.expected[tp] for tp in job.parts}):
                job.fenced[tp] = (head.get(tp), job.parts.pop(tp).messages)
            if not job.parts:
                return job
            mine = {tp: part.next_offset for tp, part in job.parts.items()}
            batches = [b for part in job.parts.values() for b in part.batches]
            try:
                self._writer.append(batches, {self._property: encode_offsets(merge_offsets(head, mine))})
                job.committed = mine
                return job
            except CommitConflict:  # the writer reloaded the table: fence and merge again
                job.conflicts += 1
            except LakeError as exc:
                LAKE_COMMIT_FAILURES.labels(table=self._table_label).inc()
                self._limited.warning("consumer.commit_failed", "commit", attempt=attempt, error=str(exc))
                self._writer.refresh()
            time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))
        rows = sum(part.rows for part in job.parts.values())
        raise LakeError(f"could not commit {rows} rows after {_FLUSH_ATTEMPTS} attempts")

    def _settle(self) -> None:
        """Wait for the in-flight commit and apply its outcome (main thread); its errors are raised here."""
        if self._inflight is None:
            return
        future, self._inflight = self._inflight, None
        job = future.result()
        self.stats.conflicts += job.conflicts
        for tp, (recorded, messages) in job.fenced.items():
            self.stats.fenced += messages
            CONSUMER_MESSAGES.labels(topic=tp[0], result="fenced").inc(messages)
            log.warning(
                "consumer.partition_fenced", topic=tp[0], partition=tp[1], expected=job.expected[tp], recorded=recorded
            )
            later = self._pending.pop(tp, None)  # read on from the fenced position: fenced as well
            if later is not None:
                self._pending_rows -= later.rows
                self.stats.fenced += later.messages
                CONSUMER_MESSAGES.labels(topic=tp[0], result="fenced").inc(later.messages)
            if tp in self._expected:
                self._expected[tp] = recorded
                self._seek(tp, recorded)
        if not job.committed:
            return
        for tp, part in job.parts.items():
            CONSUMER_MESSAGES.labels(topic=tp[0], result="committed").inc(part.messages - part.dead_lettered)
        self.stats.rows_committed += sum(part.rows for part in job.parts.values())
        self.stats.commits += 1
        self.stats.last_commit_at = time.time()
        advisory = [TopicPartition(t, p, o) for (t, p), o in job.committed.items() if (t, p) in self._expected]
        if advisory:
            try:
                self._consumer.commit(offsets=advisory, asynchronous=True)
            except KafkaException as exc:  # advisory only: the table holds the truth
                self._limited.warning("consumer.kafka_commit_failed", "kafka_commit", error=str(exc))

    def _update_lag(self) -> None:
        """Set ``k2_consumer_lag_rows`` per assigned partition: cached high watermark (refreshed by
        every fetch response, no broker round trip) minus the position (the recorded offset before the
        first fetch). Partitions whose watermark is not known yet are left out."""
        if not self._expected:
            return
        try:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in self._expected])
        except KafkaException:
            return
        for p in positions:
            tp = (p.topic, p.partition)
            try:
                low, high = self._consumer.get_watermark_offsets(p, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            position = p.offset if p.offset >= 0 else self._expected.get(tp)
            if position is None:
                position = max(low, 0)
            CONSUMER_LAG.labels(topic=tp[0], partition=str(tp[1])).set(max(0, high - position))

    def _seek(self, tp: TP, offset: int | None) -> None:
        try:
            self._consumer.seek(TopicPartition(tp[0], tp[1], OFFSET_BEGINNING if offset is None else offset))
        except KafkaException as exc:
            log.warning("consumer.seek_failed", topic=tp[0], partition=tp[1], error=str(exc))

    # --- rebalance callbacks (run inside consume()) -----------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        self._last_activity = time.monotonic()
        self._settle()  # the commit thread must not be using the writer while it reloads
        head = table_offsets(self._writer.refresh(), self.group)
        for p in partitions:
            recorded = head.get((p.topic, p.partition))
            self._expected[(p.topic, p.partition)] = recorded
            p.offset = OFFSET_BEGINNING if recorded is None else recorded
        consumer.assign(partitions)
        log.info(
            "consumer.assigned",
            group=self.group,
            partitions={f"{p.topic}[{p.partition}]": p.offset for p in partitions},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._flush(wait=True)  # hand the partitions over with everything read so far committed
        except (LakeError, BusError) as exc:
            log.warning("consumer.flush_on_revoke_failed", error=str(exc))
        self._forget(partitions)
        log.info("consumer.revoked", group=self.group, partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._settle()  # a commit already in flight is fenced by the table if it must be
        except (LakeError, BusError) as exc:
            log.warning("consumer.commit_on_lost_failed", error=str(exc))
        self._forget(partitions)  # another consumer may own them already: never commit them
        log.warning("consumer.lost", group=self.group, partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            tp = (p.topic, p.partition)
            self._expected.pop(tp, None)
            with contextlib.suppress(KeyError):  # another consumer reports it now
                CONSUMER_LAG.remove(tp[0], str(tp[1]))
            dropped = self._pending.pop(tp, None)
            if dropped is not None:
                self._pending_rows -= dropped.rows

    # --- errors & shutdown --------------------------------------------------------------------------
    def _on_message_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise BusError(f"fatal Kafka consumer error: {err.str()}")
        self._limited.warning("consumer.error", err.name(), error=err.str())

    def _on_client_error(self, err: KafkaError) -> None:
        self._limited.warning("consumer.client_error", err.name(), error=err.str(), fatal=err.fatal())

    def _close(self) -> None:
        if self._inflight is not None:  # only after an error: settle what can be settled
            try:
                self._settle()
            except (LakeError, BusError) as exc:
                log.warning("consumer.commit_on_close_failed", error=str(exc))
        self._committer.shutdown(wait=True)
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer.close_failed", error=str(exc))
        self._dlq.flush(_DLQ_FLUSH_TIMEOUT_S)


def _header_list(headers: Any) -> list[tuple[str, str | bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(k), v) for k, v in items]
