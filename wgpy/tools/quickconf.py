"""wg-quick configuration files: parse, validate, and turn into what ``wg setconf`` reads.

The accepted syntax is the union of ``wg`` (wireguard-tools ``config.c``) and wg-quick
(``linux.bash`` ``parse_options``): ``[Interface]`` / ``[Peer]`` sections, ``Key = Value``
lines, keys and section names case-insensitive, ``#`` starts a comment, blank lines ignored.
As in ``wg``, whitespace inside the value of a ``wg`` key is ignored and an empty value is an
error; the hook commands (PreUp, PostUp, ...) keep their text and are stored, never run.
Endpoint host names are kept as names: nothing is resolved here.

Every error is a :class:`ConfigError` starting with ``line N:``; key values never appear in a
message (a PrivateKey may be on the line).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from wgpy.core.errors import ConfigError
from wgpy.core.keys import parse_base64_key, to_base64
from wgpy.core.uapi import AllowedIPOp, PeerUpdate, SetRequest, format_network, parse_endpoint

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Keys wg-quick consumes itself and `wg-quick strip` removes (lowercase).
WG_QUICK_KEYS = frozenset(
    {"address", "dns", "mtu", "table", "preup", "postup", "predown", "postdown", "saveconfig"}
)
_INTERFACE_KEYS = WG_QUICK_KEYS | {"privatekey", "listenport", "fwmark"}
_PEER_KEYS = frozenset(
    {"publickey", "presharedkey", "endpoint", "allowedips", "persistentkeepalive"}
)
_TABLE = re.compile(r"[A-Za-z0-9_.-]+")
_DIGITS = re.compile(r"[0-9]+")
_KEY_NAME = re.compile(r"[A-Za-z_-]{1,24}")
_DNS_SERVER = re.compile(r"^[0-9.]+$|:")  # wg-quick's test for "is an IP, not a search domain"


@dataclass(slots=True)
class PeerConfig:
    """One ``[Peer]`` section. ``line`` is the line number of its header."""

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: tuple[str, int] | None = None  # (host or address, port); IPv6 without brackets
    allowed_ips: list[Network] = field(default_factory=list)  # masked
    persistent_keepalive: int | None = None  # 0 = off
    line: int = field(default=0, compare=False)


@dataclass(slots=True)
class WgQuickConfig:
    """A parsed wg-quick file. ``None`` means "not given" (wg and wg-quick defaults apply)."""

    private_key: bytes = field(repr=False)
    listen_port: int | None = None
    fwmark: int | None = None  # 0 = off
    addresses: list[Interface] = field(default_factory=list)
    mtu: int | None = None
    dns: list[Address] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    table: str | None = None  # "off", "auto", a number or a name from rt_tables
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False
    peers: list[PeerConfig] = field(default_factory=list)


# --- value parsers -------------------------------------------------------------------------------


class _LineError(Exception):
    """A value problem; the caller adds the line number."""


def _uint(value: str, limit: int, what: str) -> int:
    if not _DIGITS.fullmatch(value) or int(value) > limit:
        raise _LineError(f"bad {what} (0..{limit} expected)")
    return int(value)


def _port(value: str) -> int:
    return _uint(value, 65535, "port")


def _fwmark(value: str) -> int:
    # wg: "off" or a u32, hexadecimal with 0x, else decimal (so 010 is ten).
    if value.lower() == "off":
        return 0
    if value[:2].lower() == "0x" and re.fullmatch(r"[0-9a-fA-F]+", value[2:]):
        mark = int(value[2:], 16)
    elif _DIGITS.fullmatch(value):
        mark = int(value)
    else:
        raise _LineError("bad FwMark (off, a number or 0x-hex expected)")
    if mark > 0xFFFFFFFF:
        raise _LineError("bad FwMark (above 2^32-1)")
    return mark


def _keepalive(value: str) -> int:
    if value.lower() == "off":
        return 0
    return _uint(value, 65535, "PersistentKeepalive")


def _allowed_ip(item: str) -> Network:
    # wg accepts a bare address as a host route (/32 or /128) and warns about host bits.
    try:
        if "/" not in item:
            return ipaddress.ip_network(ipaddress.ip_address(item))
        addr_text, _, bits = item.rpartition("/")
        addr = ipaddress.ip_address(addr_text)
        if not _DIGITS.fullmatch(bits) or int(bits) > addr.max_prefixlen:
            raise ValueError(bits)
        return ipaddress.ip_network((addr, int(bits)), strict=False)
    except ValueError:
        raise _LineError(f"bad CIDR {item!r} in AllowedIPs") from None


def _address(item: str) -> Interface:
    try:
        return ipaddress.ip_interface(item)
    except ValueError:
        raise _LineError(f"bad Address {item!r}") from None


def _endpoint(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the host may be a name (resolved later, not here)."""
    if value.startswith("["):
        close = value.find("]")
        host, rest = value[1:close], value[close + 1 :]
        if close < 0 or not rest.startswith(":"):
            raise _LineError("bad Endpoint ([IPv6]:port expected)")
        port = rest[1:]
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise _LineError("bad Endpoint (host:port expected)")
    if not host:
        raise _LineError("bad Endpoint (empty host)")
    return host, _port(port)


def _bool(value: str) -> bool:
    low = value.lower()
    if low not in ("true", "false"):
        raise _LineError(f"SaveConfig {value!r} is neither true nor false")
    return low == "true"


def _split(value: str) -> list[str]:
    # wg-quick splits Address and DNS on commas *and* whitespace.
    return value.replace(",", " ").split()


# --- the parser ----------------------------------------------------------------------------------


def _clean(raw: str) -> str:
    return raw.split("#", 1)[0].strip()


def parse(text: str) -> WgQuickConfig:
    """Parse and validate a wg-quick config; raise :class:`ConfigError` on the first problem."""
    private_key: bytes | None = None
    iface_line = 0
    cfg = WgQuickConfig(private_key=b"")
    section: str | None = None
    peer: PeerConfig | None = None
    peer_has_key = False

    def finish_peer() -> None:
        if peer is not None and not peer_has_key:
            raise ConfigError(f"line {peer.line}: [Peer] has no PublicKey")

    for lineno, raw in enumerate(text.split("\n"), 1):
        line = _clean(raw)
        if not line:
            continue
        if line.startswith("["):
            finish_peer()
            name = line.lower()
            if name == "[interface]":
                section, peer = "interface", None
                iface_line = iface_line or lineno
            elif name == "[peer]":
                section = "peer"
                peer, peer_has_key = PeerConfig(public_key=b"", line=lineno), False
                cfg.peers.append(peer)
            else:
                raise ConfigError(f"line {lineno}: unknown section {line[:40]!r}")
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"line {lineno}: expected 'Key = Value'")
        lkey = key.lower()
        # Echo a key name only if it looks like one: "PrivateKey <base64>=" puts the secret
        # itself before the '=' (base64 padding).
        named = repr(key) if _KEY_NAME.fullmatch(key) else "(not shown)"
        if section is None:
            raise ConfigError(f"line {lineno}: key {named} outside of a section")
        allowed = _INTERFACE_KEYS if section == "interface" else _PEER_KEYS
        shown = "[Interface]" if section == "interface" else "[Peer]"
        if lkey not in allowed:
            raise ConfigError(f"line {lineno}: unknown key {named} in {shown}")
        # wg-quick's own keys keep their spacing (hooks are commands; Address and DNS split on
        # whitespace); values of wg keys ignore whitespace (wg strips it all).
        if lkey in WG_QUICK_KEYS:
            value = value.strip()
        else:
            value = "".join(value.split())
            if not value and lkey not in WG_QUICK_KEYS:
                raise ConfigError(f"line {lineno}: empty value for {key}")
        try:
            if section == "interface":
                if lkey == "privatekey":
                    private_key = parse_base64_key(value, "PrivateKey")
                else:
                    _interface_line(cfg, lkey, value)
            else:
                assert peer is not None
                if lkey == "publickey":
                    peer.public_key = parse_base64_key(value, "PublicKey")
                    peer_has_key = True
                else:
                    _peer_line(peer, lkey, value)
        except _LineError as exc:
            raise ConfigError(f"line {lineno}: {exc}") from None
        except ConfigError as exc:  # from the key parsers, already free of key material
            raise ConfigError(f"line {lineno}: {exc}") from None
    finish_peer()
    if not iface_line:
        raise ConfigError("line 1: no [Interface] section")
    if private_key is None:
        raise ConfigError(f"line {iface_line}: [Interface] has no PrivateKey")
    cfg.private_key = private_key
    return cfg


def _interface_line(cfg: WgQuickConfig, lkey: str, value: str) -> None:
    if lkey == "listenport":
        cfg.listen_port = _port(value)
    elif lkey == "fwmark":
        cfg.fwmark = _fwmark(value)
    elif lkey == "address":
        cfg.addresses.extend(_address(v) for v in _split(value))
    elif lkey == "mtu":
        mtu = _uint(value, 65535, "MTU")
        if mtu < 68:
            raise _LineError("bad MTU (68..65535 expected)")
        cfg.mtu = mtu
    elif lkey == "dns":
        for v in _split(value):
            if _DNS_SERVER.search(v):
                try:
                    cfg.dns.append(ipaddress.ip_address(v))
                except ValueError:
                    raise _LineError(f"bad DNS server {v!r}") from None
            else:
                cfg.dns_search.append(v)
    elif lkey == "table":
        if not _TABLE.fullmatch(value):
            raise _LineError("bad Table (off, auto, a number or a table name expected)")
        cfg.table = value
    elif lkey == "saveconfig":
        cfg.save_config = _bool(value)
    else:  # hooks
        hooks = {
            "preup": cfg.pre_up,
            "postup": cfg.post_up,
            "predown": cfg.pre_down,
            "postdown": cfg.post_down,
        }
        hooks[lkey].append(value)


def _peer_line(peer: PeerConfig, lkey: str, value: str) -> None:
    if lkey == "presharedkey":
        peer.preshared_key = parse_base64_key(value, "PresharedKey")
    elif lkey == "endpoint":
        peer.endpoint = _endpoint(value)
    elif lkey == "allowedips":
        peer.allowed_ips.extend(_allowed_ip(v) for v in value.split(","))
    else:  # persistentkeepalive
        peer.persistent_keepalive = _keepalive(value)


def parse_file(path: str) -> WgQuickConfig:
    with open(path, encoding="utf-8") as f:
        return parse(f.read())


# --- output ---------------------------------------------------------------------------------------


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def to_setconf(cfg: WgQuickConfig) -> str:
    """The config as ``wg setconf`` reads it: only the keys ``wg`` knows, canonical form."""
    out = ["[Interface]", f"PrivateKey = {to_base64(cfg.private_key)}"]
    if cfg.listen_port is not None:
        out.append(f"ListenPort = {cfg.listen_port}")
    if cfg.fwmark is not None:
        out.append(f"FwMark = {cfg.fwmark if cfg.fwmark else 'off'}")
    for p in cfg.peers:
        out += ["", "[Peer]", f"PublicKey = {to_base64(p.public_key)}"]
        if p.preshared_key is not None:
            out.append(f"PresharedKey = {to_base64(p.preshared_key)}")
        if p.allowed_ips:
            out.append("AllowedIPs = " + ", ".join(format_network(n) for n in p.allowed_ips))
        if p.endpoint is not None:
            out.append(f"Endpoint = {_format_host_port(*p.endpoint)}")
        if p.persistent_keepalive is not None:
            out.append(f"PersistentKeepalive = {p.persistent_keepalive or 'off'}")
    return "\n".join(out) + "\n"


def strip(text: str) -> str:
    """Exactly what ``wg-quick strip`` prints for ``text``.

    Lines are trimmed (bash ``read``), wg-quick's own ``[Interface]`` keys are dropped, all
    else (comments included) is kept, and bash's ``echo`` adds one final newline.
    """
    out: list[str] = []
    in_interface = False
    lines = [raw.strip(" \t") for raw in text.split("\n")]
    # `while read -r line || [[ -n $line ]]`: a last line without newline counts only if
    # something is left of it after trimming; the empty tail after a final newline never does.
    if not lines[-1]:
        lines.pop()
    for line in lines:
        key = line.split("#", 1)[0].split("=", 1)[0].strip()
        if key.startswith("["):
            in_interface = key.lower() == "[interface]"
        if in_interface and key.lower() in WG_QUICK_KEYS:
            continue
        out.append(line + "\n")
    return "".join(out) + "\n"


def to_set_request(
    cfg: WgQuickConfig,
    *,
    replace_peers: bool = True,
    resolve: Callable[[str, int], tuple[str, int]] | None = None,
) -> SetRequest:
    """The UAPI request ``wg setconf`` (``replace_peers=True``) or ``wg addconf`` would send.

    Endpoint names need ``resolve(host, port) -> (address, port)``; without it a name is a
    :class:`ConfigError` (this module does no I/O).
    """
    peers: list[PeerUpdate] = []
    for p in cfg.peers:
        endpoint: tuple[str, int] | None = None
        if p.endpoint is not None:
            try:
                endpoint = parse_endpoint(_format_host_port(*p.endpoint))
            except ValueError:
                if resolve is None:
                    raise ConfigError(
                        f"line {p.line}: endpoint host {p.endpoint[0]!r} needs resolving"
                    ) from None
                endpoint = resolve(*p.endpoint)
        ops: list[AllowedIPOp] = [("replace", None)]
        ops += [("add", n) for n in p.allowed_ips]
        peers.append(
            PeerUpdate(
                public_key=p.public_key,
                preshared_key=p.preshared_key,
                endpoint=endpoint,
                persistent_keepalive_interval=p.persistent_keepalive,
                allowed_ip_ops=ops,
            )
        )
    return SetRequest(
        private_key=cfg.private_key,
        listen_port=cfg.listen_port,
        fwmark=cfg.fwmark,
        replace_peers=replace_peers,
        peers=peers,
    )
