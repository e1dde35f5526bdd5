"""Completeness and data quality: sequence tracking, data-quality checks, event records, reports.

Everything here is pure (no sockets, files or clock) except :mod:`k2.quality.report`, which reads
the tables. The pipeline wires it in (see docs/quality.md).
"""
