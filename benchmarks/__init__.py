"""Reproducible benchmarks for shardq: run each with ``python -m benchmarks.<name>``."""
