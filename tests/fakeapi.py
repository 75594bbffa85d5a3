"""A strict in-process fake Kubernetes API server (aiohttp, real HTTP on 127.0.0.1).

It encodes the apiserver behaviour our clients depend on (``docs kubernetes.md`` §3): one global
string resourceVersion, 409 on stale writes, MicroTime decoding errors *before* the conflict
check, Secret base64 decoding, Status error bodies with ``Content-Type: application/json``
exactly, watches with replay / in-stream 410 after compaction / bookmarks, and a few test hooks
for fault injection. A permissive fake is how the MicroTime bug reaches production, so when in
doubt this server says no, as the real one does.

Two ways to run it::

    srv = FakeApiServer()
    url = await srv.start()          # inside a running loop (aio clients in the same loop)
    await srv.aclose()

    url = srv.start_in_thread()      # own loop in a thread (sync clients, subprocesses)
    srv.stop()

Test hooks (thread-safe in thread mode): ``seed``, ``delete``, ``get``, ``compact``,
``drop_watches``, ``inject``, ``enable_rbac``, ``requests``, ``responses``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from aiohttp import web

T = TypeVar("T")
Obj = dict[str, Any]
JSON = "application/json"
CLIENT_HEADER = "X-Test-Client"  # names the client a fault injection applies to
MICROTIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
GO_MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType",
           422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable", 504: "Timeout"}


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    resource: str
    kind: str
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


KINDS = {k.resource: k for k in (
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "services", "Service", subresources=("status",)),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Kind("", "v1", "events", "Event"),
)}


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` body."""

    def __init__(self, code: int, message: str, reason: str | None = None,
                 details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details or {}

    def status(self) -> Obj:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    # body= (bytes) keeps Content-Type exactly application/json: lightkube needs that.
    resp = web.Response(body=json.dumps(body).encode(), status=status, headers=headers)
    resp.content_type = JSON
    return resp


class RequestRecord(NamedTuple):
    method: str
    path: str
    query: dict[str, str]


@dataclass
class Injection:
    method: str
    path_re: re.Pattern[str]
    code: int | None
    times: int | None
    delay: float
    headers: dict[str, str]
    hits: int = 0
    delay_after: float = 0.0  # seconds between committing the request and answering it
    client: str | None = None  # only requests with this CLIENT_HEADER value


@dataclass
class Watcher:
    kind: Kind
    namespace: str | None
    fields: list[tuple[str, str, str]]
    labels: list[tuple[str, str, str | None]]
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return match_fields(self.kind, obj, self.fields) and match_labels(obj, self.labels)


# -- selectors -------------------------------------------------------------------------------

def parse_field_selector(kind: Kind, text: str) -> list[tuple[str, str, str]]:
    """``a=b,c!=d``; only the fields the real server indexes, else 400."""
    out: list[tuple[str, str, str]] = []
    allowed = {"metadata.name", "metadata.namespace"} | ({"type"} if kind.kind == "Secret"
                                                          else set())
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", part)
        if not m:
            raise ApiError(400, f'invalid field selector: "{part}"')
        key, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if key not in allowed:
            raise ApiError(400, f"field label not supported: {key}")
        out.append((key, "!=" if op == "!=" else "=", value))
    return out


def match_fields(kind: Kind, obj: Obj, reqs: list[tuple[str, str, str]]) -> bool:
    del kind
    for key, op, value in reqs:
        if key == "type":
            actual = str(obj.get("type", ""))
        else:
            actual = str(obj.get("metadata", {}).get(key.split(".", 1)[1], ""))
        if (actual == value) != (op == "="):
            return False
    return True


def parse_label_selector(text: str) -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if m := re.fullmatch(r"([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)", part):
            out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
        elif m := re.fullmatch(r"(!?)([A-Za-z0-9._/-]+)", part):
            out.append((m.group(2), "!exists" if m.group(1) else "exists", None))
        else:
            raise ApiError(400, f"unable to parse requirement: {part!r}")
    return out


def match_labels(obj: Obj, reqs: list[tuple[str, str, str | None]]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for key, op, value in reqs:
        ok = {"exists": key in labels, "!exists": key not in labels,
              "=": labels.get(key) == value,
              "!=": labels.get(key) != value}[op]
        if not ok:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


# -- per-kind decoding (400) and validation (422) -----------------------------------------

def decode(kind: Kind, obj: Obj) -> Obj:
    """What the real server's decoder does: may raise 400; normalises stored forms."""
    if kind.kind == "Lease":
        spec = obj.get("spec") or {}
        for f in ("acquireTime", "renewTime"):
            v = spec.get(f)
            if v is None:
                continue
            if not isinstance(v, str) or not MICROTIME_RE.match(v):
                raise ApiError(400, f'Lease in version "v1" cannot be handled as a Lease: '
                                    f'parsing time "{v}" as "{GO_MICRO_LAYOUT}": '
                                    f"cannot parse as MicroTime")
            # The server re-serialises MicroTime in UTC with exactly six digits.
            t = datetime.fromisoformat(v.replace("Z", "+00:00")).astimezone(UTC)
            spec[f] = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    elif kind.kind == "Secret":
        data = dict(obj.get("data") or {})
        for k, v in data.items():
            try:
                base64.b64decode(str(v), validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, f'Secret in version "v1" cannot be handled as a Secret: '
                                    f"illegal base64 data in key {k}") from None
        for k, v in (obj.pop("stringData", None) or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        if data:
            obj["data"] = data
        obj.setdefault("type", "Opaque")
    return obj


def validate(kind: Kind, obj: Obj) -> None:
    name = obj["metadata"].get("name", "")
    errs: list[str] = []
    if kind.kind == "Lease":
        spec = obj.get("spec") or {}
        d, t = spec.get("leaseDurationSeconds"), spec.get("leaseTransitions")
        if d is not None and (not isinstance(d, int) or d <= 0):
            errs.append(f"spec.leaseDurationSeconds: Invalid value: {d}: must be greater than 0")
        if t is not None and (not isinstance(t, int) or t < 0):
            errs.append(f"spec.leaseTransitions: Invalid value: {t}: "
                        "must be greater than or equal to 0")
    if errs:
        raise ApiError(422, f'{kind.kind}.{kind.group or "core"} "{name}" is invalid: '
                            + ", ".join(errs), details={"name": name, "kind": kind.resource})


# -- the server ------------------------------------------------------------------------------

class FakeApiServer:
    """In-memory API server; see the module docstring."""

    def __init__(self, *, bookmark_interval: float = 1.0, version_minor: str = "32") -> None:
        self.bookmark_interval = bookmark_interval
        self.version_minor = version_minor
        self.requests: list[RequestRecord] = []
        self.responses: list[tuple[str, str, int]] = []   # (method, path, status)
        self.rv = 1
        self.compacted_rv = 0
        self._objs: dict[tuple[str, str, str], Obj] = {}
        self._history: list[tuple[int, str, Kind, Obj]] = []
        self._watchers: list[Watcher] = []
        self._injections: list[Injection] = []
        self._rbac: list[tuple[str | None, Obj]] | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> str:
        """Serve on 127.0.0.1 with a random port in the running loop; return the base URL."""
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def aclose(self) -> None:
        self._drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start_in_thread(self) -> str:
        """Run the server on its own loop in a daemon thread; return the base URL."""
        ready = threading.Event()

        def run() -> None:
            # The Runner's close cancels and finishes what aiohttp's shutdown left pending
            # (a watch handler it only asked to cancel) before the loop closes.
            with asyncio.Runner() as runner:
                runner.run(self.start())
                ready.set()
                runner.get_loop().run_forever()
                runner.run(self.aclose())

        self._thread = threading.Thread(target=run, name="fakeapi", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake API server did not start")
        return self.url

    def stop(self) -> None:
        """Stop a server started with :meth:`start_in_thread`."""
        if self._thread is None or self._loop is None:
            raise RuntimeError("not started in a thread; use await aclose()")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def _call(self, fn: Callable[[], T]) -> T:
        """Run a hook on the server loop when called from another thread."""
        loop = self._loop
        if self._thread is None or loop is None or threading.current_thread() is self._thread:
            return fn()

        async def wrap() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrap(), loop).result(10)

    # -- test hooks -------------------------------------------------------------------------

    def seed(self, obj: Obj, *, strict: bool = True) -> Obj:
        """Create or replace an object server-side (as another client would); returns it."""
        def do() -> Obj:
            kind = self._kind_of(obj)
            o = copy.deepcopy(obj)
            o.setdefault("metadata", {}).setdefault("namespace", "default")
            if strict:
                o = decode(kind, o)
                validate(kind, o)
            meta = o["metadata"]
            key = (kind.resource, meta["namespace"], meta["name"])
            old = self._objs.get(key)
            meta.pop("resourceVersion", None)
            return self._store(kind, key, o, old)
        return copy.deepcopy(self._call(do))

    def delete(self, resource: str, namespace: str, name: str) -> bool:
        def do() -> bool:
            key = (resource, namespace, name)
            if key not in self._objs:
                return False
            self._remove(KINDS[resource], key)
            return True
        return self._call(do)

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        return self._call(lambda: copy.deepcopy(self._objs.get((resource, namespace, name))))

    def compact(self) -> int:
        """Drop history: resuming a watch from an older rv now gets 410. Returns that point."""
        def do() -> int:
            self._history.clear()
            self.compacted_rv = self.rv
            return self.rv
        return self._call(do)

    def drop_watches(self) -> None:
        """End every open watch stream (as an apiserver restart would)."""
        self._call(self._drop_watches)

    def _drop_watches(self) -> None:
        for w in self._watchers:
            w.queue.put_nowait(None)
        self._watchers.clear()

    def inject(self, method: str, path_regex: str, code: int | None, *, times: int | None = 1,
               delay: float = 0.0, headers: Mapping[str, str] | None = None,
               delay_after: float = 0.0, client: str | None = None) -> Injection:
        """Answer matching requests with ``code`` (after ``delay``); ``code=None``: only delay.

        ``method`` ``"*"`` matches any; ``times=None`` means until :meth:`clear_injections`.
        ``delay_after``: the request is carried out at once and only its reply is late (a slow
        etcd, a client paused mid-request). ``client``: only requests whose ``CLIENT_HEADER``
        is that value (``ApiClient(header_name=CLIENT_HEADER, header_value=...)``).
        """
        inj = Injection(method.upper(), re.compile(path_regex), code, times, delay,
                        dict(headers or {}), delay_after=delay_after, client=client)
        self._call(lambda: self._injections.append(inj))
        return inj

    def clear_injections(self) -> None:
        self._call(self._injections.clear)

    def enable_rbac(self, rules: list[Obj], namespace: str | None = None) -> None:
        """Enforce RBAC: add Role (``namespace`` set) or ClusterRole rules; others get 403."""
        def do() -> None:
            if self._rbac is None:
                self._rbac = []
            self._rbac.extend((namespace, r) for r in rules)
        self._call(do)

    def disable_rbac(self) -> None:
        def do() -> None:
            self._rbac = None
        self._call(do)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in list(self.requests) if method in (None, r.method)]

    # -- storage ----------------------------------------------------------------------------

    def _kind_of(self, obj: Obj) -> Kind:
        for k in KINDS.values():
            if k.kind == obj.get("kind") and k.api_version == obj.get("apiVersion"):
                return k
        raise ValueError(f"unsupported kind {obj.get('apiVersion')}/{obj.get('kind')}")

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _store(self, kind: Kind, key: tuple[str, str, str], obj: Obj, old: Obj | None) -> Obj:
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        meta = obj["metadata"]
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if obj == old:   # a no-op write bumps nothing and sends no event, as in etcd3
                return obj
        else:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["resourceVersion"] = self._bump()
        self._objs[key] = obj
        self._emit("MODIFIED" if old is not None else "ADDED", kind, obj)
        return obj

    def _remove(self, kind: Kind, key: tuple[str, str, str]) -> Obj:
        obj = self._objs.pop(key)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", kind, obj)
        return obj

    def _emit(self, typ: str, kind: Kind, obj: Obj) -> None:
        snap = copy.deepcopy(obj)
        self._history.append((self.rv, typ, kind, snap))
        for w in self._watchers:
            if w.kind is kind and w.matches(snap):
                w.queue.put_nowait({"type": typ, "object": snap})

    # -- HTTP -------------------------------------------------------------------------------

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        path = "/" + req.match_info["tail"].strip("/")
        self.requests.append(RequestRecord(req.method, path, dict(req.query)))
        resp = await self._handle_inner(req, path)
        self.responses.append((req.method, path, resp.status))
        return resp

    async def _handle_inner(self, req: web.Request, path: str) -> web.StreamResponse:
        try:
            after = 0.0
            for inj in list(self._injections):
                if (inj.method in ("*", req.method) and inj.path_re.search(path)
                        and (inj.client is None or req.headers.get(CLIENT_HEADER) == inj.client)
                        and (inj.times is None or inj.hits < inj.times)):
                    inj.hits += 1
                    if inj.delay:
                        await asyncio.sleep(inj.delay)
                    if inj.code is not None:
                        err = ApiError(inj.code, f"injected {inj.code}")
                        return json_response(err.status(), inj.code, inj.headers)
                    after = inj.delay_after
                    break
            resp = await self._route(req, path)
            if after:
                await asyncio.sleep(after)
            return resp
        except ApiError as e:
            return json_response(e.status(), e.code)

    async def _route(self, req: web.Request, path: str) -> web.StreamResponse:
        parts = path.strip("/").split("/")
        group: str | None
        if path == "/version":
            return json_response({"major": "1", "minor": self.version_minor,
                                  "gitVersion": f"v1.{self.version_minor}.0-fakeapi",
                                  "platform": "linux/amd64"})
        if parts[0] == "api" and len(parts) >= 1:
            group, rest = "", parts[1:]
            version = rest.pop(0) if rest else None
        elif parts[0] == "apis":
            group = parts[1] if len(parts) > 1 else None
            version = parts[2] if len(parts) > 2 else None
            rest = parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        if version is None or not rest:
            if req.method != "GET":
                raise ApiError(405, f"the server does not allow this method: {req.method}")
            return json_response(self._discovery(group, version))
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3 or (ns is None and len(rest) != 1):
            raise ApiError(404, "the server could not find the requested resource")
        kind = KINDS.get(rest[0])
        if kind is None or kind.group != group or kind.version != version:
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in kind.subresources:
            raise ApiError(404, "the server could not find the requested resource")
        watch = req.query.get("watch", "").lower() in ("true", "1")
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(req.method)
        if req.method == "GET":
            verb = "watch" if watch else ("get" if name else "list")
        if verb is None or (name is None) != (verb in ("list", "watch", "create")):
            raise ApiError(405, f"the server does not allow this method on the requested "
                                f"resource: {req.method}")
        self._authorize(verb, kind, sub, ns, name)
        if verb == "watch":
            return await self._watch(req, kind, ns)
        if verb == "list":
            return json_response(self._list(kind, ns, req.query))
        assert ns is not None
        if verb == "get":
            return json_response(self._get_or_404(kind, ns, name or ""))
        if verb == "delete":
            return json_response(await self._delete(req, kind, ns, name or ""))
        body = await self._body(req)
        if verb == "create":
            return json_response(self._create(kind, ns, body), 201)
        return json_response(self._update(kind, ns, name or "", sub, body,
                                          patch=verb == "patch",
                                          ctype=req.content_type))

    def _discovery(self, group: str | None, version: str | None) -> Obj:
        if group == "" and version is None:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.split("//")[1]}]}
        if group is None:
            groups = sorted({k.group for k in KINDS.values() if k.group})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                for g in groups]}
        kinds = [k for k in KINDS.values() if k.group == group and k.version == version]
        if not kinds:
            raise ApiError(404, "the server could not find the requested resource")
        if version is None:
            gv = {"groupVersion": f"{group}/v1", "version": "v1"}
            return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv],
                    "preferredVersion": gv}
        resources: list[Obj] = []
        for k in kinds:
            resources.append({"name": k.resource, "singularName": k.kind.lower(),
                              "namespaced": True, "kind": k.kind, "verbs": list(k.verbs)})
            resources += [{"name": f"{k.resource}/{s}", "singularName": "", "namespaced": True,
                           "kind": k.kind, "verbs": ["get", "patch", "update"]}
                          for s in k.subresources]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": kinds[0].api_version, "resources": resources}

    def _authorize(self, verb: str, kind: Kind, sub: str | None, ns: str | None,
                   name: str | None) -> None:
        if self._rbac is None:
            return
        res = f"{kind.resource}/{sub}" if sub else kind.resource
        for grant_ns, rule in self._rbac:
            if grant_ns is not None and grant_ns != ns:
                continue
            groups, resources = rule.get("apiGroups", []), rule.get("resources", [])
            verbs, names = rule.get("verbs", []), rule.get("resourceNames") or []
            if ("*" in groups or kind.group in groups) and (
                    "*" in resources or res in resources
                    or (sub is not None and f"*/{sub}" in resources)) and (
                    "*" in verbs or verb in verbs) and (not names or name in names):
                return
        who = f'{kind.qualified} "{name}"' if name else kind.qualified
        where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        raise ApiError(403, f'{who} is forbidden: User "system:anonymous" cannot {verb} '
                            f'resource "{res}" in API group "{kind.group}" {where}',
                       details={"name": name or "", "group": kind.group,
                                "kind": kind.resource})

    async def _body(self, req: web.Request) -> Obj:
        try:
            body = json.loads(await req.read() or b"null")
        except ValueError as e:
            raise ApiError(400, f"couldn't get version/kind; json parse error: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was not a JSON object")
        return body

    def _not_found(self, kind: Kind, name: str) -> ApiError:
        return ApiError(404, f'{kind.qualified} "{name}" not found',
                        details={"name": name, "group": kind.group, "kind": kind.resource})

    def _get_or_404(self, kind: Kind, ns: str, name: str) -> Obj:
        obj = self._objs.get((kind.resource, ns, name))
        if obj is None:
            raise self._not_found(kind, name)
        return obj

    def _list(self, kind: Kind, ns: str | None, query: Mapping[str, str]) -> Obj:
        w = Watcher(kind, ns, parse_field_selector(kind, query.get("fieldSelector", "")),
                    parse_label_selector(query.get("labelSelector", "")))
        items = []
        for (res, _, _), o in sorted(self._objs.items()):
            if res == kind.resource and w.matches(o):
                item = copy.deepcopy(o)
                del item["kind"], item["apiVersion"]   # list items omit them, as real ones do
                items.append(item)
        meta: Obj = {"resourceVersion": str(self.rv)}
        limit = int(query.get("limit") or 0)
        start = int(query.get("continue") or 0)  # the offset (a real token is opaque)
        if limit > 0:
            if start:
                items = items[start:]
            if len(items) > limit:
                items = items[:limit]
                meta["continue"] = str(start + limit)
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                "metadata": meta, "items": items}

    def _check_meta(self, kind: Kind, ns: str, name: str | None, body: Obj) -> Obj:
        meta = body.setdefault("metadata", {}) or {}
        body["metadata"] = meta
        if meta.get("namespace") not in (None, "", ns):
            raise ApiError(400, "the namespace of the provided object does not match the "
                                "namespace sent on the request")
        meta["namespace"] = ns
        if name is not None and meta.get("name") not in (None, name):
            raise ApiError(400, "the name of the object "
                                f"({meta.get('name')}) does not match the name on the URL "
                                f"({name})")
        if kind.kind != body.get("kind", kind.kind) or kind.api_version != body.get(
                "apiVersion", kind.api_version):
            raise ApiError(400, f"the API version in the data ({body.get('apiVersion')}) "
                                f"does not match the expected API version ({kind.api_version})")
        return meta

    def _create(self, kind: Kind, ns: str, body: Obj) -> Obj:
        body = decode(kind, body)
        meta = self._check_meta(kind, ns, None, body)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise ApiError(422, f'{kind.kind} "" is invalid: metadata.name: Required value: '
                                "name or generateName is required")
        if meta.get("resourceVersion"):
            raise ApiError(500, "resourceVersion should not be set on objects to be created")
        key = (kind.resource, ns, meta["name"])
        if key in self._objs:
            raise ApiError(409, f'{kind.qualified} "{meta["name"]}" already exists',
                           "AlreadyExists",
                           {"name": meta["name"], "group": kind.group, "kind": kind.resource})
        validate(kind, body)
        if kind.kind == "Service":
            body["status"] = {"loadBalancer": {}}
        return self._store(kind, key, body, None)

    def _update(self, kind: Kind, ns: str, name: str, sub: str | None, body: Obj, *,
                patch: bool, ctype: str) -> Obj:
        key = (kind.resource, ns, name)
        current = self._objs.get(key)
        if patch:
            if "json-patch" in ctype or "apply-patch" in ctype:
                raise ApiError(415, "the body of the request was in an unknown format - "
                                    "accepted media types include: "
                                    "application/merge-patch+json, "
                                    "application/strategic-merge-patch+json")
            if current is None:
                raise self._not_found(kind, name)
            body = merge_patch(current, body)
        body = decode(kind, copy.deepcopy(body))   # 400 comes before 404 and 409
        meta = self._check_meta(kind, ns, name, body)
        if current is None:
            raise self._not_found(kind, name)
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise ApiError(409, f'Operation cannot be fulfilled on {kind.qualified} "{name}": '
                                "the object has been modified; please apply your changes to "
                                "the latest version and try again", "Conflict",
                           {"name": name, "group": kind.group, "kind": kind.resource})
        validate(kind, body)
        if "status" in kind.subresources:
            # The main resource ignores status; the status subresource changes only status.
            if sub == "status":
                new_status = body.get("status")
                body = copy.deepcopy(current)
                body["status"] = new_status
            else:
                body["status"] = copy.deepcopy(current.get("status"))
        return self._store(kind, key, body, current)

    async def _delete(self, req: web.Request, kind: Kind, ns: str, name: str) -> Obj:
        opts = await self._body(req) if req.can_read_body else {}
        obj = self._get_or_404(kind, ns, name)
        pre = opts.get("preconditions") or {}
        for f, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if pre.get(f) and pre[f] != obj["metadata"][f]:
                raise ApiError(409, f"Precondition failed: {label} in precondition: {pre[f]}, "
                                    f"{label} in object meta: {obj['metadata'][f]}", "Conflict")
        self._remove(kind, (kind.resource, ns, name))
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": kind.group, "kind": kind.resource,
                            "uid": obj["metadata"]["uid"]}}

    async def _watch(self, req: web.Request, kind: Kind, ns: str | None) -> web.StreamResponse:
        q = req.query
        w = Watcher(kind, ns, parse_field_selector(kind, q.get("fieldSelector", "")),
                    parse_label_selector(q.get("labelSelector", "")))
        rv_text = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        # Snapshot and registration are atomic (no await between): nothing lost or doubled.
        initial: list[Obj | None]
        if rv_text in ("", "0"):
            initial = [{"type": "ADDED", "object": copy.deepcopy(o)}
                       for (res, _, _), o in sorted(self._objs.items())
                       if res == kind.resource and w.matches(o)]
        else:
            try:
                since = int(rv_text)
            except ValueError:
                raise ApiError(400, f"invalid resource version: {rv_text}") from None
            if since < self.compacted_rv:
                initial = [{"type": "ERROR", "object": status_body(
                    410, "Expired",
                    f"too old resource version: {since} ({self.compacted_rv})")}, None]
            else:
                initial = [{"type": t, "object": copy.deepcopy(o)}
                           for r, t, k, o in self._history
                           if r > since and k is kind and w.matches(o)]
        for item in initial:
            w.queue.put_nowait(item)
        if not (initial and initial[-1] is None):
            self._watchers.append(w)
        resp = web.StreamResponse(status=200)
        resp.content_type = JSON
        resp.enable_chunked_encoding()
        await resp.prepare(req)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        ev: Obj | None
        try:
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    ev = await asyncio.wait_for(w.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and w.queue.empty() and (deadline is None
                                                          or loop.time() < deadline):
                        ev = {"type": "BOOKMARK", "object": {
                            "kind": kind.kind, "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": str(self.rv)}}}
                    else:
                        continue
                if ev is None:
                    break
                await resp.write(json.dumps(ev).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if w in self._watchers:
                self._watchers.remove(w)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp


def write_kubeconfig(path: str | Path, url: str, namespace: str = "default") -> Path:
    """Write a kubeconfig (http, no auth) pointing at ``url``; returns the path."""
    p = Path(path)
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
           "clusters": [{"name": "fake", "cluster": {"server": url}}],
           "users": [{"name": "fake", "user": {}}],
           "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}]}
    p.write_text(json.dumps(cfg, indent=1))   # JSON is valid YAML
    return p
