"""Hostile input at a running wgpy-userspace: every datagram dropped and counted, the session
unharmed, no replayed packet delivered (issue 6, item 1)."""

from __future__ import annotations

import os
import random
import socket
import time

from tests.support import WGPY, interop
from wgpy.core import messages
from wgpy.harness import ScriptedPeer, UdpTransport, packets
from wgpy.harness.target import NamespaceTarget, UapiTarget
from wgpy.harness.transport import udp_socket
from wgpy.io import uapi_client
from wgpy.testbed import wait_for

pytestmark = interop
PEER_IP, TARGET_IP, PORT = "10.77.0.2", "10.77.0.1", 7000


def _collect(sock: socket.socket, seconds: float) -> list[bytes]:
    sock.settimeout(0.2)
    out: list[bytes] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.append(sock.recv(65535))
        except TimeoutError:
            continue
    return out


def _hostile(rng: random.Random, legit: list[bytes], initiation: bytes, index: int) -> list[bytes]:
    """Every kind of bad datagram: replays, reordering, garbage, wrong lengths, reserved
    bits, stale indices, bad tags, forged cookies, a replayed initiation."""
    out: list[bytes] = []
    out += legit  # exact replays
    out += rng.sample(legit, len(legit))  # replays, reordered
    for t in (0, 1, 2, 3, 4, 5, 255):
        for _ in range(40):  # garbage of every type, every length
            out.append(bytes([t, 0, 0, 0]) + rng.randbytes(rng.randrange(0, 200)))
    for d in legit[:20]:
        bad = bytearray(d)
        bad[rng.randrange(16, len(bad))] ^= 1 << rng.randrange(8)  # bad tag
        out.append(bytes(bad))
        res = bytearray(d)
        res[rng.randrange(1, 4)] = rng.randrange(1, 256)  # reserved bytes set
        out.append(bytes(res))
        out.append(d[:31])  # too short for transport
        stale = bytearray(d)
        stale[4:8] = rng.randbytes(4)  # an index nobody holds
        out.append(bytes(stale))
    for _ in range(20):  # forged cookie replies for the live session's index
        out.append(messages.build_cookie_reply(index, rng.randbytes(24), rng.randbytes(32)))
    out += [initiation] * 5  # a replayed initiation: old timestamp
    out += [b""] * 3  # empty datagrams
    for n in (147, 149, 91, 93, 63, 65):  # handshake messages of the wrong length
        out.append(bytes([1 if n > 100 else 2 if n > 70 else 3, 0, 0, 0]) + os.urandom(n - 4))
    return out


def test_hostile_stream_dropped_counted_and_session_unharmed() -> None:
    rng = random.Random(1234)  # a reproducible hostile stream
    with NamespaceTarget(WGPY, name="wgpy") as target:
        assert isinstance(target, UapiTarget)
        transport = UdpTransport(target.socket())
        peer = ScriptedPeer(target.public_key, target=target.address, transport=transport)
        target.add_peer(peer.public_key, allowed_ips=[f"{PEER_IP}/32"])
        initiation = peer.send_initiation()
        session = peer.expect_response(sender_index=int.from_bytes(initiation[4:8], "little"))
        listener = udp_socket(TARGET_IP, PORT, netns=target.netns)
        legit = [
            peer.send_data(packets.udp(PEER_IP, TARGET_IP, 5000, PORT, b"legit-%03d" % i))
            for i in range(60)
        ]
        got = _collect(listener, 1.0)
        assert sorted(got) == sorted(b"legit-%03d" % i for i in range(60))

        before = uapi_client.stats_at(target.socket_path)
        hostile = _hostile(rng, legit, initiation, session.remote_index)
        attacker = target.socket()
        for i, d in enumerate(hostile):  # from the peer's address and from a stranger's
            (transport.sock if i % 2 else attacker).sendto(d, target.address)
            if i % 50 == 0:
                time.sleep(0.002)  # paced: drops must come from the device, not the socket

        def counted() -> dict[str, int]:
            after = uapi_client.stats_at(target.socket_path)
            return {k: after.get(k, 0) - before.get(k, 0) for k in after if k.startswith("drop_")}

        # the device has seen them all (the socket may still hold some): then exact counts
        wait_for(lambda: sum(counted().values()) >= len(hostile), 30, "every datagram counted")
        drops = counted()
        print(f"\n{len(hostile)} hostile datagrams; drops by reason: "
              f"{ {k: v for k, v in drops.items() if v} }")  # fmt: skip
        assert sum(drops.values()) == len(hostile)
        assert drops["drop_replayed"] >= 2 * len(legit)
        assert _collect(listener, 0.5) == []  # nothing replayed reached the TUN

        # the session still carries traffic, both ways
        for i in range(10):
            peer.send_data(packets.udp(PEER_IP, TARGET_IP, 5000, PORT, b"after-%d" % i))
        assert sorted(_collect(listener, 1.0)) == sorted(b"after-%d" % i for i in range(10))
        peer.send_data(packets.icmp_echo(PEER_IP, TARGET_IP, ident=7, seq=1))
        reply = peer.expect_data()
        assert reply.ip is not None and reply.ip.src == TARGET_IP
        snap = target.peer(peer.public_key)
        assert snap is not None and snap.endpoint is not None
        assert snap.endpoint.endswith(f":{transport.sock.getsockname()[1]}")  # never roamed
