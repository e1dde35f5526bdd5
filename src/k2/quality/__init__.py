"""Completeness and data quality: sequence tracking, data-quality checks, event records, reports.

Everything here is pure: no sockets, files, clock or environment (times are arguments; the report
aggregates Arrow tables the caller read). :mod:`k2.feed.trades` and :mod:`k2.feed.quotes` wire it into the
pipeline; docs/quality.md explains the whole loop.
"""
