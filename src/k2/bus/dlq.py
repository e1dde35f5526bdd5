"""Dead letters: a message K2 cannot decode or validate is copied, unchanged, to ``<topic>.dlq``.

The original key and value are kept byte for byte; headers say why and where it came from, so the
message can be inspected or replayed. The consumer never stalls on one bad message.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_ERROR_CHARS = 1_000

HEADER_REASON = "k2.dlq.reason"
HEADER_ERROR = "k2.dlq.error"
HEADER_TOPIC = "k2.dlq.source.topic"
HEADER_PARTITION = "k2.dlq.source.partition"
HEADER_OFFSET = "k2.dlq.source.offset"
HEADER_TIMESTAMP = "k2.dlq.source.timestamp_ms"
HEADER_GROUP = "k2.dlq.consumer.group"


def dlq_headers(
    *,
    reason: str,
    error: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    group: str,
    original: Sequence[tuple[str, str | bytes | None]] = (),
) -> list[tuple[str, str | bytes | None]]:
    """Headers of a dead letter: the original headers first, then K2's (error text truncated)."""
    if len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 3] + "..."
    headers: list[tuple[str, str | bytes | None]] = list(original)
    headers += [
        (HEADER_REASON, reason.encode()),
        (HEADER_ERROR, error.encode("utf-8", "replace")),
        (HEADER_TOPIC, topic.encode()),
        (HEADER_PARTITION, str(partition).encode()),
        (HEADER_OFFSET, str(offset).encode()),
        (HEADER_GROUP, group.encode()),
    ]
    if timestamp_ms is not None:
        headers.append((HEADER_TIMESTAMP, str(timestamp_ms).encode()))
    return headers
