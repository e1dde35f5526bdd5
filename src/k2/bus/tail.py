"""The newest messages of a topic, decoded: what `k2 ingest` already produced, read back on start.

`k2 ingest` seeds its sequence tracker from its own topic, not from the Iceberg table: the table
lags the topic by whatever the consumers have not committed yet, so only the topic says which trade
ids were already sent. Each partition is read from ``high watermark - max_messages`` (or its first
offset) to its high watermark with a throw-away consumer (no group, nothing committed). Messages
that do not decode are skipped (the consumer dead-letters them anyway). The window is a message
count, not a time span, so a restart after any downtime still finds the newest ids; its cost is
a fetch and a decode per message read (100,000 messages in 2.5–3 s, see BENCHMARKS.md).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from k2.bus.serde import AvroDecoder
from k2.errors import BusError
from k2.logging import get_logger

log = get_logger(__name__)

_NO_LEADER_YET = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
)


@dataclass(frozen=True)
class Tail:
    """Decoded rows of a topic's newest messages, with where each came from."""

    rows: pa.Table
    partitions: np.ndarray  # int32, aligned with ``rows``
    offsets: np.ndarray  # int64, aligned with ``rows``
    whole: frozenset[int]  # partitions read from offset 0: everything ever written to them is here
    topic_partitions: frozenset[int] = frozenset()  # every partition of the topic
    skipped: Mapping[str, int] = field(default_factory=dict)  # undecodable messages left out, by reason


def read_tail(
    bootstrap_servers: str,
    topic: str,
    decoder: AvroDecoder,
    *,
    max_messages: int,
    further: Callable[[Tail], Collection[int]] | None = None,
    limit: int | None = None,
    timeout_s: float = 60.0,
    since_ms: int | None = None,
) -> Tail:
    """Up to ``max_messages`` of each partition's newest messages, decoded with ``decoder``; with
    ``since_ms``, instead every message from each partition's first one timestamped at or after it
    (Kafka's time index: a message produced then, if the broker holds it, is in what is read).

    With ``further``: while ``further(tail)`` names partitions, read further back in those (each
    step four times the window so far), up to ``limit`` messages per partition (``max_messages``
    when None) or their first offset. Every message is read and decoded once; each step has its
    own ``timeout_s``. Undecodable messages are skipped and counted by reason (``Tail.skipped``).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"k2-tail-{uuid.uuid4().hex[:12]}",  # never joins: assign() only, commits nothing
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # a start offset deleted by retention meanwhile: read what is left
            "isolation.level": "read_committed",
        }
    )

    def deadline() -> Callable[[], float]:
        at = time.monotonic() + timeout_s

        def left() -> float:
            remaining = at - time.monotonic()
            if remaining <= 0:
                raise BusError(f"reading the tail of {topic} took too long")
            return remaining

        return left

    try:
        left = deadline()
        metadata = consumer.list_topics(topic, timeout=left())
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise BusError(f"topic {topic} does not exist")
        bounds = {
            p: _watermarks(consumer, TopicPartition(topic, p), left) for p in sorted(metadata.topics[topic].partitions)
        }
        window, cap = max_messages, max(max_messages, limit or max_messages)
        if since_ms is None:
            starts = {p: max(low, high - window) for p, (low, high) in bounds.items()}
        else:
            starts = {p: _offset_at(consumer, topic, p, since_ms, bounds[p], left) for p in bounds}
        chunks = [_read(consumer, topic, decoder, {p: (starts[p], high) for p, (_, high) in bounds.items()}, left)]
        tail = _tail(chunks, starts)
        wanted = set(further(tail)) if further is not None else set()
        while window < cap and (wanted := {p for p in wanted if p in bounds and starts[p] > bounds[p][0]}):
            window = min(cap, 4 * window)
            older = {p: (max(bounds[p][0], bounds[p][1] - window), starts[p]) for p in wanted}
            chunks.append(_read(consumer, topic, decoder, older, deadline()))
            starts.update({p: start for p, (start, _) in older.items()})
            tail = _tail(chunks, starts)
            wanted = set(further(tail)) if further is not None else set()
        log.info(
            "bus.tail_read", topic=topic, rows=tail.rows.num_rows, window=window, whole=sorted(tail.whole),
            unsettled=sorted(wanted),
        )  # fmt: skip
        return tail
    except KafkaException as exc:
        raise BusError(f"cannot read the tail of {topic}: {exc}") from exc
    finally:
        consumer.close()


def _offset_at(
    consumer: Consumer, topic: str, partition: int, since_ms: int, bounds: tuple[int, int], left: Callable[[], float]
) -> int:
    """The offset of ``partition``'s first message timestamped at or after ``since_ms`` (its high
    watermark when none is that recent)."""
    low, high = bounds
    (found,) = consumer.offsets_for_times([TopicPartition(topic, partition, since_ms)], timeout=left())
    if found.error is not None:
        raise BusError(f"cannot find the offsets of {topic}[{partition}] at {since_ms} ms: {found.error}")
    return high if found.offset < 0 else max(low, found.offset)  # -1: nothing that recent


@dataclass(frozen=True)
class _Chunk:
    rows: pa.Table
    partitions: np.ndarray
    offsets: np.ndarray
    skipped: Counter[str]


def _tail(chunks: list[_Chunk], starts: dict[int, int]) -> Tail:
    return Tail(
        pa.concat_tables([c.rows for c in chunks]),
        np.concatenate([c.partitions for c in chunks]),
        np.concatenate([c.offsets for c in chunks]),
        frozenset(p for p, start in starts.items() if start == 0),
        frozenset(starts),
        dict(sum((c.skipped for c in chunks), Counter())),
    )


def _read(
    consumer: Consumer, topic: str, decoder: AvroDecoder, ranges: dict[int, tuple[int, int]], left: Callable[[], float]
) -> _Chunk:
    """Decoded messages of each partition's ``[start, end)`` offsets."""
    ends = {p: end for p, (start, end) in ranges.items() if start < end}
    values: list[bytes | None] = []
    where: list[tuple[int, int]] = []
    paused: list[TopicPartition] = []
    if ends:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in ends])
        while ends:
            for msg in consumer.consume(10_000, min(0.5, left())):
                partition = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and partition is not None:
                        ends.pop(partition, None)
                        continue
                    raise BusError(f"reading the tail of {topic}: {err.str()}")
                offset = msg.offset()
                if partition is None or offset is None or partition not in ends:
                    continue
                if offset < ends[partition]:
                    values.append(msg.value())
                    where.append((partition, offset))
                if offset >= ends[partition] - 1:  # (EOF may not come: more was written, or an older range)
                    ends.pop(partition)
                    paused.append(TopicPartition(topic, partition))
                    consumer.pause(paused[-1:])  # stop fetching what lies beyond the range
        consumer.resume(paused)
        consumer.unassign()
    result = decoder.decode(values)
    kept = np.asarray([where[i] for i in result.indices], dtype=np.int64).reshape(-1, 2)
    skipped = Counter(error.reason for _, error in result.errors)
    if skipped:
        first = result.errors[0]
        log.warning(
            "bus.tail_skipped", topic=topic, skipped=dict(skipped), partition=where[first[0]][0],
            offset=where[first[0]][1], error=str(first[1]),
        )  # fmt: skip
    return _Chunk(pa.Table.from_batches([result.batch]), kept[:, 0].astype(np.int32), kept[:, 1], skipped)


def _watermarks(consumer: Consumer, tp: TopicPartition, left: Callable[[], float]) -> tuple[int, int]:
    """(low, high) of a partition, retried while its leader is not known yet (a topic just created)."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=left())
            return int(low), int(high)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if not (err.retriable() or err.code() in _NO_LEADER_YET):
                raise
            time.sleep(min(0.2, left()))
