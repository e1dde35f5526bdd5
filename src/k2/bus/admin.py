"""Topics from configuration: created when missing, checked when present (K2 never alters them).

A topic that exists with other partitions, replication factor, retention or compression than the
settings say is reported as :class:`~k2.errors.TopicMismatch` at start-up, naming every difference,
instead of being silently used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic

from k2.config import KafkaSettings
from k2.errors import BusUnavailable, TopicMismatch
from k2.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(kafka: KafkaSettings, topic: str, dlq: str) -> list[TopicSpec]:
    """The data topic and its dead-letter topic (one partition is plenty for dead letters)."""
    config = {"retention.ms": str(kafka.retention_ms), "compression.type": _topic_codec(kafka.compression)}
    return [
        TopicSpec(topic, kafka.partitions, kafka.replication_factor, config),
        TopicSpec(dlq, 1, kafka.replication_factor, dict(config)),
    ]


def _topic_codec(codec: str) -> str:
    return "uncompressed" if codec == "none" else codec


def admin_client(bootstrap_servers: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap_servers, "client.id": "k2-admin"})


def ensure_topics(admin: AdminClient, specs: Sequence[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics, check the existing ones; the names created."""
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BusUnavailable(f"Kafka unreachable while listing topics: {exc}") from exc
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config)) for s in missing],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                log.info("kafka.topic_created", topic=name)
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:  # created concurrently
                    continue
                raise BusUnavailable(f"cannot create topic {name}: {exc}") from exc
    for spec in specs:
        check_topic(admin, spec, timeout_s)
    return [s.name for s in missing]


def check_topic(admin: AdminClient, spec: TopicSpec, timeout_s: float = 30.0) -> None:
    """:class:`~k2.errors.TopicMismatch` naming every difference between the topic and ``spec``."""
    deadline = time.monotonic() + timeout_s
    meta = _wait_for_metadata(admin, spec.name, timeout_s)
    resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
    while True:
        try:
            configs = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout=timeout_s)
            break
        except KafkaException as exc:  # a just-created topic may not have reached every broker yet
            if time.monotonic() >= deadline:
                raise BusUnavailable(f"cannot describe topic {spec.name}: {exc}") from exc
            time.sleep(0.1)
    problems: list[str] = []
    if len(meta.partitions) != spec.partitions:
        problems.append(f"{len(meta.partitions)} partitions, configured {spec.partitions}")
    replicas = {len(p.replicas) for p in meta.partitions.values()}
    if replicas != {spec.replication_factor}:
        problems.append(f"replication factor {sorted(replicas)}, configured {spec.replication_factor}")
    for key, want in spec.config.items():
        entry = configs.get(key)
        got = entry.value if entry is not None else None
        if got != want:
            problems.append(f"{key}={got}, configured {want}")
    if problems:
        raise TopicMismatch(
            f"topic {spec.name} differs from the configuration: "
            + "; ".join(problems)
            + " (change the settings or the topic; K2 does not alter existing topics)"
        )


def _wait_for_metadata(admin: AdminClient, name: str, timeout_s: float) -> Any:
    """The topic's metadata, waiting while a just-created topic propagates to the brokers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            meta = admin.list_topics(topic=name, timeout=timeout_s).topics.get(name)
        except KafkaException as exc:
            raise BusUnavailable(f"cannot describe topic {name}: {exc}") from exc
        if meta is not None and meta.error is None and meta.partitions:
            return meta
        if time.monotonic() >= deadline:
            raise BusUnavailable(f"topic {name} is not available: {None if meta is None else meta.error}")
        time.sleep(0.1)
