"""Benchmark scripts (not tests). Run from the repository root, e.g.
``python -m benchmarks.protocol_cost`` or ``python -m benchmarks.generation --model tiny``."""
