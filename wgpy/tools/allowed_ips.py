"""``wgpy allowed-ips``: the AllowedIPs calculator kube-vip's docs send users online for.

WireGuard's AllowedIPs is a list of CIDRs, not a set expression, so "the whole internet except
my pod and service CIDRs" has to be spelled out. This module does the set arithmetic:

1. every ``--include`` / ``--exclude`` range becomes an inclusive integer interval
   ``[lo, hi]`` per address family (a CIDR, a bare address, or ``FIRST-LAST``);
2. the include intervals are merged, then the merged exclude intervals are cut out of them
   (one linear sweep over two sorted lists);
3. each remaining interval is covered by the fewest CIDRs: repeatedly take the largest block
   that starts at ``lo`` on its own alignment and does not pass ``hi``.

Step 3 is minimal for one interval, and the intervals left after step 2 are maximal (neither
overlapping nor adjacent), so the union of the covers is the unique minimal CIDR list.
``tests/test_allowedips_calc.py`` checks that against :mod:`ipaddress` set arithmetic.

The ``--exclude-private`` sets (:data:`PRIVATE_V4`, :data:`PRIVATE_V6`) are the ranges that are
never reachable from the public internet: RFC 1918, loopback, link-local, CGNAT, multicast,
documentation, benchmarking and reserved space.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Interval = tuple[int, int]  # inclusive [lo, hi]

BITS = {4: 32, 6: 128}

#: IPv4 ranges that ``--exclude-private`` removes, with where they come from.
PRIVATE_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", '"this network" (RFC 791, RFC 1122)'),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation TEST-NET-1 (RFC 5737)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", "documentation TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved, including broadcast 255.255.255.255 (RFC 1112, RFC 919)"),
)

#: IPv6 ranges that ``--exclude-private`` removes.
PRIVATE_V6: tuple[tuple[str, str], ...] = (
    ("::/127", "unspecified and loopback (RFC 4291)"),
    ("::ffff:0:0/96", "IPv4-mapped (RFC 4291)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local (RFC 4291)"),
    ("ff00::/8", "multicast (RFC 4291)"),
)

FORMATS = ("yaml", "csv", "json")


class RangeError(ValueError):
    """An include/exclude range that is not a CIDR, an address or ``FIRST-LAST``."""


# -- parsing -------------------------------------------------------------------------------------


def parse_range(text: str) -> tuple[int, Interval]:
    """``"10.0.0.0/8"``, ``"192.0.2.1"`` or ``"10.0.0.5-10.0.0.20"`` → ``(version, (lo, hi))``.

    A CIDR with host bits set (``10.1.2.3/8``) is refused rather than silently widened: it is
    almost always a typo, and widening it would exclude (or include) far more than meant.
    """
    t = text.strip()
    if not t:
        raise RangeError("empty range")
    if "-" in t and "/" not in t:
        first, _, last = t.partition("-")
        try:
            a = ipaddress.ip_address(first.strip())
            b = ipaddress.ip_address(last.strip())
        except ValueError:
            raise RangeError(f"{t!r} is not a valid FIRST-LAST address range") from None
        if a.version != b.version:
            raise RangeError(f"{t!r} mixes IPv4 and IPv6")
        if int(a) > int(b):
            raise RangeError(f"{t!r}: first address is after the last")
        return a.version, (int(a), int(b))
    try:
        net = ipaddress.ip_network(t, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(t, strict=False)
        except ValueError:
            raise RangeError(f"{t!r} is not a valid CIDR or address") from None
        raise RangeError(f"{t!r} has host bits set (did you mean {loose}?)") from e
    return net.version, (int(net.network_address), int(net.broadcast_address))


def split_list(values: Iterable[str]) -> list[str]:
    """Flatten repeated options that may each hold a comma- or space-separated list."""
    return [p for v in values for p in v.replace(",", " ").split()]


# -- interval arithmetic -------------------------------------------------------------------------


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted union of inclusive intervals; overlapping *and adjacent* ones are joined."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def subtract(include: Sequence[Interval], exclude: Sequence[Interval]) -> list[Interval]:
    """``include − exclude``; both must be :func:`merge` output (sorted, disjoint)."""
    out: list[Interval] = []
    j = 0
    for lo, hi in include:
        # Exclusions entirely below this include interval can never matter again.
        while j < len(exclude) and exclude[j][1] < lo:
            j += 1
        k = j
        cur = lo
        while k < len(exclude) and exclude[k][0] <= hi:
            elo, ehi = exclude[k]
            if elo > cur:
                out.append((cur, elo - 1))
            cur = max(cur, ehi + 1)
            k += 1
        if cur <= hi:
            out.append((cur, hi))
    return out


def interval_to_cidrs(lo: int, hi: int, bits: int) -> list[tuple[int, int]]:
    """Fewest ``(network address, prefix length)`` blocks covering exactly ``[lo, hi]``."""
    out: list[tuple[int, int]] = []
    while lo <= hi:
        # The largest block starting at lo is limited by lo's alignment (its lowest set bit;
        # lo == 0 is aligned to the whole space) and by the room left up to hi.
        align = (lo & -lo) if lo else 1 << bits
        room = hi - lo + 1
        size = min(align, 1 << (room.bit_length() - 1))
        out.append((lo, bits - (size.bit_length() - 1)))
        lo += size
    return out


def _network(version: int, addr: int, prefix: int) -> IPNetwork:
    if version == 4:
        return ipaddress.IPv4Network((addr, prefix))
    return ipaddress.IPv6Network((addr, prefix))


def calculate(include: Iterable[str], exclude: Iterable[str]) -> list[IPNetwork]:
    """The minimal CIDR list covering ``include − exclude``, IPv4 first, ascending.

    Exclusions of a family with no include range are ignored (nothing to cut).
    Raises :class:`RangeError` naming the first bad range.
    """
    inc: dict[int, list[Interval]] = {4: [], 6: []}
    exc: dict[int, list[Interval]] = {4: [], 6: []}
    for texts, into in ((include, inc), (exclude, exc)):
        for text in texts:
            version, iv = parse_range(text)
            into[version].append(iv)
    result: list[IPNetwork] = []
    for version in (4, 6):
        remaining = subtract(merge(inc[version]), merge(exc[version]))
        for lo, hi in remaining:
            result += [_network(version, a, p) for a, p in interval_to_cidrs(lo, hi, BITS[version])]
    return result


# -- output --------------------------------------------------------------------------------------


def render(nets: Sequence[IPNetwork], fmt: str, *, indent: int = 0) -> str:
    """``yaml``: a block list to paste under ``allowedIPs:``; ``csv``: one line as in
    wg-quick's ``AllowedIPs =``; ``json``: an array of strings. Always ends with a newline."""
    items = [str(n) for n in nets]
    if fmt == "json":
        return json.dumps(items) + "\n"
    if fmt == "csv":
        return ", ".join(items) + "\n"
    if fmt == "yaml":
        if not items:
            return " " * indent + "[]\n"
        return "".join(f"{' ' * indent}- {i}\n" for i in items)
    raise ValueError(f"unknown format {fmt!r}")


def _private_epilog() -> str:
    rows = [f"  {cidr:<18} {why}" for cidr, why in PRIVATE_V4 + PRIVATE_V6]
    return "--exclude-private removes:\n" + "\n".join(rows)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Print the minimal list of CIDRs covering the --include ranges minus the --exclude "
            "ranges, ready to paste under a tunnel's allowedIPs:. Ranges are CIDRs, bare "
            "addresses or FIRST-LAST; options repeat and take comma-separated lists."
        ),
        epilog=_private_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--include", action="append", default=[], metavar="RANGES",
                   help="ranges traffic may come from (default: 0.0.0.0/0; add ::/0 for IPv6)")
    p.add_argument("-x", "--exclude", action="append", default=[], metavar="RANGES",
                   help="ranges to leave out")
    p.add_argument("--pod-cidr", action="append", default=[], metavar="CIDRS",
                   help="the cluster's pod CIDR(s); excluded")
    p.add_argument("--service-cidr", action="append", default=[], metavar="CIDRS",
                   help="the cluster's service CIDR(s); excluded")
    p.add_argument("--exclude-private", action="store_true",
                   help="exclude private, loopback, link-local, CGNAT, multicast, documentation "
                        "and reserved ranges (list below)")
    p.add_argument("-f", "--format", choices=FORMATS, default="yaml",
                   help="output format (default: yaml)")
    p.add_argument("--indent", type=int, default=0, metavar="N",
                   help="indent YAML items by N spaces")
    return p


def main(argv: list[str], prog: str = "wgpy allowed-ips") -> int:
    """Entry point of ``wgpy allowed-ips``; returns 0, or 2 on bad input (as argparse does)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): report, don't exit the caller
        return e.code if isinstance(e.code, int) else 2
    if args.indent < 0:
        print(f"{prog}: error: --indent must be >= 0", file=sys.stderr)
        return 2
    include = split_list(args.include) or ["0.0.0.0/0"]
    exclude = split_list(args.exclude + args.pod_cidr + args.service_cidr)
    if args.exclude_private:
        exclude += [c for c, _ in PRIVATE_V4 + PRIVATE_V6]
    try:
        nets = calculate(include, exclude)
    except RangeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if not nets:
        print(f"{prog}: warning: the exclusions cover every included address", file=sys.stderr)
    sys.stdout.write(render(nets, args.format, indent=args.indent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
