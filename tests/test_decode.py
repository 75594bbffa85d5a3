"""pcap reading and ``wgpy decode``: hand-made frames, an in-memory capture, a tcpdump capture."""

from __future__ import annotations

import io
import os
import struct
import time
from pathlib import Path

import pytest

from noise import crypto
from tests.support import needs_root
from tests.test_harness import DEV_ADDR, PEER_ADDR, MemoryLink, _device_pair, _echo
from wgpy.harness import ScriptedPeer, UdpTransport, packets
from wgpy.harness.capture import read_udp
from wgpy.harness.decode import Decoder, decode_file, main
from wgpy.harness.keylog import KeyLogWriter, parse_keylog
from wgpy.harness.pcap import PcapError, PcapWriter
from wgpy.harness.target import NamespaceTarget
from wgpy.harness.transport import Address
from wgpy.testbed import wait_for

UDP = packets.udp("10.0.0.1", "10.0.0.2", 1111, 51820, b"payload")


def _pcap(linktype: int, frames: list[bytes], *, order: str = "<", nanos: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, f in enumerate(frames):
        out += struct.pack(order + "IIII", 1_700_000_000 + i, 500, len(f), len(f)) + f
    return out


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (1, b"\x02" * 12 + b"\x08\x00" + UDP),  # Ethernet
        (1, b"\x02" * 12 + b"\x81\x00\x00\x05\x08\x00" + UDP),  # Ethernet + 802.1Q
        (113, b"\x00" * 14 + b"\x08\x00" + UDP),  # Linux cooked v1
        (276, b"\x08\x00" + b"\x00" * 18 + UDP),  # Linux cooked v2
        (101, UDP),  # raw IP
        (0, struct.pack("<I", 2) + UDP),  # BSD loopback
    ],
)
@pytest.mark.parametrize(("order", "nanos"), [("<", False), (">", True)])
def test_link_types_and_byte_orders(linktype: int, frame: bytes, order: str, nanos: bool) -> None:
    got = list(read_udp(io.BytesIO(_pcap(linktype, [frame, b"\x00"], order=order, nanos=nanos))))
    assert len(got) == 1
    d = got[0]
    assert (d.src, d.sport, d.dst, d.dport, d.payload) == (
        "10.0.0.1",
        1111,
        "10.0.0.2",
        51820,
        b"payload",
    )
    assert d.timestamp == pytest.approx(1_700_000_000 + (500e-9 if nanos else 500e-6))


def test_fragments_ipv6_and_garbage() -> None:
    frag = bytearray(UDP)
    frag[6:8] = b"\x20\x00"  # more fragments
    v6 = packets.udp("fd00::1", "fd00::2", 5, 6, b"six")
    got = list(read_udp(io.BytesIO(_pcap(101, [bytes(frag), v6]))))
    assert [(d.src, d.payload) for d in got] == [("fd00::1", b"six")]
    with pytest.raises(PcapError, match="byte-order magic"):
        list(read_udp(io.BytesIO(b"\x0a\x0d\x0d\x0a" + bytes(40))))
    with pytest.raises(PcapError):
        list(read_udp(io.BytesIO(b"not a capture at all....")))


class RecordingLink(MemoryLink):
    """A MemoryLink that also writes every datagram both ways into a raw-IP pcap."""

    def __init__(self, link: MemoryLink, writer: PcapWriter) -> None:
        super().__init__(link.device)
        self.writer = writer

    def _write(self, data: bytes, src: Address, dst: Address) -> None:
        self.writer.write(time.time(), packets.udp(src[0], dst[0], src[1], dst[1], data))

    def pump(self) -> None:
        for data, _to in self.device.datagrams_to_send():
            self._write(data, DEV_ADDR, PEER_ADDR)
            self.inbox.append((data, DEV_ADDR))
        self.tun += self.device.tun_packets_to_write()

    def send(self, data: bytes, addr: Address) -> None:
        self._write(data, PEER_ADDR, DEV_ADDR)
        super().send(data, addr)


def _memory_capture(tmp_path: Path, psk: bytes | None) -> tuple[Path, Path, bytes, ScriptedPeer]:
    cap, log = tmp_path / "mem.pcap", tmp_path / "keys.log"
    dev, link, peer = _device_pair(psk)
    with open(cap, "wb") as f:
        rec = RecordingLink(link, PcapWriter(f))
        peer.transport = rec
        peer.keylog = KeyLogWriter(str(log))
        peer.handshake()
        peer.send_data(_echo(1, size=15))
        dev.receive_tun_packet(
            packets.icmp_echo("10.77.0.1", "10.77.0.2", ident=7, seq=1, reply=True), now=rec.now
        )
        rec.pump()
        peer.send_keepalive()
    assert dev.static is not None
    return cap, log, dev.static.private, peer


@pytest.mark.parametrize("psk", [None, b"\x33" * 32])
def test_decode_with_key_log(tmp_path: Path, psk: bytes | None) -> None:
    cap, log, _dev_key, peer = _memory_capture(tmp_path, psk)
    with open(log) as f:
        full = f.read()
    # Wireshark lines only: the decoder must re-run the handshake to get transport keys.
    handshake_only = parse_keylog(
        "\n".join(ln for ln in full.splitlines() if "TRANSPORT" not in ln)
    )
    events = decode_file(str(cap), Decoder([], handshake_only))
    assert [e.kind for e in events] == ["initiation", "response", "data", "data", "keepalive"]
    assert events[0].initiator == peer.public_key and events[0].timestamp is not None
    assert events[1].psk_used is (psk is not None)
    assert events[2].plaintext is not None and events[2].plaintext[:43] == _echo(1, size=15)
    assert events[3].ip is not None and events[3].ip.is_echo_reply
    assert "10.77.0.1 → 10.77.0.2 icmp len 28" in events[3].text


def test_decode_with_static_key_only_and_transport_keys_only(tmp_path: Path) -> None:
    cap, log, dev_key, peer = _memory_capture(tmp_path, None)
    # The responder's static key opens message 1 (initiator and timestamp) but nothing more.
    events = decode_file(str(cap), Decoder([dev_key]))
    assert events[0].initiator == peer.public_key and "timestamp" in events[0].text
    assert "no ephemeral key" in events[1].text and events[2].kind == "transport"
    # TRANSPORT_KEY lines alone decrypt the data without any handshake.
    with open(log) as f:
        transport_only = parse_keylog("\n".join(ln for ln in f if ln.startswith("TRANSPORT")))
    events = decode_file(str(cap), Decoder([], transport_only))
    assert "responder key unknown" in events[0].text
    assert [e.kind for e in events[2:]] == ["data", "data", "keepalive"]
    # A wrong key decrypts nothing.
    events = decode_file(str(cap), Decoder([crypto.generate_private_key()]))
    assert all(e.plaintext is None and e.initiator is None for e in events)


def test_cli_prints_a_summary_and_hides_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap, log, dev_key, _peer = _memory_capture(tmp_path, None)
    key_file = tmp_path / "k"
    key_file.write_text(__import__("base64").b64encode(dev_key).decode() + "\n")
    assert main([str(cap), "--key-file", str(key_file), "--keylog", str(log)]) == 0
    out = capsys.readouterr().out
    assert "echo request id 7 seq 1" in out and "keepalive" in out
    assert out.strip().endswith(
        "5 WireGuard messages: 1 initiation, 1 response, 2 data, 1 keepalive"
    )
    with open(log) as f:
        for line in f:
            assert line.split()[-1] not in out  # no key material is printed
    assert main([str(cap), "--key", "short"]) == 1


@pytest.mark.interop
@needs_root
def test_tcpdump_capture_of_wireguard_go(tmp_path: Path) -> None:
    cap, log = str(tmp_path / "wg.pcap"), str(tmp_path / "keys.log")
    nt = NamespaceTarget(["wireguard-go"], name="wireguard-go")
    with nt as t:
        assert nt.ns is not None and t.private_key is not None
        err = open(tmp_path / "tcpdump.err", "w")  # noqa: SIM115 - closed below
        proc = nt.ns.popen(
            ["tcpdump", "--immediate-mode", "-i", "lo", "-U", "-w", cap, "udp"], stderr=err
        )
        try:
            assert wait_for(lambda: "listening" in Path(err.name).read_text(), 5.0)
            p = ScriptedPeer(
                t.public_key,
                target=t.address,
                transport=UdpTransport(t.socket()),
                keylog=log,
                preshared_key=os.urandom(32),
            )
            t.add_peer(p.public_key, allowed_ips=["10.77.0.2/32"], preshared_key=p.preshared_key)
            p.handshake()
            p.send_data(_echo(5, size=15))
            assert p.expect_data().ip is not None
            time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(5)
            err.close()
        target_key = t.private_key
    # the target's static key names the initiator; the harness key log opens everything else
    with open(log) as f:
        handshake_only = parse_keylog("\n".join(ln for ln in f if "TRANSPORT" not in ln))
    events = decode_file(cap, Decoder([target_key], handshake_only), port=51820)
    assert [e.kind for e in events] == ["initiation", "response", "data", "data"]
    assert events[0].initiator == p.public_key and events[1].psk_used
    request, reply = events[2].ip, events[3].ip
    assert request is not None and request.is_echo_request and request.echo_seq == 5
    assert (
        reply is not None
        and reply.is_echo_reply
        and (reply.src, reply.dst) == ("10.77.0.1", "10.77.0.2")
    )
    assert events[3].plaintext is not None and len(events[3].plaintext) == 48  # padded by wg-go
