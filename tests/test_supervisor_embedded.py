"""End to end in network namespaces: the seed scenario with ``wgpy supervisor --tunnels-file``.

client → VPN node (wireguard-go, one roaming peer = the cluster key) → the leading node's
userspace tunnel → its forwarders → stand-in servers answering the node's name. Two supervisor
processes (nodes a and b) share the tunnels file content and a lock file.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.supervisor_support import (
    FORWARD,
    RETRY,
    Scenario,
    answered_by,
    embedded_scenario,
    start_leader_and_follower,
)
from tests.support import needs_root
from wgpy.core.errors import ConfigError
from wgpy.supervisor import main as sup_main
from wgpy.supervisor.locallock import read_sidecar
from wgpy.testbed import wait_for
from wgpy.testbed.topology import CLIENT_NETS, client_ip, tunnels_yaml


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    with embedded_scenario(tmp_path) as sc:
        yield sc


@pytest.mark.interop
@needs_root
def test_traffic_via_leader_kill9_failover_and_graceful_handover(scenario: Scenario) -> None:
    sc = scenario
    start_leader_and_follower(sc)
    assert sc.topo.udp_request(sc.wg0.vip, 53) == "node-a"
    assert sc.wg0.peer_endpoint() == f"{sc.topo.node_ips['a']}:{sc.wg0.port}"
    # the follower has no tunnel at all
    assert sc.topo.nodes["b"].ip("link", "show").stdout.count("wg0") == 0

    # kill -9 the leader: b takes the lock, connects, and the VPN node roams to it
    t0 = time.monotonic()
    os.kill(sc.procs["a"].pid, signal.SIGKILL)
    answered_by(sc, "b")
    failover = time.monotonic() - t0
    print(f"\nkill -9 failover: {failover * 1000:.0f} ms (retry period {RETRY} s)")
    assert failover < 3.0
    assert sc.topo.udp_request(sc.wg0.vip, 53) == "node-b"
    assert sc.wg0.peer_endpoint() == f"{sc.topo.node_ips['b']}:{sc.wg0.port}"
    assert sc.holder() == "node-b"

    # a comes back as a candidate; a graceful stop of b hands over within ~ the retry period
    sc.procs["a"].wait(5)
    sc.start("a")
    wait_for(lambda: "new leader node-b" in sc.log("a"), 10, "node-a to follow")
    t0 = time.monotonic()
    sc.procs["b"].send_signal(signal.SIGTERM)
    answered_by(sc, "a")
    handover = time.monotonic() - t0
    print(f"graceful handover: {handover * 1000:.0f} ms")
    assert handover < 2 * RETRY + 2.0
    assert sc.procs["b"].wait(5) == 0
    # b tore everything down before releasing: no tunnel, no VIP left in its namespace
    assert "wg0" not in sc.topo.nodes["b"].ip("link", "show").stdout
    assert sc.topo.udp_request(sc.wg0.vip, 53) == "node-a"


@pytest.mark.interop
@needs_root
def test_tunnels_file_edits_are_reconciled(scenario: Scenario) -> None:
    sc = scenario
    wg0 = sc.wg0
    wg1 = sc.topo.add_vpn_tunnel()
    spec0 = wg0.spec(forward=FORWARD)
    sc.write(tunnels_yaml({"wg0": spec0}))
    sc.start("a")
    answered_by(sc, "a")

    # add a tunnel: wg1 (VIP 2, clients from the second network) comes up, wg0 untouched
    spec1 = wg1.spec(allowed_ips=[CLIENT_NETS[1]], forward=FORWARD[:1])
    sc.write(tunnels_yaml({"wg0": spec0, "wg1": spec1}))
    answered_by(sc, "a", host=wg1.vip, source=client_ip(1))
    assert sc.log("a").count("brought up WireGuard tunnel wg0") == 1

    # change wg0's allowedIPs: clients from the third network get through only afterwards
    assert sc.topo.tcp_request(wg0.vip, 6443, source=client_ip(2), timeout=0.5) is None
    spec0b = wg0.spec(allowed_ips=[CLIENT_NETS[0], CLIENT_NETS[2]], forward=FORWARD)
    sc.write(tunnels_yaml({"wg0": spec0b, "wg1": spec1}))
    answered_by(sc, "a", source=client_ip(2))
    assert sc.log("a").count("brought up WireGuard tunnel wg1") == 1  # wg1 untouched

    # invalid YAML: rejected and logged, everything keeps working
    sc.write("wg0: {vip: [unclosed\n")
    wait_for(lambda: "rejected tunnels configuration" in sc.log("a"), 5, "the rejection")
    assert sc.topo.tcp_request(wg0.vip, 6443, timeout=1) == "node-a"
    assert sc.topo.tcp_request(wg1.vip, 6443, source=client_ip(1), timeout=1) == "node-a"

    # delete wg1: its link goes, its VIP stops answering; wg0 goes on
    sc.write(tunnels_yaml({"wg0": spec0b}))
    wait_for(lambda: "wg1" not in sc.topo.nodes["a"].ip("link", "show").stdout, 5, "wg1 removed")
    assert sc.topo.tcp_request(wg1.vip, 6443, source=client_ip(1), timeout=0.5) is None
    assert sc.topo.tcp_request(wg0.vip, 6443, timeout=1) == "node-a"
    assert sc.topo.udp_request(wg0.vip, 53) == "node-a"
    assert sc.log("a").count("brought up WireGuard tunnel wg0") == 2  # restarted once (allowedIPs)


@pytest.mark.interop
@needs_root
def test_new_leader_with_clock_behind_still_connects(scenario: Scenario) -> None:
    """b's clock is 30 s behind a's: b's own TAI64N would be rejected by the VPN node for
    ~30 s; the floor a left in the lock's sidecar makes b's first initiation newer."""
    sc = scenario
    start_leader_and_follower(sc, env_b={"WGPY_CLOCK_OFFSET": "-30"})
    t0 = time.monotonic()
    os.kill(sc.procs["a"].pid, signal.SIGKILL)
    answered_by(sc, "b", timeout=8)
    took = time.monotonic() - t0
    print(f"\nfailover to a node 30 s behind: {took * 1000:.0f} ms")
    assert took < 3.0


@pytest.mark.interop
@needs_root
def test_without_the_floor_a_clock_behind_is_locked_out(scenario: Scenario) -> None:
    """The control for the test above: the same takeover with the stored floor removed stalls
    (the VPN node silently drops b's initiations), which is what the floor prevents."""
    sc = scenario
    start_leader_and_follower(sc, env_b={"WGPY_CLOCK_OFFSET": "-30"})
    a = sc.procs["a"]
    a.send_signal(signal.SIGSTOP)  # frozen: it cannot rewrite the sidecar any more
    try:
        side = read_sidecar(sc.lock)
        assert any(k.startswith("wgpy.io/tai64n-floor.") for k in side["annotations"])
        side["annotations"] = {}
        Path(sc.lock + ".json").write_text(json.dumps(side))
    finally:
        os.kill(a.pid, signal.SIGKILL)
    wait_for(lambda: "brought up WireGuard tunnel wg0" in sc.log("b"), 5, "b to bring up wg0")
    time.sleep(3.0)
    assert sc.topo.tcp_request(sc.wg0.vip, 6443, timeout=0.5) is None
    assert sc.wg0.peer_endpoint() == f"{sc.topo.node_ips['a']}:{sc.wg0.port}"  # never roamed


# --- the command line (no namespaces needed) -------------------------------------------------


def _settings(argv: list[str], env: dict[str, str]) -> sup_main.Settings:
    return sup_main.resolve(sup_main.build_parser("wgpy supervisor").parse_args(argv), env)


def test_kube_vip_environment_and_flag_precedence() -> None:
    env = {
        "vip_nodename": "Node-A",
        "vip_leasename": "plndr-cp-lock",
        "vip_leaseduration": "15",
        "vip_renewdeadline": "10",
        "vip_retryperiod": "2",
        "cp_namespace": "kube-system",
        "POD_NAMESPACE": "wgpy",
        "svc_enable": "false",
        "address": "10.0.0.1",
    }
    s = _settings([], env)
    assert s.node_name == "node-a"  # lower-cased as kube-vip does
    assert (s.lease_namespace, s.lease_name) == ("wgpy", "plndr-cp-lock")  # pod namespace
    assert s.secret_namespace == "kube-system"  # cp_namespace overrides the pod's
    assert (s.lease_duration, s.renew_deadline, s.retry_period) == (15, 10, 2)
    assert s.cp_enable and not s.svc_enable
    assert s.vip_address == "10.0.0.1"  # `address` accepted too (kube-vip bug B2)
    assert s.lock_file == sup_main.DEFAULT_LOCK_FILE
    s = _settings(["--retry-period", "0.5", "--node-name", "x", "--lease-name", "ns/l"], env)
    assert (s.retry_period, s.node_name, s.lease_namespace, s.lease_name) == (0.5, "x", "ns", "l")
    s = _settings([], {"POD_NAMESPACE": "p"})
    assert s.secret_namespace == "p"  # not kube-system (B11)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"vip_retryperiod": "soon"}, "vip_retryperiod"),
        ({"vip_leaseduration": "-1"}, "positive"),
        ({"cp_enable": "yes"}, "cp_enable"),
        ({"WGPY_CLOCK_OFFSET": "behind"}, "WGPY_CLOCK_OFFSET"),
    ],
)
def test_bad_environment_is_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings([], env)


def test_clock_offset_shifts_only_the_tai64n_clock() -> None:
    s = _settings([], {"WGPY_CLOCK_OFFSET": "-30"})
    shifted = s.wall_time_ns()()
    assert abs((time.time_ns() - shifted) / 1e9 - 30) < 1
    assert _settings([], {}).wall_time_ns() is time.time_ns


def test_bad_tunnels_file_exits_non_zero_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("wg0:\n  vip: 10.0.0.1\n")
    assert sup_main.main(["--tunnels-file", str(bad), "--lock-file", str(tmp_path / "l")]) == 2
    missing = tmp_path / "none.yaml"
    assert sup_main.main(["--tunnels-file", str(missing), "--lock-file", str(tmp_path / "l")]) == 2
    text = capsys.readouterr().err
    assert 'tunnel wg0: missing required field "privateKey"' in text
    assert "cannot read" in text
    assert not (tmp_path / "l").exists()  # never ran for leadership
