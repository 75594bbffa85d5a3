"""Cryptokey routing: the AllowedIPs table mapping IP prefixes to their owning peer.

wireguard-go and the kernel use a path-compressed radix trie; Python is faster with dicts.
Per address family we keep one dict per prefix length in use, ``{masked_address_int:
owner}`` (the ``(prefix_len, masked_int) -> owner`` map split by length, so a probe is one
``int &`` and one dict lookup with no tuple built), plus the list of lengths in use sorted
longest first. A lookup probes at most 33 (IPv4) or 129 (IPv6) lengths, in practice a few.

Semantics follow wireguard-go ``device/allowedips.go`` and the kernel's ``allowedips.c``:

- inserting masks host bits (``wg`` sends ``10.1.2.3/16``; ``get`` must show ``10.1.0.0/16``);
- one owner per prefix: inserting a prefix that another owner holds *moves* it;
- re-inserting moves the prefix to the end of its owner's list (kernel ``list_move_tail``),
  which is what per-owner enumeration for UAPI ``get`` shows;
- lookup is longest-prefix match; owners are compared by identity (``is``).
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

from wgpy.core.constants import MAX_ALLOWED_IPS
from wgpy.core.errors import CapacityError, ConfigError

__all__ = ["AllowedIPs", "Network"]

T = TypeVar("T")
Network = IPv4Network | IPv6Network
_Key = tuple[int, int, int]  # (ip version, prefix length, masked address int)


class _Family(Generic[T]):
    """The prefixes of one address family."""

    __slots__ = ("bits", "probes", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, T]] = {}  # prefix length -> {masked int: owner}
        # (netmask int, table) for every length in use, longest prefix first.
        self.probes: list[tuple[int, dict[int, T]]] = []

    def table_for_insert(self, plen: int) -> dict[int, T]:
        table = self.tables.get(plen)
        if table is None:
            table = self.tables[plen] = {}
            self._rebuild()
        return table

    def drop_if_empty(self, plen: int) -> None:
        if not self.tables[plen]:
            del self.tables[plen]
            self._rebuild()

    def _rebuild(self) -> None:
        # A new list rather than an in-place edit: cheap (<= 129 items) and never seen half-built.
        full = (1 << self.bits) - 1
        self.probes = [
            (full ^ (full >> plen), self.tables[plen]) for plen in sorted(self.tables, reverse=True)
        ]


_MISSING = object()


def _parse(network: str | Network) -> Network:
    if isinstance(network, IPv4Network | IPv6Network):
        return network  # always stored masked by the ipaddress module
    if not isinstance(network, str):
        raise ConfigError(f"invalid allowed IP {network!r}: expected a CIDR string")
    try:
        # strict=False masks host bits, as wg and the kernel do.
        return ipaddress.ip_network(network.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(f"invalid allowed IP {network!r}: {exc}") from None


class AllowedIPs(Generic[T]):
    """Longest-prefix-match table from IPv4/IPv6 prefixes to owners (normally peers).

    ``max_entries`` bounds the number of prefixes across all owners. Owners must not be
    ``None`` and are compared by identity.
    """

    __slots__ = ("_len", "_max_entries", "_owners", "_v4", "_v6")

    def __init__(self, max_entries: int = MAX_ALLOWED_IPS) -> None:
        self._v4: _Family[T] = _Family(32)
        self._v6: _Family[T] = _Family(128)
        # id(owner) -> its prefixes in insertion order (a dict used as an ordered set). The
        # id stays valid because the tables reference the owner while it has any prefix.
        self._owners: dict[int, dict[_Key, None]] = {}
        self._len = 0
        self._max_entries = max_entries

    def __len__(self) -> int:
        """Number of prefixes in the table (both families, all owners)."""
        return self._len

    def _family(self, version: int) -> _Family[T]:
        return self._v4 if version == 4 else self._v6

    def _forget(self, owner: object, key: _Key) -> None:
        """Drop ``key`` from ``owner``'s ordered list (the tables are updated by the caller)."""
        ident = id(owner)
        keys = self._owners[ident]
        del keys[key]
        if not keys:
            del self._owners[ident]

    def insert(self, network: str | Network, owner: T) -> None:
        """Give ``network`` (host bits masked off) to ``owner``.

        A prefix held by another owner moves to ``owner``; either way the prefix goes to the
        end of ``owner``'s list. Raises :class:`ConfigError` for an unparsable CIDR and
        :class:`CapacityError` when adding a new prefix would exceed ``max_entries``.
        """
        if owner is None:
            raise TypeError("AllowedIPs owner must not be None")
        net = _parse(network)
        plen, masked = net.prefixlen, int(net.network_address)
        family = self._family(net.version)
        key = (net.version, plen, masked)
        table = family.tables.get(plen)
        if table is not None and (previous := table.get(masked, _MISSING)) is not _MISSING:
            self._forget(previous, key)  # a move: the size does not change
        else:
            if self._len >= self._max_entries:
                raise CapacityError(f"allowed IPs table full ({self._max_entries} prefixes)")
            if table is None:
                table = family.table_for_insert(plen)
            self._len += 1
        table[masked] = owner
        self._owners.setdefault(id(owner), {})[key] = None

    def remove(self, network: str | Network, owner: T) -> bool:
        """Remove ``network`` if ``owner`` holds it; return whether it was removed.

        Like ``allowed_ip=-P`` in wireguard-go: a prefix held by another owner is untouched.
        """
        net = _parse(network)
        plen, masked = net.prefixlen, int(net.network_address)
        family = self._family(net.version)
        table = family.tables.get(plen)
        if table is None or table.get(masked, _MISSING) is not owner:
            return False
        del table[masked]
        family.drop_if_empty(plen)
        self._len -= 1
        self._forget(owner, (net.version, plen, masked))
        return True

    def remove_by_owner(self, owner: T) -> None:
        """Remove every prefix ``owner`` holds (peer removal, ``replace_allowed_ips``)."""
        keys = self._owners.pop(id(owner), None)
        if not keys:
            return
        for version, plen, masked in keys:
            family = self._family(version)
            del family.tables[plen][masked]
            family.drop_if_empty(plen)
        self._len -= len(keys)

    def lookup(self, address: bytes | bytearray | memoryview) -> T | None:
        """Owner of the longest prefix containing ``address``, or None.

        ``address`` is the raw 4 (IPv4) or 16 (IPv6) bytes, e.g. sliced from an IP header
        (source address inbound, destination outbound). Per-packet hot path.
        """
        n = len(address)
        if n == 4:
            probes = self._v4.probes
        elif n == 16:
            probes = self._v6.probes
        else:
            raise ValueError(f"an IP address is 4 or 16 bytes, not {n}")
        value = int.from_bytes(address, "big")
        for mask, table in probes:
            owner = table.get(value & mask)
            if owner is not None:
                return owner
        return None

    def lookup_str(self, address: str) -> T | None:
        """:meth:`lookup` for a textual address such as ``"10.0.0.1"`` or ``"fd00::1"``."""
        try:
            packed = ipaddress.ip_address(address).packed
        except ValueError as exc:
            raise ConfigError(f"invalid IP address {address!r}: {exc}") from None
        return self.lookup(packed)

    def entries(self, owner: T) -> list[Network]:
        """``owner``'s prefixes in insertion order, IPv4 and IPv6 interleaved as inserted."""
        out: list[Network] = []
        for version, plen, masked in self._owners.get(id(owner), ()):
            if version == 4:
                out.append(IPv4Network((masked, plen)))
            else:
                out.append(IPv6Network((masked, plen)))
        return out
