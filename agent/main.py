"""pycni-agent: watch Nodes (and the pycni ConfigMap), converge on start, on every event, at every resync.

Exit (SIGTERM) leaves routes and the VXLAN device in place: a restarting or updated agent
must not cut pods off; the next one converges on the same state.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import List, Optional

from pycni.installer.log import Log, configure
from pycni.installer.network import ConfigError, NetworkConfig, parse_network_config

from .health import AgentStatus
from .settings import Settings, parse


class ConfigTracker:
    """The current NetworkConfig: the last good one when the ConfigMap's value is rejected."""

    def __init__(self, source, log: Log, status: AgentStatus) -> None:
        self.source = source  # installer ConfigMapSource or None
        self.log = log
        self.status = status
        self.good = NetworkConfig()
        self._seen: Optional[str] = "\0initial"

    def ready(self) -> bool:
        return self.source is None or self.source.synced

    def current(self) -> NetworkConfig:
        if self.source is None or self.source.obj is None:
            return self.good  # no ConfigMap (yet, or deleted): keep what we run with
        text = self.source.text()
        if text == self._seen:
            return self.good
        self._seen = text
        try:
            self.good = parse_network_config(text)
            self.status.update(config_error="")
            self.log.info("config_loaded", backend=self.good.backend, vxlan=self.good.vxlan.__dict__,
                          resync_seconds=self.good.resync_seconds, masquerade=self.good.masquerade,
                          cluster_cidrs=list(self.good.cluster_cidrs))
        except ConfigError as exc:
            self.status.update(config_error=str(exc))
            self.log.error("config_rejected", why=str(exc), keeping=self.good.backend)
        return self.good


def run(settings: Settings, log: Log, stop: threading.Event, wake: threading.Event, status: AgentStatus) -> int:
    from pycni.installer.kube import api_client
    from pycni.installer.source_api import ConfigMapSource

    from .annotate import VtepAnnotator
    from .kernel import Kernel
    from .masq import NatPolicy
    from .nodes import NodeListWatcher, NodeStore
    from .reconcile import Reconciler

    api = api_client()
    on_restart = lambda cause: status.count("watch_restarts", cause)  # noqa: E731
    source = None
    if settings.configmap:
        namespace, name = settings.configmap
        source = ConfigMapSource(api, namespace, name, settings.config_key, log, wake.set, stop,
                                 settings.watch_timeout_seconds, on_restart)
    configs = ConfigTracker(source, log, status)
    store = NodeStore(wake.set)
    watcher = NodeListWatcher(api, store, log, stop, settings.watch_timeout_seconds, on_restart)
    kernel = Kernel()
    reconciler = Reconciler(settings.node_name, kernel, NatPolicy(), VtepAnnotator(api, settings.node_name, log),
                            status, log)
    if source is not None:
        source.start()
    watcher.start()
    next_resync = 0.0
    retry = 1.0
    try:
        while not stop.is_set():
            if not (store.synced and configs.ready()):
                causes = [w.problem() for w in (watcher, source.watcher if source else None) if w is not None]
                status.update(reason="waiting for the first list of Nodes and the ConfigMap"
                              + "".join(f": {c}" for c in causes if c))
                wake.wait(1.0)
                wake.clear()
                continue
            trigger = "start" if next_resync == 0 else ("resync" if time.monotonic() >= next_resync else "event")
            wake.clear()
            config = configs.current()
            try:
                ok = reconciler.sync(config, store.snapshot(), trigger)
            except Exception as exc:  # a bug or an unexpected kernel answer: report, retry, keep running
                status.count("sync_errors", "unexpected")
                log.error("sync_failed", why=f"{type(exc).__name__}: {exc}")
                ok = False
            period = config.resync_seconds or settings.resync_seconds
            if trigger != "event" or not ok:
                next_resync = time.monotonic() + (period if ok else min(period, retry))
            retry = 1.0 if ok else min(retry * 2, 30.0)
            if wake.wait(max(0.0, next_resync - time.monotonic())):
                stop.wait(settings.debounce_seconds)  # let a burst of events settle
    finally:
        kernel.close()
    return 0


def cleanup(argv: List[str]) -> int:
    """`pycni-agent cleanup`: remove the agent's table, routes and VXLAN device (uninstall mode)."""
    from .cleanup import AgentCleanup

    level = os.environ.get("PYCNI_LOG_LEVEL", "info")
    if argv or level not in ("debug", "info", "warning", "error"):
        sys.stderr.write("usage: pycni-agent cleanup   (PYCNI_LOG_LEVEL: debug|info|warning|error)\n")
        return 2
    return 0 if AgentCleanup(configure(level, "pycni.agent")).run() else 1


def main(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["cleanup"]:
        sys.exit(cleanup(args[1:]))
    try:
        settings = parse(argv, os.environ)
    except ValueError as exc:
        sys.stderr.write(f"pycni-agent: {exc}\n")
        sys.exit(2)
    log = configure(settings.log_level, "pycni.agent")
    status = AgentStatus()
    stop, wake = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name,
                 why="routes and the VXLAN device stay: the next agent converges on them")
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    health = None
    if settings.listen:
        from pycni.installer.health import HealthServer

        health = HealthServer(status, settings.listen).start()
    log.info("starting", node=settings.node_name, configmap="/".join(settings.configmap or ()),
             config_key=settings.config_key, listen=health and "%s:%d" % health.address)
    try:
        code = run(settings, log, stop, wake, status)
    except Exception as exc:
        log.error("fatal", why=f"{type(exc).__name__}: {exc}")
        code = 1
    if health is not None:
        health.stop()
    sys.exit(code)
