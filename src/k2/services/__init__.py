"""Composition only: services wire sources, lake and query together (run, demo, capture)."""
