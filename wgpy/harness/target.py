"""The implementation under test: started in a namespace of our own, configured over UAPI.

A :class:`Target` gives the conformance checks what they need and nothing more: the target's
public key and UDP address, its tunnel address, adding and removing peers, reading a peer's
``get`` state (endpoint, counters, last handshake), and UDP sockets *inside the target's
namespace* (for the harness peer's own sockets and for making the target's kernel send traffic
into the tunnel).

Layout (everything in one namespace the harness creates, so no traffic leaves it)::

    namespace wgpy-PID-xxxxxx
      lo   127.0.0.1, 127.0.0.2 (any 127/8 address is local)  <- harness UDP sockets
      wg0  10.77.0.1/24, MTU 1420, listen port 51820           <- the target
           peers: one harness identity per check, 10.77.0.2/32 (and .3/32)

The target's kernel answers ICMP echo sent to 10.77.0.1 through the tunnel; it routes traffic
for 10.77.0.0/24 into wg0, which is how the harness makes the target initiate.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from collections.abc import Sequence

from noise import crypto
from wgpy import testbed as tb
from wgpy.core import uapi
from wgpy.core.errors import UapiError
from wgpy.core.keys import decode_base64_key
from wgpy.harness.transport import Address, udp_socket
from wgpy.io import uapi_client

TUNNEL_NET = "10.77.0.0/24"
TARGET_TUNNEL_IP = "10.77.0.1"
HARNESS_TUNNEL_IPS = ("10.77.0.2", "10.77.0.3")
TARGET_PORT = 51820
TARGET_MTU = 1420

# Implementations known by name; anything else is an argv prefix run as `ARGV... -f wg0`.
KNOWN: dict[str, list[str]] = {
    "wireguard-go": ["wireguard-go"],
    "boringtun": ["boringtun-cli", "--disable-drop-privileges"],
}


class TargetError(Exception):
    """The target could not be started, configured or queried."""


class Target:
    """Base class: a configured WireGuard interface the harness can reach.

    Subclasses provide :meth:`_set`, :meth:`_get`; this class builds the UAPI requests.
    """

    name = "target"
    netns: str | None = None

    def __init__(self) -> None:
        self.public_key = b""
        self.address: Address = ("127.0.0.1", TARGET_PORT)
        self.tunnel_ip = TARGET_TUNNEL_IP
        self.mtu = TARGET_MTU
        self.private_key: bytes | None = None  # known when the harness configured the key
        self._peers: set[bytes] = set()

    # --- subclass hooks -------------------------------------------------------------------------

    def set_lines(self, lines: list[str]) -> None:
        raise NotImplementedError

    def _get(self) -> uapi.DeviceSnapshot:
        raise NotImplementedError

    def close(self) -> None:
        """Remove the peers the harness added (and whatever the subclass created)."""
        for pub in list(self._peers):
            with contextlib.suppress(Exception):
                self.remove_peer(pub)

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- configuration --------------------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        *,
        allowed_ips: Sequence[str] = (),
        preshared_key: bytes | None = None,
        endpoint: Address | None = None,
        persistent_keepalive: int | None = None,
    ) -> None:
        """Add (or reset) a peer: ``public_key=``, ``replace_allowed_ips``, ``allowed_ip=``..."""
        lines = [f"public_key={public_key.hex()}", "replace_allowed_ips=true"]
        lines += [f"allowed_ip={a}" for a in allowed_ips]
        if preshared_key is not None:
            lines.append(f"preshared_key={preshared_key.hex()}")
        if endpoint is not None:
            lines.append(f"endpoint={endpoint[0]}:{endpoint[1]}")
        if persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={persistent_keepalive}")
        self.set_lines(lines)
        self._peers.add(public_key)

    def remove_peer(self, public_key: bytes) -> None:
        self.set_lines([f"public_key={public_key.hex()}", "remove=true"])
        self._peers.discard(public_key)

    def peer(self, public_key: bytes) -> uapi.PeerSnapshot | None:
        """The target's view of one peer (``get=1``), or ``None`` if it has no such peer."""
        return next((p for p in self._get().peers if p.public_key == public_key), None)

    # --- sockets in the target's namespace ------------------------------------------------------

    def socket(self, host: str = "127.0.0.1") -> socket.socket:
        """A UDP socket bound to ``host`` (random port) in the target's network namespace."""
        return udp_socket(host, 0, netns=self.netns)

    def send_into_tunnel(self, dst: str, payload: bytes, port: int = 9) -> None:
        """Make the target's kernel send a UDP datagram to ``dst`` (routed into the tunnel)."""
        s = self.socket("0.0.0.0")  # noqa: S104 - inside the target's namespace only
        try:
            s.sendto(payload, (dst, port))
        finally:
            s.close()


class UapiTarget(Target):
    """A target reached through a UAPI socket path (an existing one, or one we started)."""

    def __init__(self, socket_path: str, *, netns: str | None = None, name: str = "uapi") -> None:
        super().__init__()
        self.socket_path = socket_path
        self.netns = netns
        self.name = name

    def set_lines(self, lines: list[str]) -> None:
        text = "set=1\n" + "".join(line + "\n" for line in lines) + "\n"
        try:
            _, code = uapi_client.transact(self.socket_path, text)
        except OSError as e:
            raise TargetError(f"UAPI set failed: {e}") from None
        if code:
            raise TargetError(f"UAPI set failed: {os.strerror(code)}")

    def _get(self) -> uapi.DeviceSnapshot:
        try:
            body, code = uapi_client.transact(self.socket_path, "get=1\n\n")
            if code:
                raise TargetError(f"UAPI get failed: {os.strerror(code)}")
            return uapi.parse_get(body + "errno=0\n\n")
        except (OSError, UapiError) as e:
            raise TargetError(f"UAPI get failed: {e}") from None

    def discover(self, *, host: str, tunnel_ip: str) -> None:
        """Fill in public key and listen port from ``get`` (an existing, configured device)."""
        snap = self._get()
        if snap.private_key is None or not snap.listen_port:
            raise TargetError("the existing device needs a private key and a listen port")
        self.public_key = crypto.public_key(snap.private_key)
        self.address = (host, snap.listen_port)
        self.tunnel_ip = tunnel_ip


class WgToolTarget(Target):
    """A target configured with the ``wg`` tool (the kernel module has no UAPI socket)."""

    def __init__(self, instance: tb.KernelWg | tb.UmlGuest) -> None:
        super().__init__()
        self.instance = instance
        self.netns = instance.ns.name

    def set_lines(self, lines: list[str]) -> None:
        # `wg` has no raw UAPI input; translate the few lines add_peer/remove_peer produce.
        argv = ["set", self.instance.iface]
        stdin: str | None = None
        for line in lines:
            key, _, value = line.partition("=")
            if key == "public_key":
                argv += ["peer", crypto_b64(bytes.fromhex(value))]
            elif key == "remove":
                argv.append("remove")
            elif key == "allowed_ip":
                argv += ["allowed-ips", value]
            elif key == "preshared_key":
                argv += ["preshared-key", "/dev/stdin"]
                stdin = crypto_b64(bytes.fromhex(value)) + "\n"
            elif key == "endpoint":
                argv += ["endpoint", value]
            elif key == "persistent_keepalive_interval":
                argv += ["persistent-keepalive", value]
        if "allowed-ips" not in argv and "remove" not in argv:
            argv += ["allowed-ips", ""]
        try:
            self.instance.wg(*argv, input=stdin)
        except tb.TestbedError as e:
            raise TargetError(str(e)) from None

    def _get(self) -> uapi.DeviceSnapshot:
        dump = self.instance.show_dump()
        peers = []
        for p in dump.peers:
            peers.append(
                uapi.PeerSnapshot(
                    public_key=crypto_b64_decode(p.public_key),
                    endpoint=p.endpoint,
                    last_handshake_time_sec=p.latest_handshake,
                    tx_bytes=p.tx_bytes,
                    rx_bytes=p.rx_bytes,
                )
            )
        return uapi.DeviceSnapshot(listen_port=dump.listen_port, peers=peers)


def crypto_b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def crypto_b64_decode(text: str) -> bytes:
    key = decode_base64_key(text)
    if key is None:
        raise ValueError("not a base64 WireGuard key")
    return key


class NamespaceTarget:
    """Start an implementation in a fresh namespace and configure it (context manager).

    ``impl`` is an argv prefix (``["wireguard-go"]``, ``[sys.executable, "-m",
    "wgpy.tools.userspace"]``) or :data:`wgpy.testbed.KERNEL` (for
    :data:`wgpy.testbed.KERNEL_UML`, :class:`wgpy.harness.uml.UmlNamespaceTarget`). On exit
    the process is stopped and the namespace deleted, also after a failure.
    """

    def __init__(self, impl: tb.ImplSpec, *, name: str, start_timeout: float = 10.0) -> None:
        self.impl = impl
        self.name = name
        self.start_timeout = start_timeout
        self.ns: tb.Namespace | None = None
        self.instance: tb.WgInstance | tb.KernelWg | tb.UmlGuest | None = None
        self.target: Target | None = None

    def __enter__(self) -> Target:
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> Target:
        self.ns = tb.Namespace("wgpyh").create()
        self.ns.ip("addr", "add", "127.0.0.2/8", "dev", "lo")
        target = self._make(self.ns)
        private = crypto.generate_private_key()
        if isinstance(target, WgToolTarget):
            kern_inst = target.instance
            kern_inst.wg(
                "set",
                "wg0",
                "listen-port",
                str(TARGET_PORT),
                "private-key",
                "/dev/stdin",
                input=crypto_b64(private) + "\n",
            )
        else:
            target.set_lines([f"private_key={private.hex()}", f"listen_port={TARGET_PORT}"])
        target.public_key = crypto.public_key(private)
        target.private_key = private
        target.name = self.name
        assert self.instance is not None  # set by _make
        self.instance.address(f"{TARGET_TUNNEL_IP}/24")
        self.instance.up(TARGET_MTU)
        self.target = target
        return target

    def _make(self, ns: tb.Namespace) -> Target:
        """Start the implementation in `ns` (kept in ``self.instance``); its unconfigured target."""
        if isinstance(self.impl, tb.KernelImpl):
            kern = tb.KernelWg(ns, "wg0").start()
            self.instance = kern
            return WgToolTarget(kern)
        if isinstance(self.impl, tb.KernelUmlImpl):
            raise TargetError("kernel-uml: use wgpy.harness.uml.UmlNamespaceTarget")
        inst = tb.WgInstance(ns, self.impl, "wg0", start_timeout=self.start_timeout).start()
        self.instance = inst
        return UapiTarget(inst.socket_path, netns=ns.name, name=self.name)

    def output(self) -> str:
        """The implementation's own log output (userspace targets; the guest's console)."""
        inst = self.instance
        return inst.output() if isinstance(inst, tb.WgInstance | tb.UmlGuest) else ""

    def close(self) -> None:
        for obj in (self.instance, self.ns):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        self.instance = None
        self.ns = None

    def __exit__(self, *exc: object) -> None:
        self.close()
