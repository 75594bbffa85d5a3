"""The receiver-index table (wireguard-go ``indextable.go``): which peer, and which session,
a 32-bit index in a received message belongs to.

An index names either a peer's pending handshake (``keypair`` None) or one of its
keypairs. Indices are random and unique among live entries; an entry goes when its handshake
is cleared or its keypair freed. Only the owner of an entry removes it: a handshake index is
removed only if it still names that peer's pending handshake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wgpy.core.keypair import Keypair
    from wgpy.core.peer import Peer

Entry = tuple["Peer", "Keypair | None"]


class IndexTable:
    """u32 index → ``(peer, keypair)``; ``keypair`` None = the peer's pending handshake."""

    __slots__ = ("_entries", "_rng", "get")

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self._entries: dict[int, Entry] = {}
        self.get = self._entries.get  # the per-packet lookup, without a method call

    def new_index(self, peer: Peer) -> int:
        """A fresh random index, reserved for ``peer``'s pending handshake."""
        entries = self._entries
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index not in entries:
                entries[index] = (peer, None)
                return index

    def bind_keypair(self, peer: Peer, keypair: Keypair) -> None:
        """Point the keypair's local index (its handshake's) at the new session."""
        self._entries[keypair.local_index] = (peer, keypair)

    def remove_handshake(self, peer: Peer, index: int) -> None:
        """Remove ``index`` if it still names ``peer``'s pending handshake."""
        entry = self._entries.get(index)
        if entry is not None and entry[0] is peer and entry[1] is None:
            del self._entries[index]

    def free(self, keypair: Keypair | None) -> None:
        """Remove a keypair's entry (nothing for None)."""
        if keypair is not None:
            self._entries.pop(keypair.local_index, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, index: object) -> bool:
        return index in self._entries

    def items(self) -> Iterator[tuple[int, Entry]]:
        return iter(self._entries.items())

    def values(self) -> Iterator[Entry]:
        return iter(self._entries.values())
