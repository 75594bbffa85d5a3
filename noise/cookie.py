"""MAC1, MAC2 and cookie replies (whitepaper §5.4.4, wireguard-go ``cookie.go``).

``CookieChecker`` is the receiving side for our own static key: it checks mac1 on every
handshake message, checks mac2 while under load, and makes cookie replies. ``CookieGenerator``
is the sending side towards one peer: it stamps mac1/mac2 on our messages and consumes the
peer's cookie replies. Both work on whole message bytes: mac1 is the 16 bytes at ``len - 32``
and mac2 the last 16 bytes of messages 1 and 2.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from noise import crypto
from noise.errors import InvalidCookie

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
COOKIE_REFRESH_TIME = 120.0
COOKIE_SIZE = 16

Rng = Callable[[int], bytes]


def mac1_key(public: bytes) -> bytes:
    return crypto.hash_(LABEL_MAC1, public)


def cookie_key(public: bytes) -> bytes:
    return crypto.hash_(LABEL_COOKIE, public)


def source_bytes(ip_packed: bytes, port: int) -> bytes:
    """The address a cookie binds: IP then port in network order (the kernel's layout)."""
    return ip_packed + port.to_bytes(2, "big")


COOKIE_CACHE_SIZE = 4096  # sources whose cookie is kept until the secret changes


class CookieChecker:
    """Receiver side of mac1/mac2 for our own static public key.

    The cookie of a source is a MAC of its address under the secret, the same for the
    secret's 120 s lifetime: it is computed once per source and secret and cached (bounded;
    a full cache starts over), which a flood from a few sources asks for many times a second.
    """

    __slots__ = ("_cookie_key", "_cookies", "_mac1_key", "_rng", "_secret", "_secret_time")

    def __init__(self, local_public: bytes, *, rng: Rng = secrets.token_bytes) -> None:
        self._mac1_key = mac1_key(local_public)
        self._cookie_key = cookie_key(local_public)
        self._rng = rng
        self._secret = b""
        self._secret_time: float | None = None
        self._cookies: dict[bytes, bytes] = {}

    def check_mac1(self, msg: bytes | memoryview) -> bool:
        n = len(msg)
        return crypto.equal(crypto.mac(self._mac1_key, msg[: n - 32]), msg[n - 32 : n - 16])

    def _cookie(self, source: bytes) -> bytes:
        cookie = self._cookies.get(source)
        if cookie is None:
            if len(self._cookies) >= COOKIE_CACHE_SIZE:
                self._cookies.clear()
            cookie = self._cookies[source] = crypto.mac(self._secret, source)
        return cookie

    def check_mac2(self, msg: bytes | memoryview, source: bytes, *, now: float) -> bool:
        """True when mac2 is the MAC of a cookie we issued to ``source`` < 120 s ago."""
        if self._secret_time is None or now - self._secret_time > COOKIE_REFRESH_TIME:
            return False
        n = len(msg)
        expected = crypto.mac(self._cookie(source), msg[: n - 16])
        return crypto.equal(expected, msg[n - 16 :])

    def create_reply(
        self, msg: bytes | memoryview, source: bytes, *, now: float
    ) -> tuple[bytes, bytes]:
        """Return ``(nonce, encrypted_cookie)`` for a cookie reply to ``msg`` from ``source``.

        The secret is regenerated lazily once it is older than COOKIE_REFRESH_TIME.
        """
        if self._secret_time is None or now - self._secret_time > COOKIE_REFRESH_TIME:
            self._secret = self._rng(32)
            self._secret_time = now
            self._cookies.clear()
        n = len(msg)
        mac1 = bytes(msg[n - 32 : n - 16])
        nonce = self._rng(crypto.XNONCE_SIZE)
        encrypted = crypto.xaead_seal(self._cookie_key, nonce, self._cookie(source), mac1)
        return nonce, encrypted

    def set_secret(self, secret: bytes, *, now: float) -> None:
        """Install a fixed secret (test vectors and deterministic simulations)."""
        self._secret = secret
        self._secret_time = now
        self._cookies.clear()


class CookieGenerator:
    """Sender side towards one peer: stamps mac1/mac2, consumes that peer's cookie replies."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_time", "_last_mac1", "_mac1_key")

    def __init__(self, remote_public: bytes) -> None:
        self._mac1_key = mac1_key(remote_public)
        self._cookie_key = cookie_key(remote_public)
        self._cookie = b""
        self._cookie_time: float | None = None
        self._last_mac1: bytes | None = None

    def add_macs(self, msg: bytearray, *, now: float) -> None:
        """Write mac1 and (with a fresh cookie) mac2 into the last 32 bytes of ``msg``."""
        n = len(msg)
        mac1 = crypto.mac(self._mac1_key, memoryview(msg)[: n - 32])
        msg[n - 32 : n - 16] = mac1
        self._last_mac1 = mac1
        if self._cookie_time is not None and now - self._cookie_time < COOKIE_REFRESH_TIME:
            msg[n - 16 :] = crypto.mac(self._cookie, memoryview(msg)[: n - 16])
        else:
            msg[n - 16 :] = bytes(16)

    def consume_reply(self, nonce: bytes, encrypted_cookie: bytes, *, now: float) -> None:
        """Decrypt a cookie reply answering our last mac1; raises ``InvalidCookie``."""
        if self._last_mac1 is None:
            raise InvalidCookie("cookie reply without a message of ours to answer")
        try:
            cookie = crypto.xaead_open(self._cookie_key, nonce, encrypted_cookie, self._last_mac1)
        except Exception:
            raise InvalidCookie("cookie reply does not decrypt") from None
        self._cookie = cookie
        self._cookie_time = now
        self._last_mac1 = None  # one cookie per mac1 sent (kernel behaviour)

    @property
    def has_cookie(self) -> bool:
        return self._cookie_time is not None
