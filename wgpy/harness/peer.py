"""A scripted WireGuard peer: every message built by hand, every field overridable.

Theory of operation
-------------------
A :class:`ScriptedPeer` holds one static key pair and the target's static public key. It talks
through a :class:`~wgpy.harness.transport.Transport` (a real UDP socket, or any object with
``send``/``recv``). Nothing happens behind the caller's back: no timers, no retransmits, no
automatic keepalives, no replay filter on what it receives. Each call does one thing:

* ``build_*`` returns the bytes of a message (with any field overridden) and records the
  state needed to continue (a pending handshake, a session);
* ``send_*`` builds and sends; ``send_raw`` sends arbitrary bytes;
* ``recv`` returns the next datagram *decoded*: handshake messages parsed (an initiation is also
  opened when it was made for us, giving the initiator's static key and timestamp), transport
  messages decrypted when a session with that receiver index exists, the inner IP packet trimmed
  by its own length and summarised;
* ``expect_*`` waits for one kind of message (skipping others) and consumes it.

Both roles work: ``send_initiation()`` + ``expect_response()`` as initiator;
``expect_initiation()`` + ``send_response()`` as responder. Sessions are kept by local index,
so several can be alive at once (``peer.sessions``); ``peer.session`` is the latest.

Example, from a Python shell in a namespace where wireguard-go listens on 127.0.0.1:51820 with
this peer configured and the tunnel address 10.77.0.1::

    >>> from wgpy.harness import ScriptedPeer, UdpTransport, packets
    >>> peer = ScriptedPeer(target_public, target=("127.0.0.1", 51820),
    ...                     transport=UdpTransport.bind("127.0.0.1"))
    >>> session = peer.handshake()
    >>> peer.send_data(packets.icmp_echo("10.77.0.2", "10.77.0.1", ident=1, seq=1))
    >>> print(peer.expect_data().ip)
    10.77.0.1 → 10.77.0.2 icmp len 28 (echo reply id 1 seq 1)
    >>> peer.send_data(b"", counter=0)   # a keepalive replaying counter 0

Keys are never printed (``repr`` hides them). ``keylog=PATH`` or ``WGPY_KEYLOG=PATH`` appends
the keys needed to decrypt a capture (see :mod:`wgpy.harness.keylog`).
"""

from __future__ import annotations

import secrets
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field

from noise import crypto, tai64n
from noise.cookie import cookie_key, mac1_key
from noise.errors import NoiseError
from noise.handshake import (
    Handshake,
    InitiationFields,
    ResponseFields,
    SessionKeys,
    StaticKeys,
    consume_initiation,
    consume_response,
    create_response,
    derive_keys,
)
from wgpy.core import messages
from wgpy.harness import packets
from wgpy.harness.keylog import KeyLogWriter, writer_from_env
from wgpy.harness.transport import Address, Transport

DEFAULT_MTU = 1420
KIND_INITIATION = "initiation"
KIND_RESPONSE = "response"
KIND_COOKIE_REPLY = "cookie_reply"
KIND_DATA = "data"
KIND_KEEPALIVE = "keepalive"
KIND_UNKNOWN = "unknown"


class HarnessError(Exception):
    """A scripted step could not be carried out (timeout, wrong reply, bad state)."""


class HarnessTimeout(HarnessError):
    """Nothing of the expected kind arrived in time."""


@dataclass(eq=False)
class Session:
    """One transport keypair as the harness sees it. ``send_counter`` is the next counter."""

    local_index: int
    remote_index: int
    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    is_initiator: bool
    created: float
    send_counter: int = 0
    received_counters: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._send = crypto.TransportCipher(self.send_key)
        self._receive = crypto.TransportCipher(self.receive_key)

    def seal(self, counter: int, plaintext: bytes) -> bytes:
        return self._send.seal(counter, plaintext)

    def open(self, counter: int, ciphertext: bytes) -> bytes | None:
        return self._receive.open(counter, ciphertext)


@dataclass(frozen=True, eq=False)
class Received:
    """One datagram that arrived, decoded as far as the harness's keys allow.

    ``kind`` is ``initiation``, ``response``, ``cookie_reply``, ``data``, ``keepalive`` or
    ``unknown`` (a transport message the harness has no session for, or could not decrypt, is
    ``unknown`` with ``receiver_index``/``counter`` still filled).
    """

    data: bytes = field(repr=False)
    addr: Address
    kind: str
    at: float
    message: messages.Initiation | messages.Response | messages.CookieReply | None = None
    receiver_index: int | None = None
    counter: int | None = None
    session: Session | None = None
    plaintext: bytes | None = field(default=None, repr=False)  # decrypted, padding included
    packet: bytes | None = field(default=None, repr=False)  # the inner IP packet, trimmed
    ip: packets.IpSummary | None = None
    initiator_static: bytes | None = field(default=None, repr=False)  # opened initiations
    timestamp: bytes | None = None

    @property
    def sender_index(self) -> int | None:
        m = self.message
        return m.sender_index if isinstance(m, messages.Initiation | messages.Response) else None


def _cut(data: bytes, truncate: int | None) -> bytes:
    """``data`` cut to ``truncate`` bytes (None: whole), the last override a builder applies."""
    return data if truncate is None else data[:truncate]


def _u32(data: bytearray, offset: int, value: int) -> None:
    data[offset : offset + 4] = value.to_bytes(4, "little")


class ScriptedPeer:
    """A WireGuard peer driven one message at a time (see the module docstring).

    ``remote_public`` is the target's static public key; ``target`` its UDP address;
    ``private_key`` defaults to a fresh one; ``preshared_key`` to none; ``mtu`` only sets the
    default padding. ``clock`` (monotonic seconds) and ``wall_time_ns`` are injectable.
    """

    def __init__(
        self,
        remote_public: bytes,
        *,
        target: Address | None = None,
        transport: Transport | None = None,
        private_key: bytes | None = None,
        preshared_key: bytes | None = None,
        mtu: int = DEFAULT_MTU,
        keylog: str | None = None,
        clock: Callable[[], float] = _time.monotonic,
        wall_time_ns: Callable[[], int] = _time.time_ns,
    ) -> None:
        if len(remote_public) != 32:
            raise ValueError("a public key is 32 bytes")
        self.static = StaticKeys(private_key or crypto.generate_private_key())
        self.remote_public = remote_public
        self.preshared_key = preshared_key
        self.target = target
        self.transport = transport
        self.mtu = mtu
        self.clock = clock
        self.wall_time_ns = wall_time_ns
        self.keylog: KeyLogWriter | None = writer_from_env(keylog)
        self.sessions: dict[int, Session] = {}
        self.session: Session | None = None
        self.pending: dict[int, Handshake] = {}  # our initiations, by sender index
        self.opened: dict[int, Handshake] = {}  # initiations we consumed, by their sender index
        self.cookie: bytes | None = None
        self.last_mac1: bytes | None = None
        self.last_timestamp = tai64n.ZERO
        self._mac1_key = mac1_key(remote_public)
        self._remote_mac1_key_for_us = mac1_key(self.static.public)

    def __repr__(self) -> str:
        return f"ScriptedPeer(sessions={len(self.sessions)}, target={self.target})"

    @property
    def public_key(self) -> bytes:
        return self.static.public

    @property
    def private_key(self) -> bytes:
        """The static private key (for configuring a decoder in tests; never printed)."""
        return self.static.private

    def _handshake_state(self) -> Handshake:
        hs = Handshake(self.remote_public, self.preshared_key)
        hs.precompute(self.static)
        return hs

    # --- timestamps, indices, MACs -------------------------------------------------------------

    def next_timestamp(self) -> bytes:
        """A TAI64N label for now, bumped past the last one sent (so two in a row differ)."""
        ts = tai64n.stamp(self.wall_time_ns())
        if not tai64n.after(ts, self.last_timestamp):
            ts = tai64n.increment(self.last_timestamp)
        return ts

    def new_index(self) -> int:
        """A random u32 not used by any of our sessions or pending handshakes."""
        while True:
            i = secrets.randbits(32)
            if i not in self.sessions and i not in self.pending:
                return i

    def mac1(self, msg: bytes | bytearray) -> bytes:
        """mac1 over a whole message (keyed by the target's public key)."""
        return crypto.mac(self._mac1_key, bytes(msg[: len(msg) - 32]))

    def _finish_macs(
        self, msg: bytearray, mac1: bytes | None, mac2: bytes | None, cookie: bytes | None
    ) -> None:
        n = len(msg)
        m1 = self.mac1(msg) if mac1 is None else mac1
        msg[n - 32 : n - 16] = m1
        self.last_mac1 = m1
        use_cookie = self.cookie if cookie is None else cookie
        if mac2 is not None:
            msg[n - 16 :] = mac2
        elif use_cookie:
            msg[n - 16 :] = crypto.mac(use_cookie, bytes(msg[: n - 16]))
        else:
            msg[n - 16 :] = bytes(16)

    def _log_handshake(self, ephemeral_private: bytes) -> None:
        """The handshake's keys to the key log, if there is one (Wireshark's four)."""
        if self.keylog is not None:
            self.keylog.handshake(
                local_static_private=self.static.private,
                remote_static_public=self.remote_public,
                local_ephemeral_private=ephemeral_private,
                preshared_key=self.preshared_key,
            )

    @staticmethod
    def _header(msg: bytearray, msg_type: int | None, reserved: bytes | None) -> None:
        if msg_type is not None:
            msg[0] = msg_type
        if reserved is not None:
            if len(reserved) != 3:
                raise ValueError("reserved is 3 bytes")
            msg[1:4] = reserved

    # --- message 1 ------------------------------------------------------------------------------

    def build_initiation(
        self,
        *,
        sender_index: int | None = None,
        ephemeral_private: bytes | None = None,
        timestamp: bytes | None = None,
        msg_type: int | None = None,
        reserved: bytes | None = None,
        mac1: bytes | None = None,
        mac2: bytes | None = None,
        cookie: bytes | None = None,
        trailing: bytes = b"",
        truncate: int | None = None,
    ) -> bytes:
        """Message 1. Every argument overrides one field; the rest is computed as a real peer.

        ``timestamp`` defaults to :meth:`next_timestamp`; ``mac1``/``mac2`` default to the
        correct values (mac2 from ``cookie``, else from the last cookie received, else zeros),
        computed *after* ``msg_type``/``reserved`` are applied. ``trailing`` bytes are appended
        and ``truncate`` cuts the message, both after the MACs. The handshake is remembered
        under its sender index so :meth:`expect_response` can finish it.
        """
        index = self.new_index() if sender_index is None else sender_index
        eph = ephemeral_private or crypto.generate_private_key()
        ts = self.next_timestamp() if timestamp is None else timestamp
        hs = self._handshake_state()
        fields = hs.create_initiation(
            self.static, ephemeral_private=eph, timestamp=ts, sender_index=index
        )
        msg = messages.build_initiation(
            index, fields.ephemeral, fields.encrypted_static, fields.encrypted_timestamp
        )
        self._header(msg, msg_type, reserved)
        self._finish_macs(msg, mac1, mac2, cookie)
        self.pending[index] = hs
        if tai64n.after(ts, self.last_timestamp):
            self.last_timestamp = ts
        self._log_handshake(eph)
        return _cut(bytes(msg) + trailing, truncate)

    def junk_initiation(self) -> bytes:
        """148 random bytes shaped as message 1 with a *valid* mac1 and random sender index.

        A responder must spend a DH on it before finding it is garbage, which is what makes it
        useful to put the target under load (protocol doc §4.3 [interop]).
        """
        msg = bytearray(secrets.token_bytes(messages.MESSAGE_INITIATION_SIZE))
        msg[0:4] = b"\x01\0\0\0"
        msg[116:132] = crypto.mac(self._mac1_key, bytes(msg[:116]))
        msg[132:148] = bytes(16)
        return bytes(msg)

    def send_initiation(self, **overrides: object) -> bytes:
        """Build (see :meth:`build_initiation`, same keyword arguments) and send message 1."""
        data = self.build_initiation(**overrides)  # type: ignore[arg-type]
        self.send_raw(data)
        return data

    def consume_response(self, received: Received) -> Session:
        """Finish our handshake with a received message 2; the new session becomes current."""
        msg = received.message
        if not isinstance(msg, messages.Response):
            raise HarnessError("not a handshake response")
        hs = self.pending.get(msg.receiver_index)
        if hs is None:
            raise HarnessError(f"response for unknown index {msg.receiver_index:#x}")
        try:
            consume_response(
                hs,
                self.static,
                ResponseFields(msg.ephemeral, msg.encrypted_nothing),
                msg.sender_index,
            )
        except NoiseError as e:
            raise HarnessError(f"response does not open: {e}") from None
        del self.pending[msg.receiver_index]
        return self._install(derive_keys(hs))

    def expect_response(self, timeout: float = 1.0, *, sender_index: int | None = None) -> Session:
        """Wait for message 2 answering one of our initiations (or ``sender_index``'s)."""

        def wanted(r: Received) -> bool:
            m = r.message
            return (
                r.kind == KIND_RESPONSE
                and isinstance(m, messages.Response)
                and m.receiver_index in self.pending
                and (sender_index is None or m.receiver_index == sender_index)
            )

        return self.consume_response(self.expect(wanted, timeout, what="handshake response"))

    def handshake(self, timeout: float = 1.0, **overrides: object) -> Session:
        """``send_initiation(**overrides)`` then ``expect_response()``: a complete handshake."""
        data = self.send_initiation(**overrides)
        return self.expect_response(timeout, sender_index=int.from_bytes(data[4:8], "little"))

    # --- message 2 (responder role) -------------------------------------------------------------

    def _open_initiation(self, data: bytes) -> tuple[Handshake, bytes] | None:
        msg = messages.parse_initiation(data)
        if msg is None:
            return None
        if not crypto.equal(crypto.mac(self._remote_mac1_key_for_us, data[:116]), msg.mac1):
            return None
        found: list[Handshake] = []

        def lookup(public: bytes) -> Handshake | None:
            # A fresh state each time: the harness records, it does not enforce replay rules.
            if public != self.remote_public:
                return None
            found.append(self._handshake_state())
            return found[-1]

        fields = InitiationFields(msg.ephemeral, msg.encrypted_static, msg.encrypted_timestamp)
        try:
            hs = consume_initiation(self.static, fields, msg.sender_index, lookup, now=self.clock())
        except NoiseError:
            return None
        return hs, hs.last_timestamp

    def expect_initiation(self, timeout: float = 1.0) -> Received:
        """Wait for an initiation from the target that opens with our keys."""
        return self.expect(
            lambda r: r.kind == KIND_INITIATION and r.initiator_static is not None,
            timeout,
            what="handshake initiation",
        )

    def build_response(
        self,
        initiation: Received,
        *,
        sender_index: int | None = None,
        receiver_index: int | None = None,
        ephemeral_private: bytes | None = None,
        msg_type: int | None = None,
        reserved: bytes | None = None,
        mac1: bytes | None = None,
        mac2: bytes | None = None,
        cookie: bytes | None = None,
        trailing: bytes = b"",
        truncate: int | None = None,
    ) -> tuple[bytes, Session]:
        """Message 2 answering an opened initiation, and the session it creates.

        The session is installed at once (the harness may send on it before the target has
        confirmed anything, which a real responder would not: that is the point of a harness).
        Overrides work as in :meth:`build_initiation`.
        """
        if initiation.sender_index is None or initiation.sender_index not in self.opened:
            raise HarnessError("not an initiation this peer opened")
        hs = self.opened.pop(initiation.sender_index)
        index = self.new_index() if sender_index is None else sender_index
        eph = ephemeral_private or crypto.generate_private_key()
        fields = create_response(hs, ephemeral_private=eph, sender_index=index)
        msg = messages.build_response(
            index,
            hs.remote_index if receiver_index is None else receiver_index,
            fields.ephemeral,
            fields.encrypted_nothing,
        )
        self._header(msg, msg_type, reserved)
        self._finish_macs(msg, mac1, mac2, cookie)
        self._log_handshake(eph)
        session = self._install(derive_keys(hs))
        return _cut(bytes(msg) + trailing, truncate), session

    def send_response(self, initiation: Received, **overrides: object) -> Session:
        """Build (see :meth:`build_response`) and send message 2; returns the new session."""
        data, session = self.build_response(initiation, **overrides)  # type: ignore[arg-type]
        self.send_raw(data)
        return session

    def _install(self, keys: SessionKeys) -> Session:
        s = Session(
            keys.local_index,
            keys.remote_index,
            keys.send,
            keys.receive,
            keys.is_initiator,
            self.clock(),
        )
        self.sessions[s.local_index] = s
        self.session = s
        if self.keylog is not None:
            self.keylog.transport(s.remote_index, s.send_key)
            self.keylog.transport(s.local_index, s.receive_key)
        return s

    # --- cookies --------------------------------------------------------------------------------

    def consume_cookie_reply(self, received: Received, *, mac1: bytes | None = None) -> bytes:
        """Decrypt a cookie reply (AD = our last mac1, or ``mac1``); it keys mac2 from now on."""
        msg = received.message
        if not isinstance(msg, messages.CookieReply):
            raise HarnessError("not a cookie reply")
        ad = mac1 if mac1 is not None else self.last_mac1
        if ad is None:
            raise HarnessError("no mac1 sent that a cookie could answer")
        try:
            cookie = crypto.xaead_open(
                cookie_key(self.remote_public), msg.nonce, msg.encrypted_cookie, ad
            )
        except NoiseError as e:
            raise HarnessError(f"cookie reply does not decrypt: {e}") from None
        self.cookie = cookie
        return cookie

    # --- transport ------------------------------------------------------------------------------

    def build_transport(
        self,
        plaintext: bytes,
        *,
        session: Session | None = None,
        counter: int | None = None,
        padding: int | None = None,
        receiver_index: int | None = None,
        msg_type: int | None = None,
        reserved: bytes | None = None,
        tamper: bool = False,
        truncate: int | None = None,
    ) -> bytes:
        """A transport message carrying ``plaintext`` (an IP packet, or ``b""`` = keepalive).

        ``counter`` defaults to the session's next counter (which then advances; an explicit
        counter never moves it). ``padding`` is the number of zero bytes appended before
        encryption (default: the MTU rule of protocol doc §2). ``tamper`` flips a ciphertext
        bit so the tag fails.
        """
        s = session or self.session
        if s is None:
            raise HarnessError("no session: complete a handshake first")
        if counter is None:
            counter = s.send_counter
            s.send_counter += 1
        pad = messages.padding_size(len(plaintext), self.mtu) if padding is None else padding
        body = bytearray(
            messages.TRANSPORT_HEADER.pack(
                messages.MESSAGE_TRANSPORT,
                s.remote_index if receiver_index is None else receiver_index,
                counter,
            )
            + s.seal(counter, plaintext + bytes(pad))
        )
        self._header(body, msg_type, reserved)
        if tamper:
            body[16] ^= 1
        return _cut(bytes(body), truncate)

    def send_data(self, plaintext: bytes, **overrides: object) -> bytes:
        """Build (see :meth:`build_transport`) and send a transport message; returns it."""
        data = self.build_transport(plaintext, **overrides)  # type: ignore[arg-type]
        self.send_raw(data)
        return data

    def send_keepalive(self, **overrides: object) -> bytes:
        """Send an empty transport message (``counter=`` etc. as in :meth:`build_transport`)."""
        return self.send_data(b"", **overrides)

    # --- raw I/O and decoding -------------------------------------------------------------------

    def send_raw(self, data: bytes, addr: Address | None = None) -> None:
        """Send ``data`` as one datagram to ``addr`` (default: the target)."""
        dest = addr or self.target
        if self.transport is None or dest is None:
            raise HarnessError("no transport or target address")
        self.transport.send(data, dest)

    def decode(self, data: bytes, addr: Address, at: float | None = None) -> Received:
        """Decode one datagram with the keys this peer holds (see :class:`Received`)."""
        now = self.clock() if at is None else at
        t = messages.message_type(data)
        if t == messages.MESSAGE_INITIATION and len(data) == messages.MESSAGE_INITIATION_SIZE:
            init = messages.parse_initiation(data)
            opened = self._open_initiation(data)
            if opened is None:
                return Received(data, addr, KIND_INITIATION, now, init)
            hs, ts = opened
            assert init is not None
            self.opened[init.sender_index] = hs
            return Received(
                data,
                addr,
                KIND_INITIATION,
                now,
                init,
                initiator_static=hs.remote_static,
                timestamp=ts,
            )
        if t == messages.MESSAGE_RESPONSE:
            resp = messages.parse_response(data)
            if resp is not None:
                return Received(data, addr, KIND_RESPONSE, now, resp)
        if t == messages.MESSAGE_COOKIE_REPLY:
            cr = messages.parse_cookie_reply(data)
            if cr is not None:
                return Received(
                    data, addr, KIND_COOKIE_REPLY, now, cr, receiver_index=cr.receiver_index
                )
        header = messages.parse_transport_header(data)
        if header is None:
            return Received(data, addr, KIND_UNKNOWN, now)
        receiver, counter = header
        s = self.sessions.get(receiver)
        plaintext = s.open(counter, data[16:]) if s is not None else None
        if s is None or plaintext is None:
            return Received(data, addr, KIND_UNKNOWN, now, receiver_index=receiver, counter=counter)
        s.received_counters.append(counter)
        if not plaintext:
            return Received(
                data,
                addr,
                KIND_KEEPALIVE,
                now,
                receiver_index=receiver,
                counter=counter,
                session=s,
                plaintext=plaintext,
            )
        length = messages.ip_packet_length(plaintext)
        packet = plaintext[:length] if length is not None else None
        return Received(
            data,
            addr,
            KIND_DATA,
            now,
            receiver_index=receiver,
            counter=counter,
            session=s,
            plaintext=plaintext,
            packet=packet,
            ip=packets.summarize(packet) if packet is not None else None,
        )

    def recv(self, timeout: float = 1.0) -> Received | None:
        """The next datagram, decoded; ``None`` if nothing arrives within ``timeout`` seconds."""
        if self.transport is None:
            raise HarnessError("no transport")
        got = self.transport.recv(timeout)
        if got is None:
            return None
        return self.decode(got[0], got[1])

    def expect(
        self, predicate: Callable[[Received], bool], timeout: float = 1.0, *, what: str = "a reply"
    ) -> Received:
        """Receive until ``predicate`` holds (others dropped); else :class:`HarnessTimeout`."""
        deadline = self.clock() + timeout
        while True:
            r = self.recv(max(deadline - self.clock(), 0.0))  # polls once even at timeout 0
            if r is not None and predicate(r):
                return r
            if r is None and self.clock() >= deadline:
                raise HarnessTimeout(f"no {what} within {timeout:.1f}s")

    def expect_data(
        self, timeout: float = 1.0, predicate: Callable[[Received], bool] | None = None
    ) -> Received:
        """Wait for a decrypted transport message carrying an IP packet."""
        return self.expect(
            lambda r: r.kind == KIND_DATA and (predicate is None or predicate(r)),
            timeout,
            what="decrypted data",
        )

    def collect(
        self, duration: float, predicate: Callable[[Received], bool] | None = None
    ) -> list[Received]:
        """Everything (matching ``predicate``) that arrives during ``duration`` seconds."""
        out: list[Received] = []
        deadline = self.clock() + duration
        while (left := deadline - self.clock()) > 0:
            r = self.recv(left)
            if r is not None and (predicate is None or predicate(r)):
                out.append(r)
        return out
