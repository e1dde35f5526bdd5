"""The lake: Iceberg catalog and tables, the idempotent writer, its maintenance, and quarantine."""
