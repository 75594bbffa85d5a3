"""The ``tunnels`` Secret key: parsing, every validation message, repr hiding keys, diff."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
import yaml

from wgpy.core.errors import ConfigError
from wgpy.core.keys import generate_private_key, public_key, to_base64
from wgpy.supervisor.config import (
    Forward,
    Tunnel,
    diff,
    find_by_vip,
    parse_tunnel_mapping,
    parse_tunnels,
)

PRIV = generate_private_key()
PRIV_B64 = to_base64(PRIV)
PEER = public_key(generate_private_key())
PEER_B64 = to_base64(PEER)

GOOD = f"""
wg0:
  vip: 198.51.100.7/32
  privateKey: {PRIV_B64}
  peerPublicKey: {PEER_B64}
  peerEndpoint: vpn.example.org:51820
  listenPort: 51820
  allowedIPs: [203.0.113.0/24]
wg1: {{vip: "2001:db8::8/128", privateKey: "{PRIV_B64}", peerPublicKey: "{PEER_B64}",
      peerEndpoint: "[2001:db8::50]:51821", listenPort: 51821,
      allowedIPs: [100.64.0.0/10, "2001:db8:1::/48"],
      forward: [{{port: 6443, protocol: TCP, target: "127.0.0.1:6443"}},
                {{port: 53, protocol: UDP, target: "dns.local:5353"}}]}}
"""


def tunnel(**over: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"vip": "198.51.100.7/32", "privateKey": PRIV_B64,
                         "peerPublicKey": PEER_B64, "peerEndpoint": "192.0.2.50:51820",
                         "listenPort": 51820, "allowedIPs": ["203.0.113.0/24"]}
    for k, v in over.items():
        if v is None:
            t.pop(k, None)
        else:
            t[k] = v
    return t


def text(mapping: dict[str, Any]) -> str:
    return yaml.safe_dump(mapping)


def test_parse_good_config() -> None:
    ts = parse_tunnels(GOOD)
    assert sorted(ts) == ["wg0", "wg1"]
    w0, w1 = ts["wg0"], ts["wg1"]
    assert w0.vip == ipaddress.ip_interface("198.51.100.7/32")
    assert (w0.private_key, w0.peer_public_key) == (PRIV, PEER)
    assert w0.peer_endpoint == ("vpn.example.org", 51820) and w0.listen_port == 51820
    assert w0.allowed_ips == (ipaddress.ip_network("203.0.113.0/24"),) and w0.forward == ()
    assert w1.vip.ip == ipaddress.ip_address("2001:db8::8")
    assert w1.peer_endpoint == ("2001:db8::50", 51821)
    assert w1.allowed_ips[1] == ipaddress.ip_network("2001:db8:1::/48")
    assert w1.forward == (Forward(6443, "TCP", ("127.0.0.1", 6443)),
                          Forward(53, "UDP", ("dns.local", 5353)))
    assert find_by_vip(ts.values(), "198.51.100.7") is w0
    assert find_by_vip(ts.values(), "2001:db8::8/64") is w1
    assert find_by_vip(ts.values(), "198.51.100.9") is None
    # wider prefix and host bits in allowedIPs are accepted (wg masks them)
    t = parse_tunnel_mapping({"wg0": tunnel(vip="10.9.0.1/24", allowedIPs=["203.0.113.9/24"])})
    assert t["wg0"].vip.network == ipaddress.ip_network("10.9.0.0/24")
    assert t["wg0"].allowed_ips == (ipaddress.ip_network("203.0.113.0/24"),)


def test_repr_hides_keys() -> None:
    t = parse_tunnels(GOOD)["wg0"]
    for s in (repr(t), str(t), repr(parse_tunnels(GOOD))):
        assert PRIV_B64 not in s and PRIV_B64[:10] not in s and PRIV.hex()[:16] not in s
        assert PEER_B64 not in s
        assert "(hidden)" in s
    assert "wg0" in repr(t) and "198.51.100.7/32" in repr(t)


CASES: list[tuple[str, Any, str]] = [
    # (description, tunnels mapping or raw text, expected message fragment)
    ("empty mapping", "{}", "tunnels: no tunnel configurations found"),
    ("empty text", "", "tunnels: no tunnel configurations found"),
    ("not a mapping", "- wg0\n- wg1\n", "expected a mapping of interface name to tunnel, got list"),
    ("tunnel not mapping", {"wg0": "x"}, "tunnel wg0: expected a mapping of fields, got str"),
    ("missing vip", {"wg0": tunnel(vip=None)}, 'tunnel wg0: missing required field "vip"'),
    ("missing privateKey", {"wg0": tunnel(privateKey=None)},
     'tunnel wg0: missing required field "privateKey"'),
    ("missing peerPublicKey", {"wg0": tunnel(peerPublicKey="")},
     'tunnel wg0: missing required field "peerPublicKey"'),
    ("missing peerEndpoint", {"wg0": tunnel(peerEndpoint=None)},
     'tunnel wg0: missing required field "peerEndpoint"'),
    ("missing listenPort", {"wg0": tunnel(listenPort=None)},
     'tunnel wg0: missing required field "listenPort"'),
    ("bare vip", {"wg0": tunnel(vip="198.51.100.7")},
     "tunnel wg0: vip '198.51.100.7' must be in CIDR form (e.g. 198.51.100.7/32)"),
    ("bad vip", {"wg0": tunnel(vip="198.51.100.300/32")},
     "tunnel wg0: vip '198.51.100.300/32' is not a valid address/prefix"),
    ("vip not string", {"wg0": tunnel(vip=7)}, "tunnel wg0: vip must be a string, got int"),
    ("short key", {"wg0": tunnel(privateKey="c2VjcmV0")},
     "tunnel wg0: privateKey: not a valid base64 WireGuard key"),
    ("bad base64 peer key", {"wg0": tunnel(peerPublicKey="!" * 43 + "=")},
     "tunnel wg0: peerPublicKey: not a valid base64 WireGuard key"),
    ("endpoint without port", {"wg0": tunnel(peerEndpoint="vpn.example.org")},
     "tunnel wg0: peerEndpoint 'vpn.example.org' must be host:port (port is required)"),
    ("v6 endpoint without brackets", {"wg0": tunnel(peerEndpoint="2001:db8::1:51820")},
     "must be host:port"),
    ("endpoint port 0", {"wg0": tunnel(peerEndpoint="192.0.2.1:0")},
     "tunnel wg0: peerEndpoint port 0 out of range 1..65535"),
    ("listenPort too big", {"wg0": tunnel(listenPort=70000)},
     "tunnel wg0: listenPort 70000 out of range 1..65535"),
    ("listenPort string", {"wg0": tunnel(listenPort="51820")},
     "tunnel wg0: listenPort must be an integer, got str"),
    ("listenPort bool", {"wg0": tunnel(listenPort=True)},
     "tunnel wg0: listenPort must be an integer, got bool"),
    ("bad cidr", {"wg0": tunnel(allowedIPs=["10.0.0.0/8", "10.0.0.0/33"])},
     "tunnel wg0: allowedIPs[1] '10.0.0.0/33' is not a valid CIDR"),
    ("allowedIPs as string", {"wg0": tunnel(allowedIPs="10.0.0.0/8")},
     "tunnel wg0: allowedIPs must be a list of CIDRs"),
    ("long ifname", {"wireguard-tunnel0": tunnel()},
     "tunnel 'wireguard-tunnel0': interface name longer than 15 bytes"),
    ("bad ifname chars", {"wg/0": tunnel()},
     "tunnel 'wg/0': interface name has invalid characters"),
    ("ifname with space", {"wg 0": tunnel()}, "interface name has invalid characters"),
    ("ifname int", {0: tunnel()}, "tunnels: interface name 0 must be a string"),
    ("duplicate listen ports", {"wg0": tunnel(), "wg1": tunnel(vip="198.51.100.8/32",
                                                               allowedIPs=["10.0.0.0/8"])},
     "tunnels wg0 and wg1: duplicate listenPort 51820"),
    ("duplicate vips", {"wg0": tunnel(), "wg1": tunnel(vip="198.51.100.7/24", listenPort=2,
                                                       allowedIPs=["10.0.0.0/8"])},
     "tunnels wg0 and wg1: duplicate VIP 198.51.100.7"),
    ("overlapping allowedIPs", {"wg0": tunnel(), "wg1": tunnel(
        vip="198.51.100.8/32", listenPort=2, allowedIPs=["10.0.0.0/8", "203.0.113.128/25"])},
     "tunnels wg0 and wg1: allowedIPs overlap (203.0.113.0/24 and 203.0.113.128/25)"),
    ("forward bad protocol", {"wg0": tunnel(forward=[{"port": 80, "protocol": "SCTP",
                                                     "target": "127.0.0.1:80"}])},
     "tunnel wg0: forward[0]: protocol 'SCTP' must be TCP or UDP"),
    ("forward missing target", {"wg0": tunnel(forward=[{"port": 80}])},
     'tunnel wg0: forward[0]: missing required field "target"'),
    ("forward bad target", {"wg0": tunnel(forward=[{"port": 80, "target": "127.0.0.1"}])},
     "tunnel wg0: forward[0]: target '127.0.0.1' must be host:port"),
    ("forward bad port", {"wg0": tunnel(forward=[{"port": 0, "target": "a:1"}])},
     "tunnel wg0: forward[0]: port 0 out of range 1..65535"),
    ("forward duplicate", {"wg0": tunnel(forward=[{"port": 80, "target": "a:1"},
                                                  {"port": 80, "target": "b:2"}])},
     "tunnel wg0: forward[1]: duplicate forward TCP port 80"),
    ("forward not list", {"wg0": tunnel(forward={"port": 80})},
     "tunnel wg0: forward must be a list"),
]


@pytest.mark.parametrize(("desc", "data", "msg"), CASES, ids=[c[0] for c in CASES])
def test_error_messages(desc: str, data: Any, msg: str) -> None:
    src = data if isinstance(data, str) else text(data)
    with pytest.raises(ConfigError) as e:
        parse_tunnels(src)
    assert msg in str(e.value), (desc, str(e.value))
    assert PRIV_B64 not in str(e.value) and PEER_B64 not in str(e.value)


def test_key_errors_never_echo_the_value() -> None:
    almost = PRIV_B64[:-2] + "=="          # right length, wrong content
    with pytest.raises(ConfigError) as e:
        parse_tunnels(text({"wg0": tunnel(privateKey=almost)}))
    assert "tunnel wg0: privateKey" in str(e.value) and almost[:20] not in str(e.value)


def test_yaml_syntax_error_reports_line() -> None:
    bad = "wg0:\n  vip: 198.51.100.7/32\n  allowedIPs: [10.0.0.0/8\n  listenPort: 1\n"
    with pytest.raises(ConfigError, match=r"tunnels: YAML syntax error at line \d+"):
        parse_tunnels(bad)
    with pytest.raises(ConfigError, match="at line 3, column"):
        parse_tunnels("wg0:\n  vip: a\n vip: b\n")
    with pytest.raises(ConfigError, match="tunnels: duplicate key 'wg0' at line 3"):
        parse_tunnels(f"wg0: {tunnel()}\nwg1: {{}}\nwg0: {{}}\n".replace("'", '"'))


def test_complex_mapping_key_refused_without_echo() -> None:
    # found by the fuzzer: a mapping used as a key raised TypeError, and its repr could
    # have carried a key into the message
    secret = "YIpz9s6Ia9LLIE/M8lS+9Q+L6RQQ464QEECVqa3zPyc="
    text = f"wg0:\n  vip: 198.51.100.7/32\n? privateKey: {secret}\n  other: 1\n: x\n"
    with pytest.raises(ConfigError, match=r"mapping keys must be plain names \(line 3\)") as e:
        parse_tunnels(text)
    assert secret not in str(e.value)


def test_pod_and_service_cidr_overlap() -> None:
    src = text({"wg0": tunnel(allowedIPs=["10.0.0.0/8", "2001:db8::/32"])})
    with pytest.raises(ConfigError, match=re.escape(
            "tunnel wg0: allowedIPs 10.0.0.0/8 overlaps the pod CIDR 10.244.0.0/16")):
        parse_tunnels(src, pod_cidr="10.244.0.0/16")
    with pytest.raises(ConfigError, match="overlaps the service CIDR 2001:db8:0:1::/108"):
        parse_tunnels(src, pod_cidr="192.168.0.0/16,fd00::/64",
                      service_cidr="172.16.0.0/12,2001:db8:0:1::/108")
    assert parse_tunnels(src, pod_cidr="192.168.0.0/16", service_cidr="172.16.0.0/12")
    with pytest.raises(ConfigError, match="pod CIDR 'nope' is not a valid CIDR list"):
        parse_tunnels(src, pod_cidr="nope")


def test_diff() -> None:
    base = parse_tunnels(GOOD)
    same = parse_tunnels(GOOD)
    assert diff(base, same) == ([], [], [])
    moved = dict(same)
    moved["wg0"] = parse_tunnel_mapping({"wg0": tunnel(peerEndpoint="192.0.2.9:51820",
                                                       vip="198.51.100.7/32")})["wg0"]
    moved["wg2"] = parse_tunnel_mapping({"wg2": tunnel(listenPort=51822)})["wg2"]
    del moved["wg1"]
    assert diff(base, moved) == (["wg2"], ["wg0"], ["wg1"])
    assert diff({}, base) == (["wg0", "wg1"], [], [])
    assert diff(base, {}) == ([], [], ["wg0", "wg1"])
    # a key change alone is a change
    rekeyed = {"wg1": Tunnel(**{**base["wg1"].__dict__, "private_key": b"\x01" * 32})}
    assert diff({"wg1": base["wg1"]}, rekeyed) == ([], ["wg1"], [])


@pytest.mark.parametrize(("field", "hint"), [
    ("allowedIps", 'did you mean "allowedIPs"'),     # the typo that silently dropped routes
    ("peerendpoint", 'did you mean "peerEndpoint"'),
    ("mtu", "known fields: vip"),
])
def test_unknown_tunnel_field_is_an_error_with_a_hint(field: str, hint: str) -> None:
    """Issue 15 point 9: kube-vip ignores unknown keys, so a typo goes unnoticed."""
    with pytest.raises(ConfigError, match=f'tunnel wg0: unknown field "{field}"') as e:
        parse_tunnels(text({"wg0": tunnel(**{field: ["10.0.0.0/8"]})}))
    assert hint in str(e.value) and PRIV_B64 not in str(e.value)


def test_unknown_forward_field_is_an_error() -> None:
    fwd = [{"port": 6443, "protocol": "TCP", "target": "127.0.0.1:6443", "tagret": "x"}]
    with pytest.raises(ConfigError, match=r'forward\[0\]: unknown field "tagret" \(did you'):
        parse_tunnels(text({"wg0": tunnel(forward=fwd)}))
