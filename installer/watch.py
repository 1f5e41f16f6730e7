"""List, then watch ONE named object, forever: the informer loop, for a single object.

- list with `fieldSelector=metadata.name=NAME` gives the state and a resourceVersion;
- watch from that resourceVersion (bookmarks allowed: they only move it forward);
- a dropped connection or a server-side timeout: watch again from the last
  resourceVersion seen, after a jittered, growing backoff for failures;
- 410 Gone (resourceVersion too old): list again.
Every state reaches `on_change(object dict or None)` (None: the object does not exist).
Objects stay the API's JSON (dicts): `raw_events` never builds the client's models.
"""
from __future__ import annotations

import json
import random
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

from .log import Log

OnChange = Callable[[Optional[Dict[str, Any]]], None]
# A dropped watch is routine; this many failures in a row is a cause worth naming (log, /readyz).
REPORT_AFTER_FAILURES = 3


def api_endpoint(list_func: Callable[..., Any]) -> str:
    """The API server URL a generated client method talks to ("?" when it cannot be told)."""
    api = getattr(getattr(list_func, "__self__", None), "api_client", None)
    return str(getattr(getattr(api, "configuration", None), "host", "") or "?")


def checked(resp: Any) -> Any:
    """`resp` (an unread response, `_preload_content=False`) when its status is 2xx; else ApiException
    (kubernetes 37 no longer raises for a response it does not preload)."""
    from kubernetes.client.exceptions import ApiException

    if not 200 <= resp.status <= 299:
        raise ApiException(status=resp.status, reason=f"{resp.reason}: {resp.data[:300]!r}")
    return resp


def raw_events(list_func: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Dict[str, Any]]:
    """The watch's events as the API server sends them, `{"type": ..., "object": dict}` (json.loads only).

    An ERROR event (410 Gone, ...) or an HTTP error status raises ApiException with its code.
    Why not `kubernetes.watch.Watch().stream(..., deserialize=False)`: by default it deserialises
    every event into a model (bench/watch_event.py: 8-20x the cost of json.loads for a 7 KB Node),
    and with deserialize=False it fails on every ERROR event (it reads event["raw_object"], which
    only deserialising sets: KeyError in kubernetes 34.1-37.0.2), so a 410 Gone would look like a
    dropped connection, retried from the same resourceVersion forever.
    """
    from kubernetes.client.exceptions import ApiException
    from kubernetes.watch.watch import iter_resp_lines

    resp = list_func(*args, watch=True, _preload_content=False, **kwargs)
    try:
        for line in iter_resp_lines(checked(resp)):
            if not line.strip():
                continue
            event = json.loads(line)
            if event.get("type") == "ERROR":
                status = event.get("object") or {}
                raise ApiException(status=status.get("code"),
                                   reason=f"{status.get('reason')}: {status.get('message')}")
            yield event
    finally:
        resp.close()
        resp.release_conn()


class Backoff:
    def __init__(self, first: float = 0.2, cap: float = 10.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        delay = self.current * random.uniform(0.5, 1.0)
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


class ObjectWatcher:
    def __init__(self, label: str, list_func: Callable[..., Any], args: tuple, name: str,
                 on_change: OnChange, log: Log, stop: threading.Event, watch_timeout: int = 300,
                 on_restart: Optional[Callable[[str], None]] = None) -> None:
        self.label = label  # e.g. "configmap kube-system/pycni"
        self.list_func = list_func
        self.args = args
        self.query = {"field_selector": f"metadata.name={name}"}  # of the list and the watch
        self.on_change = on_change
        self.log = log
        self.stop = stop
        self.watch_timeout = watch_timeout
        self.on_restart = on_restart or (lambda why: None)
        self.backoff = Backoff()
        self.rv: Optional[str] = None  # last resourceVersion seen (events and bookmarks); None = list
        self.endpoint = api_endpoint(list_func)
        self.failures = 0  # in a row; 0 once the API answered again
        self.last_error = ""
        self.thread = threading.Thread(target=self._run, name=f"watch {label}", daemon=True)

    def start(self) -> "ObjectWatcher":
        self.thread.start()
        return self

    def problem(self) -> str:
        """Why this source has no data, once failures repeat: the endpoint and the last error ("" else)."""
        if self.failures < REPORT_AFTER_FAILURES:
            return ""
        return (f"API server {self.endpoint} not reachable ({self.failures} failures in a row, "
                f"last: {self.last_error})")

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        if self.failures == REPORT_AFTER_FAILURES:
            self.log.error("api_unreachable", source=self.label, endpoint=self.endpoint, failures=self.failures,
                           why=why, hint="from a host-network pod before kube-proxy runs (or without it), set "
                                         "the API server's address (chart: kubernetes.apiServer.host/port)")

    def _answered(self) -> None:
        if self.failures >= REPORT_AFTER_FAILURES:
            self.log.info("api_reachable", source=self.label, endpoint=self.endpoint, after_failures=self.failures)
        self.failures = 0

    def _listed(self, items: List[Dict[str, Any]]) -> None:
        self.on_change(items[0] if items else None)

    def _event(self, kind: str, obj: Dict[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self.on_change(obj)
        elif kind == "DELETED":
            self.on_change(None)

    def _list(self) -> None:
        resp = self.list_func(*self.args, **self.query, _preload_content=False, _request_timeout=(10, 60))
        body = json.loads(checked(resp).data)
        self._listed(body.get("items") or [])
        self.rv = body["metadata"]["resourceVersion"]

    def _watch(self) -> None:
        """Until the server ends the watch; `self.rv` follows every event, so a drop resumes there."""
        for event in raw_events(self.list_func, *self.args, **self.query, resource_version=self.rv,
                                allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout,
                                _request_timeout=(10, self.watch_timeout + 30)):
            obj = event.get("object") or {}
            self.rv = (obj.get("metadata") or {}).get("resourceVersion") or self.rv
            self._event(event.get("type", ""), obj)  # BOOKMARK: only the resourceVersion above
            self.backoff.reset()  # the connection works
            if self.stop.is_set():
                break

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self.stop.is_set():
            try:
                if self.rv is None:
                    self._list()
                    self._answered()
                    self.log.info("watch_listed", source=self.label, resource_version=self.rv)
                self._watch()  # returns at the server-side timeout: watch again
                self._answered()
            except ApiException as exc:
                if exc.status == 410:
                    self.log.info("watch_expired", source=self.label, resource_version=self.rv,
                                  why="410 Gone: resourceVersion too old, listing again")
                    self.on_restart("gone")
                    self.rv = None
                    continue
                self.on_restart("error")
                self._failed(f"HTTP {exc.status} {exc.reason}")
                delay = self.backoff.next()
                self.log.warning("watch_failed", source=self.label, status=exc.status,
                                 why=str(exc.reason), retry_in=round(delay, 2))
                self.stop.wait(delay)
            except Exception as exc:  # connection refused/reset, cut mid-stream, timeouts
                self.on_restart("dropped")
                self._failed(f"{type(exc).__name__}: {exc}")
                delay = self.backoff.next()
                self.log.warning("watch_dropped", source=self.label, resource_version=self.rv,
                                 why=f"{type(exc).__name__}: {exc}", retry_in=round(delay, 2))
                self.stop.wait(delay)
