"""UAPI codec: request framing, ``set`` validation, ``get`` formatting (protocol doc §8)."""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgpy.core import uapi
from wgpy.core.errors import UapiError
from wgpy.core.uapi import (
    MAX_REQUEST_SIZE,
    REMOVE_KEY,
    ZERO_KEY,
    DeviceSnapshot,
    PeerSnapshot,
    PeerUpdate,
    RawRequest,
    RequestFailed,
    RequestReader,
    SetRequest,
    format_endpoint,
    format_errno,
    format_get,
    format_network,
    format_set,
    parse_endpoint,
    parse_get,
    parse_prefix,
    parse_set,
)

net = ipaddress.ip_network
K0 = bytes(range(32))
K1 = bytes([1] * 32)
K2 = bytes([2] * 32)
K3 = bytes([3] * 32)

# Captured from wireguard-tools v1.0.20210914 (`wg`) talking to a test socket on this machine
# type; the config file had FwMark = 0x10, AllowedIPs = 10.1.2.3/16, fd00::1/64.
WG_SETCONF = (
    b"set=1\nprivate_key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    b"listen_port=1234\nfwmark=16\nreplace_peers=true\n"
    b"public_key=0202020202020202020202020202020202020202020202020202020202020202\n"
    b"preshared_key=0303030303030303030303030303030303030303030303030303030303030303\n"
    b"endpoint=[::1]:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
    b"allowed_ip=10.1.2.3/16\nallowed_ip=fd00::1/64\n\n"
)
WG_ADDCONF = WG_SETCONF.replace(b"replace_peers=true\n", b"")
WG_SYNCCONF = WG_ADDCONF.replace(
    b"fwmark=16\n",
    b"fwmark=16\npublic_key=0101010101010101010101010101010101010101010101010101010101010101\n"
    b"remove=true\n",
)
# wg set IF listen-port 0 fwmark off peer K2 allowed-ips 10.0.0.1/8,::/0
#   endpoint 127.0.0.1:5 persistent-keepalive off
WG_SET = (
    b"set=1\nlisten_port=0\nfwmark=0\n"
    b"public_key=0202020202020202020202020202020202020202020202020202020202020202\n"
    b"endpoint=127.0.0.1:5\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\n"
    b"allowed_ip=10.0.0.1/8\nallowed_ip=::/0\n\n"
)
WG_SET_REMOVE = (
    b"set=1\npublic_key=0101010101010101010101010101010101010101010101010101010101010101\n"
    b"remove=true\n\n"
)
WG_SET_NO_PRIVATE_KEY = b"set=1\nprivate_key=" + b"0" * 64 + b"\n\n"


def _one_set(raw: bytes) -> SetRequest:
    items = RequestReader().feed(raw)
    assert len(items) == 1
    item = items[0]
    assert isinstance(item, RawRequest) and item.op == "set"
    return parse_set(item.lines)


# --- what wg sends -----------------------------------------------------------------------------


def test_wg_setconf() -> None:
    req = _one_set(WG_SETCONF)
    assert req.private_key == K0
    assert req.listen_port == 1234
    assert req.fwmark == 16
    assert req.replace_peers is True
    assert req.peers == [
        PeerUpdate(
            public_key=K2,
            preshared_key=K3,
            endpoint=("::1", 51820),
            persistent_keepalive_interval=25,
            allowed_ip_ops=[
                ("replace", None),
                ("add", net("10.1.0.0/16")),  # masked
                ("add", net("fd00::/64")),
            ],
        )
    ]


def test_wg_addconf_has_no_replace_peers() -> None:
    req = _one_set(WG_ADDCONF)
    assert req.replace_peers is False
    assert [p.public_key for p in req.peers] == [K2]


def test_wg_syncconf_removes_vanished_peer() -> None:
    req = _one_set(WG_SYNCCONF)
    assert req.replace_peers is False
    assert [(p.public_key, p.remove) for p in req.peers] == [(K1, True), (K2, False)]
    assert req.peers[0].allowed_ip_ops == []
    assert req.peers[1].allowed_ip_ops[0] == ("replace", None)


def test_wg_set() -> None:
    req = _one_set(WG_SET)
    assert (req.listen_port, req.fwmark, req.private_key) == (0, 0, None)
    (p,) = req.peers
    assert p.endpoint == ("127.0.0.1", 5)
    assert p.persistent_keepalive_interval == 0
    assert p.allowed_ip_ops == [("replace", None), ("add", net("10.0.0.0/8")), ("add", net("::/0"))]


def test_wg_set_remove_peer() -> None:
    (p,) = _one_set(WG_SET_REMOVE).peers
    assert (p.public_key, p.remove, p.update_only) == (K1, True, False)


def test_zero_private_key_means_remove() -> None:
    req = _one_set(WG_SET_NO_PRIVATE_KEY)
    assert req.private_key is REMOVE_KEY


def test_empty_set_is_a_no_op() -> None:
    assert _one_set(b"set=1\n\n") == SetRequest()


# --- set semantics -----------------------------------------------------------------------------


def _lines(*pairs: str) -> list[str]:
    return list(pairs)


def test_allowed_ip_ops_keep_order_and_mask() -> None:
    req = parse_set(
        _lines(
            f"public_key={K1.hex()}",
            "allowed_ip=192.95.5.93/27",
            "allowed_ip=-10.0.0.7/8",
            "replace_allowed_ips=true",
            "allowed_ip=2607:5300:6d8a:6bf8:dab1:f1df:c05f:1523/83",
            "allowed_ip=2607:5300:6d8a:6bf8:dab1:f1df:c05f:1523/21",
            "allowed_ip=0.0.0.0/0",
            "allowed_ip=-::/0",
        )
    )
    assert req.peers[0].allowed_ip_ops == [
        ("add", net("192.95.5.64/27")),
        ("remove", net("10.0.0.0/8")),
        ("replace", None),
        ("add", net("2607:5300:6d8a:6bf8:dab1:e000::/83")),
        ("add", net("2607:5000::/21")),
        ("add", net("0.0.0.0/0")),
        ("remove", net("::/0")),
    ]


def test_peer_sections_are_separate_and_ordered() -> None:
    req = parse_set(
        _lines(
            f"public_key={K1.hex()}",
            "endpoint=1.2.3.4:1",
            f"public_key={K2.hex()}",
            "update_only=true",
            "protocol_version=1",
            f"preshared_key={ZERO_KEY.hex()}",
            f"public_key={K1.hex()}",
            "persistent_keepalive_interval=65535",
        )
    )
    assert [p.public_key for p in req.peers] == [K1, K2, K1]
    assert req.peers[0].endpoint == ("1.2.3.4", 1)
    assert req.peers[0].persistent_keepalive_interval is None
    assert req.peers[1].update_only and req.peers[1].protocol_version == 1
    assert req.peers[1].preshared_key == ZERO_KEY  # "no PSK", passed through as given
    assert req.peers[2].persistent_keepalive_interval == 65535
    assert req.peers[2].endpoint is None


def test_lines_after_remove_are_validated_but_ignored() -> None:
    req = parse_set(
        _lines(
            f"public_key={K1.hex()}",
            "allowed_ip=10.0.0.0/8",
            "remove=true",
            "allowed_ip=10.1.0.0/16",
            "endpoint=1.1.1.1:1",
            f"public_key={K2.hex()}",
            "endpoint=2.2.2.2:2",
        )
    )
    p1, p2 = req.peers
    assert p1.remove and p1.allowed_ip_ops == [("add", net("10.0.0.0/8"))]
    assert p1.endpoint is None
    assert p2.endpoint == ("2.2.2.2", 2) and not p2.remove
    with pytest.raises(UapiError) as ei:
        parse_set(_lines(f"public_key={K1.hex()}", "remove=true", "endpoint=bogus"))
    assert ei.value.errno == errno.EINVAL


def test_device_keys_last_wins_and_uppercase_hex() -> None:
    req = parse_set(
        _lines(f"private_key={K0.hex()}", f"private_key={K1.hex().upper()}", "fwmark=4294967295")
    )
    assert req.private_key == K1
    assert req.fwmark == 2**32 - 1
    req = parse_set(_lines(f"private_key={K0.hex()}", f"private_key={ZERO_KEY.hex()}"))
    assert req.private_key is REMOVE_KEY


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.3.4:51820", ("1.2.3.4", 51820)),
        ("1.2.3.4:0", ("1.2.3.4", 0)),
        ("1.2.3.4:065535", ("1.2.3.4", 65535)),  # ParseUint allows leading zeros
        ("[::1]:1", ("::1", 1)),
        ("[2001:DB8:0:0:0:0:0:1]:5", ("2001:db8::1", 5)),
        ("[fe80::1%eth0]:51820", ("fe80::1%eth0", 51820)),
        ("[::ffff:1.2.3.4]:9", ("::ffff:1.2.3.4", 9)),
    ],
)
def test_parse_endpoint_ok(value: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(value) == expected
    host, port = expected
    assert parse_endpoint(format_endpoint(host, port)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "1.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4:+5",
        "1.2.3.4: 5",
        "::1:51820",
        "[1.2.3.4]:5",
        "[::1]5",
        "[::1]:",
        "example.com:51820",
        "01.2.3.4:5",
        "1.2.3:5",
        "[fe80::1%]:5",
        "",
    ],
)
def test_parse_endpoint_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(value)
    with pytest.raises(UapiError) as ei:
        parse_set(_lines(f"public_key={K1.hex()}", f"endpoint={value}"))
    assert ei.value.errno == errno.EINVAL
    assert "line 2" in str(ei.value)


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.0",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/08",
        "10.0.0.0/+8",
        "10.0.0.0/",
        "/8",
        "10.0.0.0/255.0.0.0",
        "fe80::1%eth0/64",
        "10.0.0/8",
        "--10.0.0.0/8",
        "10.0.0.0/8 ",
    ],
)
def test_parse_prefix_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_prefix(value.removeprefix("-"))
    with pytest.raises(UapiError) as ei:
        parse_set(_lines(f"public_key={K1.hex()}", f"allowed_ip={value}"))
    assert ei.value.errno == errno.EINVAL


# --- every errno path --------------------------------------------------------------------------

BAD_SETS: list[tuple[list[str], int, str]] = [
    (["listen_port"], errno.EPROTO, "line 1: line without '='"),
    ([f"public_key={K1.hex()}", "endpoint"], errno.EPROTO, "line 2"),
    ([""], errno.EPROTO, "empty line"),
    (["foo=bar"], errno.EINVAL, "invalid UAPI device key: 'foo'"),
    (["private_key=00"], errno.EINVAL, "private_key: 64 hex digits"),
    (["private_key=" + "g" * 64], errno.EINVAL, "private_key"),
    (["private_key=" + "0" * 63 + " "], errno.EINVAL, "private_key"),
    (["private_key= " + "0" * 64], errno.EINVAL, "private_key"),
    (["listen_port=65536"], errno.EINVAL, "listen_port"),
    (["listen_port=-1"], errno.EINVAL, "listen_port"),
    (["listen_port="], errno.EINVAL, "listen_port"),
    (["listen_port=0x10"], errno.EINVAL, "listen_port"),
    (["listen_port=\u0661"], errno.EINVAL, "listen_port"),  # Arabic-Indic digit one
    (["fwmark=4294967296"], errno.EINVAL, "fwmark"),
    # more digits than Python's int() takes (4300): a UAPI error, not a ValueError (issue 16)
    (["listen_port=" + "9" * 4301], errno.EINVAL, "listen_port"),
    (["fwmark=" + "1" * 5000], errno.EINVAL, "fwmark"),
    ([f"public_key={K1.hex()}", "persistent_keepalive_interval=" + "7" * 4400], errno.EINVAL, "p"),
    ([f"public_key={K1.hex()}", "endpoint=192.0.2.1:" + "5" * 4400], errno.EINVAL, "endpoint"),
    (["fwmark=0x10"], errno.EINVAL, "fwmark"),
    (["replace_peers=false"], errno.EINVAL, "replace_peers"),
    (["replace_peers=TRUE"], errno.EINVAL, "replace_peers"),
    (["public_key=zz"], errno.EINVAL, "public_key"),
    ([f"public_key={K1.hex()}", "listen_port=1"], errno.EINVAL, "invalid UAPI peer key"),
    ([f"public_key={K1.hex()}", "bogus=1"], errno.EINVAL, "invalid UAPI peer key: 'bogus'"),
    ([f"public_key={K1.hex()}", "update_only=1"], errno.EINVAL, "update_only"),
    ([f"public_key={K1.hex()}", "remove=yes"], errno.EINVAL, "remove"),
    ([f"public_key={K1.hex()}", "preshared_key=1"], errno.EINVAL, "preshared_key"),
    ([f"public_key={K1.hex()}", "persistent_keepalive_interval=65536"], errno.EINVAL, "persist"),
    ([f"public_key={K1.hex()}", "replace_allowed_ips=false"], errno.EINVAL, "replace_allowed"),
    ([f"public_key={K1.hex()}", "protocol_version=2"], errno.EINVAL, "protocol_version"),
    ([f"public_key={K1.hex()}", "protocol_version="], errno.EINVAL, "protocol_version"),
    ([f"public_key={K1.hex()}", "allowed_ip=x"], errno.EINVAL, "allowed_ip"),
    ([f"public_key={K1.hex()}", "Allowed_IP=10.0.0.0/8"], errno.EINVAL, "peer key"),  # exact case
]


@pytest.mark.parametrize(("lines", "code", "message"), BAD_SETS)
def test_set_errors(lines: list[str], code: int, message: str) -> None:
    with pytest.raises(UapiError) as ei:
        parse_set(lines)
    assert ei.value.errno == code
    assert message in str(ei.value)


def test_leading_zeros_are_read_as_go_reads_them() -> None:
    """strconv.ParseUint takes leading zeros, however many: so does the parser."""
    req = parse_set(["listen_port=" + "0" * 5000 + "51820", "fwmark=" + "0" * 4400])
    assert req.listen_port == 51820 and req.fwmark == 0


def test_error_messages_never_contain_keys() -> None:
    secret = secrets.token_bytes(32).hex()
    for lines in (
        [f"private_key={secret}x"],
        [f"public_key={K1.hex()}", f"preshared_key={secret[:-1]}"],
        [f"private_key={secret}", f"public_key={K1.hex()}", "bogus=1"],
    ):
        with pytest.raises(UapiError) as ei:
            parse_set(lines)
        assert secret[:40] not in str(ei.value)


def test_first_error_wins_and_nothing_is_returned() -> None:
    """Validation is all-or-nothing: a bad line late in the request fails the whole request."""
    lines = [f"private_key={K0.hex()}", "replace_peers=true", f"public_key={K1.hex()}", "oops"]
    with pytest.raises(UapiError) as ei:
        parse_set(lines)
    assert ei.value.errno == errno.EPROTO and "line 4" in str(ei.value)


# --- format_set round trip ---------------------------------------------------------------------


def test_format_set_round_trips_wg_requests() -> None:
    for raw in (WG_SETCONF, WG_ADDCONF, WG_SYNCCONF, WG_SET, WG_SET_REMOVE, WG_SET_NO_PRIVATE_KEY):
        req = _one_set(raw)
        assert _one_set(format_set(req).encode()) == req


# --- get ---------------------------------------------------------------------------------------


def _snapshot() -> DeviceSnapshot:
    return DeviceSnapshot(
        private_key=K0,
        listen_port=51820,
        fwmark=0,
        peers=[
            PeerSnapshot(
                public_key=K1,
                preshared_key=K3,
                endpoint="192.0.2.1:51820",
                last_handshake_time_sec=1700000000,
                last_handshake_time_nsec=123456789,
                tx_bytes=1234,
                rx_bytes=5678,
                persistent_keepalive_interval=25,
                allowed_ips=[net("10.1.0.0/16"), net("fd00::/64")],
            ),
            PeerSnapshot(public_key=K2),
        ],
    )


def test_format_get_exact_wireguard_go_layout() -> None:
    assert format_get(_snapshot()) == (
        f"private_key={K0.hex()}\n"
        "listen_port=51820\n"
        f"public_key={K1.hex()}\n"
        f"preshared_key={K3.hex()}\n"
        "protocol_version=1\n"
        "endpoint=192.0.2.1:51820\n"
        "last_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=123456789\n"
        "tx_bytes=1234\n"
        "rx_bytes=5678\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=10.1.0.0/16\n"
        "allowed_ip=fd00::/64\n"
        f"public_key={K2.hex()}\n"
        f"preshared_key={ZERO_KEY.hex()}\n"
        "protocol_version=1\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
        "errno=0\n\n"
    )


def test_format_get_omits_unset_device_fields() -> None:
    assert format_get(DeviceSnapshot()) == "errno=0\n\n"
    assert format_get(DeviceSnapshot(private_key=ZERO_KEY, fwmark=7)) == "fwmark=7\nerrno=0\n\n"


def test_format_get_masks_and_formats_like_go() -> None:
    snap = DeviceSnapshot(
        peers=[
            PeerSnapshot(
                public_key=K1,
                allowed_ips=[
                    ipaddress.ip_network("10.1.2.3/16", strict=False),
                    net("::ffff:10.0.0.0/104"),
                    net("2001:db8:0:0:1::/80"),
                    net("2001:db8:0:0:1:0:0:1/128"),
                ],
            )
        ]
    )
    text = format_get(snap)
    assert "allowed_ip=10.1.0.0/16\n" in text
    assert "allowed_ip=::ffff:10.0.0.0/104\n" in text
    assert "allowed_ip=2001:db8:0:0:1::/80\n" in text  # longest zero run compressed
    assert "allowed_ip=2001:db8::1:0:0:1/128\n" in text  # first of equal runs (RFC 5952)
    assert format_network(net("::/0")) == "::/0"


def test_get_round_trip() -> None:
    snap = _snapshot()
    assert parse_get(format_get(snap)) == snap


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("errno=-22\n\n", errno.EINVAL),
        ("listen_port=1\n", errno.EPROTO),  # no errno line
        ("garbage\nerrno=0\n\n", errno.EPROTO),
        ("listen_port=x\nerrno=0\n\n", errno.EPROTO),
        ("errno=0\n\nextra", errno.EPROTO),
        ("public_key=12\nerrno=0\n\n", errno.EINVAL),
    ],
)
def test_parse_get_errors(text: str, code: int) -> None:
    with pytest.raises(UapiError) as ei:
        parse_get(text)
    assert ei.value.errno == code


def test_format_errno() -> None:
    assert format_errno(0) == "errno=0\n\n"
    assert format_errno(errno.EINVAL) == "errno=-22\n\n"
    assert format_errno(-errno.EPROTO) == "errno=-71\n\n"
    assert format_errno(errno.EADDRINUSE) == "errno=-98\n\n"


# --- RequestReader -----------------------------------------------------------------------------


def test_reader_several_requests_one_connection() -> None:
    r = RequestReader()
    items = r.feed(b"get=1\n\n" + WG_SET_REMOVE + b"get=1\n\n")
    assert items == [
        RawRequest("get", []),
        RawRequest("set", [f"public_key={K1.hex()}", "remove=true"]),
        RawRequest("get", []),
    ]
    assert items[0] == ("get", [])  # plain tuples compare equal too
    assert r.idle and not r.closed


def test_reader_byte_by_byte() -> None:
    r = RequestReader()
    stream = WG_SYNCCONF + b"get=1\n\n"
    got: list[RawRequest | RequestFailed] = []
    for i in range(len(stream)):
        got.extend(r.feed(stream[i : i + 1]))
        if i < len(WG_SYNCCONF) - 1:
            assert got == []
            assert not r.idle or i == -1
    assert [g.op for g in got if isinstance(g, RawRequest)] == ["set", "get"]
    assert r.idle


def test_reader_probe_connection_yields_nothing() -> None:
    r = RequestReader()
    assert r.feed(b"") == []
    assert r.idle and not r.closed


def test_reader_get_with_trailing_bytes_is_einval() -> None:
    r = RequestReader()
    (item,) = r.feed(b"get=1\nx\n")
    assert isinstance(item, RequestFailed)
    assert item.errno == errno.EINVAL and item.reply
    assert r.closed
    assert r.feed(b"get=1\n\n") == []


def test_reader_unknown_operation_closes_without_reply() -> None:
    r = RequestReader()
    first, second = r.feed(b"get=1\n\nhello=1\n")
    assert first == ("get", [])
    assert isinstance(second, RequestFailed) and not second.reply and r.closed
    (item,) = RequestReader().feed(b"GET=1\n\n")
    assert isinstance(item, RequestFailed) and not item.reply


def test_reader_size_cap() -> None:
    r = RequestReader(max_request_size=64)
    (item,) = r.feed(b"set=1\n" + b"allowed_ip=10.0.0.0/8\n" * 3)
    assert isinstance(item, RequestFailed) and item.errno == errno.EMSGSIZE
    # a single endless line also trips the cap before any newline arrives
    r = RequestReader(max_request_size=64)
    assert r.feed(b"set=1\n" + b"a" * 50) == []
    (item,) = r.feed(b"a" * 20)
    assert isinstance(item, RequestFailed) and item.errno == errno.EMSGSIZE
    # the cap is per request, not per connection
    r = RequestReader(max_request_size=len(WG_SETCONF))
    items = r.feed(WG_SETCONF * 3)
    assert len(items) == 3 and all(isinstance(i, RawRequest) for i in items)
    assert MAX_REQUEST_SIZE == 1 << 20


def test_reader_lines_are_not_trimmed() -> None:
    (item,) = RequestReader().feed(b"set=1\nlisten_port=1 \n\n")
    assert isinstance(item, RawRequest)
    assert item.lines == ["listen_port=1 "]
    with pytest.raises(UapiError):
        parse_set(item.lines)


def test_reader_non_ascii_bytes_fail_validation_not_decoding() -> None:
    (item,) = RequestReader().feed(b"set=1\nlisten_port=\xff\n\n")
    assert isinstance(item, RawRequest)
    with pytest.raises(UapiError) as ei:
        parse_set(item.lines)
    assert ei.value.errno == errno.EINVAL


@given(st.binary(max_size=300))
def test_fuzz_reader_and_parser_raise_only_uapi_errors(data: bytes) -> None:
    for item in RequestReader(max_request_size=200).feed(b"set=1\n" + data):
        if isinstance(item, RawRequest):
            try:
                parse_set(item.lines)
            except UapiError as exc:
                assert exc.errno in (errno.EINVAL, errno.EPROTO)


# --- live: the real `wg` against a socket served with this codec --------------------------------


@pytest.fixture
def uapi_socket() -> Iterator[tuple[str, list[bytes]]]:
    """A tiny UAPI server on /var/run/wireguard/<unique>.sock replying with _snapshot()."""
    if shutil.which("wg") is None or os.geteuid() != 0:
        pytest.skip("needs root and the wg tool")
    name = f"wgpyu{secrets.token_hex(4)}"
    rundir = Path("/var/run/wireguard")
    rundir.mkdir(mode=0o755, exist_ok=True)
    path = rundir / f"{name}.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen()
    srv.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5.0)
                reader = RequestReader()
                while data := conn.recv(65536):
                    for item in reader.feed(data):
                        if isinstance(item, RequestFailed):
                            conn.sendall(format_errno(item.errno).encode())
                        elif item.op == "get":
                            conn.sendall(format_get(_snapshot()).encode())
                        else:
                            received.append(format_set(parse_set(item.lines)).encode())
                            conn.sendall(format_errno(0).encode())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield name, received
    finally:
        stop.set()
        th.join(5.0)
        srv.close()
        path.unlink(missing_ok=True)


def test_live_wg_reads_our_get_and_sends_parsable_sets(
    uapi_socket: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    name, received = uapi_socket
    out = subprocess.run(
        ["wg", "show", name, "dump"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.splitlines()
    b64 = base64.b64encode
    iface = out[0].split("\t")
    assert iface[0] == b64(K0).decode() and iface[2:] == ["51820", "off"]
    peer = out[1].split("\t")
    assert peer == [
        b64(K1).decode(),
        b64(K3).decode(),
        "192.0.2.1:51820",
        "10.1.0.0/16,fd00::/64",
        "1700000000",
        "5678",
        "1234",
        "25",
    ]
    assert out[2].split("\t")[1:4] == ["(none)", "(none)", "(none)"]

    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[Interface]\nListenPort = 7\n\n[Peer]\nPublicKey = {b64(K2).decode()}\n"
        "AllowedIPs = 10.9.9.9/24\nEndpoint = [fe80::1%lo]:9\n"
    )
    subprocess.run(["wg", "setconf", name, str(conf)], capture_output=True, timeout=10, check=True)
    req = _one_set(received[-1])
    assert req.listen_port == 7 and req.replace_peers
    assert req.peers[0].endpoint == ("fe80::1%lo", 9)
    assert req.peers[0].allowed_ip_ops == [("replace", None), ("add", net("10.9.9.0/24"))]


def test_stats_extension_request_and_reply() -> None:
    reader = uapi.RequestReader()
    assert reader.feed(b"stats=1\n\nget=1\n\n") == [
        uapi.RawRequest("stats", []),
        uapi.RawRequest("get", []),
    ]
    bad = uapi.RequestReader().feed(b"stats=1\nx")
    assert len(bad) == 1 and isinstance(bad[0], uapi.RequestFailed)
    text = uapi.format_stats({"drop_replayed": 3, "peers": 1})
    assert text == "drop_replayed=3\npeers=1\nerrno=0\n\n"
    assert uapi.parse_stats(text) == {"drop_replayed": 3, "peers": 1}
    with pytest.raises(UapiError):
        uapi.parse_stats("errno=-22\n\n")
