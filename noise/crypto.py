"""The primitives of Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses them.

This is the only module that imports ``hashlib``, ``hmac`` and ``cryptography``; PyNaCl is used
for XChaCha20-Poly1305 only (cookie replies), because ``cryptography`` lacks it.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import secrets
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from noise.errors import DecryptionError, LowOrderPoint

KEY_SIZE = 32
TAG_SIZE = 16
MAC_SIZE = 16
HASH_SIZE = 32
XNONCE_SIZE = 24
ZERO_KEY = bytes(KEY_SIZE)

_NONCE = struct.Struct("<4xQ")
pack_nonce = _NONCE.pack  # nonce(), as one C call: for the fast path
AuthenticationFailed = InvalidTag  # raised by TransportCipher.decrypt_into
_blake2s = hashlib.blake2s


def hash_(*parts: bytes) -> bytes:
    """HASH: unkeyed BLAKE2s-256 over the concatenation of ``parts``."""
    h = _blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """MAC: keyed BLAKE2s with a 16-byte digest (BLAKE2's key parameter, not HMAC)."""
    return _blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s-256."""
    return _hmac.new(key, data, _blake2s).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    prk = hmac(key, data)
    return hmac(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    prk = hmac(key, data)
    t1 = hmac(prk, b"\x01")
    t2 = hmac(prk, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    prk = hmac(key, data)
    t1 = hmac(prk, b"\x01")
    t2 = hmac(prk, t1 + b"\x02")
    t3 = hmac(prk, t2 + b"\x03")
    return t1, t2, t3


def nonce(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce: four zero bytes and the LE u64 counter."""
    return _NONCE.pack(counter)


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, ad)
    except InvalidTag:
        raise DecryptionError("AEAD tag mismatch") from None


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    # PyNaCl is imported here, on first use: cookie replies are rare, and the key tools
    # (genkey/pubkey) should not need it
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    out: bytes = crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce24, key)
    return out


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
    from nacl.exceptions import CryptoError

    try:
        out: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce24, key)
    except CryptoError:
        raise DecryptionError("XAEAD tag mismatch") from None
    return out


def clamp(key: bytes) -> bytes:
    b = bytearray(key)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key() -> bytes:
    """DH_GENERATE: 32 random bytes, clamped."""
    return clamp(secrets.token_bytes(KEY_SIZE))


def private_key(private: bytes) -> X25519PrivateKey:
    """The key object of ``private``. Making one costs a scalar multiplication (OpenSSL derives
    the public key at once), as much as a DH: keep it when the key is used more than once
    (the static key, an ephemeral's public key and its two DHs)."""
    return X25519PrivateKey.from_private_bytes(private)


def public_key(private: bytes | X25519PrivateKey) -> bytes:
    key = private if isinstance(private, X25519PrivateKey) else private_key(private)
    return key.public_key().public_bytes_raw()


def dh(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """X25519. A low-order public key (all-zero shared secret) raises ``LowOrderPoint``."""
    key = private if isinstance(private, X25519PrivateKey) else private_key(private)
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise LowOrderPoint("low-order public key") from None
    if not any(shared):
        raise LowOrderPoint("all-zero shared secret")
    return shared


def equal(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bool:
    """Constant-time comparison for MACs, tags and keys."""
    return _hmac.compare_digest(a, b)


class TransportCipher:
    """One ChaCha20-Poly1305 key of a transport session, its AEAD object built once.

    Reusing the object saves ~1.6 µs per packet (wireguard-protocol.md §12.2).

    ``encrypt_into`` / ``decrypt_into`` are the AEAD's own methods (``pack_nonce(counter)``,
    data, ``None``, out), for the fast path: one C call per packet, no Python frame between.
    ``decrypt_into`` raises :data:`AuthenticationFailed` on a bad tag.
    """

    __slots__ = ("_decrypt", "_encrypt", "compiled", "decrypt_into", "encrypt_into", "key")

    def __init__(self, key: bytes) -> None:
        c = ChaCha20Poly1305(key)
        self.key = key  # for the fast path's compiled AEAD (never shown: see __repr__)
        self.compiled: Any = None  # that AEAD, made by the fast path on first use
        self._encrypt = c.encrypt
        self._decrypt = c.decrypt
        self.encrypt_into = c.encrypt_into
        self.decrypt_into = c.decrypt_into

    def seal(self, counter: int, plaintext: bytes | bytearray | memoryview) -> bytes:
        return self._encrypt(_NONCE.pack(counter), plaintext, None)

    def seal_into(
        self, counter: int, plaintext: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> None:
        """Encrypt into ``out`` (exactly ``len(plaintext) + 16`` bytes)."""
        self.encrypt_into(_NONCE.pack(counter), plaintext, None, out)

    def open(self, counter: int, ciphertext: bytes | bytearray | memoryview) -> bytes | None:
        """Decrypt, or ``None`` when the tag does not verify."""
        try:
            return self._decrypt(_NONCE.pack(counter), ciphertext, None)
        except InvalidTag:
            return None

    def open_into(
        self, counter: int, ciphertext: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> bool:
        """Decrypt into ``out`` (exactly ``len(ciphertext) - 16`` bytes); False on a bad tag."""
        try:
            self.decrypt_into(_NONCE.pack(counter), ciphertext, None, out)
        except InvalidTag:
            return False
        return True

    def __repr__(self) -> str:
        return "TransportCipher(key=(hidden))"
