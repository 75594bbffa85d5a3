"""The flood benchmark's pure parts (benchmarks/flood.py), without a testbed: the junk it
sends passes mac1 and nothing more, and its table is built from the figures of every run."""

from __future__ import annotations

from benchmarks import flood
from noise import crypto
from noise.cookie import CookieChecker
from wgpy.core import messages
from wgpy.core.device import Device


def test_the_junk_has_a_valid_mac1_and_fails_the_handshake() -> None:
    dev = Device(wall_time_ns=lambda: 0)
    dev.set_private_key(crypto.generate_private_key(), now=0.0)
    pub = dev.public_key
    assert pub is not None
    pool = flood.junk_pool(pub, 8)
    assert len(set(pool)) == 8
    checker = CookieChecker(pub)
    for msg in pool:
        assert len(msg) == messages.MESSAGE_INITIATION_SIZE
        assert checker.check_mac1(msg)
        assert msg[-16:] == bytes(16)  # no mac2: a first contact
        dev.receive_datagram(msg, ("192.0.2.1", 1), now=0.0)
    assert dev.drops == {"decryption_failed": 8}  # cost a DH each, answered nothing
    assert dev.datagrams_to_send() == []


def test_table_takes_medians_over_runs() -> None:
    runs = [
        {"tcp_mbps_0": 100.0, "cpu_pct_0": 50.0, "tcp_ratio_50k": r, "rss_kib_50k": 30720.0}
        for r in (0.2, 0.6, 0.4)
    ]
    text = flood.table({"impl": runs, "other": []}, [50000.0])
    row = next(line for line in text.splitlines() if line.startswith("| impl "))
    assert "0.40 (0.20–0.60)" in row and "30.0 (max 30.0)" in row
    assert "| other | — |" in text
