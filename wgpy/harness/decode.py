"""``wgpy decode``: print the WireGuard traffic of a capture, decrypting what the keys allow.

Usage::

    wgpy decode CAPTURE [--key-file FILE] [--key PRIVKEY_B64]... [--keylog FILE]...
                        [--psk PSK_B64]... [--port N]

``CAPTURE`` is a classic pcap or a pcapng file, or ``-`` for standard input (events are then
printed as they are decoded). Key log lines of a kind not known here are skipped with one
warning per kind, as Wireshark skips them.

What each key opens (protocol doc §3):

* a **static private key** of the responder: message 1's encrypted static key (so the
  initiator is named) and its timestamp;
* a **static private key** of the initiator plus the responder's public key (from a key log's
  ``REMOTE_STATIC_PUBLIC_KEY``, or any other ``--key``): the same, when the initiator's
  ephemeral private key is also known;
* **ephemeral private keys** (Wireshark-format key log lines): the rest of the handshake, hence
  both transport keys; a preshared key is tried from the key log and ``--psk``;
* ``TRANSPORT_KEY`` lines: transport data directly, no handshake needed.

The responder's public key for message 1 is recognised by its mac1 (keyed by that public key),
so no port or role needs to be given. Keys are never printed; public keys are shown shortened
as ``peer(AbCd…WxYz)``. Transport packets are decrypted, trimmed by the inner IP length and
summarised as ``src → dst proto len``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from noise import crypto, tai64n
from noise.cookie import cookie_key, mac1_key
from noise.errors import NoiseError
from noise.handshake import C0, H0
from wgpy.core import messages
from wgpy.core.keys import parse_base64_key
from wgpy.harness import packets
from wgpy.harness.capture import STDIN, open_capture, read_udp
from wgpy.harness.keylog import KeyLog, parse_keylog
from wgpy.harness.pcap import PcapError, UdpDatagram
from wgpy.harness.pcapng import SECRETS_WIREGUARD


def short_key(public: bytes) -> str:
    """``peer(AbCd…WxYz)``: enough to tell keys apart, as wireguard-go prints peers."""
    b = base64.b64encode(public).decode("ascii")
    return f"peer({b[:4]}…{b[39:43]})"


@dataclass
class _Handshake:
    """What the decoder learned of one handshake, keyed by the initiator's sender index."""

    ephemeral: bytes
    responder: bytes | None = None
    initiator: bytes | None = None
    chaining_key: bytes | None = None
    hash: bytes | None = None
    mac1: bytes = b""


@dataclass
class Event:
    """One WireGuard datagram, decoded. ``text`` is the printed line (without addresses)."""

    datagram: UdpDatagram
    kind: str
    text: str
    initiator: bytes | None = None
    timestamp: bytes | None = None
    plaintext: bytes | None = None
    ip: packets.IpSummary | None = None
    psk_used: bool | None = None


class Decoder:
    """Feed it UDP datagrams in capture order; it returns an :class:`Event` for WireGuard ones."""

    def __init__(
        self,
        static_private: Sequence[bytes] = (),
        keylog: KeyLog | None = None,
        psks: Sequence[bytes] = (),
    ) -> None:
        self.statics = {crypto.public_key(k): k for k in static_private}
        self.publics = set(self.statics)
        self.ephemerals: dict[bytes, bytes] = {}
        self.psks = [crypto.ZERO_KEY, *psks]
        self.transport_keys: dict[int, bytes] = {}
        self.handshakes: dict[int, _Handshake] = {}
        self.mac1_by_index: dict[int, tuple[bytes, bytes | None]] = {}
        if keylog is not None:
            self.add_keylog(keylog)

    def add_keylog(self, log: KeyLog) -> None:
        """Learn more keys (several key logs, or one read in pieces); used from the next
        datagram on."""
        self.statics.update((crypto.public_key(k), k) for k in log.static_private)
        self.publics |= set(self.statics) | set(log.remote_public)
        self.ephemerals.update((crypto.public_key(k), k) for k in log.ephemeral_private)
        self.psks += [k for k in log.preshared if k not in self.psks]
        self.transport_keys.update(log.transport)

    # --- handshake messages ---------------------------------------------------------------------

    def _dh(self, priv_pub: tuple[bytes | None, bytes], alt: tuple[bytes | None, bytes]) -> bytes:
        for priv, pub in (priv_pub, alt):
            if priv is not None:
                return crypto.dh(priv, pub)
        raise LookupError("no private key for this DH")

    def _initiation(self, d: UdpDatagram, msg: messages.Initiation) -> Event:
        data = d.payload
        responder = next(
            (
                p
                for p in self.publics
                if crypto.equal(crypto.mac(mac1_key(p), data[:116]), msg.mac1)
            ),
            None,
        )
        hs = _Handshake(msg.ephemeral, responder, mac1=msg.mac1)
        self.handshakes[msg.sender_index] = hs
        self.mac1_by_index[msg.sender_index] = (msg.mac1, responder)
        head = f"initiation sender=0x{msg.sender_index:08x}"
        if responder is None:
            return Event(d, "initiation", head + " (responder key unknown)")
        head += f" to {short_key(responder)}"
        e = msg.ephemeral
        c = crypto.kdf1(C0, e)
        h = crypto.hash_(crypto.hash_(H0, responder), e)
        try:
            es = self._dh((self.statics.get(responder), e), (self.ephemerals.get(e), responder))
            c, k = crypto.kdf2(c, es)
            initiator = crypto.aead_open(k, 0, msg.encrypted_static, h)
            h = crypto.hash_(h, msg.encrypted_static)
            hs.initiator = initiator
            ss = self._dh(
                (self.statics.get(responder), initiator), (self.statics.get(initiator), responder)
            )
            c, k = crypto.kdf2(c, ss)
            ts = crypto.aead_open(k, 0, msg.encrypted_timestamp, h)
            h = crypto.hash_(h, msg.encrypted_timestamp)
        except LookupError:
            return Event(d, "initiation", head + " (no key to open it)", hs.initiator)
        except NoiseError:
            return Event(d, "initiation", head + " (does not decrypt)", hs.initiator)
        hs.chaining_key, hs.hash = c, h
        when = dt.datetime.fromtimestamp(tai64n.to_unix_ns(ts) / 1e9, dt.UTC)
        text = f"{head} from {short_key(initiator)} timestamp {when:%Y-%m-%d %H:%M:%S.%f}Z"
        return Event(d, "initiation", text, initiator, ts)

    def _response(self, d: UdpDatagram, msg: messages.Response) -> Event:
        hs = self.handshakes.get(msg.receiver_index)
        head = f"response sender=0x{msg.sender_index:08x} receiver=0x{msg.receiver_index:08x}"
        self.mac1_by_index[msg.sender_index] = (msg.mac1, hs.initiator if hs else None)
        if hs is None or hs.chaining_key is None or hs.hash is None or hs.initiator is None:
            return Event(d, "response", head + " (initiation not decrypted)")
        e_r, e_i = msg.ephemeral, hs.ephemeral
        c = crypto.kdf1(hs.chaining_key, e_r)
        h = crypto.hash_(hs.hash, e_r)
        try:
            c = crypto.kdf1(
                c, self._dh((self.ephemerals.get(e_r), e_i), (self.ephemerals.get(e_i), e_r))
            )
            c = crypto.kdf1(
                c,
                self._dh(
                    (self.ephemerals.get(e_r), hs.initiator), (self.statics.get(hs.initiator), e_r)
                ),
            )
        except LookupError:
            return Event(d, "response", head + " (no ephemeral key: see --keylog)")
        for psk in self.psks:
            c2, tau, k = crypto.kdf3(c, psk)
            try:
                crypto.aead_open(k, 0, msg.encrypted_nothing, crypto.hash_(h, tau))
            except NoiseError:
                continue
            t1, t2 = crypto.kdf2(c2, b"")
            self.transport_keys[msg.sender_index] = t1  # initiator → responder
            self.transport_keys[msg.receiver_index] = t2  # responder → initiator
            used = psk != crypto.ZERO_KEY
            text = head + " session keys derived" + (" (with preshared key)" if used else "")
            return Event(d, "response", text, psk_used=used)
        return Event(d, "response", head + " (does not decrypt: wrong or missing preshared key)")

    def _cookie(self, d: UdpDatagram, msg: messages.CookieReply) -> Event:
        head = f"cookie reply receiver=0x{msg.receiver_index:08x}"
        mac1, sender_of_cookie = self.mac1_by_index.get(msg.receiver_index, (b"", None))
        if sender_of_cookie is None:
            return Event(d, "cookie_reply", head)
        try:
            crypto.xaead_open(cookie_key(sender_of_cookie), msg.nonce, msg.encrypted_cookie, mac1)
        except NoiseError:
            return Event(d, "cookie_reply", head + " (does not decrypt)")
        return Event(d, "cookie_reply", head + f" from {short_key(sender_of_cookie)} (valid)")

    # --- transport ------------------------------------------------------------------------------

    def _transport(self, d: UdpDatagram) -> Event:
        header = messages.parse_transport_header(d.payload)
        assert header is not None
        receiver, counter = header
        head = f"transport receiver=0x{receiver:08x} counter={counter} len={len(d.payload)}"
        key = self.transport_keys.get(receiver)
        if key is None:
            return Event(d, "transport", head + " (no key)")
        try:
            plain = crypto.aead_open(key, counter, d.payload[16:], b"")
        except NoiseError:
            return Event(d, "transport", head + " (does not decrypt)")
        if not plain:
            return Event(d, "keepalive", head + " keepalive", plaintext=plain)
        length = messages.ip_packet_length(plain)
        ip = packets.summarize(plain[:length]) if length is not None else None
        inner = str(ip) if ip is not None else f"{len(plain)} bytes, not an IP packet"
        return Event(d, "data", f"{head}: {inner}", plaintext=plain, ip=ip)

    def feed(self, d: UdpDatagram) -> Event | None:
        """Decode one datagram; ``None`` when it is not shaped like a WireGuard message."""
        data = d.payload
        t = messages.message_type(data)
        if t == messages.MESSAGE_INITIATION and (m1 := messages.parse_initiation(data)):
            return self._initiation(d, m1)
        if t == messages.MESSAGE_RESPONSE and (m2 := messages.parse_response(data)):
            return self._response(d, m2)
        if t == messages.MESSAGE_COOKIE_REPLY and (m3 := messages.parse_cookie_reply(data)):
            return self._cookie(d, m3)
        if t == messages.MESSAGE_TRANSPORT and len(data) >= messages.MESSAGE_KEEPALIVE_SIZE:
            return self._transport(d)
        return None


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_event(ev: Event) -> str:
    d = ev.datagram
    when = dt.datetime.fromtimestamp(d.timestamp, dt.UTC).strftime("%H:%M:%S.%f")
    return f"{when} {_endpoint(d.src, d.sport)} → {_endpoint(d.dst, d.dport)} {ev.text}"


def decode_stream(f: BinaryIO, decoder: Decoder, *, port: int | None = None) -> Iterator[Event]:
    """Decode a capture stream (pcap or pcapng) as it is read: one event per WireGuard
    datagram, in capture order. WireGuard key logs embedded in a pcapng file (Decryption
    Secrets Blocks) are used from where they appear."""

    def secrets(kind: int, data: bytes) -> None:
        if kind == SECRETS_WIREGUARD:
            decoder.add_keylog(parse_keylog(data.decode("ascii", errors="replace")))

    for d in read_udp(f, on_secrets=secrets):
        if port is not None and port not in (d.sport, d.dport):
            continue
        ev = decoder.feed(d)
        if ev is not None:
            yield ev


def decode_file(path: str, decoder: Decoder, *, port: int | None = None) -> list[Event]:
    """Every event of the capture at ``path`` (``-``: standard input)."""
    with open_capture(path) as f:
        return list(decode_stream(f, decoder, port=port))


def _read_keylog(path: str, prog: str) -> KeyLog:
    with open(path, encoding="ascii", errors="replace") as f:
        log = parse_keylog(f.read())
    for warning in log.warnings(path):
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    return log


def main(argv: list[str], prog: str = "wgpy decode") -> int:
    """Entry point of ``wgpy decode`` (see the module docstring)."""
    p = argparse.ArgumentParser(prog=prog, description="Decode WireGuard traffic in a capture.")
    p.add_argument("capture", help="a pcap or pcapng file (tcpdump -w, dumpcap), or - for stdin")
    p.add_argument("--key", action="append", default=[], help="a static private key (base64)")
    p.add_argument("--key-file", action="append", default=[], help="file of private keys")
    p.add_argument(
        "--keylog",
        action="append",
        default=[],
        help="key log (Wireshark lines and TRANSPORT_KEY lines); may be repeated",
    )
    p.add_argument("--psk", action="append", default=[], help="a preshared key (base64)")
    p.add_argument("--port", type=int, help="only datagrams to or from this UDP port")
    args = p.parse_args(argv)
    kinds: dict[str, int] = {}
    try:
        keys = [parse_base64_key(k, "--key") for k in args.key]
        for path in args.key_file:
            with open(path, encoding="ascii") as f:
                keys += [parse_base64_key(line, path) for line in f if line.strip()]
        decoder = Decoder(keys, None, [parse_base64_key(k, "--psk") for k in args.psk])
        for path in args.keylog:
            decoder.add_keylog(_read_keylog(path, prog))
        live = args.capture == STDIN
        with open_capture(args.capture) as f:
            for ev in decode_stream(f, decoder, port=args.port):
                kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
                print(format_event(ev), flush=live)
    except (OSError, PcapError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    total = sum(kinds.values())
    print(f"{total} WireGuard messages: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
