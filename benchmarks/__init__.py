"""Benchmark harness: wgpy vs wireguard-go (and bare veth, kernel WireGuard) in namespaces.

Run ``python3 -m benchmarks.run --help``. Results go to ``benchmarks/results/`` (gitignored).
"""
