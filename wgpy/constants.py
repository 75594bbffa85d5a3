"""Protocol constants.

Specification constants mirror wireguard-go ``device/constants.go`` and the whitepaper §6;
implementation constants are this project's own limits. Times are seconds.
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
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # responder: at most one consumed initiation per 20 ms
ZERO_KEY_MATERIAL_AFTER = 3 * REJECT_AFTER_TIME  # 540 s
# initiator rekeys on receive when its key is this old (165 s)
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
PADDING_MULTIPLE = 16

# --- Implementation ------------------------------------------------------------------------
DEFAULT_MTU = 1420
DEFAULT_PORT = 51820
REPLAY_WINDOW = (128 - 1) * 64  # 8128, as wireguard-go and the kernel
MAX_STAGED_PACKETS = 128  # per peer; the oldest is dropped when full (kernel behaviour)
MAX_PEERS = 1 << 16
MAX_ALLOWED_IPS = 1 << 20  # across all peers of a device
MAX_PENDING_HANDSHAKES = 1024  # handshake messages handled per wake-up before "under load"
# Above this many handshake messages per second the device is "under load": it demands
# cookies (mac2) and rate-limits per source. wireguard-go measures a queue depth instead
# (>= 128 of 1024); a sans-IO core has no queue, so it measures the arrival rate.
UNDER_LOAD_RATE = 1000
UNDER_LOAD_STICKY = 1.0  # seconds the under-load state lasts after the last trigger
MAX_DATAGRAM = 65535
MAX_PACKET = MAX_DATAGRAM - 32
