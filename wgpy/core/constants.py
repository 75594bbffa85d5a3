"""Protocol constants.

Specification constants mirror wireguard-go ``device/constants.go`` and the whitepaper §6;
implementation constants are this project's own limits. Times are seconds. The handshake's
own (COOKIE_REFRESH_TIME, HANDSHAKE_INITIATION_RATE) live in ``noise``, which uses them.
"""

from __future__ import annotations

# --- Specification -------------------------------------------------------------------------
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_TIME = 120.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18 retries, 20 sends in all
REKEY_TIMEOUT_JITTER_MAX = 0.334  # retransmits add 0..333 ms (wireguard-go rand(334) ms)
REJECT_AFTER_TIME = 180.0
KEEPALIVE_TIMEOUT = 10.0
ZERO_KEY_MATERIAL_AFTER = 3 * REJECT_AFTER_TIME  # 540 s
# initiator rekeys on receive when its key is this old (165 s)
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT

# --- Implementation ------------------------------------------------------------------------
DEFAULT_MTU = 1420
REPLAY_WINDOW = (128 - 1) * 64  # 8128, as wireguard-go and the kernel
MAX_STAGED_PACKETS = 128  # per peer; the oldest is dropped when full (kernel behaviour)
MAX_PEERS = 1 << 16
MAX_ALLOWED_IPS = 1 << 20  # across all peers of a device
# The handshake backlog (wgpy/core/backlog.py): handshake messages wait in a bounded queue, as in
# wireguard-go (QueueHandshakeSize 1024); what does not fit is dropped before mac1.
MAX_QUEUED_HANDSHAKES = 1024
# A backlog this deep means the thread cannot keep up: "under load" (wireguard-go: 1024/8).
UNDER_LOAD_BACKLOG = MAX_QUEUED_HANDSHAKES // 8
HANDSHAKES_PER_WAKEUP = 64  # messages worked on per wake-up of the event loop
HANDSHAKES_PER_SECOND = 10_000  # on average (a token bucket, burst 1000)
# Also "under load" above this many handshake messages per second, however short the
# backlog: a rate that the thread just keeps up with would otherwise buy an attacker a
# Diffie-Hellman per message (≈ 80 µs each) without ever filling the backlog.
UNDER_LOAD_RATE = 1000
UNDER_LOAD_STICKY = 1.0  # seconds the under-load state lasts after the last trigger
MAX_DATAGRAM = 65535  # the largest UDP payload
