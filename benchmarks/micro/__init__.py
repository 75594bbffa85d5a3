"""Micro-benchmarks of the per-packet paths (run explicitly: python3 -m pytest benchmarks/micro)."""
