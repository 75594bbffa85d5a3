"""Tests for wgpy.core.allowedips: kernel selftests, ownership rules and a brute-force model."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy.core.allowedips import AllowedIPs, Network
from wgpy.core.errors import CapacityError, ConfigError


class Peer:
    """An owner whose equality says nothing: the table must compare by identity."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def _peers(names: str) -> dict[str, Peer]:
    return {n: Peer(n) for n in names}


# --- kernel src/selftest/allowedips.c (protocol doc §7.1) -------------------------------------


def test_kernel_selftest_set_one() -> None:
    p = _peers("abcde")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("192.168.4.0/24", p["a"])
    t.insert("192.168.4.4/32", p["b"])
    t.insert("192.168.0.0/16", p["c"])
    t.insert("192.95.5.64/27", p["d"])
    t.insert("192.95.5.65/27", p["c"])  # masks to 192.95.5.64/27: replaces d
    t.insert("0.0.0.0/0", p["e"])
    assert t.lookup_str("192.168.4.20") is p["a"]
    assert t.lookup_str("192.168.4.4") is p["b"]
    assert t.lookup_str("192.168.200.182") is p["c"]
    assert t.lookup_str("192.95.5.68") is p["c"]
    assert t.lookup_str("192.95.5.96") is p["e"]
    assert t.entries(p["d"]) == []
    assert len(t) == 5


def test_kernel_selftest_set_two_and_remove_by_peer() -> None:
    p = _peers("abcd")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.1.0.0/30", p["a"])
    t.insert("10.1.0.4/30", p["b"])
    t.insert("10.1.0.8/29", p["c"])
    t.insert("10.1.0.16/29", p["d"])
    expected = {"10.1.0.2": "a", "10.1.0.6": "b", "10.1.0.10": "c", "10.1.0.20": "d"}
    for addr, name in expected.items():
        assert t.lookup_str(addr) is p[name], addr
    for name in "abcd":
        t.remove_by_owner(p[name])
    for addr in expected:
        assert t.lookup_str(addr) is None, addr
    assert len(t) == 0


@pytest.mark.parametrize(
    ("given_cidr", "read_back"),
    [
        ("192.95.5.93/27", "192.95.5.64/27"),
        ("10.1.2.3/16", "10.1.0.0/16"),
        (
            "2607:5300:6d8a:6bf8:dab1:f1df:c05f:1523/83",
            "2607:5300:6d8a:6bf8:dab1:e000::/83",
        ),
        ("2607:5300:6d8a:6bf8:dab1:f1df:c05f:1523/21", "2607:5000::/21"),
    ],
)
def test_read_back_is_masked(given_cidr: str, read_back: str) -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(given_cidr, a)
    assert [str(n) for n in t.entries(a)] == [read_back]


# --- ownership rules ------------------------------------------------------------------------


def test_longest_prefix_wins_in_both_families() -> None:
    p = _peers("abcdef")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/8", p["a"])
    t.insert("10.1.0.0/16", p["b"])
    t.insert("10.1.1.1/32", p["c"])
    t.insert("fd00::/8", p["d"])
    t.insert("fd00:1::/32", p["e"])
    t.insert("fd00:1::1/128", p["f"])
    assert t.lookup_str("10.2.3.4") is p["a"]
    assert t.lookup_str("10.1.3.4") is p["b"]
    assert t.lookup_str("10.1.1.1") is p["c"]
    assert t.lookup_str("10.1.1.2") is p["b"]
    assert t.lookup_str("11.0.0.1") is None
    assert t.lookup_str("fd01::1") is p["d"]
    assert t.lookup_str("fd00:1::2") is p["e"]
    assert t.lookup_str("fd00:1::1") is p["f"]
    assert t.lookup_str("fe00::1") is None


def test_default_routes_per_family() -> None:
    p = _peers("ab")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("0.0.0.0/0", p["a"])
    assert t.lookup_str("203.0.113.7") is p["a"]
    assert t.lookup_str("2001:db8::1") is None  # an IPv4 default does not cover IPv6
    t.insert("::/0", p["b"])
    assert t.lookup_str("2001:db8::1") is p["b"]
    assert t.lookup_str("255.255.255.255") is p["a"]
    assert [str(n) for n in t.entries(p["b"])] == ["::/0"]


def test_insert_existing_prefix_moves_ownership() -> None:
    p = _peers("ab")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/24", p["a"])
    t.insert("10.0.1.0/24", p["a"])
    t.insert("10.9.0.0/16", p["b"])
    t.insert("10.0.0.77/24", p["b"])  # same prefix after masking
    assert t.lookup_str("10.0.0.1") is p["b"]
    assert [str(n) for n in t.entries(p["a"])] == ["10.0.1.0/24"]
    assert [str(n) for n in t.entries(p["b"])] == ["10.9.0.0/16", "10.0.0.0/24"]
    assert len(t) == 3


def test_reinsert_by_same_owner_moves_to_end() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    for cidr in ("10.0.0.0/8", "fd00::/8", "192.168.0.0/16"):
        t.insert(cidr, a)
    t.insert("10.0.0.0/8", a)
    assert [str(n) for n in t.entries(a)] == ["fd00::/8", "192.168.0.0/16", "10.0.0.0/8"]
    assert len(t) == 3


def test_entries_interleave_families_in_insertion_order() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    order = ["fd00::/64", "10.0.0.0/8", "::/0", "192.168.1.1/32", "2001:db8::/32"]
    for cidr in order:
        t.insert(cidr, a)
    assert [str(n) for n in t.entries(a)] == order
    assert all(isinstance(n, IPv4Network | IPv6Network) for n in t.entries(a))


def test_owners_compared_by_identity() -> None:
    a, b = Peer("a"), Peer("b")
    assert a == b  # equal but distinct
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/8", a)
    assert not t.remove("10.0.0.0/8", b)
    assert t.entries(b) == []
    t.insert("10.0.0.0/8", b)  # moves, although a == b
    assert t.lookup_str("10.1.1.1") is b
    assert t.entries(a) == []


def test_remove_only_by_owner() -> None:
    p = _peers("ab")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/24", p["a"])
    t.insert("10.0.0.0/16", p["b"])
    assert not t.remove("10.0.0.0/24", p["b"])
    assert t.lookup_str("10.0.0.5") is p["a"]
    assert not t.remove("10.0.0.0/25", p["a"])  # not an exact prefix held
    assert not t.remove("fd00::/8", p["a"])
    assert t.remove("10.0.0.9/24", p["a"])  # masked like insert
    assert t.lookup_str("10.0.0.5") is p["b"]  # falls back to the shorter prefix
    assert not t.remove("10.0.0.0/24", p["a"])
    assert t.entries(p["a"]) == []
    assert len(t) == 1


def test_remove_by_owner_leaves_others() -> None:
    p = _peers("ab")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/8", p["a"])
    t.insert("fd00::/8", p["a"])
    t.insert("10.1.0.0/16", p["b"])
    t.remove_by_owner(p["a"])
    assert t.lookup_str("10.2.0.1") is None
    assert t.lookup_str("fd00::1") is None
    assert t.lookup_str("10.1.0.1") is p["b"]
    assert t.entries(p["a"]) == []
    assert len(t) == 1
    t.remove_by_owner(p["a"])  # idempotent
    assert len(t) == 1


def test_network_objects_accepted() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(ip_network("10.0.0.0/8"), a)
    t.insert(ip_network("fd00::/16"), a)
    assert t.lookup(bytes([10, 9, 8, 7])) is a
    assert t.lookup(memoryview(ipaddress.ip_address("fd00::5").packed)) is a
    assert t.remove(ip_network("10.0.0.0/8"), a)
    assert t.lookup(bytes([10, 9, 8, 7])) is None


def test_lookup_rejects_wrong_length() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        t.lookup(b"\x0a\x00\x00")


def test_none_owner_rejected() -> None:
    t: AllowedIPs[Peer | None] = AllowedIPs()
    with pytest.raises(TypeError):
        t.insert("10.0.0.0/8", None)


def test_capacity() -> None:
    p = _peers("ab")
    t: AllowedIPs[Peer] = AllowedIPs(max_entries=3)
    for cidr in ("10.0.0.0/8", "fd00::/8", "192.168.0.0/16"):
        t.insert(cidr, p["a"])
    with pytest.raises(CapacityError):
        t.insert("172.16.0.0/12", p["a"])
    assert t.lookup_str("172.16.0.1") is None
    t.insert("10.0.0.0/8", p["b"])  # a move does not grow the table: allowed when full
    assert t.lookup_str("10.0.0.1") is p["b"]
    assert t.remove("fd00::/8", p["a"])
    t.insert("172.16.0.0/12", p["a"])
    assert len(t) == 3


@pytest.mark.parametrize(
    "bad", ["10.0.0.0/33", "nonsense", "1.2.3.4/-1", "::/129", "10.0.0/8", "256.0.0.0/8", ""]
)
def test_bad_cidr_message(bad: str) -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(ConfigError, match="invalid allowed IP") as info:
        t.insert(bad, Peer("a"))
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert len(t) == 0
    with pytest.raises(ConfigError):
        t.remove(bad, Peer("a"))


def test_bad_address_string() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(ConfigError, match="invalid IP address"):
        t.lookup_str("10.0.0.300")


# --- brute-force model ------------------------------------------------------------------------

# Addresses are a few fixed bases with at most two bits flipped, so random prefixes nest and
# branch (prefixes of one base form a chain; a flipped bit forks it) and longest-prefix
# matching among owners is exercised in almost every example.
_V4_BASES = [0x0A010203, 0xC0A80401, 0x00000000, 0xFFFFFFFF]
_V6_BASES = [0x2607_5300_6D8A_6BF8_DAB1_F1DF_C05F_1523, 0xFD00 << 112, 0, (1 << 128) - 1]


def _near(bases: list[int], bits: int) -> st.SearchStrategy[int]:
    flip = st.one_of(st.just(0), st.integers(0, bits - 1).map(lambda k: 1 << k))
    return st.builds(lambda b, f1, f2: b ^ f1 ^ f2, st.sampled_from(bases), flip, flip)


_v4_addr = _near(_V4_BASES, 32)
_v6_addr = _near(_V6_BASES, 128)
_net = st.one_of(
    st.tuples(st.just(4), _v4_addr, st.integers(0, 32)),
    st.tuples(st.just(6), _v6_addr, st.integers(0, 128)),
)
# (kind selector, new prefix, history index, owner index, pass a network object?). The
# selector weights the kinds: 0-5 insert a new prefix, 6 re-insert an earlier one (a move when
# the owner differs), 7-8 remove an earlier one, 9 remove everything of an owner.
_op = st.tuples(st.integers(0, 9), _net, st.integers(0, 50), st.integers(0, 3), st.booleans())


def _cidr(version: int, addr: int, plen: int) -> str:
    return f"{ipaddress.ip_address(addr if version == 4 else addr.to_bytes(16, 'big'))}/{plen}"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_op, min_size=3, max_size=40),
    st.lists(st.one_of(_v4_addr.map(lambda a: (4, a)), _v6_addr.map(lambda a: (6, a)))),
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 2**128 - 1))),
)
def test_matches_brute_force_model(
    ops: list[tuple[int, tuple[int, int, int], int, int, bool]],
    probes: list[tuple[int, int]],
    inner: list[tuple[int, int]],
) -> None:
    owners = [Peer(str(i)) for i in range(4)]
    t: AllowedIPs[Peer] = AllowedIPs()
    model: dict[Network, int] = {}  # masked network -> owner index; dict order irrelevant
    order: list[list[Network]] = [[] for _ in owners]
    history: list[tuple[int, int, int]] = []

    for selector, new_spec, idx, o, as_object in ops:
        if selector == 9:
            t.remove_by_owner(owners[o])
            for net in order[o]:
                del model[net]
            order[o] = []
            continue
        if selector <= 5:
            history.append(new_spec)
            spec = new_spec
        elif history:
            spec = history[idx % len(history)]
        else:
            continue
        cidr = _cidr(*spec)
        net = ip_network(cidr, strict=False)  # the oracle masks with ipaddress itself
        arg = net if as_object else cidr
        if selector >= 7:
            expected = model.get(net) == o
            assert t.remove(arg, owners[o]) is expected
            if expected:
                del model[net]
                order[o].remove(net)
        else:
            if net in model:
                order[model[net]].remove(net)
            model[net] = o
            order[o].append(net)
            t.insert(arg, owners[o])

    assert len(t) == len(model)
    for i, owner in enumerate(owners):
        assert t.entries(owner) == order[i]

    # random addresses, plus addresses inside inserted prefixes (random host bits)
    addrs = [ipaddress.ip_address(a if v == 4 else a.to_bytes(16, "big")) for v, a in probes]
    for idx, noise in inner:
        if history:
            v, a, plen = history[idx % len(history)]
            bits = 32 if v == 4 else 128
            host = noise & ((1 << (bits - plen)) - 1)
            a = ((a >> (bits - plen) << (bits - plen)) if plen else 0) | host
            addrs.append(ipaddress.ip_address(a if v == 4 else a.to_bytes(16, "big")))
    for addr in addrs:
        matches = [net for net in model if addr.version == net.version and addr in net]
        best = max(matches, key=lambda n: n.prefixlen) if matches else None
        want = owners[model[best]] if best is not None else None
        assert t.lookup(addr.packed) is want, addr
        assert t.lookup_str(str(addr)) is want, addr
