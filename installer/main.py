"""pycni-installer: flags/env, then `run` (the loop), `--once`, or `uninstall`."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import List, Optional

from .health import HealthServer, Status
from .log import configure
from .reconcile import BLOCKED, REJECTED, UNRECORDED, Installer
from .settings import Settings, parse
from .uninstall import uninstall


def run_loop(installer: Installer, settings: Settings) -> int:
    """Sync on every change (debounced) and every resync period, until stop. Files stay on exit."""
    stop, wake = installer.stop, installer.wake
    installer.sync("startup")
    next_resync = time.monotonic() + settings.resync_seconds
    while not stop.is_set():
        woke = wake.wait(max(0.0, next_resync - time.monotonic()))
        if stop.is_set():
            break
        if woke:
            stop.wait(settings.debounce_seconds)  # let a burst of changes settle
            wake.clear()
            installer.sync("change")
        else:
            installer.sync("resync")
            next_resync = time.monotonic() + settings.resync_seconds
    return 0


def run_once(installer: Installer, settings: Settings) -> int:
    """Install and render, waiting (up to --once-timeout) for the ConfigMap and the node's podCIDR."""
    deadline = time.monotonic() + settings.once_timeout
    while True:
        installer.wake.clear()
        result = installer.sync("once")
        ready, reason = installer.status.ready()
        if ready:
            return 0
        if result in (REJECTED, BLOCKED, UNRECORDED) or time.monotonic() >= deadline or installer.stop.is_set():
            installer.log.error("once_failed", why=reason)
            return 1
        installer.wake.wait(min(1.0, max(0.0, deadline - time.monotonic())))


class Stopping(BaseException):
    """Raised by the SIGTERM/SIGINT handler inside a running sync pass, so a pass that takes long (or never
    ends) cannot hold the process: every host write is atomic, an interrupted pass leaves the last good
    state. A BaseException, like KeyboardInterrupt: no `except Exception` swallows it."""


def main(argv: Optional[List[str]] = None) -> None:
    try:
        settings = parse(argv, os.environ)
    except ValueError as exc:
        sys.stderr.write(f"pycni-installer: {exc}\n")
        sys.exit(2)
    log = configure(settings.log_level, "pycni.installer")
    if settings.command == "uninstall":
        sys.exit(uninstall(settings, log))

    from .kube import api_client

    status = Status(stuck_after=settings.sync_stuck_seconds)
    installer = Installer(settings, log, status, api_factory=api_client)

    why_stop = "leaving the conflist and binaries in place (a restart or rolling update must not break the node)"

    def on_signal(signum: int, frame: object) -> None:
        installer.stop.set()
        installer.wake.set()
        if status.busy():  # no lock and no log here: the interrupted pass may hold the log's lock
            raise Stopping(signal.Signals(signum).name)
        log.info("stopping", signal=signal.Signals(signum).name, why=why_stop)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    log.info("starting", once=settings.once, source_dir=str(settings.source_dir), bin_dir=str(settings.bin_dir),
             conf=str(settings.conf_path), config_dir=str(settings.config_dir or ""),
             configmap="/".join(settings.configmap or ()), node=settings.node_name, host_root=settings.host_root)
    health = None
    if settings.listen and not settings.once:
        health = HealthServer(status, settings.listen).start()
        log.info("health_listening", address="%s:%d" % health.address)
    installer.start_sources()
    try:
        code = run_once(installer, settings) if settings.once else run_loop(installer, settings)
    except Stopping as exc:
        log.info("stopping", signal=str(exc), why=f"{why_stop}; a sync pass was interrupted")
        code = 1 if settings.once else 0
    finally:
        installer.stop.set()
        if health is not None:
            health.stop()
    log.info("exited", code=code)
    sys.exit(code)
