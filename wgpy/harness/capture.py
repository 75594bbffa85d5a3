"""Capture files of either format, told apart by their first bytes, from a path or stdin.

``wgpy decode`` reads what tcpdump writes (classic pcap, :mod:`wgpy.harness.pcap`) and what
Wireshark, dumpcap and editcap write by default (pcapng, :mod:`wgpy.harness.pcapng`). Both are
read front to back without seeking, so ``-`` (standard input) works for either, including a
capture still being written (``tcpdump -U -w - | wgpy decode -``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import BinaryIO

from wgpy.harness.pcap import Frame, PcapError, UdpDatagram, read_pcap, udp_in_frame
from wgpy.harness.pcapng import SHB_MAGIC, SecretsSink, read_pcapng

__all__ = ["STDIN", "Frame", "PcapError", "UdpDatagram", "open_capture", "read_frames", "read_udp"]

STDIN = "-"


def read_frames(f: BinaryIO, *, on_secrets: SecretsSink | None = None) -> Iterator[Frame]:
    """Every frame of a classic pcap or pcapng stream, in file order (``on_secrets``: see
    :func:`~wgpy.harness.pcapng.read_pcapng`)."""
    first = f.read(4)
    if first == SHB_MAGIC:
        return read_pcapng(f, first, on_secrets=on_secrets)
    if len(first) < 4:
        raise PcapError("file too short for a capture header")
    return read_pcap(f, first)


def read_udp(f: BinaryIO, *, on_secrets: SecretsSink | None = None) -> Iterator[UdpDatagram]:
    """Every UDP datagram of a capture stream, in file order."""
    for frame in read_frames(f, on_secrets=on_secrets):
        d = udp_in_frame(frame)
        if d is not None:
            yield d


def open_capture(path: str) -> BinaryIO:
    """The file at ``path`` for reading, or standard input for ``-`` (not closed by ``with``)."""
    if path == STDIN:
        return open(sys.stdin.buffer.fileno(), "rb", closefd=False)
    return open(path, "rb")
