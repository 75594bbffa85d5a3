"""The first signal: does a fresh install move data at all?

wgpy to wgpy and wgpy to wireguard-go in network namespaces: a ping (the handshake with it),
then 1 MB of TCP each way with SHA-256 compared. ``tests/conftest.py`` runs this file before
everything else, and when it fails stops the run right after it with a clear message, instead
of spending many minutes on the timeouts of every other interop test (issue 13: cryptography
51 broke the data plane and the suite took 13 minutes to say so). ``--no-smoke-gate`` runs
the rest anyway. CI also runs this file alone against the newest release of every
dependency (``.ci/run``): the canary for the next breaking release.
"""

from __future__ import annotations

import pytest

from tests.support import IMPLS, interop, tcp_transfer
from wgpy import testbed as tb
from wgpy.io import uapi_client

pytestmark = [*interop, pytest.mark.smoke]
NBYTES = 1 << 20


@pytest.mark.parametrize(("a", "b"), [("wgpy", "wgpy"), ("wgpy", "wireguard-go")])
def test_ping_and_a_megabyte_of_tcp_each_way(a: str, b: str) -> None:
    with tb.make_pair(IMPLS[a], IMPLS[b]) as p:
        r = p.ping(from_a=True, count=1, timeout=5.0)
        assert r.returncode == 0, f"no ping through a fresh {a}<->{b} tunnel: {r.stdout}"
        for a_to_b in (True, False):
            sent, got = tcp_transfer(p, NBYTES, a_to_b=a_to_b, timeout=60)
            assert sent["bytes"] == got["bytes"] == NBYTES, (sent, got)
            assert sent["sha256"] == got["sha256"]
        assert isinstance(p.wg_a, tb.WgInstance)
        stats = uapi_client.stats_at(p.wg_a.socket_path)
        assert stats["fastpath_faults"] == 0 and stats["internal_errors"] == 0, stats
