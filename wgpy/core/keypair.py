"""Transport keypairs (wireguard-go ``keypair.go``): the keys of one session, both directions."""

from __future__ import annotations

from dataclasses import dataclass

from noise.crypto import TransportCipher
from noise.handshake import SessionKeys
from wgpy.core.replay import ReplayFilter


@dataclass(frozen=True, slots=True, repr=False)
class SessionSecrets:
    """Everything a key log needs of one new session, handed to ``Device.key_log_sink``.

    The four keys of Wireshark's WireGuard key log (local static private, remote static public,
    local ephemeral private, preshared — all zeros when none is set), and both transport keys
    with the receiver index each one opens: ``receive_key`` decrypts transport messages whose
    receiver index is ``local_index``, ``send_key`` those whose receiver index is
    ``remote_index``. ``repr`` shows no key.
    """

    local_static_private: bytes
    remote_static_public: bytes
    local_ephemeral_private: bytes
    preshared_key: bytes
    is_initiator: bool
    local_index: int
    remote_index: int
    send_key: bytes
    receive_key: bytes

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return f"SessionSecrets({role}, local={self.local_index:#x}, keys hidden)"


class Keypair:
    """One session: send/receive ciphers, the send counter and the receive replay window.

    ``created`` is the monotonic time the keys were derived; ``is_initiator`` says whether we
    started the handshake (only the initiator rekeys on time).
    """

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "receive",
        "remote_index",
        "replay",
        "send",
        "send_counter",
    )

    def __init__(self, keys: SessionKeys, *, now: float) -> None:
        self.send = TransportCipher(keys.send)
        self.receive = TransportCipher(keys.receive)
        self.send_counter = 0
        self.replay = ReplayFilter()
        self.created = now
        self.is_initiator = keys.is_initiator
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return f"Keypair({role}, local={self.local_index:#x}, sent={self.send_counter})"
