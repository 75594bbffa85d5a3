"""WireGuard's Noise_IKpsk2 handshake: primitives, messages 1 and 2, MACs and cookies.

Sans-IO and independent of ``wgpy``: nothing here reads a clock, touches a socket or imports
from the rest of the project.
"""
