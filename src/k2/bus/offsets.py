"""Kafka offsets kept inside Iceberg snapshots: the pure logic of K2's exactly-once consumer.

Every commit of the consumer group ``g`` carries one snapshot-summary property,
``k2.kafka-offsets.<g>``, holding the *complete* map of next offsets to read for every
topic-partition the group has ever committed, as compact JSON ``{"topic": {"partition": offset}}``.
The rows of a batch and the offsets after it land in one atomic Iceberg commit, so the table alone
says where to resume: on assignment a consumer walks back from the current snapshot (through
snapshots that lack the property, e.g. maintenance or another writer's) to the newest one that has it.

Concurrency (several consumers of one group, one table) is optimistic, per partition: a consumer
commits a batch for partition ``p`` only if the head's recorded offset for ``p`` is still the one it
started the batch from (:func:`fenced_partitions`), and it copies every other partition's offset from
the head (:func:`merge_offsets`). Both are recomputed against the new head on every retry, so a
conflict never rolls another consumer's offsets back, and a consumer that lost a partition in a
rebalance (a zombie) can never commit it twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

from k2.errors import LakeError

TopicPartition: TypeAlias = tuple[str, int]
Offsets: TypeAlias = dict[TopicPartition, int]

OFFSETS_PROPERTY_PREFIX = "k2.kafka-offsets."


def offsets_property(group: str) -> str:
    """The snapshot-summary key holding ``group``'s offsets."""
    return OFFSETS_PROPERTY_PREFIX + group


def encode_offsets(offsets: Mapping[TopicPartition, int]) -> str:
    """Compact, deterministic JSON: topics and partitions sorted."""
    nested: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(offsets.items()):
        if offset < 0:
            raise ValueError(f"offset for {topic}[{partition}] must be >= 0, got {offset}")
        nested.setdefault(topic, {})[str(partition)] = offset
    return json.dumps(nested, separators=(",", ":"), sort_keys=True)


def decode_offsets(text: str) -> Offsets:
    """Inverse of :func:`encode_offsets`; :class:`~k2.errors.LakeError` when the text is not one."""
    try:
        nested = json.loads(text)
        out: Offsets = {}
        for topic, partitions in nested.items():
            for partition, offset in partitions.items():
                if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                    raise ValueError(f"bad offset {offset!r}")
                out[(str(topic), int(partition))] = offset
        return out
    except (ValueError, AttributeError, TypeError) as exc:
        raise LakeError(f"unreadable Kafka offsets in snapshot summary: {text[:200]!r} ({exc})") from exc


def recorded_offsets(summaries: Iterator[Mapping[str, str]], group: str) -> Offsets:
    """The offsets in the newest summary (``summaries`` newest first) that records ``group``'s; {} if none."""
    key = offsets_property(group)
    for summary in summaries:
        text = summary.get(key)
        if text is not None:
            return decode_offsets(text)
    return {}


def snapshot_summaries(table: Any) -> Iterator[Mapping[str, str]]:
    """Summary properties of a pyiceberg table's current snapshot and its ancestors, newest first."""
    snapshot = table.current_snapshot()
    seen: set[int] = set()
    while snapshot is not None and snapshot.snapshot_id not in seen:
        seen.add(snapshot.snapshot_id)
        summary = snapshot.summary
        yield dict(summary.additional_properties) if summary is not None else {}
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None


def table_offsets(table: Any, group: str) -> Offsets:
    """``group``'s offsets as recorded in the table's snapshot history ({} when never recorded)."""
    return recorded_offsets(snapshot_summaries(table), group)


def fenced_partitions(
    head: Mapping[TopicPartition, int], expected: Mapping[TopicPartition, int | None]
) -> set[TopicPartition]:
    """Partitions whose offset in ``head`` is no longer the one this consumer started from.

    ``expected[tp]`` is None when the partition had no recorded offset when the consumer took it.
    """
    return {tp for tp, start in expected.items() if head.get(tp) != start}


def merge_offsets(head: Mapping[TopicPartition, int], mine: Mapping[TopicPartition, int]) -> Offsets:
    """The complete map to commit: everything recorded in ``head``, with this consumer's partitions updated."""
    merged = dict(head)
    merged.update(mine)
    return merged
