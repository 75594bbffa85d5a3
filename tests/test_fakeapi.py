"""The strict fake API server, checked through the official ``kubernetes`` client and kubectl.

If these pass, a client that works against the fake sends what a real apiserver accepts for
the behaviours listed in docs kubernetes.md §3 (rv, 409, MicroTime 400, watches, 410, RBAC).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as _client
from kubernetes import watch as _watch

from tests.fakeapi import MICROTIME_RE, FakeApiServer, write_kubeconfig
from wgpy.testbed import wait_for

# The generated models make every field Optional; these tests assert on concrete values.
client: Any = _client
watch: Any = _watch
NS = "kube-system"


@pytest.fixture
def srv() -> Iterator[FakeApiServer]:
    s = FakeApiServer(bookmark_interval=0.2)
    s.start_in_thread()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(srv: FakeApiServer) -> Iterator[Any]:
    cfg = client.Configuration()
    cfg.host = srv.url
    with client.ApiClient(cfg) as a:
        yield a


def lease(name: str, holder: str = "a", *, micro: int = 123456) -> Any:
    t = datetime(2026, 1, 2, 3, 4, 5, micro, tzinfo=UTC)
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1LeaseSpec(
            holder_identity=holder, lease_duration_seconds=15, acquire_time=t, renew_time=t
        ),
    )


def raw(
    url: str, method: str = "GET", body: Any = None, ctype: str = "application/json"
) -> tuple[int, str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], json.loads(e.read())


def test_crud_and_global_resource_version(srv: FakeApiServer, api: Any) -> None:
    co = client.CoordinationV1Api(api)
    created = co.create_namespaced_lease(NS, lease("l1"))
    rv1 = created.metadata.resource_version
    assert isinstance(rv1, str)
    assert created.metadata.uid and created.metadata.creation_timestamp
    core = client.CoreV1Api(api)
    sec = core.create_namespaced_secret(
        NS, client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"k": "v"})
    )
    assert int(sec.metadata.resource_version) > int(rv1)  # one counter for all kinds
    got = co.read_namespaced_lease("l1", NS)
    got.spec.holder_identity = "b"
    upd = co.replace_namespaced_lease("l1", NS, got)
    assert upd.spec.holder_identity == "b"
    assert upd.metadata.uid == created.metadata.uid
    assert upd.metadata.creation_timestamp == created.metadata.creation_timestamp
    assert int(upd.metadata.resource_version) > int(sec.metadata.resource_version)
    # LIST: collection rv, items without kind/apiVersion (as the real server sends them)
    status, ctype, text = raw(f"{srv.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/")
    body = json.loads(text)
    assert (status, ctype) == (200, "application/json")
    assert body["metadata"]["resourceVersion"] == upd.metadata.resource_version
    assert [i["metadata"]["name"] for i in body["items"]] == ["l1"]
    assert "kind" not in body["items"][0] and "apiVersion" not in body["items"][0]
    # merge patch
    p = co.patch_namespaced_lease("l1", NS, {"metadata": {"labels": {"x": "y"}}})
    assert p.metadata.labels == {"x": "y"} and p.spec.holder_identity == "b"
    co.delete_namespaced_lease("l1", NS)
    with pytest.raises(client.ApiException) as e:
        co.read_namespaced_lease("l1", NS)
    assert e.value.status == 404
    assert json.loads(e.value.body)["reason"] == "NotFound"
    assert srv.get("leases", NS, "l1") is None


def test_conflicts_and_write_errors(api: Any) -> None:
    co = client.CoordinationV1Api(api)
    first = co.create_namespaced_lease(NS, lease("l1"))
    with pytest.raises(client.ApiException) as e:
        co.create_namespaced_lease(NS, lease("l1"))
    assert (e.value.status, json.loads(e.value.body)["reason"]) == (409, "AlreadyExists")
    first.spec.holder_identity = "b"
    co.replace_namespaced_lease("l1", NS, first)  # first write with rv: fine
    with pytest.raises(client.ApiException) as e:  # same rv again: stale
        co.replace_namespaced_lease("l1", NS, first)
    body = json.loads(e.value.body)
    assert (e.value.status, body["reason"], body["kind"]) == (409, "Conflict", "Status")
    assert body["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "l1": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    first.metadata.resource_version = None  # empty rv: unconditional
    first.spec.holder_identity = "c"
    assert co.replace_namespaced_lease("l1", NS, first).spec.holder_identity == "c"
    with pytest.raises(client.ApiException) as e:
        co.replace_namespaced_lease("nope", NS, lease("nope"))
    assert e.value.status == 404  # no create-on-update
    with pytest.raises(client.ApiException) as e:
        co.create_namespaced_lease(NS, client.V1Lease(metadata=client.V1ObjectMeta()))
    assert e.value.status == 422
    with pytest.raises(client.ApiException) as e:
        co.replace_namespaced_lease("l1", NS, lease("other"))
    assert e.value.status == 400  # body name != URL name
    bad = lease("l2")
    bad.spec.lease_duration_seconds = 0
    with pytest.raises(client.ApiException) as e:
        co.create_namespaced_lease(NS, bad)
    assert (e.value.status, json.loads(e.value.body)["reason"]) == (422, "Invalid")


def test_microtime_zero_fraction_is_400_before_conflict(srv: FakeApiServer, api: Any) -> None:
    co = client.CoordinationV1Api(api)
    with pytest.raises(client.ApiException) as e:
        co.create_namespaced_lease(NS, lease("l1", micro=0))
    assert e.value.status == 400
    assert e.value.headers["Content-Type"] == "application/json"
    body = json.loads(e.value.body)
    assert body["reason"] == "BadRequest"
    assert (
        'parsing time "2026-01-02T03:04:05+00:00" as '
        '"2006-01-02T15:04:05.000000Z07:00"' in body["message"]
    )
    ok = co.create_namespaced_lease(NS, lease("l1"))
    co.replace_namespaced_lease("l1", NS, ok)
    stale = lease("l1", micro=0)
    stale.metadata.resource_version = ok.metadata.resource_version
    with pytest.raises(client.ApiException) as e:  # stale AND bad time: decoding wins
        co.replace_namespaced_lease("l1", NS, stale)
    assert e.value.status == 400
    stored = srv.get("leases", NS, "l1")
    assert stored is not None
    assert stored["spec"]["renewTime"] == "2026-01-02T03:04:05.123456Z"  # normalised to UTC Z
    for bad in (
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.123Z",
        "2026-01-02T03:04:05.123456789Z",
        "2026-01-02T03:04:05.123456",
    ):
        assert not MICROTIME_RE.match(bad)
        code, _, b = raw(
            f"{srv.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/l1",
            "PATCH",
            {"spec": {"renewTime": bad}},
            "application/merge-patch+json",
        )
        assert (code, b["reason"]) == (400, "BadRequest"), bad
    code, _, b = raw(
        f"{srv.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/l1",
        "PATCH",
        {"spec": {"renewTime": "2026-01-02T05:34:05.000000+02:30"}},
        "application/merge-patch+json",
    )
    assert code == 200
    stored = srv.get("leases", NS, "l1")
    assert stored is not None and stored["spec"]["renewTime"] == "2026-01-02T03:04:05.000000Z"


def test_secret_decoding(srv: FakeApiServer, api: Any) -> None:
    core = client.CoreV1Api(api)
    s = core.create_namespaced_secret(
        NS,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="wireguard"),
            string_data={"tunnels": "wg0: {}\n"},
            data={"other": "b2s="},
        ),
    )
    assert s.data == {"other": "b2s=", "tunnels": "d2cwOiB7fQo="}
    assert s.string_data is None and s.type == "Opaque"
    stored = srv.get("secrets", NS, "wireguard")
    assert stored is not None and "stringData" not in stored
    code, ctype, body = raw(
        f"{srv.url}/api/v1/namespaces/{NS}/secrets",
        "POST",
        {"metadata": {"name": "bad"}, "data": {"k": "not base64!"}},
    )
    assert (code, ctype, body["reason"]) == (400, "application/json", "BadRequest")
    assert srv.get("secrets", NS, "bad") is None


def test_watch_resume_replay_and_no_op_writes(srv: FakeApiServer, api: Any) -> None:
    core = client.CoreV1Api(api)
    for n in ("a", "b"):
        core.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name=n)))
    listed = core.list_namespaced_secret(NS)
    rv = listed.metadata.resource_version
    srv.seed(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "a", "namespace": NS},
            "data": {"x": "eA=="},
        }
    )
    srv.delete("secrets", NS, "b")
    again = srv.seed(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "a", "namespace": NS},
            "data": {"x": "eA=="},
        }
    )
    assert again["metadata"]["resourceVersion"] == str(int(rv) + 1)  # no-op: no bump
    assert srv.rv == int(rv) + 2
    events = [
        (e["type"], e["object"].metadata.name, e["object"].metadata.resource_version)
        for e in watch.Watch().stream(
            core.list_namespaced_secret, NS, resource_version=rv, timeout_seconds=1
        )
    ]
    assert events == [("MODIFIED", "a", str(int(rv) + 1)), ("DELETED", "b", str(int(rv) + 2))]
    # rv unset: synthetic ADDED for current objects only
    added = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core.list_namespaced_secret, NS, timeout_seconds=1)
    ]
    assert added == [("ADDED", "a")]
    watches = [r for r in srv.requests if r.query.get("watch", "").lower() == "true"]
    assert watches[0].query["resourceVersion"] == rv


def test_watch_410_in_stream_after_compact(srv: FakeApiServer, api: Any) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="a")))
    old = core.list_namespaced_secret(NS).metadata.resource_version
    core.patch_namespaced_secret("a", NS, {"metadata": {"labels": {"v": "2"}}})
    point = srv.compact()
    url = f"{srv.url}/api/v1/namespaces/{NS}/secrets?watch=true&resourceVersion={old}"
    status, ctype, text = raw(url)
    assert (status, ctype) == (200, "application/json")
    lines = [json.loads(x) for x in text.splitlines()]
    assert len(lines) == 1 and lines[0]["type"] == "ERROR"
    assert lines[0]["object"]["code"] == 410 and lines[0]["object"]["reason"] == "Expired"
    assert lines[0]["object"]["message"] == f"too old resource version: {old} ({point})"
    # the official client retries once with the same rv, then raises
    with pytest.raises(client.ApiException) as e:
        list(
            watch.Watch().stream(
                core.list_namespaced_secret, NS, resource_version=old, timeout_seconds=1
            )
        )
    assert e.value.status == 410
    # resuming from the compaction point itself is fine
    base = url.split("&", maxsplit=1)[0]
    status, _, text = raw(f"{base}&resourceVersion={point}&timeoutSeconds=1")
    assert status == 200 and text == ""


def test_bookmarks_and_timeout(srv: FakeApiServer, api: Any) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="a")))
    rv = core.list_namespaced_secret(NS).metadata.resource_version

    types: list[str] = []

    def later() -> None:  # a change once the watch is open and has sent its first bookmark
        wait_for(lambda: len(types) > 0, 10, "the first event of the watch")
        srv.seed(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "a", "namespace": NS},
                "type": "x",
            }
        )

    import threading

    t = threading.Thread(target=later)
    t.start()
    start = time.monotonic()
    rvs = []
    for e in watch.Watch().stream(
        core.list_namespaced_secret,
        NS,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        _request_timeout=60,
    ):
        types.append(e["type"])
        obj = e["object"]
        rvs.append(
            obj["metadata"]["resourceVersion"]
            if isinstance(obj, dict)
            else obj.metadata.resource_version
        )
    t.join()
    elapsed = time.monotonic() - start
    # the stream ended by timeoutSeconds (1 s), not by the client's 60 s request timeout
    assert 0.95 <= elapsed < 30
    assert "MODIFIED" in types and types.count("BOOKMARK") >= 2
    assert types[0] == "BOOKMARK" and rvs[0] == rv
    assert [int(r) for r in rvs] == sorted(int(r) for r in rvs)  # never goes backwards


def test_selectors(srv: FakeApiServer, api: Any) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        NS, client.V1Secret(metadata=client.V1ObjectMeta(name="wireguard", labels={"app": "wg"}))
    )
    core.create_namespaced_secret(
        NS,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="other"),
            type="kubernetes.io/tls",
            data={"tls.crt": "", "tls.key": ""},
        ),
    )

    def names(lst: Any) -> list[str]:
        return [i.metadata.name for i in lst.items]

    assert names(core.list_namespaced_secret(NS, field_selector="metadata.name=wireguard")) == [
        "wireguard"
    ]
    assert names(core.list_namespaced_secret(NS, field_selector="type!=Opaque")) == ["other"]
    assert names(core.list_namespaced_secret(NS, label_selector="app=wg")) == ["wireguard"]
    assert names(core.list_namespaced_secret(NS, label_selector="!app")) == ["other"]
    assert names(core.list_namespaced_secret(NS, label_selector="app")) == ["wireguard"]
    events = [
        e["object"].metadata.name
        for e in watch.Watch().stream(
            core.list_namespaced_secret,
            NS,
            field_selector="metadata.name=wireguard",
            timeout_seconds=1,
        )
    ]
    assert events == ["wireguard"]
    with pytest.raises(client.ApiException) as e:
        core.list_service_for_all_namespaces(field_selector="spec.type=LoadBalancer")
    assert e.value.status == 400
    assert json.loads(e.value.body)["message"] == "field label not supported: spec.type"
    with pytest.raises(client.ApiException) as e:
        list(
            watch.Watch().stream(
                core.list_service_for_all_namespaces,
                field_selector="spec.type=LoadBalancer",
                timeout_seconds=1,
            )
        )
    assert e.value.status == 400


def svc(name: str, ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
    }


def test_services_status_subresource_and_cluster_list(srv: FakeApiServer, api: Any) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_service("default", svc("web"))
    srv.seed(svc("db", "prod"))
    assert sorted(s.metadata.name for s in core.list_service_for_all_namespaces().items) == [
        "db",
        "web",
    ]
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}
    core.patch_namespaced_service_status("web", "default", ingress)
    # the main resource ignores status changes...
    core.patch_namespaced_service(
        "web",
        "default",
        {"status": {"loadBalancer": {"ingress": []}}, "metadata": {"labels": {"l": "1"}}},
    )
    got = core.read_namespaced_service("web", "default")
    assert got.status.load_balancer.ingress[0].ip == "198.51.100.7"
    assert got.metadata.labels == {"l": "1"}
    # ...and the status subresource ignores everything else
    got.spec.ports[0].port = 81
    got.metadata.labels = {}
    got.status.load_balancer.ingress[0].ip = "198.51.100.8"
    out = core.replace_namespaced_service_status("web", "default", got)
    assert out.spec.ports[0].port == 80 and out.metadata.labels == {"l": "1"}
    assert out.status.load_balancer.ingress[0].ip == "198.51.100.8"
    assert out.metadata.uid == created.metadata.uid


def test_endpointslices_events_and_delete_preconditions(srv: FakeApiServer, api: Any) -> None:
    disc = client.DiscoveryV1Api(api)
    es = disc.create_namespaced_endpoint_slice(
        "default",
        client.V1EndpointSlice(
            address_type="IPv4",
            metadata=client.V1ObjectMeta(
                name="kubernetes", labels={"kubernetes.io/service-name": "kubernetes"}
            ),
            endpoints=[client.V1Endpoint(addresses=["127.0.0.2"])],
        ),
    )
    lst = disc.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=kubernetes"
    )
    assert [e.endpoints[0].addresses for e in lst.items] == [["127.0.0.2"]]
    ev = client.CoreV1Api(api).create_namespaced_event(
        "default",
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="wgpy."),
            reason="Elected",
            involved_object=client.V1ObjectReference(kind="Lease", name="x"),
        ),
    )
    assert ev.metadata.name.startswith("wgpy.") and len(ev.metadata.name) > 5
    with pytest.raises(client.ApiException) as e:
        disc.delete_namespaced_endpoint_slice(
            "kubernetes",
            "default",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="wrong")),
        )
    assert e.value.status == 409
    disc.delete_namespaced_endpoint_slice(
        "kubernetes",
        "default",
        body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=es.metadata.uid)),
    )
    assert srv.get("endpointslices", "default", "kubernetes") is None


def test_rbac_forbidden(srv: FakeApiServer, api: Any) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        NS, client.V1Secret(metadata=client.V1ObjectMeta(name="wireguard"))
    )
    core.create_namespaced_service("default", svc("web"))
    srv.enable_rbac(
        [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get", "watch"],
                "resourceNames": ["wireguard"],
            }
        ],
        namespace=NS,
    )
    srv.enable_rbac(
        [
            {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch", "get"]},
            {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]},
        ]
    )
    assert core.read_namespaced_secret("wireguard", NS).metadata.name == "wireguard"
    calls: list[Callable[[], Any]] = [
        lambda: core.list_namespaced_secret(NS),
        lambda: core.read_namespaced_secret("other", NS),
        lambda: core.read_namespaced_secret("wireguard", "default"),
        lambda: core.patch_namespaced_service("web", "default", {"metadata": {}}),
        lambda: client.CoordinationV1Api(api).list_namespaced_lease(NS),
    ]
    for call in calls:
        with pytest.raises(client.ApiException) as e:
            call()
        body = json.loads(e.value.body)
        assert (e.value.status, body["reason"]) == (403, "Forbidden")
    with pytest.raises(client.ApiException) as e:
        core.list_namespaced_secret(NS)
    assert json.loads(e.value.body)["message"] == (
        'secrets is forbidden: User "system:anonymous" cannot list resource "secrets" in API '
        f'group "" in the namespace "{NS}"'
    )
    assert core.list_service_for_all_namespaces().items[0].metadata.name == "web"
    core.patch_namespaced_service_status("web", "default", {"status": {}})
    srv.disable_rbac()
    assert core.list_namespaced_secret(NS).items


def test_inject_drop_watches_and_requests_log(srv: FakeApiServer, api: Any) -> None:
    co = client.CoordinationV1Api(api)
    srv.inject("GET", r"/leases$", 503, times=2)
    for _ in range(2):
        with pytest.raises(client.ApiException) as e:
            co.list_namespaced_lease(NS)
        assert e.value.status == 503
        assert json.loads(e.value.body)["reason"] == "ServiceUnavailable"
    assert co.list_namespaced_lease(NS).items == []  # times=2 used up
    # (urllib3 silently retries a 503 or 429 carrying Retry-After, so check that one raw)
    srv.inject("POST", r"/leases$", 429, headers={"Retry-After": "7"})
    req = urllib.request.Request(
        f"{srv.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as h:
        urllib.request.urlopen(req, timeout=10)
    assert (h.value.code, h.value.headers["Retry-After"]) == (429, "7")
    assert json.loads(h.value.read())["reason"] == "TooManyRequests"
    srv.inject("*", r"/leases", None, delay=0.3)
    t = time.monotonic()
    co.list_namespaced_lease(NS)
    assert time.monotonic() - t >= 0.3
    assert [r.method for r in srv.requests[-5:]] == ["GET", "GET", "GET", "POST", "GET"]
    # drop_watches ends an open stream long before its timeout
    import threading

    def drop_once_open() -> None:
        wait_for(lambda: srv._call(lambda: len(srv._watchers)) > 0, 30, "the watch to open")
        srv.drop_watches()

    threading.Thread(target=drop_once_open, daemon=True).start()
    t = time.monotonic()
    assert (
        list(
            watch.Watch().stream(
                co.list_namespaced_lease,
                NS,
                resource_version="1",
                timeout_seconds=60,
                _request_timeout=90,
            )
        )
        == []
    )
    assert time.monotonic() - t < 30  # dropped, not ended by the 60 s timeout


def test_discovery_and_version(srv: FakeApiServer) -> None:
    for path, kind in (
        ("/api", "APIVersions"),
        ("/apis", "APIGroupList"),
        ("/api/v1", "APIResourceList"),
        ("/apis/coordination.k8s.io/v1", "APIResourceList"),
    ):
        status, ctype, text = raw(srv.url + path)
        assert (status, ctype, json.loads(text)["kind"]) == (200, "application/json", kind)
    _, _, text = raw(srv.url + "/api/v1")
    names = {r["name"] for r in json.loads(text)["resources"]}
    assert {"secrets", "services", "services/status", "events"} <= names
    assert json.loads(raw(srv.url + "/version")[2])["major"] == "1"
    code, ctype, body = raw(srv.url + "/apis/apps/v1/namespaces/x/deployments")
    assert (code, ctype, body["kind"]) == (404, "application/json", "Status")


def test_async_server_with_aio_client() -> None:
    from kubernetes.aio import client as _aclient

    aclient: Any = _aclient

    async def main() -> None:
        srv = FakeApiServer()
        await srv.start()
        try:
            async with aclient.ApiClient(aclient.Configuration(host=srv.url)) as a:
                co = aclient.CoordinationV1Api(a)
                await co.create_namespaced_lease(
                    NS,
                    aclient.V1Lease.from_dict(
                        {
                            "metadata": {"name": "x"},
                            "spec": {
                                "holderIdentity": "n1",
                                "renewTime": datetime.now(UTC).replace(microsecond=7),
                            },
                        }
                    ),
                )
                got = await co.read_namespaced_lease("x", NS)
                assert got.spec.holder_identity == "n1"
                # the generated serialiser drops a zero fraction: the fake must refuse it
                got.spec.renew_time = got.spec.renew_time.replace(microsecond=0)
                with pytest.raises(aclient.ApiException) as e:
                    await co.replace_namespaced_lease("x", NS, got)
                assert e.value.status == 400
        finally:
            await srv.aclose()

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_as_independent_client(srv: FakeApiServer, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kubeconfig", srv.url, namespace=NS)
    srv.seed(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "plndr-cp-lock", "namespace": NS},
            "spec": {
                "holderIdentity": "n1",
                "leaseDurationSeconds": 15,
                "renewTime": "2026-01-01T00:00:00.000001Z",
            },
        }
    )

    def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(kc), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    r = kubectl("get", "lease", "plndr-cp-lock", "-o", "json")
    if r.returncode != 0 and "kubectl" in r.stderr and "not" in r.stderr and "found" in r.stderr:
        pytest.skip(f"kubectl unusable here: {r.stderr[:200]}")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["spec"]["holderIdentity"] == "n1"
    srv.seed({**obj, "spec": {**obj["spec"], "holderIdentity": "n2"}})
    # stale resourceVersion (--validate=false: the fake serves no OpenAPI document)
    r = kubectl("replace", "--validate=false", "-f", "-", stdin=json.dumps(obj))
    assert r.returncode != 0 and "Conflict" in r.stderr, r.stderr
    obj["metadata"].pop("resourceVersion")
    obj["spec"]["renewTime"] = "2026-01-01T00:00:00Z"
    r = kubectl("replace", "--validate=false", "-f", "-", stdin=json.dumps(obj))
    assert r.returncode != 0 and "BadRequest" in r.stderr and "parsing time" in r.stderr
    stored = srv.get("leases", NS, "plndr-cp-lock")
    assert stored is not None and stored["spec"]["holderIdentity"] == "n2"


def test_kubeconfig_for_a_subprocess(srv: FakeApiServer, tmp_path: Path) -> None:
    """A separate process (as the supervisor will be) reaches the threaded server."""
    import sys

    kc = write_kubeconfig(tmp_path / "kubeconfig", srv.url, namespace=NS)
    code = (
        "import sys\n"
        "from kubernetes import client, config\n"
        "api = config.new_client_from_config(config_file=sys.argv[1])\n"
        "s = client.V1Secret(metadata=client.V1ObjectMeta(name='from-child'))\n"
        "client.CoreV1Api(api).create_namespaced_secret('kube-system', s)\n")
    subprocess.run([sys.executable, "-c", code, str(kc)], check=True, timeout=60)
    got = srv.get("secrets", NS, "from-child")
    assert got is not None and got["type"] == "Opaque"
