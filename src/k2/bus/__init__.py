"""Distributed mode's message bus: topics, Avro serde (Confluent wire format), registry, producer,
exactly-once Iceberg consumer (offsets in snapshot summaries), dead letters. See docs/kafka.md."""
