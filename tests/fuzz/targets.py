"""Coverage-guided fuzz targets (atheris/libFuzzer): ``python targets.py NAME [libFuzzer args]``.

Each target states the invariant it checks; any other exception is a crash that libFuzzer
reports with the input that caused it. ``tests/test_fuzz.py`` runs each with a time budget,
seeded from ``corpus/NAME/`` (kept in the repository).
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["noise", "wgpy"]):
    from noise import crypto
    from wgpy.core import messages, uapi
    from wgpy.core.device import Device
    from wgpy.core.errors import ConfigError, UapiError
    from wgpy.supervisor import config as sconfig
    from wgpy.tools import quickconf


def fuzz_messages(data: bytes) -> None:
    """Parsers return a message or None for any bytes; they never raise."""
    messages.message_type(data)
    messages.parse_initiation(data)
    messages.parse_response(data)
    messages.parse_cookie_reply(data)
    messages.parse_transport_header(data)
    messages.ip_packet_length(data)


def _established() -> tuple[Device, Device, list[bytes]]:
    rng = random.Random(5)  # deterministic keys and indices: a reproducible target

    def mk() -> Device:
        # no per-second handshake budget: each input is worked on (and dropped) at once,
        # though the clock stands still (the budget has its own tests: test_backlog.py)
        return Device(
            wall_time_ns=lambda: 1_700_000_000 * 10**9,
            rng=rng.randbytes,
            handshakes_per_second=1e12,
        )

    a, b = mk(), mk()
    a.set_private_key(crypto.clamp(rng.randbytes(32)), now=0.0)
    b.set_private_key(crypto.clamp(rng.randbytes(32)), now=0.0)
    assert a.public_key and b.public_key
    pb = a.add_peer(b.public_key, now=0.0)
    pa = b.add_peer(a.public_key, now=0.0)
    a.set_allowed_ips(pb, ["10.0.0.2/32"])
    b.set_allowed_ips(pa, ["10.0.0.1/32"])
    a.set_endpoint(pb, ("192.0.2.2", 1))
    a.receive_tun_packet(b"\x45" + bytes(2) + b"\x14" + bytes(12) + bytes([10, 0, 0, 2]), now=0.0)
    seen = []
    for _ in range(4):
        for d, _addr in a.datagrams_to_send():
            seen.append(d)
            b.receive_datagram(d, ("192.0.2.1", 1), now=0.0)
        for d, _addr in b.datagrams_to_send():
            seen.append(d)
            a.receive_datagram(d, ("192.0.2.2", 1), now=0.0)
    assert pa.current is not None
    return a, b, seen


A, B, SEEN = _established()
PEER = next(iter(B.peers.values()))
SESSION = PEER.current


def fuzz_device(data: bytes) -> None:
    """Any datagram into an established responder: no exception, the session is unchanged,
    nothing reaches the TUN, and the drop is counted."""
    before = sum(B.drops.values())
    B.receive_datagram(data, ("198.51.100.7", 9), now=1.0)
    assert B.tun_packets_to_write() == []
    out = B.datagrams_to_send()
    assert out == [] or all(d[0][0] == messages.MESSAGE_COOKIE_REPLY for d in out)
    assert PEER.current is SESSION and PEER.endpoint == ("192.0.2.1", 1)
    assert sum(B.drops.values()) == before + 1


def fuzz_uapi(data: bytes) -> None:
    """A set request either parses or raises UapiError, whatever the lines."""
    text = data.decode("latin-1")
    with contextlib.suppress(UapiError):
        uapi.parse_set(text.split("\n"))
    reader = uapi.RequestReader()
    reader.feed(data)


def fuzz_wgquick(data: bytes) -> None:
    """A wg-quick config either parses or raises ConfigError."""
    with contextlib.suppress(ConfigError):
        quickconf.parse(data.decode("utf-8", "replace"))


def fuzz_tunnels(data: bytes) -> None:
    """The supervisor's tunnels YAML either parses or raises ConfigError."""
    with contextlib.suppress(ConfigError):
        sconfig.parse_tunnels(data.decode("utf-8", "replace"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "messages": fuzz_messages,
    "device": fuzz_device,
    "uapi": fuzz_uapi,
    "wgquick": fuzz_wgquick,
    "tunnels": fuzz_tunnels,
}

if __name__ == "__main__":
    name = sys.argv[1]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[name])
    atheris.Fuzz()
