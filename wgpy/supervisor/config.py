"""The ``tunnels`` key of Secret ``wireguard``: parse and validate (kube-vip-wireguard.md §2).

kube-vip parses this YAML non-strictly and finds most mistakes only at bring-up (or never).
We validate everything when the Secret is loaded, so a bad edit is reported with the tunnel
and field at fault while the last good configuration stays in force. Unknown fields are an
error too (kube-vip ignores them, so a typo such as ``allowedIps`` silently drops the field);
the message suggests the field meant. Error messages never contain key material.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from wgpy.core.errors import ConfigError
from wgpy.core.keys import HIDDEN, parse_base64_key, short

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IFNAMSIZ = 16  # Linux: 15 bytes + NUL
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
REQUIRED = ("vip", "privateKey", "peerPublicKey", "peerEndpoint", "listenPort")
FIELDS = (*REQUIRED, "allowedIPs", "forward")
FORWARD_FIELDS = ("port", "protocol", "target")
PROTOCOLS = ("TCP", "UDP")


@dataclass(frozen=True)
class Forward:
    """Embedded mode: traffic to ``port``/``protocol`` on the VIP goes to ``target``."""

    port: int
    protocol: str
    target: tuple[str, int]


@dataclass(frozen=True, repr=False)
class Tunnel:
    """One tunnel; ``name`` is also the Linux interface name."""

    name: str
    vip: IPInterface
    private_key: bytes
    peer_public_key: bytes
    peer_endpoint: tuple[str, int]
    listen_port: int
    allowed_ips: tuple[IPNetwork, ...] = ()
    forward: tuple[Forward, ...] = ()

    def __repr__(self) -> str:
        # The private key is shared by every node of the cluster: never print it.
        return (
            f"Tunnel(name={self.name!r}, vip={self.vip}, private_key={HIDDEN}, "
            f"peer={short(self.peer_public_key)}, "
            f"peer_endpoint={self.peer_endpoint[0]}:{self.peer_endpoint[1]}, "
            f"listen_port={self.listen_port}, "
            f"allowed_ips=[{', '.join(map(str, self.allowed_ips))}], "
            f"forward={len(self.forward)})"
        )

    __str__ = __repr__


# -- YAML ------------------------------------------------------------------------------------


class _StrictKeysLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            # a mapping or list used as a key: refuse it without showing it (it may hold keys)
            raise ConfigError(
                f"tunnels: mapping keys must be plain names (line {key_node.start_mark.line + 1})"
            )
        key = loader.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
        if key in out:
            raise ConfigError(
                f"tunnels: duplicate key {key!r} at line {key_node.start_mark.line + 1}"
            )
        out[key] = loader.construct_object(value_node, deep=True)  # type: ignore[no-untyped-call]
    return out


_StrictKeysLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictKeysLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"tunnels: YAML syntax error{where}: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"tunnels: YAML error: {e}") from None


# -- field parsers -------------------------------------------------------------------------


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {type(value).__name__}")
    if not 1 <= value <= 65535:
        raise ConfigError(f"{what} {value} out of range 1..65535")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__}")
    return value


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the port is mandatory."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", text.strip())
    if not m:
        raise ConfigError(f"{what} {text!r} must be host:port (port is required)")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return host, _port(int(port), f"{what} port")


def _interface_name(name: Any) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"tunnels: interface name {name!r} must be a string")
    if len(name.encode()) >= IFNAMSIZ:
        raise ConfigError(f"tunnel {name!r}: interface name longer than {IFNAMSIZ - 1} bytes")
    if not _IFNAME_RE.match(name):
        raise ConfigError(
            f"tunnel {name!r}: interface name has invalid characters "
            "(letters, digits, '_', '-' and '.' allowed)"
        )
    return name


def _vip(value: Any, t: str) -> IPInterface:
    text = _str(value, f"{t}: vip")
    if "/" not in text:
        raise ConfigError(f"{t}: vip {text!r} must be in CIDR form (e.g. {text}/32)")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise ConfigError(f"{t}: vip {text!r} is not a valid address/prefix") from None


def _allowed_ips(value: Any, t: str) -> tuple[IPNetwork, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{t}: allowedIPs must be a list of CIDRs")
    nets: list[IPNetwork] = []
    for i, item in enumerate(value):
        text = _str(item, f"{t}: allowedIPs[{i}]")
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{t}: allowedIPs[{i}] {text!r} is not a valid CIDR") from None
    return tuple(nets)


def _forwards(value: Any, t: str) -> tuple[Forward, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{t}: forward must be a list")
    out: list[Forward] = []
    seen: set[tuple[int, str]] = set()
    for i, item in enumerate(value):
        w = f"{t}: forward[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{w} must be a mapping with port, protocol, target")
        _known_keys(item, FORWARD_FIELDS, w)
        for f in ("port", "target"):
            if f not in item:
                raise ConfigError(f'{w}: missing required field "{f}"')
        port = _port(item["port"], f"{w}: port")
        proto = _str(item.get("protocol", "TCP"), f"{w}: protocol")
        if proto not in PROTOCOLS:
            raise ConfigError(f"{w}: protocol {proto!r} must be TCP or UDP")
        if (port, proto) in seen:
            raise ConfigError(f"{w}: duplicate forward {proto} port {port}")
        seen.add((port, proto))
        target = parse_host_port(_str(item["target"], f"{w}: target"), f"{w}: target")
        out.append(Forward(port, proto, target))
    return tuple(out)


def _known_keys(spec: Mapping[Any, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a field that is not one of ``known`` (names only: values may be keys)."""
    for key in spec:
        if key in known:
            continue
        text = str(key)[:40]
        close = difflib.get_close_matches(text, known, n=1, cutoff=0.6)
        if not close:
            close = [k for k in known if k.lower() == text.lower()]
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise ConfigError(f'{where}: unknown field "{text}"{hint}; known fields: '
                          f'{", ".join(known)}')


def parse_tunnel(name: Any, spec: Any) -> Tunnel:
    """Validate one tunnel entry; errors name the tunnel and the field."""
    name = _interface_name(name)
    t = f"tunnel {name}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{t}: expected a mapping of fields, got {type(spec).__name__}")
    _known_keys(spec, FIELDS, t)
    for f in REQUIRED:
        if spec.get(f) in (None, ""):
            raise ConfigError(f'{t}: missing required field "{f}"')
    return Tunnel(
        name=name,
        vip=_vip(spec["vip"], t),
        private_key=parse_base64_key(
            _str(spec["privateKey"], f"{t}: privateKey"), f"{t}: privateKey"
        ),
        peer_public_key=parse_base64_key(
            _str(spec["peerPublicKey"], f"{t}: peerPublicKey"), f"{t}: peerPublicKey"
        ),
        peer_endpoint=parse_host_port(
            _str(spec["peerEndpoint"], f"{t}: peerEndpoint"), f"{t}: peerEndpoint"
        ),
        listen_port=_port(spec["listenPort"], f"{t}: listenPort"),
        allowed_ips=_allowed_ips(spec.get("allowedIPs"), t),
        forward=_forwards(spec.get("forward"), t),
    )


def _cidrs(text: str | None, what: str) -> list[IPNetwork]:
    if not text:
        return []
    try:
        return [ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",")]
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a valid CIDR list") from None


def _cross_check(
    tunnels: dict[str, Tunnel], pod_cidr: str | None, service_cidr: str | None
) -> None:
    local = [(n, "pod CIDR") for n in _cidrs(pod_cidr, "pod CIDR")]
    local += [(n, "service CIDR") for n in _cidrs(service_cidr, "service CIDR")]
    items = sorted(tunnels.items())
    for i, (a, ta) in enumerate(items):
        for net in ta.allowed_ips:
            for other, what in local:
                if net.version == other.version and net.overlaps(other):
                    raise ConfigError(f"tunnel {a}: allowedIPs {net} overlaps the {what} {other}")
        for b, tb in items[i + 1 :]:
            if ta.listen_port == tb.listen_port:
                raise ConfigError(f"tunnels {a} and {b}: duplicate listenPort {ta.listen_port}")
            if ta.vip.ip == tb.vip.ip:
                raise ConfigError(f"tunnels {a} and {b}: duplicate VIP {ta.vip.ip}")
            for na in ta.allowed_ips:
                for nb in tb.allowed_ips:
                    if na.version == nb.version and na.overlaps(nb):
                        raise ConfigError(
                            f"tunnels {a} and {b}: allowedIPs overlap ({na} and {nb})"
                        )


def parse_tunnels(
    text: str, *, pod_cidr: str | None = None, service_cidr: str | None = None
) -> dict[str, Tunnel]:
    """Parse the ``tunnels`` YAML into ``{interface name: Tunnel}``.

    ``pod_cidr`` / ``service_cidr`` (comma-separated for dual stack) are optional: AllowedIPs
    overlapping them would divert cluster traffic into the tunnel.
    """
    data = load_yaml(text)
    if data is None or (isinstance(data, Mapping) and not data):
        raise ConfigError("tunnels: no tunnel configurations found")
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"tunnels: expected a mapping of interface name to tunnel, got {type(data).__name__}"
        )
    return parse_tunnel_mapping(data, pod_cidr=pod_cidr, service_cidr=service_cidr)


def parse_tunnel_mapping(
    data: Mapping[Any, Any], *, pod_cidr: str | None = None, service_cidr: str | None = None
) -> dict[str, Tunnel]:
    """Validate an already-decoded mapping (see :func:`parse_tunnels`)."""
    if not data:
        raise ConfigError("tunnels: no tunnel configurations found")
    tunnels = {t.name: t for t in (parse_tunnel(k, v) for k, v in data.items())}
    _cross_check(tunnels, pod_cidr, service_cidr)
    return tunnels


def diff(
    old: Mapping[str, Tunnel], new: Mapping[str, Tunnel]
) -> tuple[list[str], list[str], list[str]]:
    """Names ``(added, changed, removed)`` going from ``old`` to ``new`` (each sorted)."""
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    return added, changed, removed


def find_by_vip(tunnels: Iterable[Tunnel], vip: str) -> Tunnel | None:
    """The tunnel whose VIP (CIDR optional in ``vip``) matches, as kube-vip's ``vip_address``."""
    try:
        ip = ipaddress.ip_interface(vip.strip()).ip
    except ValueError:
        raise ConfigError(f"vip_address {vip!r} is not a valid IP address") from None
    return next((t for t in tunnels if t.vip.ip == ip), None)
