"""Feeds: a venue's streams run into a sink by one runner (embedded, Kafka and capture alike)."""
