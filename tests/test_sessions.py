"""The protocol objects the device is built from: index table, keypair rotation, drop
reasons, the load meter and the timer table (wgpy/core)."""

from __future__ import annotations

import inspect

import pytest

import noise.errors
from noise.handshake import SessionKeys
from wgpy.core.backlog import LoadMeter
from wgpy.core.constants import UNDER_LOAD_STICKY
from wgpy.core.device import Device
from wgpy.core.drops import Drop, from_noise
from wgpy.core.indextable import IndexTable
from wgpy.core.keypair import Keypair
from wgpy.core.peer import TIMERS, Peer

KEY = bytes(range(32))


def _table(values: list[int]) -> IndexTable:
    it = iter(values)
    return IndexTable(lambda n: next(it).to_bytes(n, "little"))


def _keypair(index: int, *, initiator: bool) -> Keypair:
    keys = SessionKeys(bytes(32), bytes(32), initiator, index, index + 1000, bytes(32))
    return Keypair(keys, now=0.0)


def test_new_index_skips_indices_in_use() -> None:
    peer = Peer(KEY, now=0.0)
    table = _table([7, 7, 7, 9])
    assert table.new_index(peer) == 7
    assert table.new_index(peer) == 9  # 7 is taken: drawn again
    assert table.get(7) == (peer, None) and len(table) == 2


def test_a_handshake_index_is_removed_only_by_its_owner_and_only_while_pending() -> None:
    a, b = Peer(KEY, now=0.0), Peer(bytes(32), now=0.0)
    table = _table([5, 6])
    index = table.new_index(a)
    table.remove_handshake(b, index)  # not b's
    assert index in table
    kp = _keypair(index, initiator=True)
    table.bind_keypair(a, kp)
    table.remove_handshake(a, index)  # now a session: stays
    assert table.get(index) == (a, kp)
    table.free(kp)
    assert index not in table
    table.free(None)  # nothing to free: no error


def test_the_initiator_uses_a_new_session_at_once() -> None:
    peer = Peer(KEY, now=0.0)
    freed: list[Keypair | None] = []
    first, second = _keypair(1, initiator=True), _keypair(2, initiator=True)
    peer.begin_session(first, free=freed.append)
    peer.begin_session(second, free=freed.append)
    assert (peer.previous, peer.current, peer.next) == (first, second, None)
    assert [k for k in freed if k is not None] == []


def test_the_responder_waits_for_confirmation() -> None:
    peer = Peer(KEY, now=0.0)
    freed: list[Keypair | None] = []
    old = _keypair(1, initiator=True)
    peer.begin_session(old, free=freed.append)
    new = _keypair(2, initiator=False)
    peer.begin_session(new, free=freed.append)
    assert (peer.previous, peer.current, peer.next) == (None, old, new)
    assert not peer.received_with_keypair(old, free=freed.append)  # not `next`: no change
    assert peer.received_with_keypair(new, free=freed.append)
    assert (peer.previous, peer.current, peer.next) == (old, new, None)


def test_an_unconfirmed_next_is_replaced_and_the_displaced_keypairs_are_freed() -> None:
    peer = Peer(KEY, now=0.0)
    freed: list[Keypair | None] = []
    current = _keypair(1, initiator=True)
    previous = _keypair(0, initiator=True)
    peer.begin_session(previous, free=freed.append)
    peer.begin_session(current, free=freed.append)
    waiting = _keypair(2, initiator=False)
    peer.begin_session(waiting, free=freed.append)  # responder: previous goes
    assert previous in freed and peer.previous is None
    mine = _keypair(3, initiator=True)  # our own initiation completes meanwhile
    peer.begin_session(mine, free=freed.append)
    assert (peer.previous, peer.current, peer.next) == (waiting, mine, None)
    assert current in freed


def test_zero_key_material_frees_every_slot() -> None:
    peer = Peer(KEY, now=0.0)
    freed: list[Keypair | None] = []
    kps = [_keypair(i, initiator=True) for i in range(2)] + [_keypair(9, initiator=False)]
    for kp in kps:
        peer.begin_session(kp, free=lambda _k: None)
    peer.stage(b"x")
    peer.zero_key_material(free=freed.append)
    assert {id(k) for k in freed if k is not None} == {id(k) for k in kps[1:]}
    assert (peer.previous, peer.current, peer.next) == (None, None, None)
    assert not peer.staged


def test_every_noise_rejection_has_a_drop_reason() -> None:
    classes = [
        c
        for _, c in inspect.getmembers(noise.errors, inspect.isclass)
        if issubclass(c, noise.errors.NoiseError)
    ]
    assert len(classes) >= 8
    for cls in classes:
        assert from_noise(cls("x")).value == cls.reason


def test_drop_counts_read_by_name() -> None:
    dev = Device(wall_time_ns=lambda: 0)
    dev.receive_datagram(b"\x09" + bytes(40), ("127.0.0.1", 1), now=0.0)
    assert dev.drops[Drop.UNKNOWN_TYPE] == 1
    assert dict(dev.drops) == {"unknown_type": 1}  # UAPI and metrics show the value


def test_the_load_meter_counts_arrivals_per_second_and_sticks() -> None:
    meter = LoadMeter(rate=3)
    for _ in range(3):
        meter.arrival(now=10.0)
    assert not meter.active(10.0)
    meter.arrival(now=10.5)  # the 4th within a second
    assert meter.active(10.5) and meter.active(10.5 + UNDER_LOAD_STICKY - 0.01)
    assert not meter.active(10.5 + UNDER_LOAD_STICKY)
    for t in (12.0, 13.1, 14.2, 15.3):  # one per second: never load
        meter.arrival(now=t)
    assert not meter.active(15.3)


@pytest.mark.parametrize("name", TIMERS)
def test_every_timer_has_a_handler(name: str) -> None:
    handlers = dict(Device._EXPIRED)
    assert name in handlers
    assert handlers[name].__name__ == "_expired_" + name.removesuffix("_at")
