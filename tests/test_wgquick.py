"""wg-quick config parsing, errors with line numbers, setconf/strip output."""

from __future__ import annotations

import base64
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from wgpy.core.errors import ConfigError
from wgpy.core.uapi import RawRequest, RequestReader, format_set, parse_set
from wgpy.tools.quickconf import (
    PeerConfig,
    WgQuickConfig,
    parse,
    parse_file,
    strip,
    to_set_request,
    to_setconf,
)

K0 = bytes(range(32))
K1 = bytes([1] * 32)
K2 = bytes([2] * 32)
K3 = bytes([3] * 32)


def b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


net = ipaddress.ip_network
iface = ipaddress.ip_interface
ip = ipaddress.ip_address

FULL = f"""\
# wg0 on the gateway
[Interface]
PrivateKey = {b64(K0)}   # comment after a value
ListenPort = 51820
Address = 10.0.0.1/24, fd00::1/64
address=10.0.1.1
MTU = 1380
DNS = 1.1.1.1, 2606:4700:4700::1111, corp.example, lan
Table = 1234
FwMark = 0x10
PreUp = echo pre-up
PostUp = iptables -A FORWARD -i %i -j ACCEPT; echo "two  spaces"
PostUp = echo second
PreDown = echo pre-down
PostDown = echo post-down
SaveConfig = true

[Peer]
PublicKey = {b64(K1)}
PresharedKey = {b64(K3)}
Endpoint = vpn.example.com:51820
AllowedIPs = 10.0.0.2/32, 192.168.7.9/24
AllowedIPs = fd00::2/128
PersistentKeepalive = 25

[PEER]
publickey = {b64(K2)}
endpoint = [2001:db8::1]:443
allowedips = 0.0.0.0/0, ::/0
persistentkeepalive = off
"""


def test_full_config_every_field() -> None:
    cfg = parse(FULL)
    assert cfg.private_key == K0
    assert cfg.listen_port == 51820
    assert cfg.addresses == [iface("10.0.0.1/24"), iface("fd00::1/64"), iface("10.0.1.1/32")]
    assert cfg.mtu == 1380
    assert cfg.dns == [ip("1.1.1.1"), ip("2606:4700:4700::1111")]
    assert cfg.dns_search == ["corp.example", "lan"]
    assert cfg.table == "1234"
    assert cfg.fwmark == 16
    assert cfg.pre_up == ["echo pre-up"]
    assert cfg.post_up == [
        'iptables -A FORWARD -i %i -j ACCEPT; echo "two  spaces"',
        "echo second",
    ]
    assert cfg.pre_down == ["echo pre-down"]
    assert cfg.post_down == ["echo post-down"]
    assert cfg.save_config is True
    p1, p2 = cfg.peers
    assert p1 == PeerConfig(
        public_key=K1,
        preshared_key=K3,
        endpoint=("vpn.example.com", 51820),
        allowed_ips=[net("10.0.0.2/32"), net("192.168.7.0/24"), net("fd00::2/128")],
        persistent_keepalive=25,
    )
    assert p1.line == 18
    assert p2.public_key == K2 and p2.preshared_key is None
    assert p2.endpoint == ("2001:db8::1", 443)
    assert p2.allowed_ips == [net("0.0.0.0/0"), net("::/0")]
    assert p2.persistent_keepalive == 0
    assert p2.line == 26


def test_minimal_config_defaults() -> None:
    cfg = parse(f"[Interface]\nPrivateKey={b64(K0)}\n")
    assert cfg == WgQuickConfig(private_key=K0)
    assert cfg.listen_port is None and cfg.mtu is None and cfg.table is None
    assert cfg.save_config is False and cfg.peers == []


def test_repr_hides_keys() -> None:
    cfg = parse(FULL)
    text = repr(cfg)
    assert b64(K0) not in text and K0.hex() not in text and repr(K0) not in text
    assert repr(K3) not in text  # preshared key hidden too
    assert "vpn.example.com" in text  # the rest is shown


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ("FwMark = off", "fwmark", 0),
        ("FwMark = 010", "fwmark", 10),  # wg: decimal unless 0x (checked against wg)
        ("FwMark = 0XfF", "fwmark", 255),
        ("FwMark = 4294967295", "fwmark", 2**32 - 1),
        ("ListenPort = 0", "listen_port", 0),
        ("ListenPort = 6 5 5 3 5", "listen_port", 65535),  # wg ignores inner whitespace
        ("MTU = 68", "mtu", 68),
        ("Table = off", "table", "off"),
        ("Table = auto", "table", "auto"),
        ("Table = main", "table", "main"),
        ("SaveConfig = FALSE", "save_config", False),
        ("SaveConfig = True", "save_config", True),
        ("Address =", "addresses", []),
        ("DNS = 9.9.9.9 example.org", "dns_search", ["example.org"]),
    ],
)
def test_interface_values(line: str, field: str, expected: object) -> None:
    cfg = parse(f"[Interface]\nPrivateKey = {b64(K0)}\n{line}\n")
    assert getattr(cfg, field) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("AllowedIPs = 10.1.2.3", [net("10.1.2.3/32")]),  # bare address = host route
        ("AllowedIPs = 10.1.2.3 / 32 , 10.2.0.0/16", [net("10.1.2.3/32"), net("10.2.0.0/16")]),
        ("AllowedIPs = fd00::1", [net("fd00::1/128")]),
        ("AllowedIPs = 10.9.8.7/8", [net("10.0.0.0/8")]),
    ],
)
def test_allowed_ips_values(line: str, expected: list[object]) -> None:
    cfg = parse(f"[Interface]\nPrivateKey = {b64(K0)}\n[Peer]\nPublicKey = {b64(K1)}\n{line}\n")
    assert cfg.peers[0].allowed_ips == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.3.4:1", ("1.2.3.4", 1)),
        ("host.example:65535", ("host.example", 65535)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("localhost:51820", ("localhost", 51820)),
    ],
)
def test_endpoint_values(value: str, expected: tuple[str, int]) -> None:
    cfg = parse(
        f"[Interface]\nPrivateKey = {b64(K0)}\n[Peer]\nPublicKey = {b64(K1)}\nEndpoint = {value}\n"
    )
    assert cfg.peers[0].endpoint == expected


def test_comments_blank_lines_crlf_and_repeated_interface() -> None:
    text = (
        "\r\n# top\r\n   \r\n[interface]  # section comment\r\n"
        f"PrivateKey = {b64(K0)}\r\n[Peer]\r\nPublicKey = {b64(K1)}\r\n"
        "[Interface]\r\nListenPort = 7\r\n"
    )
    cfg = parse(text)
    assert cfg.private_key == K0 and cfg.listen_port == 7 and len(cfg.peers) == 1


# --- errors, each with its line number ----------------------------------------------------------

HEAD = f"[Interface]\nPrivateKey = {b64(K0)}\n"  # lines 1-2
PEER = f"[Peer]\nPublicKey = {b64(K1)}\n"  # two more lines

ERRORS: list[tuple[str, str]] = [
    (HEAD + "Foo = 1\n", "line 3: unknown key 'Foo' in [Interface]"),
    (HEAD + PEER + "\n\nFoo = bar\n", "line 7: unknown key 'Foo' in [Peer]"),
    (HEAD + PEER + "ListenPort = 1\n", "line 5: unknown key 'ListenPort' in [Peer]"),
    (HEAD + "PublicKey = x\n", "line 3: unknown key 'PublicKey' in [Interface]"),
    (HEAD + f"PrivateKey {b64(K1)}\n", "line 3: unknown key (not shown) in [Interface]"),
    ("ListenPort = 1\n" + HEAD, "line 1: key 'ListenPort' outside of a section"),
    (HEAD + "[Peers]\n", "line 3: unknown section '[Peers]'"),
    (HEAD + "just words\n", "line 3: expected 'Key = Value'"),
    (HEAD + "= 5\n", "line 3: expected 'Key = Value'"),
    ("[Interface]\nPrivateKey = abc\n", "line 2: PrivateKey: not a valid base64"),
    ("[Interface]\nPrivateKey = " + "A" * 43 + "=x\n", "line 2: PrivateKey"),
    (HEAD + "[Peer]\nPublicKey = " + b64(K1)[:-2] + "\n", "line 4: PublicKey"),
    (HEAD + PEER + "PresharedKey = nope\n", "line 5: PresharedKey"),
    (HEAD + "PrivateKey =\n", "line 3: empty value for PrivateKey"),
    (HEAD + PEER + "AllowedIPs =\n", "line 5: empty value for AllowedIPs"),
    (HEAD + "ListenPort = 65536\n", "line 3: bad port"),
    (HEAD + "ListenPort = http\n", "line 3: bad port"),
    (HEAD + "ListenPort = -1\n", "line 3: bad port"),
    (HEAD + "FwMark = 0x100000000\n", "line 3: bad FwMark"),
    (HEAD + "FwMark = on\n", "line 3: bad FwMark"),
    (HEAD + "FwMark = 0x\n", "line 3: bad FwMark"),
    (HEAD + "MTU = 67\n", "line 3: bad MTU"),
    (HEAD + "MTU = 65536\n", "line 3: bad MTU"),
    (HEAD + "MTU = big\n", "line 3: bad MTU"),
    (HEAD + "Address = 10.0.0.1/33\n", "line 3: bad Address '10.0.0.1/33'"),
    (HEAD + "Address = 10.0.0.1/24,, nope\n", "line 3: bad Address 'nope'"),
    (HEAD + "DNS = 1.1.1\n", "line 3: bad DNS server '1.1.1'"),
    (HEAD + "DNS = fe80:::1\n", "line 3: bad DNS server"),
    (HEAD + "Table = a/b\n", "line 3: bad Table"),
    (HEAD + "SaveConfig = yes\n", "line 3: SaveConfig 'yes' is neither true nor false"),
    (HEAD + PEER + "AllowedIPs = 10.0.0.0/33\n", "line 5: bad CIDR '10.0.0.0/33'"),
    (HEAD + PEER + "AllowedIPs = 10.0.0.0/8,\n", "line 5: bad CIDR ''"),  # wg rejects too
    (HEAD + PEER + "AllowedIPs = 10.0.0.0/x\n", "line 5: bad CIDR"),
    (HEAD + PEER + "AllowedIPs = host.example/32\n", "line 5: bad CIDR"),
    (HEAD + PEER + "Endpoint = 1.2.3.4\n", "line 5: bad Endpoint"),
    (HEAD + PEER + "Endpoint = :51820\n", "line 5: bad Endpoint (empty host)"),
    (HEAD + PEER + "Endpoint = [::1]51820\n", "line 5: bad Endpoint"),
    (HEAD + PEER + "Endpoint = [::1\n", "line 5: bad Endpoint"),
    (HEAD + PEER + "Endpoint = 1.2.3.4:99999\n", "line 5: bad port"),
    (HEAD + PEER + "PersistentKeepalive = 65536\n", "line 5: bad PersistentKeepalive"),
    (HEAD + PEER + "PersistentKeepalive = always\n", "line 5: bad PersistentKeepalive"),
    (
        HEAD + "\n[Peer]\nEndpoint = 1.2.3.4:5\n[Peer]\n" + f"PublicKey = {b64(K2)}\n",
        "line 4: [Peer] has no PublicKey",
    ),
    (HEAD + PEER + "[Peer]\n", "line 5: [Peer] has no PublicKey"),
    ("# nothing\n\n[Interface]\nListenPort = 1\n", "line 3: [Interface] has no PrivateKey"),
    (PEER, "line 1: no [Interface] section"),
    ("", "line 1: no [Interface] section"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors_carry_line_numbers(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse(text)
    assert str(ei.value).startswith(message)


def test_errors_never_echo_key_values() -> None:
    secret = b64(bytes(range(100, 132)))
    for text in (
        f"[Interface]\nPrivateKey = {secret[:-1]}\n",
        f"[Interface]\nPrivateKey {secret}\n",
        f"[Interface]\nPrivateKey = {secret}x\n",
        f"[Interface]\nPrivateKey = {secret}\n[Peer]\nPresharedKey = {secret}!\n",
        f"[Interface]\nPrivKey = {secret}\n",
    ):
        with pytest.raises(ConfigError) as ei:
            parse(text)
        assert secret[:20] not in str(ei.value)


# --- output -------------------------------------------------------------------------------------


def test_to_setconf_canonical_and_round_trips() -> None:
    cfg = parse(FULL)
    out = to_setconf(cfg)
    assert out == (
        "[Interface]\n"
        f"PrivateKey = {b64(K0)}\n"
        "ListenPort = 51820\n"
        "FwMark = 16\n"
        "\n[Peer]\n"
        f"PublicKey = {b64(K1)}\n"
        f"PresharedKey = {b64(K3)}\n"
        "AllowedIPs = 10.0.0.2/32, 192.168.7.0/24, fd00::2/128\n"
        "Endpoint = vpn.example.com:51820\n"
        "PersistentKeepalive = 25\n"
        "\n[Peer]\n"
        f"PublicKey = {b64(K2)}\n"
        "AllowedIPs = 0.0.0.0/0, ::/0\n"
        "Endpoint = [2001:db8::1]:443\n"
        "PersistentKeepalive = off\n"
    )
    again = parse(out)
    assert again.peers == cfg.peers
    assert (again.private_key, again.listen_port, again.fwmark) == (K0, 51820, 16)
    assert again.addresses == [] and again.post_up == []


def test_to_setconf_fwmark_off() -> None:
    out = to_setconf(parse(HEAD + "FwMark = off\n"))
    assert "FwMark = off\n" in out


STRIP_INPUT = (
    "  # leading comment\n[Interface]\n"
    f"  PrivateKey = {b64(K0)} # trailing\n"
    "address = 10.0.0.1/24, fd00::1/64\n\tAddress=10.0.0.2\nDNS = 1.1.1.1, example.com\n"
    'MTU = 1420\nPostUp = echo "a # b" ; true\nSaveConfig = True\nTable = off\n'
    "ListenPort = 51820\n\n[peer]\n"
    f"PublicKey = {b64(K2)}\nAddress = 1.2.3.4\nEndpoint = example.com:51820   \n"
    "AllowedIPs = 0.0.0.0/0\n[Interface]\nMTU=1\nlast line no newline"
)
# `wg-quick strip` (wireguard-tools v1.0.20210914) output for STRIP_INPUT.
STRIP_OUTPUT = (
    "# leading comment\n[Interface]\n"
    f"PrivateKey = {b64(K0)} # trailing\n"
    "ListenPort = 51820\n\n[peer]\n"
    f"PublicKey = {b64(K2)}\nAddress = 1.2.3.4\nEndpoint = example.com:51820\n"
    "AllowedIPs = 0.0.0.0/0\n[Interface]\nlast line no newline\n\n"
)


def test_strip_matches_wg_quick() -> None:
    assert strip(STRIP_INPUT) == STRIP_OUTPUT
    assert strip(STRIP_INPUT + "\n") == STRIP_OUTPUT
    assert strip("[Interface]\nMTU = 1\n   ") == "[Interface]\n\n"


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="needs wg-quick")
@pytest.mark.parametrize("text", [STRIP_INPUT, FULL, STRIP_INPUT + "\n\n  \n", "[Interface]\n"])
def test_strip_against_real_wg_quick(text: str, tmp_path: Path) -> None:
    conf = tmp_path / "wgpys0.conf"
    conf.write_text(text)
    conf.chmod(0o600)
    tmp_path.chmod(0o700)
    real = subprocess.run(
        ["wg-quick", "strip", str(conf)], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert strip(text) == real


# Captured from `wg setconf` (wireguard-tools v1.0.20210914) for the config below.
WG_SETCONF = (
    b"set=1\nprivate_key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    b"listen_port=1234\nfwmark=16\nreplace_peers=true\n"
    b"public_key=0202020202020202020202020202020202020202020202020202020202020202\n"
    b"preshared_key=0303030303030303030303030303030303030303030303030303030303030303\n"
    b"endpoint=[::1]:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
    b"allowed_ip=10.1.2.3/16\nallowed_ip=fd00::1/64\n\n"
)


def test_to_set_request_equals_what_wg_setconf_sends() -> None:
    cfg = parse(
        f"[Interface]\nPrivateKey = {b64(K0)}\nListenPort = 1234\nFwMark = 0x10\n"
        f"[Peer]\nPublicKey = {b64(K2)}\nPresharedKey = {b64(K3)}\nEndpoint = [::1]:51820\n"
        "AllowedIPs = 10.1.2.3/16, fd00::1/64\nPersistentKeepalive = 25\n"
    )
    (raw,) = RequestReader().feed(WG_SETCONF)
    assert isinstance(raw, RawRequest)
    assert to_set_request(cfg) == parse_set(raw.lines)
    assert not to_set_request(cfg, replace_peers=False).replace_peers


def test_to_set_request_names_need_a_resolver() -> None:
    cfg = parse(HEAD + PEER + "Endpoint = vpn.example:5\n")
    with pytest.raises(ConfigError, match=r"line 3: endpoint host 'vpn\.example' needs resolving"):
        to_set_request(cfg)
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> tuple[str, int]:
        calls.append((host, port))
        return ("127.0.0.1", port)

    req = to_set_request(cfg, resolve=resolve)
    assert calls == [("vpn.example", 5)]
    assert req.peers[0].endpoint == ("127.0.0.1", 5)
    assert "endpoint=127.0.0.1:5\n" in format_set(req)


def test_parse_file(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(FULL)
    assert parse_file(str(path)) == parse(FULL)
