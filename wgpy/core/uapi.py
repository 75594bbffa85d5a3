"""The cross-platform UAPI text protocol, sans-IO (protocol doc §8.2–8.4).

Three pieces, none of which touches a socket:

* :class:`RequestReader` turns the bytes of one connection into requests
  (``RawRequest("get", [])`` / ``RawRequest("set", lines)``) or a :class:`RequestFailed`.
* :func:`parse_set` validates a whole ``set`` request into a :class:`SetRequest` *before*
  anything is applied. wireguard-go applies lines one by one and stops at the first error;
  we reject the request as a whole instead, so a failed ``set`` leaves the device untouched.
  The per-line semantics (which keys exist where, which errno) follow wireguard-go
  ``device/uapi.go``.
* :func:`format_get` writes wireguard-go's exact ``get`` reply from a :class:`DeviceSnapshot`;
  :func:`parse_get` reads one back (for clients and tests), :func:`format_set` writes a request.

Keys travel as 64 lowercase hex digits. Error messages never contain key material.
"""

from __future__ import annotations

import enum
import errno as _errno
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

from wgpy.core.errors import UapiError

KEY_SIZE: Final = 32
ZERO_KEY: Final = bytes(KEY_SIZE)
MAX_REQUEST_SIZE: Final = 1 << 20  # bytes per request, including the op line
PROTOCOL_VERSION: Final = 1

# wireguard-go ipc/uapi_unix.go: IpcErrorUnknown is -55 (ENOANO); the others are errnos.
EIO: Final = _errno.EIO
EPROTO: Final = _errno.EPROTO
EINVAL: Final = _errno.EINVAL
EADDRINUSE: Final = _errno.EADDRINUSE
EUNKNOWN: Final = 55
EMSGSIZE: Final = _errno.EMSGSIZE

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
AllowedIPOpKind = Literal["replace", "add", "remove"]
AllowedIPOp = tuple[AllowedIPOpKind, Network | None]

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_UINT = re.compile(r"[0-9]+")


class RemoveKey(enum.Enum):
    """Marker for ``private_key=<64 zeros>``: the device drops its private key."""

    REMOVE = "remove"


REMOVE_KEY: Final = RemoveKey.REMOVE


@dataclass(slots=True)
class PeerUpdate:
    """One peer section of a ``set`` request (from a ``public_key=`` line to the next).

    Field values are what the request asked for; ``None`` means "leave unchanged".

    * ``remove``: remove the peer once the operations recorded before ``remove=true`` are
      done; lines after it are validated but ignored (wireguard-go switches to a dummy peer).
    * ``update_only``: apply the section only if the peer already exists when it starts.
    * ``preshared_key``: 32 bytes; all zeros means "no PSK" (which is also what Noise mixes
      in when there is none), so it is passed on as given.
    * ``endpoint``: ``(address, port)``; the address is normalised (IPv6 without brackets,
      ``%zone`` kept).
    * ``allowed_ip_ops``: in request order; ``("replace", None)`` clears the peer's
      AllowedIPs, ``("add", net)`` / ``("remove", net)`` carry a masked network.
    * The applier must also skip a section whose ``public_key`` equals the device's own
      (after this request's ``private_key``), as wireguard-go does.
    """

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: tuple[str, int] | None = None
    persistent_keepalive_interval: int | None = None
    allowed_ip_ops: list[AllowedIPOp] = field(default_factory=list)
    protocol_version: int | None = None


@dataclass(slots=True)
class SetRequest:
    """A fully validated ``set=1`` request.

    ``private_key`` is ``None`` (unchanged), 32 bytes (new key; clamp on store) or
    :data:`REMOVE_KEY` (all zeros were sent: forget the key). ``replace_peers`` removes all
    peers before the peer sections are applied.
    """

    private_key: bytes | Literal[RemoveKey.REMOVE] | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerUpdate] = field(default_factory=list)


@dataclass(slots=True)
class PeerSnapshot:
    """What ``get`` reports for one peer. ``endpoint`` is ``ip:port`` / ``[v6]:port``."""

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: str | None = None
    last_handshake_time_sec: int = 0
    last_handshake_time_nsec: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive_interval: int = 0
    allowed_ips: list[Network] = field(default_factory=list)


@dataclass(slots=True)
class DeviceSnapshot:
    """What ``get`` reports for the device; zero / ``None`` values are omitted on the wire."""

    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerSnapshot] = field(default_factory=list)


# --- value parsers (wireguard-go semantics) -----------------------------------------------------


def _err(lineno: int, message: str, code: int = EINVAL) -> UapiError:
    return UapiError(f"line {lineno}: {message}", code)


def _show(value: str) -> str:
    """A non-secret value for an error message, bounded in length."""
    return repr(value if len(value) <= 64 else value[:61] + "...")


def _key(value: str, what: str, lineno: int) -> bytes:
    # Not keys.parse_hex_key alone: bytes.fromhex would also accept embedded whitespace.
    if not _HEX_KEY.fullmatch(value):
        raise _err(lineno, f"{what}: 64 hex digits expected")
    return bytes.fromhex(value)


def parse_uint(value: str, bits: int) -> int | None:
    """``strconv.ParseUint(value, 10, bits)``: ASCII digits only (leading zeros allowed, as
    Go takes them), no sign, in range; None otherwise. Never ``int()`` of an unbounded
    string: Python refuses more than 4300 digits with a ValueError of its own."""
    if not _UINT.fullmatch(value):
        return None
    digits = value.lstrip("0") or "0"
    if len(digits) > 20:  # 2**64 has 20 digits
        return None
    n = int(digits)
    return n if n < 1 << bits else None


def _uint(value: str, bits: int, what: str, lineno: int) -> int:
    n = parse_uint(value, bits)
    if n is None:
        raise _err(lineno, f"invalid {what} {_show(value)}")
    return n


def _true(value: str, key: str, lineno: int) -> bool:
    if value != "true":
        raise _err(lineno, f"invalid value for {key}: {_show(value)} (only 'true')")
    return True


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if ":" in text:
        return ipaddress.IPv6Address(text)
    return ipaddress.IPv4Address(text)


def format_ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as Go's ``netip.Addr.String``: IPv4-mapped IPv6 keeps the dotted tail."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        zone = f"%{addr.scope_id}" if addr.scope_id else ""
        return f"::ffff:{addr.ipv4_mapped}{zone}"
    return str(addr)


def format_network(net: Network) -> str:
    """A prefix as ``netip.Prefix.String`` (``10.1.0.0/16``, ``::ffff:10.0.0.0/104``)."""
    return f"{format_ip(net.network_address)}/{net.prefixlen}"


def parse_endpoint(value: str) -> tuple[str, int]:
    """Parse ``1.2.3.4:51820`` or ``[2001:db8::1%eth0]:51820`` (``netip.ParseAddrPort``).

    Raises ``ValueError``. IPv6 needs brackets, IPv4 must not have them; literals only.
    """
    if value.startswith("["):
        close = value.find("]:")
        if close < 0:
            raise ValueError("expected [IPv6]:port")
        host, port = value[1:close], value[close + 2 :]
        addr = _ip(host)
        if addr.version != 6:
            raise ValueError("square brackets can only be used with IPv6 addresses")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError("missing port")
        addr = _ip(host)
        if addr.version != 4:
            raise ValueError("IPv6 addresses must be surrounded by square brackets")
    number = parse_uint(port, 16)
    if number is None:
        raise ValueError("invalid port")
    return format_ip(addr), number


def format_endpoint(host: str, port: int) -> str:
    """``ip:port``, or ``[ipv6]:port`` when the address contains a colon."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_prefix(value: str) -> Network:
    """Parse ``addr/bits`` as ``netip.ParsePrefix`` and mask the host bits.

    Raises ``ValueError``: the ``/bits`` part is required, decimal, without sign or leading
    zeros; no zone; no netmask notation.
    """
    addr_text, sep, bits = value.rpartition("/")
    if not sep:
        raise ValueError("no '/'")
    if not _UINT.fullmatch(bits) or (len(bits) > 1 and bits[0] == "0"):
        raise ValueError("bad bits after slash")
    if "%" in addr_text:
        raise ValueError("IPv6 zones cannot be present in a prefix")
    addr = _ip(addr_text)
    plen = int(bits)
    if plen > addr.max_prefixlen:
        raise ValueError("prefix length out of range")
    return ipaddress.ip_network((addr, plen), strict=False)


# --- set ---------------------------------------------------------------------------------------

_DEVICE_KEYS = frozenset({"private_key", "listen_port", "fwmark", "replace_peers"})


def parse_set(lines: Iterable[str]) -> SetRequest:
    """Validate the key=value lines of one ``set`` request (without ``set=1`` and the blank
    line) and return what they ask for. Raises :class:`UapiError` on the first bad line:
    ``EPROTO`` for a line without ``=``, ``EINVAL`` for an unknown key or a bad value.
    Line numbers in messages count from 1 at the first key line.
    """
    req = SetRequest()
    peer: PeerUpdate | None = None
    ignoring = False  # after remove=true the rest of the section is parsed but not recorded
    for lineno, line in enumerate(lines, 1):
        if line == "":
            raise _err(lineno, "empty line inside a request", EPROTO)
        key, sep, value = line.partition("=")
        if not sep:
            raise _err(lineno, "line without '='", EPROTO)
        if key == "public_key":
            peer = PeerUpdate(public_key=_key(value, "public_key", lineno))
            req.peers.append(peer)
            ignoring = False
            continue
        if peer is None:
            _device_line(req, key, value, lineno)
            continue
        update = PeerUpdate(public_key=peer.public_key) if ignoring else peer
        _peer_line(update, key, value, lineno)
        if key == "remove":
            ignoring = True
    return req


def _device_line(req: SetRequest, key: str, value: str, lineno: int) -> None:
    if key == "private_key":
        k = _key(value, "private_key", lineno)
        req.private_key = REMOVE_KEY if k == ZERO_KEY else k
    elif key == "listen_port":
        req.listen_port = _uint(value, 16, "listen_port", lineno)
    elif key == "fwmark":
        req.fwmark = _uint(value, 32, "fwmark", lineno)
    elif key == "replace_peers":
        req.replace_peers = _true(value, key, lineno)
    else:
        raise _err(lineno, f"invalid UAPI device key: {_show(key)}")


def _peer_line(peer: PeerUpdate, key: str, value: str, lineno: int) -> None:
    if key == "update_only":
        peer.update_only = _true(value, key, lineno)
    elif key == "remove":
        peer.remove = _true(value, key, lineno)
    elif key == "preshared_key":
        peer.preshared_key = _key(value, "preshared_key", lineno)
    elif key == "endpoint":
        try:
            peer.endpoint = parse_endpoint(value)
        except ValueError as exc:
            raise _err(lineno, f"invalid endpoint {_show(value)}: {exc}") from None
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive_interval = _uint(value, 16, key, lineno)
    elif key == "replace_allowed_ips":
        _true(value, key, lineno)
        peer.allowed_ip_ops.append(("replace", None))
    elif key == "allowed_ip":
        op: AllowedIPOpKind = "add"
        text = value
        if text.startswith("-"):
            op, text = "remove", text[1:]
        try:
            net = parse_prefix(text)
        except ValueError as exc:
            raise _err(lineno, f"invalid allowed_ip {_show(value)}: {exc}") from None
        peer.allowed_ip_ops.append((op, net))
    elif key == "protocol_version":
        if value != "1":
            raise _err(lineno, f"invalid protocol_version {_show(value)} (only 1)")
        peer.protocol_version = PROTOCOL_VERSION
    elif key in _DEVICE_KEYS:
        raise _err(lineno, f"invalid UAPI peer key: {_show(key)} (device keys come first)")
    else:
        raise _err(lineno, f"invalid UAPI peer key: {_show(key)}")


def format_set(req: SetRequest) -> str:
    """The ``set=1`` request text (with its terminating blank line) for ``req``."""
    out = ["set=1"]
    if req.private_key is REMOVE_KEY:
        out.append(f"private_key={ZERO_KEY.hex()}")
    elif req.private_key is not None:
        out.append(f"private_key={req.private_key.hex()}")
    if req.listen_port is not None:
        out.append(f"listen_port={req.listen_port}")
    if req.fwmark is not None:
        out.append(f"fwmark={req.fwmark}")
    if req.replace_peers:
        out.append("replace_peers=true")
    for p in req.peers:
        out.append(f"public_key={p.public_key.hex()}")
        if p.update_only:
            out.append("update_only=true")
        if p.protocol_version is not None:
            out.append(f"protocol_version={p.protocol_version}")
        if p.preshared_key is not None:
            out.append(f"preshared_key={p.preshared_key.hex()}")
        if p.endpoint is not None:
            out.append(f"endpoint={format_endpoint(*p.endpoint)}")
        if p.persistent_keepalive_interval is not None:
            out.append(f"persistent_keepalive_interval={p.persistent_keepalive_interval}")
        for op, net in p.allowed_ip_ops:
            if op == "replace":
                out.append("replace_allowed_ips=true")
            elif net is not None:
                sign = "-" if op == "remove" else ""
                out.append(f"allowed_ip={sign}{format_network(net)}")
        if p.remove:
            out.append("remove=true")
    return "\n".join(out) + "\n\n"


# --- get ---------------------------------------------------------------------------------------


def format_stats(counters: dict[str, int]) -> str:
    """The reply to the wgpy extension ``stats=1``: ``name=value`` lines, then ``errno=0``."""
    body = "".join(f"{name}={value}\n" for name, value in sorted(counters.items()))
    return body + format_errno(0)


def parse_stats(text: str) -> dict[str, int]:
    """Read a ``stats=1`` reply; raises UapiError on a non-zero errno."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line:
            continue
        key, _, value = line.partition("=")
        if key == "errno":
            if value != "0":
                raise UapiError(f"stats failed: errno={value}", abs(int(value or "0")) or EIO)
            return out
        out[key] = int(value)
    raise UapiError("stats reply without errno line", EPROTO)


def format_errno(errno: int) -> str:
    """The status trailer: ``errno=0`` on success, else the negated errno, then a blank line."""
    return f"errno={-abs(errno)}\n\n" if errno else "errno=0\n\n"


def format_get(snapshot: DeviceSnapshot) -> str:
    """wireguard-go's ``get=1`` reply for ``snapshot``, including ``errno=0`` and the blank
    line. Peers come out in the snapshot's order; the allowed IPs are printed masked.
    """
    out: list[str] = []
    if snapshot.private_key is not None and snapshot.private_key != ZERO_KEY:
        out.append(f"private_key={snapshot.private_key.hex()}")
    if snapshot.listen_port:
        out.append(f"listen_port={snapshot.listen_port}")
    if snapshot.fwmark:
        out.append(f"fwmark={snapshot.fwmark}")
    for p in snapshot.peers:
        out.append(f"public_key={p.public_key.hex()}")
        out.append(f"preshared_key={(p.preshared_key or ZERO_KEY).hex()}")
        out.append(f"protocol_version={PROTOCOL_VERSION}")
        if p.endpoint is not None:
            out.append(f"endpoint={p.endpoint}")
        out.append(f"last_handshake_time_sec={p.last_handshake_time_sec}")
        out.append(f"last_handshake_time_nsec={p.last_handshake_time_nsec}")
        out.append(f"tx_bytes={p.tx_bytes}")
        out.append(f"rx_bytes={p.rx_bytes}")
        out.append(f"persistent_keepalive_interval={p.persistent_keepalive_interval}")
        out.extend(f"allowed_ip={format_network(net)}" for net in p.allowed_ips)
    out.append("")
    return "\n".join(out) + format_errno(0)


_PEER_INTS = frozenset(
    {
        "last_handshake_time_sec",
        "last_handshake_time_nsec",
        "tx_bytes",
        "rx_bytes",
        "persistent_keepalive_interval",
    }
)


def parse_get(text: str) -> DeviceSnapshot:
    """Read a ``get`` reply (as :func:`format_get` or wireguard-go writes it).

    Raises :class:`UapiError` with the reply's errno if it is non-zero, ``EPROTO`` if the
    text is malformed. Unknown keys are ignored (newer servers may add some).
    """
    snap = DeviceSnapshot()
    peer: PeerSnapshot | None = None
    lines = text.split("\n")
    for lineno, line in enumerate(lines, 1):
        key, sep, value = line.partition("=")
        if not sep:
            raise _err(lineno, "line without '='", EPROTO)
        try:
            if key == "errno":
                code = int(value)
                if code:
                    raise UapiError(f"get failed with errno={code}", abs(code))
                if lines[lineno:] != ["", ""]:
                    raise _err(lineno, "expected a blank line after errno", EPROTO)
                return snap
            if key == "public_key":
                peer = PeerSnapshot(public_key=_key(value, key, lineno))
                snap.peers.append(peer)
            elif peer is None:
                if key == "private_key":
                    snap.private_key = _key(value, key, lineno)
                elif key == "listen_port":
                    snap.listen_port = int(value)
                elif key == "fwmark":
                    snap.fwmark = int(value)
            elif key == "preshared_key":
                psk = _key(value, key, lineno)
                peer.preshared_key = None if psk == ZERO_KEY else psk
            elif key == "endpoint":
                peer.endpoint = value
            elif key in _PEER_INTS:
                setattr(peer, key, int(value))
            elif key == "allowed_ip":
                peer.allowed_ips.append(parse_prefix(value))
        except ValueError as exc:
            if isinstance(exc, UapiError):
                raise
            raise _err(lineno, f"bad value for {key}", EPROTO) from None
    raise UapiError("get reply without errno line", EPROTO)


# --- the connection stream ---------------------------------------------------------------------


class RawRequest(NamedTuple):
    """One complete request off the wire: ``("get", [])`` or ``("set", lines)``."""

    op: Literal["get", "set", "stats"]
    lines: list[str]


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """The stream broke. Send :func:`format_errno` of ``errno`` if ``reply``, then close.

    ``reply`` is False for an unknown operation line, on which wireguard-go closes the
    connection without an answer.
    """

    errno: int
    message: str
    reply: bool = True


class RequestReader:
    """Splits one connection's bytes into requests (several may share a connection).

    Feed it whatever ``recv`` returned; it returns the requests completed so far. After a
    :class:`RequestFailed` the reader is :attr:`closed` and ignores further input. Lines are
    decoded as Latin-1 (byte-transparent, like Go strings); bad bytes then fail validation.
    A connection that sends nothing (``wg``'s probe) simply yields nothing.
    """

    def __init__(self, max_request_size: int = MAX_REQUEST_SIZE) -> None:
        self._max = max_request_size
        self._buf = bytearray()
        self._state: Literal["op", "get", "set", "stats"] = "op"
        self._lines: list[str] = []
        self._size = 0  # bytes of the current request consumed so far
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle(self) -> bool:
        """True between requests (nothing partial buffered): EOF here is a clean close."""
        return self._state == "op" and not self._buf

    def feed(self, data: bytes) -> list[RawRequest | RequestFailed]:
        if self._closed:
            return []
        self._buf += data
        out: list[RawRequest | RequestFailed] = []
        while not self._closed:
            item = self._step()
            if item is None:
                break
            out.append(item)
        return out

    def _fail(self, code: int, message: str, *, reply: bool = True) -> RequestFailed:
        self._closed = True
        self._buf.clear()
        self._lines = []
        return RequestFailed(code, message, reply)

    def _step(self) -> RawRequest | RequestFailed | None:
        """Consume at most one request's worth; None when more bytes are needed."""
        while True:
            if self._state in ("get", "stats"):
                op: Literal["get", "stats"] = "get" if self._state == "get" else "stats"
                if not self._buf:
                    return None
                nxt = self._buf[0]
                del self._buf[0]
                self._state = "op"
                self._size = 0
                if nxt != 0x0A:
                    return self._fail(EINVAL, f"trailing character in UAPI {op}")
                return RawRequest(op, [])
            nl = self._buf.find(b"\n")
            if nl < 0:
                if self._size + len(self._buf) > self._max:
                    return self._fail(EMSGSIZE, "UAPI request too large")
                return None
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._size += nl + 1
            if self._size > self._max:
                return self._fail(EMSGSIZE, "UAPI request too large")
            if self._state == "op":
                if line == b"get=1":
                    self._state = "get"
                elif line == b"stats=1":  # a wgpy extension: drop counters by reason
                    self._state = "stats"
                elif line == b"set=1":
                    self._state = "set"
                else:
                    return self._fail(EINVAL, "invalid UAPI operation", reply=False)
                continue
            # state "set"
            if line:
                self._lines.append(line.decode("latin-1"))
                continue
            lines, self._lines = self._lines, []
            self._state = "op"
            self._size = 0
            return RawRequest("set", lines)
