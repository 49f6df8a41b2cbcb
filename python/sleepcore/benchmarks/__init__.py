"""Benchmark harness: providers compared on the same inputs in one run (``bench/`` wraps these)."""
