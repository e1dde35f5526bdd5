"""Reproducible benchmarks; results in benchmarks/results/*.md with the exact commands."""
