"""A small in-test Kubernetes API server: list/watch for core/v1 objects, as the real one speaks it.

No API server can run here, so tests point the real `kubernetes` client at this
one (see `FakeKubeAPI.write_kubeconfig`). What it implements, after the API
conventions and the apiserver's watch cache:

- GET list (`/api/v1/namespaces/{ns}/{resource}`, `/api/v1/{resource}`) -> `{kind}List`
  with `metadata.resourceVersion`; GET one object; POST create (Events and others);
  `fieldSelector` on `metadata.name` / `metadata.namespace`; 404/409 as `Status` objects.
- `?watch=1`: a chunked stream of JSON lines `{"type": ..., "object": ...}`.
  Without a resourceVersion (or "0") it starts with a synthetic ADDED per existing
  object; with one it replays every change after it. A resourceVersion older than the
  compaction point gets HTTP 200 and one ERROR event holding a `Status` with code 410
  ("Expired"), then the stream ends - exactly what the real server does.
- `allowWatchBookmarks=true`: BOOKMARK events carrying only `metadata.resourceVersion`,
  every `bookmark_interval` seconds and on `send_bookmarks()`.
- `timeoutSeconds`: the server ends the stream cleanly after that long.
- Faults for tests: `drop_watches()` cuts every open watch mid-stream (no final chunk),
  `compact()` makes every older resourceVersion "too old".

The store keeps one global resourceVersion counter shared by all resources, like etcd.
"""
from __future__ import annotations

import json
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

# resource (URL plural) -> (kind, namespaced)
RESOURCES: Dict[str, Tuple[str, bool]] = {
    "configmaps": ("ConfigMap", True),
    "nodes": ("Node", False),
    "events": ("Event", True),
    "pods": ("Pod", True),
    "namespaces": ("Namespace", False),
}
_CLOSE = object()  # queued to a watch to end it cleanly


def status_object(code: int, reason: str, message: str) -> Dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Request:
    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]  # names lower-cased


@dataclass
class _Watch:
    resource: str
    namespace: Optional[str]
    selector: Dict[str, str]
    bookmarks: bool
    sock: socket.socket
    events: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    dropped: bool = False


class FakeKubeAPI:
    """Start with `start()` (or as a context manager); `url` is the server to point a client at."""

    def __init__(self, bookmark_interval: float = 0.0) -> None:
        self.bookmark_interval = bookmark_interval  # 0 = only on send_bookmarks()
        self._lock = threading.RLock()
        self._rv = 100
        self._compacted = 0
        self._objects: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
        self._history: List[Tuple[int, str, str, Dict[str, Any]]] = []  # (rv, resource, type, object)
        self._watches: List[_Watch] = []
        self.requests: List[Request] = []
        self._server: Optional[ThreadingHTTPServer] = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeKubeAPI":
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-kube-api", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.drop_watches()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeKubeAPI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, token: str = "fake-token") -> Path:
        """A kubeconfig the real client (and kubectl) can use to reach this server."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }
        Path(path).write_text(json.dumps(config))
        return Path(path)

    # ---- the store -------------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, resource: str, name: str, namespace: str = "") -> Optional[Dict[str, Any]]:
        with self._lock:
            obj = self._objects.get((resource, namespace, name))
            return json.loads(json.dumps(obj)) if obj else None

    def list(self, resource: str, namespace: str = "") -> List[Dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(o)) for (r, ns, _), o in sorted(self._objects.items())
                    if r == resource and (not namespace or ns == namespace)]

    def put(self, resource: str, obj: Dict[str, Any]) -> Dict[str, Any]:
        """Create or replace an object (like a client's create/update); returns it as stored."""
        kind, namespaced = RESOURCES[resource]
        obj = json.loads(json.dumps(obj))
        meta = obj.setdefault("metadata", {})
        if not namespaced:
            meta.pop("namespace", None)
        key = (resource, meta.get("namespace", "") if namespaced else "", meta["name"])
        with self._lock:
            old = self._objects.get(key)
            self._rv += 1
            obj["kind"], obj["apiVersion"] = kind, "v1"
            meta["resourceVersion"] = str(self._rv)
            meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else _now()
            self._objects[key] = obj
            self._record(resource, "MODIFIED" if old else "ADDED", obj)
            return json.loads(json.dumps(obj))

    def delete(self, resource: str, name: str, namespace: str = "") -> None:
        with self._lock:
            obj = self._objects.pop((resource, namespace, name))
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._record(resource, "DELETED", obj)

    def put_configmap(self, namespace: str, name: str, data: Dict[str, str]) -> Dict[str, Any]:
        return self.put("configmaps", {"metadata": {"namespace": namespace, "name": name}, "data": data})

    def put_node(self, name: str, pod_cidrs: Optional[List[str]] = None) -> Dict[str, Any]:
        spec: Dict[str, Any] = {}
        if pod_cidrs:
            spec = {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}
        return self.put("nodes", {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                                  "spec": spec, "status": {}})

    def _record(self, resource: str, kind: str, obj: Dict[str, Any]) -> None:
        self._history.append((self._rv, resource, kind, json.loads(json.dumps(obj))))
        for watch in self._watches:
            if watch.resource == resource and _matches(obj, watch.namespace, watch.selector):
                watch.events.put({"type": kind, "object": obj})

    # ---- faults ----------------------------------------------------------------------------
    def compact(self) -> int:
        """Forget history: every resourceVersion before now is "too old" (410 Gone) for a watch."""
        with self._lock:
            self._compacted = self._rv
            self._history.clear()
            return self._compacted

    def drop_watches(self) -> int:
        """Cut every open watch connection mid-stream, as a dying API server or a load balancer does."""
        with self._lock:
            watches, self._watches = list(self._watches), []
        for watch in watches:
            watch.dropped = True
            try:
                watch.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            watch.events.put(_CLOSE)
        return len(watches)

    def close_watches(self) -> None:
        """End every open watch cleanly (final chunk), as a server-side timeout does."""
        with self._lock:
            for watch in self._watches:
                watch.events.put(_CLOSE)

    def send_bookmarks(self) -> None:
        with self._lock:
            for watch in self._watches:
                if watch.bookmarks:
                    watch.events.put(self._bookmark(watch.resource))

    def _bookmark(self, resource: str) -> Dict[str, Any]:
        kind = RESOURCES[resource][0]
        return {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1",
                                               "metadata": {"resourceVersion": str(self._rv)}}}

    def open_watches(self, resource: Optional[str] = None) -> int:
        with self._lock:
            return sum(1 for w in self._watches if resource in (None, w.resource))

    def wait_for_watch(self, resource: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.open_watches(resource):
            if time.monotonic() > deadline:
                raise AssertionError(f"no watch on {resource} opened within {timeout}s")
            time.sleep(0.02)

    def requests_for(self, resource: str, watch: Optional[bool] = None, method: str = "GET") -> List[Request]:
        out = []
        for req in list(self.requests):
            parts = req.path.strip("/").split("/")
            if req.method == method and resource in parts:
                is_watch = req.query.get("watch", "") in ("1", "true", "True")
                if watch is None or watch == is_watch:
                    out.append(req)
        return out

    # ---- request handling (called from the handler threads) --------------------------------
    def _watch_events(self, resource: str, namespace: Optional[str], selector: Dict[str, str],
                      query: Dict[str, str], sock: socket.socket) -> Iterator[Optional[Dict[str, Any]]]:
        """The events of one watch; None means "nothing for a while" (lets the caller send bookmarks)."""
        rv_text = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks", "") in ("true", "1", "True")
        watch = _Watch(resource, namespace, selector, bookmarks, sock)
        with self._lock:
            if rv_text not in ("", "0"):
                try:
                    since = int(rv_text)
                except ValueError:
                    yield {"type": "ERROR", "object": status_object(400, "BadRequest", f"invalid resourceVersion {rv_text!r}")}
                    return
                if since < self._compacted:
                    yield {"type": "ERROR", "object": status_object(
                        410, "Expired", f"too old resource version: {since} ({self._compacted})")}
                    return
                backlog = [{"type": t, "object": o} for rv, r, t, o in self._history
                           if rv > since and r == resource and _matches(o, namespace, selector)]
            else:
                backlog = [{"type": "ADDED", "object": json.loads(json.dumps(o))}
                           for (r, ns, _), o in sorted(self._objects.items())
                           if r == resource and _matches(o, namespace, selector)]
            for event in backlog:
                watch.events.put(event)
            self._watches.append(watch)
        timeout = float(query.get("timeoutSeconds") or 0) or None
        deadline = time.monotonic() + timeout if timeout else None
        last_bookmark = time.monotonic()
        try:
            while not watch.dropped:
                wait = 0.05
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                try:
                    event = watch.events.get(timeout=wait)
                except queue.Empty:
                    event = None
                if event is _CLOSE or (deadline is not None and time.monotonic() >= deadline):
                    return
                if event is None and bookmarks and self.bookmark_interval and \
                        time.monotonic() - last_bookmark >= self.bookmark_interval:
                    with self._lock:
                        event = self._bookmark(resource)
                if event is not None and event.get("type") == "BOOKMARK":
                    last_bookmark = time.monotonic()
                yield event
        finally:
            with self._lock:
                if watch in self._watches:
                    self._watches.remove(watch)

    def _list(self, resource: str, namespace: Optional[str], selector: Dict[str, str]) -> Dict[str, Any]:
        with self._lock:
            items = [json.loads(json.dumps(o)) for (r, _, _), o in sorted(self._objects.items())
                     if r == resource and _matches(o, namespace, selector)]
            for item in items:  # items of a list carry no kind/apiVersion
                item.pop("kind", None)
                item.pop("apiVersion", None)
            return {"kind": RESOURCES[resource][0] + "List", "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _create(self, resource: str, namespace: str, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        meta = body.setdefault("metadata", {})
        if RESOURCES[resource][1]:
            if meta.get("namespace", namespace) != namespace:
                return 400, status_object(400, "BadRequest", "the namespace of the object does not match the URL")
            meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            return 422, status_object(422, "Invalid", "metadata.name: Required value")
        with self._lock:
            if (resource, namespace if RESOURCES[resource][1] else "", meta["name"]) in self._objects:
                return 409, status_object(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
            return 201, self.put(resource, body)


def _matches(obj: Dict[str, Any], namespace: Optional[str], selector: Dict[str, str]) -> bool:
    meta = obj.get("metadata", {})
    if namespace and meta.get("namespace") != namespace:
        return False
    for key, value in selector.items():
        have = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace", "")}.get(key)
        if have != value:
            return False
    return True


def parse_field_selector(text: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for term in filter(None, text.split(",")):
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if not sep or key not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f'field label not supported: "{term}"')
        out[key] = value
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKubeAPI

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _route(self) -> Tuple[Optional[str], Optional[str], Optional[str], Dict[str, str]]:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self.fake.requests.append(Request(self.command, split.path, query,
                                          {k.lower(): v for k, v in self.headers.items()}))
        parts = split.path.strip("/").split("/")
        if parts[:2] != ["api", "v1"]:
            return None, None, None, query
        rest = parts[2:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in RESOURCES or len(rest) > 2:
            return None, None, None, query
        resource = rest[0]
        if namespace is not None and not RESOURCES[resource][1]:
            return None, None, None, query
        return resource, namespace, (rest[1] if len(rest) == 2 else None), query

    def _send_json(self, code: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, what: str = "the server could not find the requested resource") -> None:
        self._send_json(404, status_object(404, "NotFound", what))

    def do_GET(self) -> None:
        resource, namespace, name, query = self._route()
        if resource is None:
            return self._not_found()
        try:
            selector = parse_field_selector(query.get("fieldSelector", ""))
        except ValueError as exc:
            return self._send_json(400, status_object(400, "BadRequest", str(exc)))
        if name is not None:
            obj = self.fake.get(resource, name, namespace or "")
            if obj is None:
                return self._not_found(f'{resource} "{name}" not found')
            return self._send_json(200, obj)
        if query.get("watch", "") in ("1", "true", "True"):
            return self._stream(resource, namespace, selector, query)
        self._send_json(200, self.fake._list(resource, namespace, selector))

    def do_POST(self) -> None:
        resource, namespace, name, _ = self._route()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if resource is None or name is not None or (RESOURCES[resource][1] and namespace is None):
            return self._not_found()
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send_json(400, status_object(400, "BadRequest", "invalid JSON body"))
        code, obj = self.fake._create(resource, namespace or "", body)
        self._send_json(code, obj)

    @staticmethod
    def _merge(target: Any, patch: Any) -> Any:
        """RFC 7386 JSON merge patch (null deletes a key); for maps strategic merge patch does the same."""
        if not isinstance(patch, dict):
            return patch
        out = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _Handler._merge(out.get(key), value)
        return out

    def do_PATCH(self) -> None:
        """PATCH one object: JSON merge patch or strategic merge patch (as a merge patch: enough for maps)."""
        resource, namespace, name, _ = self._route()
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if resource is None or name is None:
            return self._not_found()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return self._send_json(415, status_object(415, "UnsupportedMediaType",
                                                      f"the body of the request was in an unknown format: {ctype}"))
        try:
            patch = json.loads(raw)
        except ValueError:
            return self._send_json(400, status_object(400, "BadRequest", "invalid JSON body"))
        with self.fake._lock:
            obj = self.fake.get(resource, name, namespace or "")
            if obj is None:
                return self._not_found(f'{resource} "{name}" not found')
            merged = self._merge(obj, patch)
            merged["metadata"]["name"] = name
            self._send_json(200, self.fake.put(resource, merged))

    def _stream(self, resource: str, namespace: Optional[str], selector: Dict[str, str],
                query: Dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for event in self.fake._watch_events(resource, namespace, selector, query, self.connection):
                if event is None:
                    continue
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass  # the client went away, or drop_watches() cut the socket
        self.close_connection = True
