"""Prometheus exposition parsed back strictly; /healthz, /readyz, /metrics over real HTTP
(stuck loop and failing status give 503); Events carry no key."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

from kubernetes.aio import client as _aclient

from tests.fakeapi import FakeApiServer
from tests.vtime import VirtualTimeLoop
from wgpy.core.errors import ConfigError
from wgpy.supervisor import metrics
from wgpy.supervisor.config import parse_tunnels
from wgpy.supervisor.events import EventRecorder, build_event, lease_ref, redact, secret_ref
from wgpy.supervisor.http import HttpServer
from wgpy.supervisor.model import ForwardStats, SupervisorStatus, TunnelStatus

aclient: Any = _aclient
KEY = "YAZz1bqVoCv2ko9Phlp+EzYKYxyGlqMixBPOSTMhhEA="
PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="

# -- a strict 0.0.4 parser -----------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? (\S+)$")
VALUE = re.compile(r"^(?:[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|NaN|[+-]Inf)$")


def unescape(v: str) -> str:
    out, i = [], 0
    while i < len(v):
        if v[i] == "\\":
            out.append({"\\": "\\", '"': '"', "n": "\n"}[v[i + 1]])
            i += 2
        else:
            out.append(v[i])
            i += 1
    return "".join(out)


def parse(text: str) -> dict[str, dict[str, Any]]:
    """{family: {type, help, samples: {labels tuple: value}}}; asserts the format rules."""
    assert text.endswith("\n") and "\r" not in text
    fams: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert re.fullmatch(NAME, name) and name not in fams, line
            fams[name] = {"help": unescape(help_text), "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, typ = line[7:].split(" ")
            assert name == current and fams[name]["type"] is None and not fams[name]["samples"]
            assert typ in ("counter", "gauge")
            fams[name]["type"] = typ
        else:
            m = SAMPLE.match(line)
            assert m, f"bad sample line {line!r}"
            assert m.group(1) == current and fams[current]["type"], line
            if fams[current]["type"] == "counter":
                assert current.endswith("_total")
            labels = tuple((k, unescape(v)) for k, v in re.findall(LABEL, m.group(2) or ""))
            assert len({k for k, _ in labels}) == len(labels)
            assert labels not in fams[current]["samples"], "duplicate series"
            value = m.group(m.lastindex or 0)
            assert VALUE.match(value), value
            fams[current]["samples"][labels] = float(value)
    return fams


def sample_status() -> SupervisorStatus:
    t = TunnelStatus("wg0", "10.200.0.1", up=True, last_handshake_unix=1000.0, rx_bytes=123,
                     tx_bytes=456, handshakes=3, handshake_failures=1,
                     forwards={(6443, "TCP"): ForwardStats(7, 0, 999, 1, 2),
                               (53, "UDP"): ForwardStats(2, 40, 1200, 0, 1)})
    t2 = TunnelStatus("wg1", "10.200.0.2")
    return SupervisorStatus('node "a"\\b\nc', leader=True, leader_identity="x", failovers=2,
                            config_rejections=4, last_config_error=f"bad key {KEY}",
                            config_loaded=True, tunnels={"wg1": t2, "wg0": t})


def test_exposition_parses_back_with_values_and_escaping() -> None:
    text = metrics.render(sample_status(), now_unix=1012.5)
    fams = parse(text)
    w0 = (("tunnel", "wg0"), ("vip", "10.200.0.1"))
    w1 = (("tunnel", "wg1"), ("vip", "10.200.0.2"))
    assert fams["wgpy_leader"]["samples"] == {(("identity", 'node "a"\\b\nc'),): 1.0}
    assert fams["wgpy_ready"]["samples"] == {(): 0.0}      # wg1 is down while leading
    assert fams["wgpy_failovers_total"]["samples"] == {(): 2.0}
    assert fams["wgpy_config_rejections_total"]["samples"] == {(): 4.0}
    assert fams["wgpy_tunnel_up"]["samples"] == {w0: 1.0, w1: 0.0}
    assert fams["wgpy_tunnel_last_handshake_seconds"]["samples"] == {w0: 12.5}  # wg1: never
    assert fams["wgpy_tunnel_rx_bytes_total"]["samples"][w0] == 123
    assert fams["wgpy_tunnel_tx_bytes_total"]["samples"][w0] == 456
    assert fams["wgpy_tunnel_handshakes_total"]["samples"][w0] == 3
    assert fams["wgpy_tunnel_handshake_failures_total"]["samples"][w0] == 1
    tcp = (*w0, ("port", "6443"), ("protocol", "TCP"))
    udp = (*w0, ("port", "53"), ("protocol", "UDP"))
    assert fams["wgpy_forwarded_connections_total"]["samples"] == {udp: 2, tcp: 7}
    assert fams["wgpy_forwarded_datagrams_total"]["samples"] == {udp: 40, tcp: 0}
    assert fams["wgpy_forward_active"]["samples"][tcp] == 2
    assert fams["wgpy_forward_errors_total"]["type"] == "counter"
    assert fams["wgpy_tunnel_up"]["type"] == "gauge"
    assert KEY not in text and "bad key" not in text


def test_value_and_escape_helpers() -> None:
    assert metrics.format_value(float("nan")) == "NaN"
    assert metrics.format_value(float("inf")) == "+Inf"
    assert metrics.format_value(float("-inf")) == "-Inf"
    assert metrics.format_value(3) == "3" and metrics.format_value(True) == "1"
    assert metrics.format_value(0.25) == "0.25"
    assert metrics.escape_label('a\\"\n') == 'a\\\\\\"\\n'
    assert metrics.escape_help("x\\y\nz") == "x\\\\y\\nz"
    f = metrics.Family("m", "gauge", "h")
    f.add(1.5, a='q"')
    assert list(f.render()) == ["# HELP m h", "# TYPE m gauge", 'm{a="q\\""} 1.5']


# -- HTTP --------------------------------------------------------------------------------------

def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


async def raw_get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port`` on the running loop; the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()  # to EOF: the server closes after its answer
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_http_probes_metrics_stuck_loop_and_failing_status() -> None:
    async def main() -> None:
        state: dict[str, Any] = {"st": sample_status(), "raise": False}

        def status() -> SupervisorStatus:
            if state["raise"]:
                raise RuntimeError("manager broken")
            st: SupervisorStatus = state["st"]
            return st

        srv = HttpServer(status, loop=asyncio.get_running_loop(), host="127.0.0.1", port=0,
                         deadline=5.0)
        port = srv.start()
        base = f"http://127.0.0.1:{port}"

        async def get(path: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(fetch, base + path)
        try:
            assert await get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
            code, _, body = await get("/readyz")
            assert (code, body) == (503, "not ready: leader with tunnels down: wg1\n")
            code, ctype, body = await get("/metrics")
            assert code == 200 and ctype == metrics.CONTENT_TYPE
            assert parse(body)["wgpy_tunnel_up"]["samples"]
            assert KEY not in body and PUB not in body
            state["st"].tunnels["wg1"].up = True
            assert (await get("/readyz"))[0] == 200
            state["st"] = SupervisorStatus("b", leader=False, config_loaded=True)
            assert (await get("/readyz"))[:3:2] == (200, "ready (no tunnels configured)\n")
            state["st"] = SupervisorStatus("b", config_loaded=True, config_note="why")
            assert (await get("/readyz"))[:3:2] == (200, "ready (no tunnels configured: why)\n")
            state["st"] = SupervisorStatus("b")
            assert (await get("/readyz"))[::2] == (503, "not ready: no valid tunnels "
                                                        "configuration yet\n")
            state["raise"] = True
            assert (await get("/healthz"))[::2] == (503, "status failed: RuntimeError\n")
            assert (await get("/metrics"))[0] == 503
            state["raise"] = False
            # The supervisor loop is stuck (a blocking call) until the probe has answered:
            # the probe answers 503 at its 0.5 s deadline instead of hanging. That server's
            # own loop runs on virtual time, so the deadline passes without a real wait. The
            # client runs on that same loop: from another thread, a client slow to send its
            # request after connecting (a loaded machine) let the idle loop jump to aiohttp's
            # keep-alive timer, which closed the connection unanswered.
            stuck = HttpServer(status, loop=asyncio.get_running_loop(), host="127.0.0.1",
                               port=0, deadline=0.5, loop_factory=VirtualTimeLoop)
            port = stuck.start()
            assert stuck._server_loop is not None
            answer = asyncio.run_coroutine_threadsafe(raw_get(port, "/healthz"),
                                                      stuck._server_loop)
            try:
                code, body = answer.result(30)  # deliberately blocking the loop meanwhile
            finally:
                stuck.stop()
            assert (code, body) == (503, "event loop unresponsive for 0.5s\n")
            assert (await get("/healthz"))[0] == 200
            # a data-plane fault: still alive (200), but the probe and the metrics say so
            st = sample_status()
            st.tunnels["wg1"].fastpath_faults = 3
            st.tunnels["wg1"].last_fault = "ValueError: overlap (fastpath.py:286)"
            state["st"] = st
            code, _, body = await get("/healthz")
            assert code == 200 and body == (
                "ok, degraded:\ntunnel wg1: fast path 3 fault(s), 0 internal error(s), "
                "the latest: ValueError: overlap (fastpath.py:286)\n"
            )
            fams = parse((await get("/metrics"))[2])
            w1 = (("tunnel", "wg1"), ("vip", "10.200.0.2"))
            assert fams["wgpy_tunnel_fastpath_faults_total"]["samples"][w1] == 3.0
            assert fams["wgpy_tunnel_fastpath_off"]["samples"][w1] == 0.0
            st.tunnels["wg1"].fastpath_off = True
            assert "fast path switched off, 3 fault(s)" in (await get("/healthz"))[2]
        finally:
            srv.stop()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_stop_with_a_probe_in_flight_leaves_no_task_pending() -> None:
    """The supervisor's loop is stuck inside ``status()`` while a probe waits for it, and the
    server stops meanwhile (the pod shutting down). aiohttp's shutdown only asks the waiting
    handler to cancel; the server's loop must let it finish before closing, or the handler's
    tasks are destroyed pending ("Task was destroyed but it is pending!")."""
    entered, release = threading.Event(), threading.Event()

    def status() -> SupervisorStatus:
        entered.set()
        release.wait(30)
        return sample_status()

    sup_loop = asyncio.new_event_loop()
    sup = threading.Thread(target=sup_loop.run_forever, name="supervisor-loop")
    sup.start()
    srv = HttpServer(status, loop=sup_loop, host="127.0.0.1", port=0, deadline=30.0)
    port = srv.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert entered.wait(30), "the probe never reached status()"
            srv.stop()
            server_loop = srv._server_loop
            assert server_loop is not None and server_loop.is_closed()
            assert asyncio.all_tasks(server_loop) == set()
            assert c.recv(100) == b""  # closed unanswered: the server went away
    finally:
        release.set()
        sup_loop.call_soon_threadsafe(sup_loop.stop)
        sup.join(30)
        sup_loop.close()


# -- Events ------------------------------------------------------------------------------------

def test_events_redact_keys_and_reach_the_api() -> None:
    assert redact(f"privateKey: '{KEY}' and {PUB}.") == "privateKey: '(hidden)' and (hidden)."
    assert redact("QUJD") == "QUJD"    # short base64 is not a key
    try:
        parse_tunnels(f"wg0: {{vip: 10.0.0.1/32, privateKey: '{KEY}', peerPublicKey: 'x', "
                      "peerEndpoint: 'a:1', listenPort: 1}")
    except ConfigError as e:
        err = str(e)
    else:
        raise AssertionError("invalid config accepted")

    async def main() -> None:
        async with FakeApiServer() as srv:
            api = aclient.ApiClient(aclient.Configuration(host=srv.url))
            rec = EventRecorder(api, host="node-a")
            sec = {"metadata": {"uid": "u-1", "resourceVersion": "7"}}
            assert await rec.rejected_secret(secret_ref(sec, "kube-system", "wireguard"),
                                             f"{err} (was {KEY})")
            assert await rec.became_leader(lease_ref("kube-system", "plndr-cp-lock"))
            assert await rec.lost_leader(lease_ref("kube-system", "plndr-cp-lock"),
                                         "renew deadline passed")
            stored = [o for o in srv._objs.values() if o["kind"] == "Event"]
            assert len(stored) == 3
            by_reason = {e["reason"]: e for e in stored}
            bad = by_reason["InvalidConfig"]
            assert bad["type"] == "Warning"
            assert bad["involvedObject"] == {"kind": "Secret", "apiVersion": "v1",
                                             "namespace": "kube-system", "name": "wireguard",
                                             "uid": "u-1", "resourceVersion": "7"}
            assert bad["source"] == {"component": "wgpy-supervisor", "host": "node-a"}
            assert KEY not in str(stored) and "(hidden)" in bad["message"]
            assert by_reason["LeaderElected"]["involvedObject"]["kind"] == "Lease"
            assert "renew deadline" in by_reason["LeadershipLost"]["message"]
            # refused by RBAC: reported, not raised
            srv.enable_rbac([])
            assert not await rec.became_leader(lease_ref("kube-system", "plndr-cp-lock"))
            assert rec.failed == 1 and rec.sent == 3
            await api.close()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_build_event_shape() -> None:
    from datetime import UTC, datetime
    ev = build_event(lease_ref("ns", "l"), "Normal", "R", "m" * 5000, host="h",
                     now=datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC))
    assert ev["firstTimestamp"] == ev["lastTimestamp"] == "2026-01-02T03:04:05Z"
    assert len(ev["message"]) == 1024 and ev["metadata"]["name"].startswith("l.")
