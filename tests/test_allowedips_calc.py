"""``wgpy allowed-ips``: own interval arithmetic vs :mod:`ipaddress` set arithmetic, known
answers, output formats, and the command line (exit 2 on bad input)."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy.tools import allowed_ips as calc

ROOT = Path(__file__).resolve().parent.parent
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- the independent model: ipaddress set arithmetic ---------------------------------------------


def reference(include: Iterable[Net], exclude: Iterable[Net]) -> list[Net]:
    """include − exclude with address_exclude/collapse_addresses only (no intervals)."""
    pieces: list[Net] = list(include)
    for ex in exclude:
        nxt: list[Net] = []
        for net in pieces:
            if net.version != ex.version or not net.overlaps(ex):
                nxt.append(net)
            elif net.subnet_of(ex):  # type: ignore[arg-type]
                continue
            else:  # ex is strictly inside net
                nxt.extend(net.address_exclude(ex))  # type: ignore[arg-type]
        pieces = nxt
    v4 = [n for n in pieces if n.version == 4]
    v6 = [n for n in pieces if n.version == 6]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]  # type: ignore[list-item]


def networks(version: int, max_prefix: int | None = None) -> st.SearchStrategy[Net]:
    bits = calc.BITS[version]
    top = bits if max_prefix is None else max_prefix

    @st.composite
    def build(draw: st.DrawFn) -> Net:
        prefix = draw(st.integers(0, top))
        addr = draw(st.integers(0, (1 << bits) - 1)) >> (bits - prefix) << (bits - prefix)
        return ipaddress.ip_network((addr, prefix)) if version == 4 else ipaddress.IPv6Network(
            (addr, prefix)
        )

    return build()


def mixed() -> st.SearchStrategy[Net]:
    return st.one_of(networks(4), networks(6))


# -- property tests ------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.lists(mixed(), min_size=0, max_size=6), st.lists(mixed(), max_size=12))
def test_matches_ipaddress_set_arithmetic(include: list[Net], exclude: list[Net]) -> None:
    got = calc.calculate([str(n) for n in include], [str(n) for n in exclude])
    assert got == reference(include, exclude)


@settings(max_examples=300, deadline=None)
@given(st.lists(networks(4, max_prefix=12), min_size=1, max_size=3),
       st.lists(networks(4), min_size=1, max_size=20))
def test_many_small_holes_in_large_blocks(include: list[Net], exclude: list[Net]) -> None:
    # Wide includes with narrow excludes: the case where cover sizes blow up and the sweep
    # has to carry an exclusion across include intervals.
    got = calc.calculate([str(n) for n in include], [str(n) for n in exclude])
    assert got == reference(include, exclude)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_interval_cover_is_exact_and_minimal(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    blocks = calc.interval_to_cidrs(lo, hi, 32)
    nets = [ipaddress.IPv4Network(blk) for blk in blocks]
    # Exact: contiguous, starting at lo, ending at hi.
    assert int(nets[0].network_address) == lo and int(nets[-1].broadcast_address) == hi
    for x, y in itertools.pairwise(nets):
        assert int(x.broadcast_address) + 1 == int(y.network_address)
    # Minimal: the summarize_address_range decomposition is the canonical minimal one.
    assert nets == list(
        ipaddress.summarize_address_range(ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi))
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=10),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=10))
def test_merge_and_subtract_against_python_sets(
    inc: list[tuple[int, int]], exc: list[tuple[int, int]]
) -> None:
    inc_iv = [(lo, lo + w) for lo, w in inc]
    exc_iv = [(lo, lo + w) for lo, w in exc]
    want = {x for lo, hi in inc_iv for x in range(lo, hi + 1)} - {
        x for lo, hi in exc_iv for x in range(lo, hi + 1)
    }
    got = calc.subtract(calc.merge(inc_iv), calc.merge(exc_iv))
    assert {x for lo, hi in got for x in range(lo, hi + 1)} == want
    # Maximal intervals: sorted, never touching (else the CIDR cover would not be minimal).
    for (_, h1), (l2, _) in itertools.pairwise(got):
        assert l2 > h1 + 1


# -- known answers -------------------------------------------------------------------------------


def test_internet_minus_ten_slash_eight_is_eight_cidrs() -> None:
    got = [str(n) for n in calc.calculate(["0.0.0.0/0"], ["10.0.0.0/8"])]
    assert got == [
        "0.0.0.0/5", "8.0.0.0/7", "11.0.0.0/8", "12.0.0.0/6",
        "16.0.0.0/4", "32.0.0.0/3", "64.0.0.0/2", "128.0.0.0/1",
    ]


def test_rfc1918_only_is_the_classic_answer() -> None:
    # The widely published "0.0.0.0/0 minus RFC 1918" AllowedIPs list (31 CIDRs).
    got = calc.calculate(["0.0.0.0/0"], ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])
    assert [str(n) for n in got] == [
        "0.0.0.0/5", "8.0.0.0/7", "11.0.0.0/8", "12.0.0.0/6", "16.0.0.0/4", "32.0.0.0/3",
        "64.0.0.0/2", "128.0.0.0/3", "160.0.0.0/5", "168.0.0.0/6", "172.0.0.0/12",
        "172.32.0.0/11", "172.64.0.0/10", "172.128.0.0/9", "173.0.0.0/8", "174.0.0.0/7",
        "176.0.0.0/4", "192.0.0.0/9", "192.128.0.0/11", "192.160.0.0/13", "192.169.0.0/16",
        "192.170.0.0/15", "192.172.0.0/14", "192.176.0.0/12", "192.192.0.0/10", "193.0.0.0/8",
        "194.0.0.0/7", "196.0.0.0/6", "200.0.0.0/5", "208.0.0.0/4", "224.0.0.0/3",
    ]


def test_ranges_addresses_and_adjacent_includes() -> None:
    assert [str(n) for n in calc.calculate(["10.0.0.5-10.0.0.20"], [])] == [
        "10.0.0.5/32", "10.0.0.6/31", "10.0.0.8/29", "10.0.0.16/30", "10.0.0.20/32",
    ]
    # Two adjacent halves merge into one block; a bare address is a /32 (or /128).
    assert [str(n) for n in calc.calculate(["10.0.0.0/25", "10.0.0.128/25"], [])] == [
        "10.0.0.0/24"
    ]
    assert [str(n) for n in calc.calculate(["192.0.2.1", "2001:db8::1"], [])] == [
        "192.0.2.1/32", "2001:db8::1/128",
    ]


def test_exclusion_of_other_family_or_everything() -> None:
    assert [str(n) for n in calc.calculate(["0.0.0.0/0"], ["::/0"])] == ["0.0.0.0/0"]
    assert calc.calculate(["10.0.0.0/8"], ["0.0.0.0/0"]) == []
    assert [str(n) for n in calc.calculate(["::/0"], ["8000::/1"])] == ["::/1"]


def test_private_sets_are_valid_and_public_space_survives() -> None:
    for cidr, why in calc.PRIVATE_V4 + calc.PRIVATE_V6:
        assert ipaddress.ip_network(cidr, strict=True) and why
    nets = calc.calculate(["0.0.0.0/0", "::/0"], [c for c, _ in calc.PRIVATE_V4 + calc.PRIVATE_V6])

    def covered(a: str) -> bool:
        return any(ipaddress.ip_address(a) in n for n in nets)

    for public in ("1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"):
        assert covered(public)
    for private in ("10.1.2.3", "172.31.0.1", "192.168.1.1", "127.0.0.1", "169.254.1.1",
                    "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "fe80::1",
                    "fd00::1", "ff02::1"):
        assert not covered(private), private


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10.1.2.3/8", "did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("banana", "not a valid CIDR"),
        ("10.0.0.9-10.0.0.1", "first address is after the last"),
        ("10.0.0.1-::1", "mixes IPv4 and IPv6"),
        ("10.0.0.1-x", "FIRST-LAST"),
    ],
)
def test_bad_range_messages(text: str, needle: str) -> None:
    with pytest.raises(calc.RangeError, match=needle):
        calc.parse_range(text)


# -- rendering and the command line --------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = calc.main(list(argv), "wgpy allowed-ips")
    out, err = capsys.readouterr()
    return rc, out, err


def test_yaml_output_pastes_under_allowedips(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--exclude", "10.0.0.0/8", "--indent", "6")
    assert rc == 0
    doc = yaml.safe_load("wg0:\n    allowedIPs:\n" + out)
    assert doc["wg0"]["allowedIPs"] == [str(n) for n in calc.calculate(["0.0.0.0/0"],
                                                                       ["10.0.0.0/8"])]
    # Default (no indent) is also valid YAML directly under the key.
    rc, out, _ = run(capsys, "-x", "10.0.0.0/8")
    assert yaml.safe_load("allowedIPs:\n" + out)["allowedIPs"][0] == "0.0.0.0/5"


def test_csv_and_json_formats(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "-i", "10.0.0.0/8", "-x", "10.0.0.0/9,10.192.0.0/10", "-f", "csv")
    assert rc == 0 and out == "10.128.0.0/10\n"
    rc, out, _ = run(capsys, "-i", "0.0.0.0/0", "-i", "::/0", "--exclude-private",
                     "--pod-cidr", "10.244.0.0/16", "--service-cidr", "fd00:10::/108",
                     "-f", "json")
    assert rc == 0
    got = json.loads(out)
    want = calc.calculate(["0.0.0.0/0", "::/0"], [c for c, _ in calc.PRIVATE_V4 + calc.PRIVATE_V6])
    assert got == [str(n) for n in want]


def test_pod_and_service_cidr_are_excluded(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--pod-cidr", "10.244.0.0/16", "--service-cidr", "10.96.0.0/12",
                     "-f", "json")
    assert rc == 0
    nets = [ipaddress.ip_network(n) for n in json.loads(out)]
    assert not any(n.overlaps(ipaddress.ip_network("10.244.0.0/16")) for n in nets)
    assert not any(n.overlaps(ipaddress.ip_network("10.96.0.0/12")) for n in nets)
    assert ipaddress.ip_network("10.0.0.0/10") in nets  # the rest of 10/8 stays


def test_everything_excluded_warns_and_prints_empty_list(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, err = run(capsys, "-i", "10.0.0.0/8", "-x", "0.0.0.0/0")
    assert rc == 0 and out == "[]\n" and "every included address" in err


@pytest.mark.parametrize(
    "argv",
    [["-x", "10.1.2.3/8"], ["-i", "nope"], ["--format", "xml"], ["--indent", "-1"], ["--bogus"]],
)
def test_bad_input_exits_2_with_message(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == "" and "error" in err


def test_help_lists_the_private_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "100.64.0.0/10" in out and "fe80::/10" in out


def test_registered_in_the_wgpy_cli() -> None:
    from wgpy.tools import cli

    command = cli.find("allowed-ips")
    assert command is not None, "allowed-ips is not registered in wgpy/tools/cli.py"
    assert command.load() is calc.main
    res = subprocess.run(
        [sys.executable, "-m", "wgpy", "allowed-ips", "-x", "10.0.0.0/8", "-f", "csv"],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 0 and res.stdout.startswith("0.0.0.0/5, 8.0.0.0/7")
    bad = subprocess.run(
        [sys.executable, "-m", "wgpy", "allowed-ips", "-x", "300.0.0.0/8"],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert bad.returncode == 2 and "300.0.0.0/8" in bad.stderr
