"""wgpy: userspace WireGuard in Python, and a kube-vip-style supervisor built on it."""

__version__ = "0.1.0"
