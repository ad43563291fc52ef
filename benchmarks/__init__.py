"""Benchmarks for affectflow (run them as scripts; nothing here is imported by the package)."""
